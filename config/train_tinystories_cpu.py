# A small MicroRWKV that visibly learns TinyStories in ~5 minutes on 2 CPU cores: the default layout,
# pure RWKV-7 (README: what does attention buy?); x051a blocks are --rwkv_version=x051a --chunk_len=32.
# data:  python prepare_tinystories.py --source ../shared/data/tinystories/train_sample_lower.txt --name tinystories_sample
#        (or any TinyStories .txt file; 10% of its stories are held out for val)
# train: python train.py config/train_tinystories_cpu.py
# Its GPT twin (same width, depth, heads, context, batch and steps): config/train_gpt_tinystories_cpu.py

out_dir = 'out-tinystories-cpu'
dataset = 'tinystories_sample'
device = 'cpu'
dtype = 'float32'
compile = False

model_type = 'microrwkv'
rwkv_version = 'x070'
use_swa = False
use_gqa = False
use_moe = False
block_size = 128
vocab_size = 50304
n_layer = 4
n_head = 4
n_embd = 128
head_size = 32  # 4 RWKV heads of 32
chunk_len = 16
# used only when switched on (use_swa / use_gqa / use_moe, or layers)
n_kv_head = 2  # GQA: 2 query heads per key/value head
window_size = 64  # SWA
num_experts = 4
num_active_experts = 2  # top-2 routing, so the load-balancing loss has something to do
expert_dim = 256
dropout = 0.0
bias = False

# 8 x 128 = 1,024 tokens per step, 400 steps = 409,600 tokens (about half an epoch of the sample)
batch_size = 8
gradient_accumulation_steps = 1
max_iters = 400
lr_decay_iters = 400
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 20
weight_decay = 1e-1
beta2 = 0.99  # small batches: a longer second-moment average
grad_clip = 1.0

eval_interval = 50
eval_iters = 10
log_interval = 10
ckpt_interval = 100
