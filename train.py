"""
Train MicroRWKV (or the GPT baseline) on TinyStories. Runs on a single CPU/GPU or under DDP.

Single device (laptop CPU, one GPU):
$ python train.py config/train_tinystories_cpu.py
$ python train.py config/train_tinystories.py --batch_size=8 --compile=True

Resume from the latest checkpoint, or from a numbered one:
$ python train.py config/train_tinystories_cpu.py --init_from=resume
$ python train.py config/train_tinystories_cpu.py --init_from=resume --resume_ckpt=ckpt-200

Evaluate (eval_only=True) or fine-tune a pretrained GPT-2 / RWKV-4 (see pretrained.py):
$ python train.py config/eval_gpt2.py

DDP on 4 GPUs of one node (gradient_accumulation_steps is the total over all processes):
$ torchrun --standalone --nproc_per_node=4 train.py config/train_tinystories.py

Check a command line without running it (the config is built and validated, nothing is read or written):
$ python train.py config/train_tinystories.py --dry_run=True

Outputs in out_dir: ckpt.pt (latest), ckpt-<iter>.pt (every ckpt_interval steps and at the end; see
checkpoint.py), metrics.jsonl (see metrics.py). Every reported loss is cross-entropy; the MoE aux loss is
logged in its own column. `python train.py --help` lists every config key with its default.
"""

import dataclasses
import math
import os
import sys
import time
from contextlib import nullcontext

import torch

import parallel
from checkpoint import CheckpointError, checkpoint_path, load_checkpoint, model_from_checkpoint, \
    restore_rng_states, rng_states, save_checkpoint
from configurator import ConfigError, apply_config, format_help
from data import DataError, get_batch, load_tokens
from metrics import MetricsLog, peak_flops, unwritable
from model import GPTConfig, build_model
from tokenizer import canonical

# -----------------------------------------------------------------------------
# default config values
# I/O
out_dir = 'out'
eval_interval = 250
log_interval = 10
eval_iters = 50
eval_only = False  # if True, evaluate once and exit
always_save_checkpoint = True  # if False, ckpt.pt is only written when val loss improves
ckpt_interval = 500  # also write ckpt-<iter>.pt every this many steps (0: only at the end)
init_from = 'scratch'  # 'scratch', 'resume', 'rwkv:FILE.pth' (official RWKV-7), a checkpoint's directory, or a GPT-2 / RWKV-4 hub id or save_pretrained() directory
resume_ckpt = 'ckpt'  # with init_from='resume': which checkpoint in out_dir ('ckpt', 'ckpt-500', ...)
dry_run = False  # build and check the configuration, print it, and exit
# wandb logging
wandb_log = False
wandb_project = 'microrwkv'
wandb_run_name = 'run'
wandb_mode = ''  # '' (wandb's default / $WANDB_MODE), 'online', 'offline' or 'disabled'
# data
dataset = 'tinystories_15k'
data_dir = ''  # '' means data/<dataset>
gradient_accumulation_steps = 1  # total over all DDP processes
batch_size = 12  # micro-batch size per process
# model: every GPTConfig field is a config key with the dataclass default
for _f in dataclasses.fields(GPTConfig):
    globals()[_f.name] = _f.default
# AdamW optimizer
learning_rate = 6e-4
max_iters = 5000  # total number of optimizer steps
weight_decay = 1e-1
weight_decay_time = False  # also decay x051a's time_faaaa (the bonus; time_decay and time_maa_* are vectors: never)
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip gradients at this norm, or disable if == 0.0
# learning rate schedule: linear warmup then cosine decay to min_lr
decay_lr = True
warmup_iters = 200
lr_decay_iters = 5000  # ~= max_iters per Chinchilla
min_lr = 6e-5  # ~= learning_rate / 10 per Chinchilla
# DDP
backend = ''  # torch.distributed backend: '' picks 'nccl' for CUDA devices, 'gloo' otherwise
# system
device = 'cuda' if torch.cuda.is_available() else 'cpu'  # 'cpu', 'cuda', 'cuda:1', 'mps', ...
dtype = 'bfloat16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'float32'
compile = False  # torch.compile the model
seed = 1337
num_threads = 0  # torch.set_num_threads(num_threads) if > 0
peak_flops_per_s = 0.0  # the device's peak FLOP/s for MFU; 0: look the GPU up in metrics.py (no MFU if unknown)
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (bool, int, float, str))]
_defaults = {k: globals()[k] for k in config_keys}
if any(a in ('-h', '--help') for a in sys.argv[1:]):
    print(format_help(_defaults))
    sys.exit(0)


