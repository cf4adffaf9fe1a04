"""export_rwkv.py: a pure-RWKV MicroRWKV exported to the official .pth format runs in the official runtime
(the `rwkv` pip package) with our logits, in sequence mode and token by token; what the format cannot hold
(SWA, GQA, MoE, GPT, Linear biases) and bad files are refused with a one-line error and no output."""
import dataclasses
import functools
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import export_rwkv
from model import GPT, GPTConfig, MicroRWKV

ROOT = Path(__file__).resolve().parents[1]
T = 40  # > chunk_len=16 and not a multiple of it: full chunks, a remainder, and chunk-crossing state
RTOL = 1e-4
# the RWKV-7 runtime scripts its functions with TorchScript, which torch deprecates
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning")


@pytest.fixture(autouse=True)
def rwkv_env(monkeypatch):
    """The runtime reads these at import and again when it builds and runs a model: no JIT, no CUDA."""
    monkeypatch.setenv("RWKV_JIT_ON", "0")
    monkeypatch.setenv("RWKV_CUDA_ON", "0")


@functools.cache
def runtime(v7=False):
    """The official runtime's rwkv/model.py, imported fresh: it reads RWKV_V7_ON at import time (and then
    names RWKV-7's class RWKV), so RWKV-5 and RWKV-7 each get their own copy of the module."""
    path = Path(importlib.util.find_spec("rwkv").submodule_search_locations[0]) / "model.py"
    saved = os.environ.get("RWKV_V7_ON")
    os.environ["RWKV_V7_ON"] = "1" if v7 else "0"
    try:
        name = "rwkv_runtime_v7" if v7 else "rwkv_runtime_v5"
        spec = importlib.util.spec_from_file_location(name, path)
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        os.environ.pop("RWKV_V7_ON") if saved is None else os.environ.__setitem__("RWKV_V7_ON", saved)
    return module


def small_config(**kw):
    base = dict(rwkv_version="x051a", n_layer=3, n_embd=128, head_size=32, vocab_size=512, chunk_len=16, block_size=64,
                bias=False, dropout=0.0, use_swa=False, use_gqa=False, use_moe=False, n_head=4, n_kv_head=2, window_size=8,
                num_experts=2, num_active_experts=1, expert_dim=64)
    return GPTConfig(**{**base, **kw})


