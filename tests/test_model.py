"""model.py: every block causal and batch-independent, recurrent == parallel, TinyMoE routing and aux loss, the fast
training paths (banded SWA, sorted MoE dispatch, any TimeMix chunk length, torch.compile) equal to the plain ones."""
import copy
import dataclasses
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from conftest import ROOT, V, randomize, tiny_config
from model import GPT, GPTConfig, LMHead, Linear, ChannelMix, ChannelMix7, CausalSelfAttention, KVCache, MicroRWKV, TimeMix, TimeMix7, \
    TinyMoE, apply_rotary, build_model, sliding_window_attention

# the kinds of model: MicroRWKV with RWKV-5 (x051a) or RWKV-7 (x070) blocks, and GPT (learned or rotary positions,
# with or without token shift)
KINDS = {"microrwkv": {}, "microrwkv-x070": {"rwkv_version": "x070"}, "gpt": {"model_type": "gpt"},
         "gpt-rotary": {"model_type": "gpt", "rotary": True}, "gpt-shift": {"model_type": "gpt", "token_shift": True}}


def block_output(block, x):
    out = block(x)
    return out[0] if isinstance(out, tuple) else out


BLOCKS = {
    "timemix": lambda c: TimeMix(c, layer_id=1),
    "channelmix": lambda c: ChannelMix(c, layer_id=1),
    "timemix7": lambda c: TimeMix7(c, layer_id=0),  # layer 0: it makes its own v_first
    "channelmix7": lambda c: ChannelMix7(c, layer_id=1),
    "swa": lambda c: CausalSelfAttention(c, n_kv_head=c.n_head, window_size=c.window_size),
    "gqa": lambda c: CausalSelfAttention(c, n_kv_head=c.n_kv_head),
    "moe": lambda c: TinyMoE(c),
}


@pytest.mark.parametrize("name", BLOCKS)
def test_block_is_causal_and_keeps_batch_rows_independent(name):
    config = tiny_config()
    block = randomize(BLOCKS[name](config))
    torch.manual_seed(1)
    x = torch.randn(3, 45, config.n_embd)
    y = block_output(block, x)
    t = 20
    x2 = x.clone()
    x2[1, t] += torch.randn(config.n_embd)
    y2 = block_output(block, x2)
    assert torch.equal(y2[:, :t], y[:, :t]), "an output before t changed"
    assert torch.equal(y2[0], y[0]) and torch.equal(y2[2], y[2]), "another batch row changed"
    assert not torch.allclose(y2[1, t], y[1, t]), "the changed token had no effect at all"


@pytest.mark.parametrize("kind", KINDS)
def test_model_is_causal_and_keeps_batch_rows_independent(kind):
    model = randomize(build_model(tiny_config(**KINDS[kind])))
    idx = torch.randint(0, V, (3, 45), generator=torch.Generator().manual_seed(2))
    logits, _ = model(idx, idx)
    t = 30
    idx2 = idx.clone()
    idx2[1, t] = (idx[1, t] + 1) % V
    logits2, _ = model(idx2, idx2)
    assert torch.equal(logits2[:, :t], logits[:, :t])
    assert torch.equal(logits2[0], logits[0]) and torch.equal(logits2[2], logits[2])
    assert not torch.allclose(logits2[1, t:], logits[1, t:])


def test_swa_sees_exactly_its_window():
    config = tiny_config()
    swa = randomize(BLOCKS["swa"](config))
    x = torch.randn(1, 30, config.n_embd)
    y = block_output(swa, x)
    x2 = x.clone()
    x2[0, 10] += 1.0
    y2 = block_output(swa, x2)
    W = config.window_size
    assert torch.equal(y2[0, 10 + W:], y[0, 10 + W:]), "a token outside the window was seen"
    assert not torch.allclose(y2[0, 10 + W - 1], y[0, 10 + W - 1]), "the window's oldest token was not seen"


def test_gqa_shares_narrow_key_value_projections():
    config = tiny_config()
    gqa = BLOCKS["gqa"](config)
    head_dim = config.n_embd // config.n_head
    assert gqa.key.weight.shape == (config.n_kv_head * head_dim, config.n_embd)
    assert gqa.value.weight.shape == (config.n_kv_head * head_dim, config.n_embd)


def feed(model, idx, pieces):
    """Logits of idx fed through forward_with_state in consecutive pieces of the given lengths."""
    state, out, start = None, [], 0
    for length in pieces:
        logits, state = model.forward_with_state(idx[:, start:start + length], state)
        out.append(logits)
        start += length
    assert start == idx.shape[1]
    return torch.cat(out, dim=1), state


