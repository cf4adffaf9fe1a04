# RWKV-4 169M (trained on the Pile) on OpenWebText: the reference figure is val loss 3.11 (not measured here: no hub access).
# data: python prepare_openwebtext.py --tokenizer neox      (-> data/openwebtext_neox: RWKV-4 reads GPT-NeoX-20B
#       token ids, not GPT-2's; its per-token loss is over slightly different tokens than GPT-2's)
# run:  python train.py config/eval_rwkv4_169m.py
init_from = 'RWKV/rwkv-4-169m-pile'  # a Hugging Face id, or a local directory written by save_pretrained()
# model_type is not set: the architecture (pretrained.RWKV4) and its size come from the checkpoint
eval_only = True
eval_iters = 500  # 500 batches of 8 x 1024 tokens per split, for a good estimate
batch_size = 8
block_size = 1024
dataset = 'openwebtext_neox'
wandb_log = False