@torch.no_grad()
def perturb(model, seed=1):
    """Every parameter moved off its initialisation to a real scale, decays spread from ~0.99 to ~0.07 per
    step, token-shift mixes anywhere in [0, 1]: a wrong mapping cannot pass."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        noise = torch.randn(p.shape, generator=g)
        if name == "wte.weight":
            p.copy_(noise)
        elif leaf in ("time_decay", "w0"):  # x051a: w = exp(-exp(d)); x070: w = exp(-e^-0.5 sigmoid(w0 + ...))
            spread = torch.linspace(-5.0, 1.0, p.numel()) if leaf == "time_decay" else torch.linspace(-6, 3, p.numel())
            p.copy_(spread[torch.randperm(p.numel(), generator=g)].view(p.shape) + 0.1 * noise)
        elif leaf.startswith("time_maa") or leaf.startswith("x_"):
            p.copy_(torch.rand(p.shape, generator=g))
        elif p.squeeze().ndim == 2 and leaf != "r_k" and "time_" not in leaf:  # a matrix: keep activations O(1)
            fan_in = p.shape[1] if leaf == "weight" else p.shape[0]  # nn.Linear (out, in); LoRA x @ w (in, out)
            p.add_(noise / fan_in ** 0.5)
        else:  # norms, biases, bonus u, a0, v0, k_k, k_a, r_k
            p.add_(0.3 * noise)
    return model


def save_checkpoint(model, path):
    """As train.py writes it (less the optimizer and RNG states, which the export ignores)."""
    torch.save({"model": model.state_dict(), "model_args": dataclasses.asdict(model.config), "iter_num": 7,
                "best_val_loss": 1.0}, path)


def export(tmp_path, *extra, name="ckpt", output="model.pth"):
    export_rwkv.main(["--out_dir", str(tmp_path), "--model_name", name, "--output", str(tmp_path / output), *extra])
    return tmp_path / output


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@torch.no_grad()
def compare_with_runtime(model, rt, tokens):
    """Max relative logit error of the runtime against our model: sequence mode, token by token (feeding
    its state back), and a sequence-mode prefill continued token by token."""
    idx = torch.tensor([tokens])
    ours = model.forward_with_state(idx)[0][0]  # parallel (chunked) form
    state, ours_steps = None, []
    for t in range(len(tokens)):
        logits, state = model.forward_with_state(idx[:, t:t + 1], state)  # recurrent form
        ours_steps.append(logits[0, 0])
    assert rel_err(torch.stack(ours_steps), ours) < RTOL  # our two forms agree: the reference is sound

    errors = {}
    seq, _ = rt.forward(tokens, None, full_output=True)
    assert seq.shape == ours.shape
    errors["sequence"] = rel_err(seq, ours)
    state, steps = None, []
    for tok in tokens:
        logits, state = rt.forward([tok], state)
        steps.append(logits)
    errors["token by token"] = rel_err(torch.stack(steps), ours)
    n = 23
    last, state = rt.forward(tokens[:n], None)  # prefill: last position only
    steps = [last]
    for tok in tokens[n:]:
        logits, state = rt.forward([tok], state)
        steps.append(logits)
    errors["prefill + steps"] = rel_err(torch.stack(steps), ours[n - 1:])
    print({k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) < RTOL, errors
    return errors


def tokens(vocab_size, seed=2):
    return torch.randint(0, vocab_size, (T,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "layernorm-bias"])
def test_x051a_exports_as_rwkv_5_2_with_our_logits(tmp_path, bias):
    model = perturb(MicroRWKV(small_config(bias=bias))).eval()
    if bias:  # the format has LayerNorm but no Linear biases: all-zero ones are dropped, LayerNorm ones kept
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.Linear) and m.bias is not None:
                    m.bias.zero_()
    save_checkpoint(model, tmp_path / "ckpt.pt")
    path = export(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "model.pth"]  # no temporary file left behind

    w = torch.load(path, weights_only=True)
    C, H, N = 128, 4, 32
    assert not any("time_maa" in k for k in w)  # a time_maa key would make the runtime read it as RWKV-6
    assert w["blocks.0.att.time_decay"].shape == w["blocks.0.att.time_faaaa"].shape == (H, N)
    assert w["blocks.2.att.time_mix_g"].shape == w["blocks.1.ffn.time_mix_r"].shape == (1, 1, C)
    assert torch.equal(w["head.weight"], w["emb.weight"])
    assert w["blocks.0.ln0.bias"].abs().sum() > 0 if bias else torch.equal(w["ln_out.bias"], torch.zeros(C))

    rt = runtime().RWKV(model=str(path.with_suffix("")), strategy="cpu fp32")
    assert rt.version == 5.2 and rt.args.n_head == H and rt.args.n_layer == 3
    compare_with_runtime(model, rt, tokens(512))


def test_x070_exports_as_rwkv_7_with_our_logits(tmp_path):
    model = perturb(MicroRWKV(small_config(rwkv_version="x070"))).eval()
    save_checkpoint(model, tmp_path / "ckpt.pt")
    path = export(tmp_path)
    w = torch.load(path, weights_only=True)
    assert w["blocks.0.att.r_k"].shape == (4, 32) and "blocks.0.att.v0" not in w and "blocks.1.att.v0" in w
    rt = runtime(v7=True).RWKV(model=str(path.with_suffix("")), strategy="cpu fp32")
    assert (rt.n_head, rt.head_size, rt.n_layer) == (4, 32, 3)
    compare_with_runtime(model, rt, tokens(512))


def test_x070_layout_loads_in_the_rwkv_7_runtime(tmp_path):
    """A checkpoint written by hand with our parameter names and RWKV-LM's RWKV-7 shapes (not by our model, so
    a name or shape our model and export share wrongly cannot pass) loads in our model, exports to a file the
    RWKV-7 runtime loads, and the runtime's logits equal our model's."""
    L, C, N, V, D = 2, 64, 32, 256, 32  # D: the LoRA rank RWKV-LM gives C = 64
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g)
    sd = {"wte.weight": r(V, C), "ln_in.weight": 1 + 0.1 * r(C), "ln_f.weight": 1 + 0.1 * r(C)}
    for i in range(L):
        b, t, c = f"blocks.{i}.", f"blocks.{i}.tmix.", f"blocks.{i}.cmix."
        sd.update({b + "ln_tmix.weight": 1 + 0.1 * r(C), b + "ln_cmix.weight": 1 + 0.1 * r(C)})
        sd.update({t + n: torch.rand(1, 1, C, generator=g) for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")})
        sd.update({t + n: 0.3 * r(1, 1, C) for n in ("w0", "a0", "v0", "k_k", "k_a")})
        for n in "wavg":
            sd.update({t + n + "1": r(C, D) / C ** 0.5, t + n + "2": r(D, C) / D ** 0.5})
        sd.update({t + n + ".weight": r(C, C) / C ** 0.5 for n in ("receptance", "key", "value", "output")})
        sd.update({t + "r_k": 0.3 * r(C // N, N), t + "ln_x.weight": 1 + 0.1 * r(C), t + "ln_x.bias": 0.1 * r(C)})
        sd.update({c + "x_k": torch.rand(1, 1, C, generator=g), c + "key.weight": r(4 * C, C) / C ** 0.5,
                   c + "value.weight": r(C, 4 * C) / (4 * C) ** 0.5})
    sd["lm_head.weight"] = sd["wte.weight"]
    args = dict(model_type="microrwkv", rwkv_version="x070", use_swa=False, use_gqa=False, use_moe=False,
                n_layer=L, n_embd=C, head_size=N, vocab_size=V)
    torch.save({"model": sd, "model_args": args}, tmp_path / "ckpt.pt")
    path = export(tmp_path)
    w = torch.load(path, weights_only=True)
    assert "blocks.0.att.v0" not in w and torch.equal(w["blocks.1.att.v2"], sd["blocks.1.tmix.v2"])
    assert torch.equal(w["blocks.1.att.key.weight"], sd["blocks.1.tmix.key.weight"])  # the runtime transposes

    rt = runtime(v7=True).RWKV(model=str(path.with_suffix("")), strategy="cpu fp32")
    assert (rt.n_head, rt.head_size, rt.n_layer, rt.n_embd) == (C // N, N, L, C)
    model = MicroRWKV(GPTConfig(**args)).eval()
    model.load_state_dict(sd)  # strict: every name and shape of the hand-written layout is ours
    assert compare_with_runtime(model, rt, tokens(V))


HYBRIDS = {
    "swa": (dict(use_swa=True), "sliding-window attention (use_swa=True)"),
    "gqa": (dict(use_gqa=True), "grouped-query attention (use_gqa=True)"),
    "moe": (dict(use_moe=True), "mixture of experts (use_moe=True)"),
    "gpt": (dict(model_type="gpt"), "model_type='gpt'"),
}


def refused(tmp_path, capsys, named):
    with pytest.raises(SystemExit) as e:
        export(tmp_path)
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1 and named in err, err
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no output, no temporary file


@pytest.mark.parametrize("kind", HYBRIDS)
def test_refuses_what_the_format_cannot_hold(tmp_path, capsys, kind):
    overrides, named = HYBRIDS[kind]
    config = small_config(n_layer=2, n_embd=64, **overrides)
    save_checkpoint((GPT if kind == "gpt" else MicroRWKV)(config), tmp_path / "ckpt.pt")
    refused(tmp_path, capsys, named)


@pytest.mark.parametrize("kind", ["learned_pos", "no ln_emb"])
def test_refuses_other_embeddings(tmp_path, capsys, kind):
    """A learned position embedding, or no LayerNorm on the embedding (the runtime always applies ln0)."""
    model = MicroRWKV(small_config(n_layer=1, n_embd=64))
    sd, args = model.state_dict(), dataclasses.asdict(model.config)
    if kind == "learned_pos":
        sd["wpe.weight"], args["learned_pos"] = torch.randn(64, 64), True
    else:
        del sd["ln_in.weight"]
        args["ln_emb"] = False
    torch.save({"model": sd, "model_args": args}, tmp_path / "ckpt.pt")
    refused(tmp_path, capsys, "learned_pos=True" if kind == "learned_pos" else "ln_emb=False")


def test_cli_error_is_one_line_without_traceback(tmp_path):
    save_checkpoint(MicroRWKV(small_config(n_layer=2, n_embd=64, use_swa=True, use_moe=True)), tmp_path / "ckpt.pt")
    out = tmp_path / "model.pth"
    p = subprocess.run([sys.executable, "export_rwkv.py", "--out_dir", str(tmp_path), "--model_name", "ckpt",
                        "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stdout == "" and "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: ")
    assert "sliding-window attention (use_swa=True)" in p.stderr and "mixture of experts (use_moe=True)" in p.stderr
    assert not out.exists()


def test_bad_input_and_overwrite(tmp_path, capsys):
    def fails(*args, name="ckpt", output="model.pth"):
        with pytest.raises(SystemExit) as e:
            export(tmp_path, *args, name=name, output=output)
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1
        return err

    assert "no checkpoint" in fails(name="missing")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "is not a MicroRWKV checkpoint" in fails(name="junk")
    torch.save({"weights": 1}, tmp_path / "odd.pt")
    assert "is not a MicroRWKV checkpoint" in fails(name="odd")
    assert "must end in .pth" in fails(output="model.bin")

    model = MicroRWKV(small_config(n_layer=1, n_embd=64, bias=True))  # Linear biases init to zero: dropped
    with torch.no_grad():
        model.blocks[0].tmix.key.bias.fill_(0.5)
    save_checkpoint(model, tmp_path / "ckpt.pt")
    assert "Linear biases (bias=True: blocks.0.tmix.key.bias)" in fails()
    assert not (tmp_path / "model.pth").exists()

    save_checkpoint(MicroRWKV(small_config(n_layer=1, n_embd=64)), tmp_path / "ckpt.pt")
    path = export(tmp_path)
    first = path.read_bytes()
    assert "exists; pass --force" in fails()
    assert path.read_bytes() == first
    save_checkpoint(perturb(MicroRWKV(small_config(n_layer=1, n_embd=64))), tmp_path / "ckpt.pt")
    export(tmp_path, "--force", "--dtype", "bf16")
    w = torch.load(path, weights_only=True)
    assert path.read_bytes() != first and w["emb.weight"].dtype == torch.bfloat16
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "junk.pt", "model.pth", "odd.pt"]
