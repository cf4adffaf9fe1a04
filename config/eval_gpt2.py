# OpenAI GPT-2 124M on OpenWebText: nanoGPT reports val loss 3.11 for it (not measured here: no hub access).
# data: python prepare_openwebtext.py            (-> data/openwebtext, GPT-2 BPE)
# run:  python train.py config/eval_gpt2.py
init_from = 'gpt2'  # a Hugging Face id, or a local directory written by transformers' save_pretrained()
model_type = 'gpt'  # GPT-2 loads into model.py's GPT; its size comes from the checkpoint
eval_only = True
eval_iters = 500  # 500 batches of 8 x 1024 tokens per split, for a good estimate
batch_size = 8
block_size = 1024
dataset = 'openwebtext'
wandb_log = False
