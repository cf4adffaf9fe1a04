# The fixed ablation recipe ("learn as well as the best"): every variant in ablate.py is this file plus a
# few --key=value overrides, so rows differ in one thing only. By default: a pure RWKV model (TimeMix +
# ChannelMix, no SWA/GQA/MoE), 4 layers x 256 wide, head size 64, context 256.
#
#   model     4 layers x 256, head_size 64 (4 heads; GPT uses n_head=4 of 64), vocab 50304, no biases, no dropout
#   data      the shared TinyStories sample, 10% of its stories held out for val (never trained on):
#             TIKTOKEN_CACHE_DIR=../shared/tiktoken_cache python prepare_tinystories.py \
#                 --source ../shared/data/tinystories/train_sample_lower.txt --name tinystories_sample
#   batches   8 x 256 = 2,048 tokens per step, 400 steps = 819,200 tokens (about one epoch of the 854K-token train split)
#   optimizer AdamW, lr 1e-3, 30 linear warm-up steps, cosine to 1e-4 at step 400, weight decay 0.1 (matrices
#             only), betas (0.9, 0.95), gradient clipping at 1.0, float32
#   eval      every 50 steps and at the end: 40 batches of 8 x 256 tokens from each split (the same batches
#             every time), cross-entropy in nats/token; logged every 10 steps to out_dir/metrics.jsonl
#
# One run:        python train.py config/ablate_recipe.py --device=cpu --seed=1337 --out_dir=out/ablate/rwkv/seed1337
# The sweep:      python ablate.py --variants rwkv,gpt,rwkv-head32 --seeds 1337,1338,1339 --device cpu --parallel 2
#                 (ablate.py lists the variants: python ablate.py --list)
# BlinkDL's nanoRWKV / Karpathy's nanoGPT on the same recipe, with their own model.py from a checkout:
#                 python tools/run_reference.py --impl nanorwkv --repo PATH_TO_NANORWKV --seeds 1337,1338,1339
#
# The device is left to train.py (cuda when available); dtype is pinned to float32 on every device.
# Checkpoints: only the final one (ckpt_interval = 0); ablate.py deletes them after a run unless --keep_ckpt.

out_dir = 'out/ablate/run'
dataset = 'tinystories_sample'
dtype = 'float32'
compile = False

# model: pure RWKV x051a by default
model_type = 'microrwkv'
rwkv_version = 'x051a'
use_swa = False
use_gqa = False
use_moe = False
n_layer = 4
n_embd = 256
n_head = 4  # attention heads (GPT, SWA, GQA): 64 wide, like the RWKV heads
head_size = 64
chunk_len = 64
block_size = 256
vocab_size = 50304
bias = False
dropout = 0.0
init_scheme = 'gpt2'  # the recipe's baseline init; model.py's default is 'rwkv' (variant rwkv-init-rwkv)
# only used when the full MicroRWKV layer is switched on (use_swa / use_gqa / use_moe)
window_size = 128  # SWA over half the context
n_kv_head = 2  # GQA: 2 query heads per key/value head
num_experts = 4
num_active_experts = 2  # top-2 of 4
expert_dim = 512
aux_loss_weight = 0.01

# optimizer and schedule
batch_size = 8
gradient_accumulation_steps = 1
max_iters = 400
lr_decay_iters = 400
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 30
decay_lr = True
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0

# evaluation, logging, checkpoints
eval_interval = 50
eval_iters = 40  # 40 x 8 x 256 = 81,920 tokens per split and evaluation
log_interval = 10
ckpt_interval = 0  # only the final ckpt-400.pt (and ckpt.pt when val improves)
always_save_checkpoint = False
