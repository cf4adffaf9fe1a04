# OpenAI GPT-2 1.5B on OpenWebText, a baseline of the original README (val loss 2.56 there).
# data: python prepare_openwebtext.py            (-> data/openwebtext, GPT-2 BPE)
# run:  python train.py config/eval_gpt2_xl.py
init_from = 'gpt2-xl'  # a Hugging Face id, or a local directory written by transformers' save_pretrained()
model_type = 'gpt'  # GPT-2 loads into model.py's GPT; its size comes from the checkpoint
eval_only = True
eval_iters = 500  # 500 batches of 8 x 1024 tokens per split, for a good estimate
batch_size = 8
block_size = 1024
dataset = 'openwebtext'
wandb_log = False