def die(msg):
    """One-line error on stderr and a non-zero exit, no traceback."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


try:
    globals().update(apply_config(sys.argv[1:], _defaults))
except ConfigError as e:
    die(e)
model_keys = [f.name for f in dataclasses.fields(GPTConfig)]
model_args = {k: globals()[k] for k in model_keys}
try:
    GPTConfig(**model_args)  # validates the architecture before anything starts
except ValueError as e:
    die(e)
rwkv_init = init_from.startswith('rwkv:') or os.path.isfile(os.path.join(init_from, 'ckpt.pt'))  # import_rwkv.py
if init_from not in ('scratch', 'resume') and not rwkv_init:
    from pretrained import is_pretrained_name
    if not is_pretrained_name(init_from):
        die(f"init_from must be 'scratch', 'resume', 'rwkv:FILE.pth', a checkpoint's directory, a GPT-2 / RWKV-4 hub "
            f"id or a save_pretrained() directory, "
            f"got {init_from!r}")
if dtype not in ('float32', 'bfloat16', 'float16'):
    die(f"dtype must be 'float32', 'bfloat16' or 'float16', got {dtype!r}")
for _k, _min in (('max_iters', 0), ('ckpt_interval', 0), ('eval_iters', 1), ('log_interval', 1),
                 ('eval_interval', 1), ('batch_size', 1), ('gradient_accumulation_steps', 1), ('warmup_iters', 0)):
    if globals()[_k] < _min:
        die(f"{_k} must be >= {_min}, got {globals()[_k]}")
# AdamW and the schedule: a negative rate or clip norm silently ascends the loss; AdamW rejects betas outside [0, 1)
if not learning_rate > 0:
    die(f"learning_rate must be > 0, got {learning_rate} (e.g. 6e-4)")
for _k in ('beta1', 'beta2'):
    if not 0 <= globals()[_k] < 1:
        die(f"{_k} must be in [0, 1), got {globals()[_k]} (e.g. 0.9)")
for _k, _why in (('weight_decay', ''), ('grad_clip', ' (0: no clipping)'), ('min_lr', '')):
    if not globals()[_k] >= 0:
        die(f"{_k} must be >= 0{_why}, got {globals()[_k]}")
if decay_lr and min_lr > learning_rate:
    die(f"min_lr ({min_lr}) must be <= learning_rate ({learning_rate}), e.g. --min_lr={learning_rate / 10:g}")
try:
    torch.device(device)
except RuntimeError:
    die(f"device={device!r} is not a torch device; use 'cpu', 'cuda', 'cuda:1', 'mps', ...")
ddp_world_size = int(os.environ.get('WORLD_SIZE', 1))
if gradient_accumulation_steps % ddp_world_size != 0:
    die(f"gradient_accumulation_steps ({gradient_accumulation_steps}) must be divisible by the number of "
        f"processes ({ddp_world_size})")
config = {k: globals()[k] for k in config_keys}  # useful for logging and the checkpoint
if dry_run:
    print(f"dry run: configuration valid for {ddp_world_size} process(es): {config}")
    sys.exit(0)
if torch.device(device).type == 'cuda' and not torch.cuda.is_available():
    die(f"device={device!r} but CUDA is not available; use --device=cpu")
if not eval_only and (_why := unwritable(out_dir, directory=True)):  # before any work, not at the first checkpoint
    die(f"out_dir={out_dir!r}: {_why}; choose another out_dir")
if wandb_log and not eval_only and int(os.environ.get('RANK', 0)) == 0:
    try:
        import wandb  # only needed, and only imported, with wandb_log=True
    except ImportError:
        die("wandb_log=True but wandb is not installed (pip install wandb), or run with --wandb_log=False")
# -----------------------------------------------------------------------------
# various inits, derived attributes, I/O setup
ddp = int(os.environ.get('RANK', -1)) != -1  # is this a ddp run (torchrun)?
ddp_rank, ddp_local_rank, ddp_world_size, device = parallel.setup(device, backend)
master_process = ddp_rank == 0  # this process will do logging, checkpointing etc.
gradient_accumulation_steps //= ddp_world_size  # each process does its share of the micro-steps
tokens_per_iter = gradient_accumulation_steps * ddp_world_size * batch_size * block_size
if master_process:
    print(f"tokens per iteration will be: {tokens_per_iter:,}")
if num_threads > 0:
    torch.set_num_threads(num_threads)
torch.manual_seed(seed + ddp_rank)  # dropout differs between processes
device_type = 'cuda' if 'cuda' in device else 'cpu'  # for later use in torch.autocast
if device_type == 'cuda':
    torch.backends.cuda.matmul.allow_tf32 = True  # allow tf32 on matmul
    torch.backends.cudnn.allow_tf32 = True  # allow tf32 on cudnn
if dtype == 'float16' and device_type != 'cuda':
    die("dtype='float16' needs a CUDA device; use 'float32' or 'bfloat16' on CPU")
ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
ctx = nullcontext() if dtype == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)

# model init: from scratch, from a checkpoint of this script, or from pretrained weights
iter_num = 0  # number of optimizer steps done
best_val_loss = 1e9  # cross-entropy
checkpoint = None
if init_from == 'scratch':
    if master_process:
        print(f"Initializing a new {model_type} model from scratch")
    model = build_model(GPTConfig(**model_args))
elif init_from == 'resume':
    ckpt_path = checkpoint_path(out_dir, resume_ckpt)
    if master_process:
        print(f"Resuming training from {ckpt_path}")
    try:
        checkpoint = load_checkpoint(ckpt_path, device)
        model = model_from_checkpoint(checkpoint, ckpt_path, dropout=dropout)  # only dropout may change
    except CheckpointError as e:
        die(e)
    _given = {a[2:].partition('=')[0] for a in sys.argv[1:] if a.startswith('--')}
    for k, v in checkpoint['model_args'].items():  # the architecture comes from the checkpoint
        if master_process and k != 'dropout' and config.get(k, v) != v and (config[k] != _defaults[k] or k in _given):
            print(f"note: {k}={config[k]!r} ignored, the checkpoint has {v!r}")
    model_args = dataclasses.asdict(model.config)
    iter_num, best_val_loss = checkpoint['iter_num'], checkpoint['best_val_loss']
elif rwkv_init:  # an official RWKV-7 .pth, imported in memory, or a checkpoint's weights: fine-tuning
    from import_rwkv import RWKVImportError, load_for_training as load_rwkv
    if master_process:
        print(f"Initializing from the weights of {init_from}")
    try:
        model, model_args = load_rwkv(init_from, block_size, dropout)
    except (RWKVImportError, CheckpointError) as e:
        die(e)
else:  # pretrained weights (pretrained.py; needs transformers): the architecture comes from the checkpoint
    from pretrained import PretrainedError, check_tokenizer, load_for_training
    if master_process:
        print(f"Initializing from pretrained weights: {init_from}")
    try:
        model, model_args = load_for_training(init_from, block_size, eval_only, dropout)
    except PretrainedError as e:
        die(e)
config.update({k: v for k, v in model_args.items() if k in config})
for k in model_keys:  # what follows reads the model's real architecture
    globals()[k] = model_args.get(k, globals()[k])

# data: random windows of the token memmaps (data.get_batch), drawn from a seeded generator whose state goes
# into the checkpoint, so a resumed run sees exactly the batches the uninterrupted one would
data_dir = data_dir or os.path.join('data', dataset)
try:
    train_data, val_data, meta = load_tokens(data_dir, vocab_size)
    splits = {'train': train_data, 'val': val_data}
    if init_from not in ('scratch', 'resume') and not rwkv_init:
        check_tokenizer(model, meta)  # e.g. RWKV-4 reads GPT-NeoX ids, not GPT-2's
    if 'tokenizer' in model_args and canonical(meta['tokenizer']) != model_args['tokenizer']:
        raise DataError(f"{data_dir} holds {meta['tokenizer']} token ids but the model reads {model_args['tokenizer']} "
                        f"ones: prepare it with prepare_tinystories.py --tokenizer {model_args['tokenizer']}")
except (DataError, ValueError) as e:
    die(e)
for _name in ('train', 'val'):
    if len(splits[_name]) <= block_size + 1:
        die(f"{_name} split in {data_dir} has {len(splits[_name])} tokens, fewer than block_size + 2 = {block_size + 2}")
train_gen = torch.Generator().manual_seed(seed)


def batch(split, generator):
    return get_batch(splits[split], block_size, batch_size, generator, device, ddp_rank, ddp_world_size)


model.to(device)
if master_process:
    print(f"number of parameters: {model.get_num_params() / 1e6:.2f}M")
flops_per_token = model.flops_per_token(block_size) if hasattr(model, 'flops_per_token') else 0
device_name = torch.cuda.get_device_name(device) if device_type == 'cuda' else 'cpu'
peak = peak_flops(device_name, dtype, peak_flops_per_s)

# initialize a GradScaler. If enabled=False scaler is a no-op
scaler = torch.amp.GradScaler('cuda', enabled=(dtype == 'float16'))
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type, weight_decay_time)
if checkpoint is not None:
    if 'optimizer' not in checkpoint:
        die(f"{ckpt_path} holds weights without an optimizer state (an imported model): fine-tune it with "
            f"--init_from={out_dir} instead of resuming")
    try:
        optimizer.load_state_dict(checkpoint['optimizer'])
    except (ValueError, KeyError):  # its parameter groups differ from this run's
        _was = checkpoint.get('config', {}).get('weight_decay_time', False)
        die(f"{ckpt_path}: its optimizer state does not fit this run's parameter groups; resume with "
            + (f"--weight_decay_time={_was}" if _was != weight_decay_time else "the optimizer settings it was trained with"))
    if 'scaler' in checkpoint and scaler.is_enabled():
        scaler.load_state_dict(checkpoint['scaler'])
    # sampler and dropout RNG of this process: continue exactly where the checkpointed run was
    if not restore_rng_states(checkpoint, train_gen, device, ddp_world_size, ddp_rank):
        if master_process:
            print(f"note: the checkpoint has no sampler state for {ddp_world_size} process(es); reseeding the sampler")
        train_gen.manual_seed(seed + 1_000_003 * iter_num)
checkpoint = None  # free up memory

raw_model = model  # unwrapped, uncompiled: its state_dict keys have no _orig_mod./module. prefix
if compile:
    print("compiling the model... (takes a ~minute)")
    model = torch.compile(model)
if ddp:
    # experts that receive no token in a step, and RWKV-7's layer-0 v0/v1/v2 (kept for the official layout),
    # leave parameters without gradients
    find_unused = model_type == 'microrwkv' and (use_moe and num_active_experts < num_experts or rwkv_version == 'x070')
    model = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[ddp_local_rank] if device_type == 'cuda' else None, find_unused_parameters=find_unused)
eval_model = raw_model if not compile else (model.module if ddp else model)
aux_weight = getattr(raw_model.config, 'aux_loss_weight', 0.0)  # the loss adds aux_weight * MoE aux loss


@torch.no_grad()
def estimate_loss():
    """Mean cross-entropy over eval_iters global batches of each split: the same batches every time, drawn
    from their own generators, so evaluating does not disturb the training sampler."""
    out = {}
    eval_model.eval()
    for split_idx, split in enumerate(['train', 'val']):
        gen = torch.Generator().manual_seed(seed + 7_919 * (split_idx + 1))
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            X, Y = batch(split, gen)
            with ctx:
                _, loss, aux = eval_model(X, Y, return_aux_loss=True)
            losses[k] = (loss - aux_weight * aux).item()  # cross-entropy: the loss less the MoE aux loss
        out[split] = parallel.global_mean(losses.mean().item(), device)
    eval_model.train()
    return out


# learning rate decay scheduler: linear warmup for warmup_iters steps, then cosine decay to min_lr at
# lr_decay_iters, then min_lr; `it` counts steps from 0
def get_lr(it):
    if not decay_lr:
        return learning_rate
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # coeff ranges 1..0
    return min_lr + coeff * (learning_rate - min_lr)


def stop_non_finite(what):
    if master_process:
        print(f"error: non-finite {what} at iter {iter_num}; last good checkpoint: {last_ckpt}", file=sys.stderr, flush=True)
    parallel.teardown(exit_code=1)
    sys.exit(1)


def save(name, rng):
    path = checkpoint_path(out_dir, name)
    save_checkpoint(path, {
        'model': raw_model.state_dict(), 'optimizer': optimizer.state_dict(), 'model_args': dict(model_args),
        'iter_num': iter_num, 'best_val_loss': float(best_val_loss), 'config': dict(config), **rng,
        **({'scaler': scaler.state_dict()} if scaler.is_enabled() else {}),
    })
    print(f"saved checkpoint to {path}")
    return path


metrics = None  # metrics.jsonl (and wandb): a resumed run keeps the rows up to its checkpoint
if master_process and not eval_only:
    os.makedirs(out_dir, exist_ok=True)  # only now: a run that fails on its data or model leaves no empty out_dir
    run = wandb.init(project=wandb_project, name=wandb_run_name, config=config, mode=wandb_mode or None) \
        if wandb_log else None
    metrics = MetricsLog(os.path.join(out_dir, 'metrics.jsonl'), iter_num if init_from == 'resume' else None, run)


# training loop
parallel.barrier()
last_ckpt = ckpt_path if init_from == 'resume' else 'none'
start_iter = iter_num
run_t0 = time.time()
while True:
    # RNG state before this step: a checkpoint of the state after iter_num steps resumes from here
    step_rng = rng_states(train_gen, device)
    # evaluate the loss on train/val sets and write checkpoints (of the state after iter_num steps)
    is_last = iter_num >= max_iters
    if eval_only or ((iter_num % eval_interval == 0 or is_last) and (iter_num > start_iter or iter_num == 0)):
        losses = estimate_loss()
        if master_process:
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            if metrics is not None:
                metrics.log({'iter': iter_num, 'eval_train': losses['train'], 'eval_val': losses['val'],
                             'tokens': iter_num * tokens_per_iter})
        if eval_only:
            break
        if not (math.isfinite(losses['train']) and math.isfinite(losses['val'])):
            stop_non_finite('eval loss')
        improved = losses['val'] < best_val_loss
        best_val_loss = min(best_val_loss, losses['val'])
        save_latest = improved or always_save_checkpoint
    else:
        save_latest = False
    save_numbered = (ckpt_interval > 0 and iter_num % ckpt_interval == 0) or is_last
    if iter_num > start_iter and (save_latest or save_numbered):
        if not all(torch.isfinite(p).all() for p in raw_model.parameters()):
            stop_non_finite('parameters')  # never overwrite a good checkpoint with a broken model
        rng = {k: parallel.gather_rows(s) for k, s in step_rng.items()}  # a collective under DDP: every rank calls it
        if master_process:
            if save_latest or (save_numbered and always_save_checkpoint):
                last_ckpt = save('ckpt', rng)
            if save_numbered:
                last_ckpt = save(f'ckpt-{iter_num}', rng)
    if is_last:
        break

    # determine and set the learning rate for this step
    t0 = time.time()
    lr = get_lr(iter_num)
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr * param_group.get('lr_scale', 1.0)  # RWKV-7's w0 trains at 2x

    # forward backward update, with optional gradient accumulation to simulate larger batch size
    # and using the GradScaler if data type is float16
    ce_sum = torch.zeros((), device=device)
    aux_sum = torch.zeros((), device=device)
    for micro_step in range(gradient_accumulation_steps):
        X, Y = batch('train', train_gen)
        # in DDP, only sync gradients at the last micro step
        sync_ctx = model.no_sync() if ddp and micro_step < gradient_accumulation_steps - 1 else nullcontext()
        with sync_ctx:
            with ctx:
                _, loss, aux_loss = model(X, Y, return_aux_loss=True)
                ce_sum += loss.detach().float() - aux_weight * aux_loss.detach().float()
                aux_sum += aux_loss.detach().float()
                loss = loss / gradient_accumulation_steps  # scale the loss to account for gradient accumulation
            # backward pass, with gradient scaling if training in fp16
            scaler.scale(loss).backward()
    # stop on a non-finite loss (in DDP every rank stops together), keeping the checkpoints as they are
    if parallel.any_process(not torch.isfinite(ce_sum).item()):
        iter_num += 1  # report the step (1-based) whose loss was non-finite
        stop_non_finite('loss')
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    # step the optimizer and scaler if training in fp16
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    iter_num += 1

    # timing and logging (losses are means over every process's micro-steps: the global batch)
    t1 = time.time()
    dt = t1 - t0  # this step's forward/backward/update time (evaluation and checkpointing excluded)
    if iter_num % log_interval == 0:
        lossf = parallel.global_mean(ce_sum.item() / gradient_accumulation_steps, device)
        auxf = parallel.global_mean(aux_sum.item() / gradient_accumulation_steps, device)
        if master_process:
            tflops = flops_per_token * tokens_per_iter / dt / 1e12  # achieved, counted by model.flops_per_token
            mfu = f", mfu {tflops * 1e12 / peak * 100:.2f}%" if peak else ""
            print(f"iter {iter_num}: loss {lossf:.4f}, aux {auxf:.4f}, lr {lr:.2e}, time {dt * 1000:.2f} ms, "
                  f"tok/s {tokens_per_iter / dt:,.0f}, {tflops:.3f} TFLOP/s{mfu}")
            metrics.log({'iter': iter_num, 'train_loss': lossf, 'aux_loss': auxf, 'lr': lr, 'dt_ms': dt * 1000,
                         'tok_s': tokens_per_iter / dt, 'tflops': tflops,
                         **({'mfu': tflops * 1e12 / peak} if peak else {}), 'tokens': iter_num * tokens_per_iter,
                         'elapsed_s': t1 - run_t0})

if metrics is not None:
    metrics.close()
parallel.teardown()
