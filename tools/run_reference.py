"""
The ablation recipe (config/ablate_recipe.py) on another project's own model.py: BlinkDL's nanoRWKV (x051a)
or Karpathy's nanoGPT, imported from a checkout you supply. This file holds none of their code.

$ git clone https://github.com/karpathy/nanoGPT ../nanoGPT
$ python tools/run_reference.py --impl nanogpt --repo ../nanoGPT --seeds 1337,1338,1339 --device cuda --out out/ref/nanogpt.json
$ python tools/run_reference.py --impl nanorwkv --repo ../nanoRWKV --seeds 1337,1338,1339 --device cuda --out out/ref/nanorwkv.json
$ python ablate.py --variants rwkv,gpt --report_only --reference nanoGPT=out/ref/nanogpt.json --reference nanoRWKV=out/ref/nanorwkv.json

The checkout's model.py must have nanoGPT's interface: a GPTConfig dataclass (the recipe's block_size,
vocab_size, n_layer, n_head, n_embd, dropout, bias, and head_size where it has that field), GPT(config),
forward(idx, targets) -> (logits, loss), configure_optimizers(weight_decay, learning_rate, betas,
device_type) and get_num_params(). It is imported with the checkout as the working directory (a model.py
may build a kernel from files beside it).

Everything else is train.py's, so the rows compare with ablate.py's: the recipe's data (data.load_tokens),
training batches (data.get_batch from a generator seeded with the seed), evaluation (eval_iters batches per
split from train.py's evaluation generators, the same at every evaluation), learning-rate schedule, gradient
clipping and float32 (TF32 matmuls allowed on CUDA, as nanoGPT sets them). Extra --key=value arguments
override the recipe as they do for ablate.py.

Writes --out (a temp file, renamed), the JSON `ablate.py --reference` reads: {"how", "params", "tokens",
"runs": [{"seed", "final_val", "final_train", "tok_s", "train_s", "wall_s", "curve"}]}; a seed already in
the file is replaced, the others kept. Prints one line per seed.
"""

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

IMPLS = {"nanorwkv": "nanoRWKV", "nanogpt": "nanoGPT"}


class ReferenceError(Exception):
    """Bad input: one line and a non-zero exit."""


def load_model_module(impl, repo):
    """The checkout's model.py as a module, imported from its own directory."""
    path = os.path.join(repo, "model.py")
    if not os.path.isfile(path):
        raise ReferenceError(f"--repo {repo}: no model.py there (a checkout of {IMPLS[impl]})")
    cwd = os.getcwd()
    name = f"reference_{impl}_model"
    try:
        os.chdir(repo)
        spec = importlib.util.spec_from_file_location(name, path)
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        os.chdir(cwd)
    missing = [a for a in ("GPTConfig", "GPT") if not hasattr(module, a)]
    if missing:
        raise ReferenceError(f"{path} has no {' or '.join(missing)}: not nanoGPT's interface")
    return module


def lr_at(it, cfg):
    """train.py's schedule: linear warm-up, cosine decay to min_lr at lr_decay_iters."""
    if not cfg["decay_lr"]:
        return cfg["learning_rate"]
    if it < cfg["warmup_iters"]:
        return cfg["learning_rate"] * (it + 1) / (cfg["warmup_iters"] + 1)
    if it >= cfg["lr_decay_iters"]:
        return cfg["min_lr"]
    ratio = (it - cfg["warmup_iters"]) / max(1, cfg["lr_decay_iters"] - cfg["warmup_iters"])
    return cfg["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg["learning_rate"] - cfg["min_lr"])


def run_seed(module, cfg, seed, device):
    """One training run of the reference model; returns its row for the JSON."""
    import torch
    from data import get_batch, load_tokens
    data_dir = os.path.abspath(cfg["data_dir"] or os.path.join(ROOT, "data", cfg["dataset"]))
    train_data, val_data, _ = load_tokens(data_dir, cfg["vocab_size"])
    splits = {"train": train_data, "val": val_data}
    B, T = cfg["batch_size"], cfg["block_size"]

    torch.manual_seed(seed)
    fields = {f.name for f in dataclasses.fields(module.GPTConfig)}
    keys = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "head_size")
    cwd = os.getcwd()
    try:
        os.chdir(os.path.dirname(module.__file__))
        model = module.GPT(module.GPTConfig(**{k: cfg[k] for k in keys if k in fields})).to(device)
    finally:
        os.chdir(cwd)
    device_type = "cuda" if "cuda" in device else "cpu"
    optimizer = model.configure_optimizers(cfg["weight_decay"], cfg["learning_rate"], (cfg["beta1"], cfg["beta2"]),
                                           device_type)

    @torch.no_grad()
    def evaluate():
        model.eval()
        out = {}
        for i, split in enumerate(["train", "val"]):
            gen = torch.Generator().manual_seed(seed + 7_919 * (i + 1))  # train.py's evaluation batches
            out[split] = statistics.fmean(model(*get_batch(splits[split], T, B, gen, device))[1].item()
                                          for _ in range(cfg["eval_iters"]))
        model.train()
        return out

    def sync():
        if device_type == "cuda":
            torch.cuda.synchronize(device)

    gen = torch.Generator().manual_seed(seed)  # train.py's training batches
    curve, step_s, train_s, t_start = [], [], 0.0, time.time()
    for it in range(cfg["max_iters"] + 1):
        if it % cfg["eval_interval"] == 0 or it == cfg["max_iters"]:
            losses = evaluate()
            curve.append([it, it * B * T, train_s, losses["train"], losses["val"]])
            print(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
        if it == cfg["max_iters"]:
            break
        sync()
        t0 = time.time()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, cfg)
        _, loss = model(*get_batch(splits["train"], T, B, gen, device))
        loss.backward()
        if cfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        step_s.append(time.time() - t0)
        train_s += step_s[-1]
        if not math.isfinite(loss.item()):
            raise ReferenceError(f"seed {seed}: non-finite loss at step {it + 1}")
    return {"seed": seed, "final_val": curve[-1][4], "final_train": curve[-1][3],
            "tok_s": statistics.median(B * T / s for s in step_s), "train_s": train_s,
            "wall_s": time.time() - t_start, "curve": curve}, model.get_num_params()


