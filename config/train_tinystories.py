# MicroRWKV at the README's large size (8 x 768, pure RWKV-7: GPTConfig's defaults) on TinyStories, for a GPU.
# data:  python prepare_tinystories.py --num_stories 15000        (-> data/tinystories_15k)
# train: python train.py config/train_tinystories.py
#        torchrun --standalone --nproc_per_node=4 train.py config/train_tinystories.py   (4 GPUs: one micro-step each)
# sample a checkpoint: python generate.py --out_dir=out --model_name=ckpt-500

out_dir = 'out'
dataset = 'tinystories_15k'
wandb_log = False  # override via command line if you like
wandb_project = 'microrwkv'
wandb_run_name = 'microrwkv-tinystories'

# model: GPTConfig's defaults, spelled out
model_type = 'microrwkv'
rwkv_version = 'x070'
use_swa = False
use_gqa = False
use_moe = False
block_size = 1024
vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 64
n_layer = 8
n_head = 8
n_embd = 768
dropout = 0.0
bias = False

# 8 sequences x 1024 tokens x 4 micro-steps = 32,768 tokens per step (per run, over all DDP processes)
batch_size = 8
gradient_accumulation_steps = 4
max_iters = 5000
lr_decay_iters = 5000
learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 200
weight_decay = 1e-1
beta2 = 0.95
grad_clip = 1.0

eval_interval = 250
eval_iters = 100
log_interval = 10
ckpt_interval = 500  # out/ckpt-500.pt, out/ckpt-1000.pt, ...
