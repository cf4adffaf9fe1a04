# RWKV-7 "Goose" G1 1.5B (24x2048, BlinkDL's official model; World tokenizer) on TinyStories: its val loss (not measured
# here: no hub access).
# data: python prepare_tinystories.py --tokenizer rwkv_world      (-> data/tinystories_world: World token ids)
# run:  python train.py config/eval_rwkv7_1b5.py
#       downloaded into the Hugging Face cache once; offline, read from that cache or from a copy of the file in
#       the current directory, or give its path: --init_from=rwkv:/path/to/rwkv7-g1-1.5b-20250429-ctx4096.pth
# fine-tune: the same with eval_only=False (and max_iters, learning_rate, ...); export_rwkv.py writes the result back
init_from = 'rwkv:BlinkDL/rwkv7-g1/rwkv7-g1-1.5b-20250429-ctx4096.pth'  # import_rwkv.py converts it in memory
eval_only = True
eval_iters = 100  # batches of 8 x 1024 tokens per split
batch_size = 8
block_size = 1024
dataset = 'tinystories_world'
wandb_log = False