@pytest.mark.parametrize("kind", KINDS)
def test_recurrent_equals_parallel(kind):
    model = randomize(build_model(tiny_config(**KINDS[kind])))
    T = 45  # > window_size (8), not a multiple of chunk_len (16)
    idx = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, _ = model(idx, idx)
        assert logits.shape == (2, T, V)
        for pieces in ([T], [1] * T, [5, 1, 17, 2, 20]):
            recurrent, _ = feed(model, idx, pieces)
            assert (recurrent - logits).abs().max().item() < 1e-4, pieces


def test_last_position_logits_without_targets():
    model = randomize(build_model(tiny_config()))
    idx = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        logits, loss = model(idx)
        full, _ = model(idx, idx)
    assert loss is None and logits.shape == (2, 1, V)
    assert torch.allclose(logits[:, 0], full[:, -1], atol=1e-5)


def naive_timemix(tm, x):
    """TimeMix token by token, straight from the recurrence in its docstring, written independently."""
    B, T, C = x.shape
    H, N = tm.n_head, tm.head_size
    w = torch.exp(-torch.exp(tm.time_decay))
    u = tm.time_faaaa
    S = torch.zeros(B, H, N, N, dtype=x.dtype)
    x_prev = torch.zeros(B, C, dtype=x.dtype)
    ys = []
    for t in range(T):
        xt = x[:, t]
        mix = lambda maa: xt + (x_prev - xt) * maa  # noqa: E731
        r = tm.receptance(mix(tm.time_maa_r)).view(B, H, N)
        k = tm.key(mix(tm.time_maa_k)).view(B, H, N)
        v = tm.value(mix(tm.time_maa_v)).view(B, H, N)
        g = torch.nn.functional.silu(tm.gate(mix(tm.time_maa_g)))
        y = torch.einsum("bhi,bhij->bhj", r, S) + torch.einsum("bhi,hi,bhi->bh", r, u, k)[..., None] * v
        S = w.view(1, H, 1, 1) * S + torch.einsum("bhi,bhj->bhij", k, v)
        ys.append(tm.output(tm.ln_x(y.reshape(B, C)) * g))
        x_prev = xt
    return torch.stack(ys, dim=1), S


def test_chunked_timemix_equals_naive_recurrence():
    config = tiny_config()
    tm = randomize(TimeMix(config, layer_id=1))
    x = torch.randn(2, 45, config.n_embd)
    with torch.no_grad():
        y, (_, S), _ = tm(x)
        y_naive, S_naive = naive_timemix(tm, x)
    assert (y - y_naive).abs().max().item() < 1e-4
    assert (S - S_naive).abs().max().item() < 1e-4


def test_chunked_timemix_in_float64_equals_naive_recurrence_to_rounding():
    """In float64 the chunked form computes in float64 (no silent float32): it meets the recurrence to 1e-10, and
    gradcheck passes through the chunks, the decay powers between them and the entering state."""
    config = tiny_config()
    tm = randomize(TimeMix(config, layer_id=1)).double()
    x = torch.randn(2, 45, config.n_embd, dtype=torch.float64)
    with torch.no_grad():
        y, (_, S), _ = tm(x)
        y_naive, S_naive = naive_timemix(tm, x)
    assert y.dtype == S.dtype == torch.float64
    assert ((y - y_naive).abs().max() / y_naive.abs().max()).item() < 1e-10
    assert ((S - S_naive).abs().max() / S_naive.abs().max()).item() < 1e-10
    tm.chunk_length = lambda T, device=None: 3  # 7 tokens: chunks of 3, 3 and 1
    x = torch.randn(1, 7, config.n_embd, dtype=torch.float64, requires_grad=True)
    S0 = torch.randn(1, tm.n_head, 8, 8, dtype=torch.float64, requires_grad=True)
    x_prev = torch.randn(1, config.n_embd, dtype=torch.float64)

    def y_and_state(x, S0):
        y, (_, S), _ = tm(x, (x_prev, S0))
        return y, S

    assert torch.autograd.gradcheck(y_and_state, (x, S0))


def test_timemix_state_is_float32_under_bf16_autocast():
    config = tiny_config()
    tm = randomize(TimeMix(config, layer_id=0))
    x = torch.randn(1, 20, config.n_embd)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, (_, S), _ = tm(x)
        _, (_, S_step), _ = tm.step(x[:, :1], (x[:, 0], S))
    assert S.dtype == torch.float32 and S_step.dtype == torch.float32


def test_moe_output_depends_only_on_chosen_experts():
    config = tiny_config(num_experts=4, num_active_experts=2)
    moe = randomize(TinyMoE(config))
    x = torch.randn(1, 6, config.n_embd)
    with torch.no_grad():
        y, _ = moe(x)
        chosen = moe.router(x[0]).topk(2, dim=-1).indices
        unchosen = sorted(set(range(4)) - set(chosen[0].tolist()))
        for e in unchosen:  # wreck an expert token 0 did not pick
            moe.experts[e].c_fc.weight.mul_(-7.0)
        y2, _ = moe(x)
        assert torch.equal(y2[0, 0], y[0, 0])
        moe.experts[chosen[0, 0]].c_fc.weight.mul_(-7.0)  # and now one it did
        y3, _ = moe(x)
        assert not torch.allclose(y3[0, 0], y[0, 0])