def write_json(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Run config/ablate_recipe.py on nanoRWKV's or nanoGPT's own model.py "
                                "(from --repo) and write the JSON ablate.py --reference reads. Extra --key=value "
                                "arguments override the recipe.", allow_abbrev=False)
    p.add_argument("--impl", required=True, choices=sorted(IMPLS), help="which project the checkout is")
    p.add_argument("--repo", required=True, help="the checkout: the directory holding its model.py")
    p.add_argument("--seeds", default="1337", help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: %(default)s)")
    p.add_argument("--out", default=None, help="the JSON to write (default: out/ref/<impl>.json)")
    return p.parse_known_args(argv)


def main(argv=None):
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ReferenceError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    for a in extra:
        if not a.startswith("--") or "=" not in a:
            raise ReferenceError(f"unexpected argument {a!r}: extra arguments are recipe --key=value overrides")
    module = load_model_module(args.impl, args.repo)
    import ablate
    try:
        cfg = ablate.resolve_config(ablate.train_defaults(), ablate.RECIPE, extra)
    except ablate.AblateError as e:
        raise ReferenceError(str(e)) from None
    if cfg["dtype"] != "float32" or cfg["gradient_accumulation_steps"] != 1:
        raise ReferenceError("the reference runs are float32 with one micro-step per step, as the recipe")
    import torch
    if "cuda" in args.device:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    out = args.out or os.path.join("out", "ref", f"{args.impl}.json")
    name = IMPLS[args.impl]
    device_name = torch.cuda.get_device_name(args.device) if "cuda" in args.device else "cpu"
    precision = "float32, TF32 matmuls" if "cuda" in args.device else "float32"
    data = {"how": f"{name}'s own model.py on the recipe, {device_name} ({precision}): tools/run_reference.py "
                   f"--impl {args.impl}" + (f" {' '.join(extra)}" if extra else ""),
            "params": None, "tokens": cfg["max_iters"] * cfg["batch_size"] * cfg["block_size"], "runs": []}
    if os.path.exists(out):
        try:
            with open(out) as f:
                old = json.load(f)
            data["runs"] = [r for r in old.get("runs", []) if r.get("seed") not in seeds]
        except (OSError, json.JSONDecodeError, AttributeError):
            raise ReferenceError(f"--out {out} exists and is not a reference JSON: give another path") from None
    from data import DataError
    for seed in seeds:
        try:
            run, data["params"] = run_seed(module, cfg, seed, args.device)
        except DataError as e:
            raise ReferenceError(str(e)) from None
        data["runs"] = sorted(data["runs"] + [run], key=lambda r: r["seed"])
        write_json(out, data)
        print(f"{name} seed {seed}: val {run['final_val']:.4f}, train {run['final_train']:.4f}, "
              f"{run['tok_s']:,.0f} tok/s, {run['train_s']:.1f} s training, {run['wall_s']:.1f} s in all -> {out}",
              flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ReferenceError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