def test_moe_aux_loss_minimal_when_balanced_and_grows_with_imbalance():
    config = tiny_config(num_experts=4, num_active_experts=1)
    moe = TinyMoE(config)
    x = torch.randn(4, 16, config.n_embd)
    x[..., 0] = 1.0  # a feature every token has, for the router to favour expert 0 by
    losses = []
    with torch.no_grad():
        for skew in (0.0, 1.0, 3.0, 10.0):  # router pushed ever harder towards expert 0
            moe.router.weight.zero_()
            moe.router.weight[0, 0] = skew
            losses.append(moe(x)[1].item())
    assert losses[0] == pytest.approx(1.0, abs=1e-6)  # uniform routing: the minimum, 1
    assert losses == sorted(losses) and losses[-1] > 3.0  # grows towards E = 4


def test_moe_router_receives_gradient_and_aux_loss_is_in_the_loss():
    config = tiny_config(num_experts=4, num_active_experts=2, aux_loss_weight=0.5)
    model = randomize(build_model(config), scale=0.3)
    model.train()
    idx = torch.randint(0, V, (2, 20))
    logits, loss, aux = model(idx, idx, return_aux_loss=True)
    ce = torch.nn.functional.cross_entropy(logits.view(-1, V), idx.view(-1))
    assert loss.item() == pytest.approx(ce.item() + 0.5 * aux.item(), rel=1e-5)
    loss.backward()
    for block in model.blocks:
        assert block.moe.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("version", ["x051a", "x070"])
def test_pure_rwkv_and_swa_state_does_not_grow(version):
    config = tiny_config(block_size=32, use_gqa=False, use_moe=False, rwkv_version=version)
    model = randomize(MicroRWKV(config))
    assert model.blocks[0].swa is not None and model.blocks[0].gqa is None

    def state_bytes(state):
        if torch.is_tensor(state):
            return state.numel() * state.element_size()
        if isinstance(state, (list, tuple)):
            return sum(state_bytes(s) for s in state)
        if isinstance(state, dict):
            return sum(state_bytes(s) for s in state.values())
        return 0

    idx = torch.randint(0, V, (1, 2 * config.block_size))
    sizes, state = [], None
    with torch.no_grad():
        for t in range(idx.shape[1]):
            _, state = model.forward_with_state(idx[:, t:t + 1], state)
            sizes.append(state_bytes(state))
    assert sizes[9] == sizes[-1] > 0


def test_architecture_switches():
    pure = MicroRWKV(tiny_config(use_swa=False, use_gqa=False, use_moe=False))
    assert all(b.swa is None and b.gqa is None and b.moe is None for b in pure.blocks)
    sparse_attn = MicroRWKV(tiny_config(n_layer=4, attn_every=2))
    assert [b.swa is not None for b in sparse_attn.blocks] == [False, True, False, True]
    assert [b.gqa is not None for b in sparse_attn.blocks] == [False, True, False, True]
    with pytest.raises(ValueError, match="model_type"):
        build_model(tiny_config(model_type="lstm"))


def test_layers_pattern_places_swa_and_gqa_per_layer_and_overrides_the_switches():
    model = MicroRWKV(tiny_config(n_layer=4, layers="RSGA", use_swa=False, use_gqa=False))
    assert [(b.swa is not None, b.gqa is not None) for b in model.blocks] == [
        (False, False), (True, False), (False, True), (True, True)]
    # the window and the number of K/V heads are the config's, wherever the layer is
    assert model.blocks[1].swa.window_size == 8 and model.blocks[2].gqa.n_kv_head == 2
    # without a pattern, use_swa/use_gqa/attn_every keep their meaning
    old = MicroRWKV(tiny_config(n_layer=4, attn_every=2, use_swa=False))
    assert [(b.swa is not None, b.gqa is not None) for b in old.blocks] == [
        (False, False), (False, True), (False, False), (False, True)]


@pytest.mark.parametrize("kind", KINDS)
def test_generate_prefills_once_then_one_token_per_step(kind):
    model = randomize(build_model(tiny_config(**KINDS[kind], block_size=32)))
    calls = []
    original = model._forward
    model._forward = lambda idx, state, all_logits: calls.append(idx.shape[1]) or original(idx, state, all_logits)
    prompt = torch.randint(0, V, (2, 5))
    out = model.generate(prompt, max_new_tokens=40, temperature=0)  # 45 tokens > block_size
    assert out.shape == (2, 45) and torch.equal(out[:, :5], prompt)
    if kind not in ("gpt", "gpt-shift"):
        assert calls == [5] + [1] * 39
    else:  # learned positions: the cache is re-prefilled with half a block when it is full
        assert calls[0] == 5 and max(calls) <= 16 and len(calls) == 40


@pytest.mark.parametrize("decay_time", [False, True])
def test_weight_decay_groups(decay_time):
    model = build_model(tiny_config(n_layer=1, use_swa=False, use_gqa=False, use_moe=False, bias=True))
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu", decay_time=decay_time)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in opt.param_groups[0]["params"]}
    matrices = {"wte.weight"} | {f"blocks.0.{m}.weight" for m in (
        "tmix.receptance", "tmix.key", "tmix.value", "tmix.gate", "tmix.output",
        "cmix.key", "cmix.value", "cmix.receptance")}
    # time_faaaa is (H, N), a matrix by shape, but a per-channel bonus: decayed only on request
    assert decayed == (matrices | {"blocks.0.tmix.time_faaaa"} if decay_time else matrices)
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0
    assert len(opt.param_groups[1]["params"]) + len(decayed) == len(names)


def test_readme_table_config_builds_and_prints_its_size():
    """config/train_tinystories.py (the README table's model, plain Python as train.py reads it) builds, and
    `python model.py` prints its size: the figure saved in assets/model_size.txt."""
    cfg = {}
    exec((ROOT / "config" / "train_tinystories.py").read_text(), {}, cfg)
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    with torch.device("meta"):  # 156M parameters: no memory, no init
        n_params = build_model(GPTConfig(**{k: v for k, v in cfg.items() if k in fields})).get_num_params()
    out = subprocess.run([sys.executable, "model.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith(f"{n_params / 1e6:.2f}M parameters"), out.stdout
    assert out.stdout == (ROOT / "assets" / "model_size.txt").read_text().split("\n", 1)[1]


@pytest.mark.parametrize("k", [1, 2])
def test_router_learns_from_cross_entropy_alone(k):
    # top-1 with a renormalised gate would be p / p = 1: no gradient to the router from the LM loss
    model = randomize(build_model(tiny_config(num_experts=4, num_active_experts=k, aux_loss_weight=0.0)), scale=0.3)
    idx = torch.randint(0, V, (2, 20))
    _, loss = model(idx, idx)
    loss.backward()
    for block in model.blocks:
        assert block.moe.router.weight.grad.abs().sum() > 1e-6


def test_bf16_autocast_logits_stay_close_to_float32():
    """TimeMix's y is normalised (GroupNorm) in float32: rounding it to bf16 first loses what GroupNorm keeps
    when y has a large common offset per head, as a long-memory head summing aligned keys and values has."""
    model = randomize(build_model(tiny_config(use_swa=False, use_gqa=False, use_moe=False, n_embd=64, head_size=16,
                                              bias=True, block_size=256, chunk_len=32)))
    with torch.no_grad():
        for b in model.blocks:
            b.tmix.time_decay.fill_(-8.0)  # w = exp(-exp(-8)): the state sums nearly every token
            b.tmix.key.bias.fill_(1.0)
            b.tmix.receptance.bias.fill_(1.0)
            b.tmix.value.bias.fill_(30.0)
    idx = torch.randint(0, V, (2, 256), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, _ = model(idx, idx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, _ = model(idx, idx)
    # measured: 0.011 with the float32 GroupNorm (bf16 scores r k^T or not), 0.05 when y is rounded to bf16
    # before it, 0.093 when the chunk's products with v and the state also take bf16 operands
    assert ((low.float() - ref).norm() / ref.norm()).item() < 0.02


def storage_bytes(state):
    """Bytes of the distinct storages behind every tensor in a (nested) state: what it keeps alive."""
    tensors = []

    def walk(s):
        if torch.is_tensor(s):
            tensors.append(s)
        elif isinstance(s, (list, tuple)):
            for item in s:
                walk(item)
    walk(state)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


@pytest.mark.parametrize("version", ["x051a", "x070"])
def test_prefill_state_owns_only_its_own_bytes(version):
    model = randomize(MicroRWKV(tiny_config(use_gqa=False, use_moe=False, rwkv_version=version)))
    sizes = []
    with torch.no_grad():
        for T in (16, 4096):
            _, state = model.forward_with_state(torch.randint(0, V, (1, T)))
            sizes.append(storage_bytes(state))
    assert sizes[0] == sizes[1] > 0


def test_residual_projections_scale_with_the_number_of_sublayers():
    config = tiny_config(n_layer=3, n_embd=128, n_head=4, head_size=32, expert_dim=256, num_experts=4,
                         init_scheme="gpt2")
    model = MicroRWKV(config)
    expected = 0.02 / (3 * 5) ** 0.5  # 3 layers x 5 residual sub-layers; the 4 experts are one sub-layer
    for b in model.blocks:
        for w in (b.tmix.output.weight, b.cmix.value.weight, b.swa.output.weight, b.moe.experts[2].c_proj.weight):
            assert w.std().item() == pytest.approx(expected, rel=0.1)
        assert b.tmix.key.weight.std().item() == pytest.approx(0.02, rel=0.1)
    gpt = GPT(tiny_config(model_type="gpt", n_layer=3, n_embd=128))
    assert gpt.blocks[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / 6 ** 0.5, rel=0.1)


def test_default_rwkv_init_starts_each_rwkv_sublayer_as_the_identity():
    model = MicroRWKV(tiny_config(n_layer=3, n_embd=128, n_head=4, head_size=32, expert_dim=256))
    for b in model.blocks:
        assert b.tmix.output.weight.abs().max() == 0 and b.cmix.value.weight.abs().max() == 0
        assert b.cmix.receptance.weight.abs().max() == 0
        for w, gain in ((b.tmix.receptance.weight, 1.0), (b.tmix.key.weight, 0.1), (b.cmix.key.weight, 1.0)):
            small = w if w.shape[0] <= w.shape[1] else w.T  # orthogonal: orthonormal rows of the short side
            assert torch.allclose(small @ small.T, gain ** 2 * torch.eye(small.shape[0]), atol=1e-5)
        # attention keeps GPT-2's init, scaled by the number of residual sub-layers
        assert b.swa.output.weight.std().item() == pytest.approx(0.02 / (3 * 5) ** 0.5, rel=0.1)


def counted_linear_flops(model, T, B=2):
    """Forward FLOPs per token that torch's FlopCounterMode sees in the model's nn.Linear layers on a training
    pass: every projection, the experts only for the tokens routed to them, the LM head at all T positions."""
    idx = torch.randint(0, V, (B, T))
    with FlopCounterMode(display=False) as counter:
        model(idx, idx)
    linears = {f"{type(model).__name__}.{n}" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return sum(sum(ops.values()) for name, ops in counter.get_flop_counts().items() if name in linears) / (B * T)


def test_flops_per_token_by_hand():
    """flops_per_token = 3 x (the projections, as FlopCounterMode counts them in a real forward pass, plus the
    token mixing written out here from the equations: TimeMix's chunks, attention over its window or context)."""
    C, T, L, N, H, W = 32, 40, 16, 8, 4, 8  # tiny_config's sizes; T crosses chunks and the window
    tmix = H * (4 * L * N + 4 * N * N)  # per head and chunk of L: r k^T and (.) v; across chunks k^T v and r S
    swa, gqa = 4 * C * W, 4 * C * T  # q k^T and (.) v over the window / the whole context
    model = MicroRWKV(tiny_config())
    assert model.flops_per_token(T) == 3 * (counted_linear_flops(model, T) + 2 * (tmix + swa + gqa))
    sparse = MicroRWKV(tiny_config(n_layer=4, attn_every=2, use_moe=False))
    assert sparse.flops_per_token(T) == 3 * (counted_linear_flops(sparse, T) + 4 * tmix + 2 * (swa + gqa))
    gpt = GPT(tiny_config(model_type="gpt"))
    assert gpt.flops_per_token(T) == 3 * (counted_linear_flops(gpt, T) + 2 * 4 * C * T)


@pytest.mark.parametrize("overrides, needle", [
    (dict(n_embd=100, head_size=64), "head_size"),
    (dict(n_head=4, n_kv_head=3), "n_kv_head"),
    (dict(num_experts=2, num_active_experts=3), "num_active_experts"),
    (dict(num_active_experts=0), "num_active_experts"),
    (dict(window_size=0), "window_size"),
    (dict(n_embd=30, n_head=4), "n_head"),
    (dict(n_embd=36, n_head=12, head_size=6), "even"),
    (dict(n_layer=0), "n_layer"),
    (dict(chunk_len=0), "chunk_len"),
    (dict(rwkv_version="x070", chunk_len=65), "chunk_len=65 must be <= 64"),
    (dict(attn_every=0), "attn_every"),
    (dict(layers="RGR"), "layers"),  # tiny_config has 2 layers: needs 2 letters from RSGA
    (dict(layers="RX"), "layers"),
    (dict(layers="RG", use_gqa=False, n_kv_head=3), "n_kv_head"),  # a GQA layer from the pattern is checked too
    (dict(dropout=1.0), "dropout"),
    (dict(model_type="lstm"), "model_type"),
    (dict(init_scheme="xavier"), "init_scheme"),
    (dict(cmix_mult=0.0), "cmix_mult"),
    (dict(ln_emb_init=0.0), "ln_emb_init"),
    (dict(rotary=True), "rotary=True is for GPT"),
    (dict(token_shift=True), "token_shift=True is for GPT"),
    (dict(model_type="gpt", rotary=True, n_embd=36, n_head=12), "even"),
])
def test_config_refuses_impossible_architectures(overrides, needle):
    with pytest.raises(ValueError, match=needle):
        tiny_config(**overrides)


@pytest.mark.parametrize("gain", [1.0, 0.02])
def test_embedding_layernorm_starts_at_its_gain(gain):
    """ln_emb_init sets the scale of the normalised embedding at step 0: per-channel RMS = the gain."""
    model = MicroRWKV(tiny_config(n_embd=128, head_size=32, ln_emb_init=gain))
    x = model.ln_in(model.wte(torch.arange(V)))
    assert torch.allclose(x.pow(2).mean(-1).sqrt(), torch.full((V,), gain), rtol=0.02)  # 2%: LayerNorm's eps


def test_config_rules_only_apply_to_blocks_in_use():
    tiny_config(use_swa=False, window_size=0)
    tiny_config(use_gqa=False, n_kv_head=3)
    tiny_config(use_moe=False, num_active_experts=9)
    tiny_config(model_type="gpt", head_size=7)


def test_gpt_reprefill_gives_the_logits_of_a_fresh_prefill():
    model = randomize(GPT(tiny_config(model_type="gpt", block_size=16)))
    idx = torch.randint(0, V, (1, 17))
    with torch.no_grad():
        _, state = model.forward_with_state(idx[:, :16])
        assert state[0].pos == 16
        history = [idx[:, :16], idx[:, 16:]]
        logits, state = model.next_state(history, state)  # the cache is full: re-prefill half a block
        fresh, _ = model.forward_with_state(idx[:, -8:])
    assert state[0].pos == 8 and history[0].shape[1] == 8
    assert torch.allclose(logits[:, -1], fresh[:, -1], atol=1e-5)


def test_token_shift_gpt_is_gpt_at_shift_zero_and_carries_the_last_input():
    plain = randomize(GPT(tiny_config(model_type="gpt")))
    shifted = GPT(tiny_config(model_type="gpt", token_shift=True)).eval()
    missing, unexpected = shifted.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == [f"blocks.{i}.shift" for i in range(len(shifted.blocks))] and not unexpected
    idx = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for block in shifted.blocks:
            block.shift.zero_()
        assert torch.equal(shifted(idx, idx)[0], plain(idx, idx)[0])
        shifted.blocks[1].shift.fill_(0.5)  # half the previous token in layer 1's attention input only
        logits, state = shifted.forward_with_state(idx)
        assert not torch.allclose(logits, plain(idx, idx)[0])
    assert state[1].pos == 12 and state[1].x_prev.shape == (2, shifted.config.n_embd)


def test_rotary_gpt_has_no_learned_positions_and_no_end_at_block_size():
    model = randomize(GPT(tiny_config(model_type="gpt", rotary=True, block_size=16)))
    assert not hasattr(model, "wpe") and not any("wpe" in name for name, _ in model.named_parameters())
    idx = torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(4))  # 2.5 x block_size
    with torch.no_grad():
        logits, _ = model(idx, idx)
        recurrent, state = feed(model, idx, [7] + [1] * 33)
    assert state[0].pos == 40 and state[0].k.shape[2] == 40  # the whole context, no re-prefill
    assert (recurrent - logits).abs().max().item() < 1e-4
    # only offsets matter: a query and key moved together by 5 positions score the same
    attn = model.blocks[0].attn
    q, k = torch.randn(2, 1, 1, attn.head_dim).unbind()
    score = lambda shift: (apply_rotary(q, torch.tensor([9 + shift])) * apply_rotary(k, torch.tensor([3 + shift]))).sum()
    assert torch.allclose(score(0), score(5), atol=1e-5) and not torch.allclose(score(0), (q * k).sum(), atol=1e-3)


# ---------------------------------------------------------------------------------------------------- speed paths


def dense_swa(attn, x, state):
    """SWA written densely: the T x S mask of positions pos_q - W < pos_k <= pos_q, pos_k >= 0, over all keys."""
    B, T, C = x.shape
    H, D, W = attn.n_head, attn.head_dim, attn.window_size
    pos = 0 if state is None else state.pos
    q, k, v = (lin(x).view(B, T, H, D).transpose(1, 2) for lin in (attn.query, attn.key, attn.value))
    positions = torch.arange(pos, pos + T)
    q, k = apply_rotary(q, positions), apply_rotary(k, positions)
    if state is not None:
        k, v = torch.cat([state.k, k], dim=2), torch.cat([state.v, v], dim=2)
    S = k.shape[2]
    q_pos, k_pos = positions.view(T, 1), torch.arange(pos + T - S, pos + T).view(1, S)
    mask = (k_pos <= q_pos) & (k_pos > q_pos - W) & (k_pos >= 0)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.output(y.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("prefix", [0, 5, 13])  # no state; a state with empty cache slots (5 < W-1); a full cache
@pytest.mark.parametrize("times_W, plus", [(1, -1), (1, 0), (2, 3), (5, 0)], ids=["W-1", "W", "2W+3", "5W"])
def test_swa_banded_equals_dense_reference(times_W, plus, prefix):
    """Long inputs (T > 2W) take the banded O(T W) path: outputs and gradients (input, cache, weights) equal
    the dense masked attention's."""
    config = tiny_config()
    W = config.window_size
    T = times_W * W + plus
    attn = randomize(BLOCKS["swa"](config))
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, T, config.n_embd, generator=gen, requires_grad=True)
    state = None
    if prefix:
        with torch.no_grad():
            _, state = attn(torch.randn(2, prefix, config.n_embd, generator=gen))
        state = KVCache(state.k.requires_grad_(), state.v.requires_grad_(), state.pos)
    leaves = [x] + ([state.k, state.v] if state else []) + list(attn.parameters())
    y, cache = attn(x, state)
    y_ref = dense_swa(attn, x, state)
    assert (y - y_ref).abs().max().item() < 1e-5
    assert cache.k.shape[2] == W - 1 and cache.pos == prefix + T
    w = torch.randn(y.shape, generator=gen)
    for g, g_ref in zip(torch.autograd.grad((y * w).sum(), leaves), torch.autograd.grad((y_ref * w).sum(), leaves)):
        assert (g - g_ref).abs().max().item() < 1e-5
    # the banded function itself, also at the lengths where the module takes the dense path
    with torch.no_grad():
        q, k, v = (torch.randn(2, 4, n, 8, generator=gen) for n in (T, W - 1 + T, W - 1 + T))
        q_pos, k_pos = torch.arange(prefix, prefix + T).view(T, 1), torch.arange(prefix - W + 1, prefix + T).view(1, -1)
        mask = (k_pos <= q_pos) & (k_pos > q_pos - W) & (k_pos >= 0)
        dense = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        assert (sliding_window_attention(q, k, v, W, prefix) - dense).abs().max().item() < 1e-5
        if prefix == 0:  # no cache in front
            dense = F.scaled_dot_product_attention(q, k[:, :, W - 1:], v[:, :, W - 1:], attn_mask=mask[:, W - 1:])
            assert (sliding_window_attention(q, k[:, :, W - 1:], v[:, :, W - 1:], W) - dense).abs().max().item() < 1e-5


def reference_moe(moe, x):
    """TinyMoE's forward as it was first written: each expert scans `chosen` for its tokens, gathers them and
    scatter-adds its output."""
    B, T, C = x.shape
    E, K = moe.num_experts, moe.num_active
    x = x.reshape(B * T, C)
    probs = F.softmax(moe.router(x).float(), dim=-1)
    gates, chosen = probs.topk(K, dim=-1)
    if K > 1:
        gates = gates / gates.sum(-1, keepdim=True)
    y = torch.zeros_like(x)
    for e, expert in enumerate(moe.experts):
        token, slot = torch.where(chosen == e)
        if token.numel() > 0:
            y.index_add_(0, token, expert(x[token]) * gates[token, slot].unsqueeze(-1).to(x.dtype))
    share = F.one_hot(chosen, E).sum(dim=(0, 1)).float() / (B * T * K)
    return y.view(B, T, C), E * (share * probs.mean(0)).sum()


@pytest.mark.parametrize("k", [1, 2, 4])
def test_moe_sorted_dispatch_equals_per_expert_reference(k):
    moe = randomize(TinyMoE(tiny_config(num_experts=4, num_active_experts=k)))
    x = torch.randn(3, 40, moe.router.in_features, generator=torch.Generator().manual_seed(4), requires_grad=True)
    leaves = [x] + list(moe.parameters())
    w = torch.randn(3, 40, x.shape[-1])
    outs = [moe(x), reference_moe(moe, x)]
    (y, aux), (y_ref, aux_ref) = outs
    assert (y - y_ref).abs().max().item() < 1e-5 and abs(aux.item() - aux_ref.item()) < 1e-6
    grads = [torch.autograd.grad((y_ * w).sum() + aux_, leaves, allow_unused=True) for y_, aux_ in outs]
    for g, g_ref in zip(*grads):
        assert (g is None) == (g_ref is None) and (g is None or (g - g_ref).abs().max().item() < 1e-5)


@pytest.mark.parametrize("L", [1, 3, 8, 16, 45, 64])
def test_timemix_any_chunk_length_gives_the_same_result(L):
    config = tiny_config()
    tm = randomize(TimeMix(config, layer_id=1))
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 45, config.n_embd, generator=gen)
    state = (torch.randn(2, config.n_embd, generator=gen), torch.randn(2, tm.n_head, 8, 8, generator=gen))
    with torch.no_grad():
        y, (_, S), _ = tm(x, state)  # the chunk length chunk_length(45) picks
        tm.chunk_length = lambda T, device=None: L
        y2, (_, S2), _ = tm(x, state)
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()  # float32 rounding of values up to ~10
    assert rel(y2, y) < 1e-5 and rel(S2, S) < 1e-5


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 8, 17])
def test_linear_decoding_form_equals_linear(rows, dtype, bias):
    """Linear (LMHead's base) computes one row as W x and a few as W x^T: x W^T + b (in float32), same shape."""
    head = Linear(64, 1000, bias=bias).to(dtype)
    if bias:
        nn.init.normal_(head.bias, std=1.0)
    x = torch.randn(rows, 1, 64).to(dtype)
    want = F.linear(x.float(), head.weight.float(), head.bias.float() if bias else None)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: products accumulate in float32, rounded once at the end
    assert head(x).dtype == dtype and head(x).shape == (rows, 1, 1000)
    assert torch.allclose(head(x).float(), want, rtol=tol, atol=tol * want.abs().max().item())


@pytest.mark.parametrize("rows", [1, 8, 17])
def test_lm_head_returns_the_autocast_dtype_on_every_path(rows):
    """float32 weights under bf16 autocast: bf16 logits for one row (matrix-vector), a few rows and many."""
    head = LMHead(64, 1000, bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(torch.randn(rows, 1, 64)).dtype == torch.bfloat16


def test_timemix_chunk_length_rule():
    tm = TimeMix(tiny_config(n_embd=128, head_size=64, chunk_len=128), layer_id=0)
    assert [tm.chunk_length(T) for T in (1, 45, 256)] == [1, 45, 64]  # up to max(head_size, 32)
    tm = TimeMix(tiny_config(n_embd=128, head_size=32, chunk_len=16), layer_id=0)
    assert [tm.chunk_length(T) for T in (1, 45, 256)] == [1, 16, 16]  # never above chunk_len
    tm = TimeMix(tiny_config(n_embd=128, head_size=32, chunk_len=128), layer_id=0)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert [tm.chunk_length(256, d) for d in (cpu, gpu)] == [32, 64]  # longer chunks on a GPU


@pytest.mark.parametrize("k", [1, 2, 4])
def test_moe_dense_form_equals_sorted_dispatch(k):
    """TinyMoE._dense (what torch.compile traces: every expert on every token, gated) == _dispatch, and the counts."""
    moe = randomize(TinyMoE(tiny_config(num_active_experts=k)))
    x = torch.randn(40, 32)
    gates, chosen = F.softmax(moe.router(x), dim=-1).topk(k, dim=-1)
    with torch.no_grad():
        (y, counts), (y_ref, counts_ref) = moe._dense(x, gates, chosen), moe._dispatch(x, gates, chosen)
    assert torch.allclose(y, y_ref, atol=1e-6) and torch.equal(counts, counts_ref)


@pytest.mark.parametrize("overrides", [dict(use_swa=False, use_gqa=False, use_moe=False), {},
                                       dict(use_swa=False, use_gqa=False, use_moe=False, rwkv_version="x070"),
                                       dict(rwkv_version="x070"), dict(model_type="gpt")],
                         ids=["x051a-pure", "all-five-blocks", "x070-pure", "x070-all-five", "gpt"])
def test_torch_compile_traces_a_training_step_without_graph_breaks(overrides):
    """torch._dynamo.explain (tracing only, no compiler): forward + loss of every layout is one graph."""
    model = build_model(tiny_config(n_layer=2, **overrides)).train()
    idx = torch.randint(0, V, (2, 45))
    explanation = torch._dynamo.explain(lambda idx: model(idx, idx)[1])(idx)
    assert explanation.graph_break_count == 0, [str(b.reason)[:200] for b in explanation.break_reasons]


@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                    reason="torch.compile's CPU backend (inductor) needs a C++ compiler")
@pytest.mark.parametrize("overrides", [{}, dict(rwkv_version="x070", use_swa=False, use_gqa=False, use_moe=False)],
                         ids=["all-five-blocks", "x070-pure"])
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside inductor
def test_torch_compile_trains_like_eager(overrides):
    """Three AdamW steps of a compiled model have the losses of the same steps in eager mode."""
    torch.manual_seed(0)
    eager = randomize(build_model(tiny_config(n_layer=1, **overrides)), scale=0.5).train()
    twin = copy.deepcopy(eager)
    idx = torch.randint(0, V, (3, 4, 45), generator=torch.Generator().manual_seed(5))
    losses = []
    for model, forward in ((eager, eager), (twin, torch.compile(twin))):
        opt = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu")
        losses.append([])
        for step in range(3):
            _, loss = forward(idx[step], idx[step])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[-1].append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
    assert losses[0][2] < losses[0][0]  # it did train
