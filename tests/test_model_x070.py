"""model.py's RWKV-7 blocks (rwkv_version="x070"): chunked TimeMix7 == a naive recurrence written here == its own
step == the official `rwkv` runtime; ChannelMix7 == the runtime; gradients, autocast, extreme decays."""
import os
import warnings
from types import SimpleNamespace

import pytest
import torch

from model import ChannelMix7, GPTConfig, MicroRWKV, TimeMix7

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

C, T = 128, 45  # 45 = 2 chunks of 16 + 13: the last chunk is padded


def config(head_size=32, chunk_len=16, n_layer=4):
    return SimpleNamespace(n_embd=C, head_size=head_size, n_layer=n_layer, chunk_len=chunk_len, dropout=0.0)


def randomize(m, seed=0):
    """Weights of real scale: the init's zero LoRA factors and zero output would hide most of the block.
    Decay bases spread over (-8, 4) give per-token decays from ~0.9998 (slow) down to ~0.55 (the fastest
    RWKV-7 allows); every LoRA changes its target by O(1); Linear maps keep activations at unit scale."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=gen)
    randn = lambda *shape: torch.randn(*shape, generator=gen)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(".weight") and p.dim() == 2:  # nn.Linear: (out, in)
                p.copy_(randn(*p.shape) / p.shape[1] ** 0.5)
            elif p.dim() == 2 and name != "r_k":  # LoRA factor: x @ p, (in, out)
                p.copy_(randn(*p.shape) / p.shape[0] ** 0.5)
            elif name.startswith("x_"):
                p.copy_(rand(*p.shape))
            elif name == "w0":
                p.copy_(-8 + 12 * rand(*p.shape))
            elif name == "k_k":
                p.copy_(0.7 + 0.3 * randn(*p.shape))
            elif name == "k_a":
                p.copy_(1 + 0.3 * randn(*p.shape))
            elif name == "ln_x.weight":
                p.copy_(1 + 0.3 * randn(*p.shape))
            else:  # a0, v0, r_k, ln_x.bias
                p.copy_(0.5 * randn(*p.shape))
    return m.eval()


def random_state(B, H, N, seed=5):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, generator=gen), torch.randn(B, H, N, N, generator=gen) * 0.5


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def naive(m, x, state=None, v_first=None):
    """TimeMix7 from its equations, one token at a time, in x's dtype: (y, (x_prev, S), v_first)."""
    B, T_, _ = x.shape
    H, N = m.n_head, m.head_size
    p = {n: t.to(x.dtype) for n, t in m.named_parameters()}
    vec = lambda n: p[n].reshape(C)
    x_prev = x.new_zeros(B, C) if state is None else state[0].to(x.dtype)
    S = x.new_zeros(B, H, N, N) if state is None else state[1].to(x.dtype)
    ys, v_firsts = [], []
    for t in range(T_):
        xt = x[:, t]
        mixed = {c: torch.lerp(xt, x_prev, vec("x_" + c)) for c in "rwkvag"}
        r = mixed["r"] @ p["receptance.weight"].T
        k = mixed["k"] @ p["key.weight"].T
        v = mixed["v"] @ p["value.weight"].T
        w = torch.exp(-0.606531 * torch.sigmoid(vec("w0") + torch.tanh(mixed["w"] @ p["w1"]) @ p["w2"]))
        a = torch.sigmoid(vec("a0") + mixed["a"] @ p["a1"] @ p["a2"])
        g = torch.sigmoid(mixed["g"] @ p["g1"]) @ p["g2"]
        kk = (k * vec("k_k")).view(B, H, N)
        kk = kk / kk.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        k = k * (1 + (a - 1) * vec("k_a"))
        if m.layer_id == 0:
            v_firsts.append(v)
        else:
            v = v + (v_first[:, t].to(x.dtype) - v) * torch.sigmoid(vec("v0") + mixed["v"] @ p["v1"] @ p["v2"])
        r, w, k, v, a = (z.view(B, H, N) for z in (r, w, k, v, a))
        # S (value, key): decay key columns, delta-rule correction along kk, write v under k
        S = S * w.unsqueeze(-2) - torch.einsum("bhvi,bhi,bhj->bhvj", S, kk, kk * a) + torch.einsum("bhv,bhk->bhvk", v, k)
        y = torch.einsum("bhvk,bhk->bhv", S, r)
        mean, var = y.mean(-1, keepdim=True), y.var(-1, unbiased=False, keepdim=True)
        y = ((y - mean) / torch.sqrt(var + 64e-5)).reshape(B, C) * p["ln_x.weight"] + p["ln_x.bias"]
        y = y + ((r * k * p["r_k"]).sum(-1, keepdim=True) * v).reshape(B, C)
        ys.append((y * g) @ p["output.weight"].T)
        x_prev = xt
    v_first = torch.stack(v_firsts, 1) if m.layer_id == 0 else v_first
    return torch.stack(ys, 1), (x_prev, S), v_first


def make(layer_id, head_size=32, chunk_len=16, seed=0):
    return randomize(TimeMix7(config(head_size, chunk_len), layer_id), seed)


def inputs(B=2, T_=T, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, T_, C, generator=gen), torch.randn(B, T_, C, generator=gen)  # x, v_first


# ---------------------------------------------------------------------------------------------------- 1


@pytest.mark.parametrize("layer_id,head_size", [(0, 32), (2, 32), (2, 64)])
@pytest.mark.parametrize("from_state", [False, True])
def test_chunked_forward_matches_naive_recurrence(layer_id, head_size, from_state):
    m = make(layer_id, head_size)
    x, v_first = inputs()
    state = random_state(2, m.n_head, head_size) if from_state else None
    vf_in = None if layer_id == 0 else v_first
    with torch.no_grad():
        y, (xp, S), vf = m(x, state, vf_in)
        y_ref, (xp_ref, S_ref), vf_ref = naive(m, x.double(), state, vf_in)
        assert rel(y, y_ref.float()) < 1e-4
        assert rel(S, S_ref.float()) < 1e-4 and S.dtype == torch.float32
        assert torch.equal(xp, x[:, -1]) and torch.allclose(vf, vf_ref.float(), atol=1e-5)
        # the same algorithm in float64 agrees with the recurrence to rounding: no approximation anywhere
        m64 = make(layer_id, head_size).double()
        state64 = None if state is None else (state[0].double(), state[1].double())
        y64, (_, S64), _ = m64(x.double(), state64, None if vf_in is None else vf_in.double())
        assert rel(y64, y_ref) < 1e-10 and rel(S64, S_ref) < 1e-10


# ---------------------------------------------------------------------------------------------------- 2


@pytest.mark.parametrize("layer_id", [0, 2])
def test_forward_equals_step_equals_uneven_pieces(layer_id):
    m = make(layer_id)
    x, v_first = inputs()
    vf_in = None if layer_id == 0 else v_first
    with torch.no_grad():
        y, (xp, S), vf = m(x, None, vf_in)
        for sizes in ([1] * T, [5, 1, 17, 2, 20]):
            state, ys, vfs, t = None, [], [], 0
            for size in sizes:
                piece = slice(t, t + size)
                step = m.step if size == 1 else m  # forward itself also steps a single token with a state
                y_p, state, vf_p = step(x[:, piece], state, None if vf_in is None else vf_in[:, piece])
                ys.append(y_p)
                vfs.append(vf_p)
                t += size
            assert rel(torch.cat(ys, 1), y) < 1e-5
            assert rel(state[1], S) < 1e-5 and torch.equal(state[0], xp)
            assert torch.allclose(torch.cat(vfs, 1), vf, atol=1e-6)


@pytest.mark.parametrize("chunk_len", [1, 3, 8, 32, 64])
def test_any_chunk_length_gives_the_same_result(chunk_len):
    x, v_first = inputs(T_=150)  # 64: 3 chunks, the last one padded; 1: 150 chunks, an 8-step scan
    state = random_state(2, 4, 32)
    with torch.no_grad():
        y, (_, S), _ = make(2)(x, state, v_first)
        m = make(2, chunk_len=chunk_len)
        y2, (_, S2), _ = m(x, state, v_first)
    assert m.chunk_len == chunk_len  # the length asked for is the length that runs
    assert rel(y2, y) < 1e-5 and rel(S2, S) < 1e-5


def test_returned_state_owns_its_memory():
    m = make(0)
    x, _ = inputs()
    for out in (m(x), m.step(x[:, :1]), ChannelMix7(config(), 0)(x)):
        x_prev = out[1][0] if isinstance(out[1], tuple) else out[1]
        assert x_prev.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()


# ---------------------------------------------------------------------------------------------------- 3

# the official runtime (pip package rwkv): set up for x070 on CPU before its first import
os.environ.update(RWKV_V7_ON="1", RWKV_JIT_ON="0", RWKV_CUDA_ON="0")
with warnings.catch_warnings():  # it scripts its functions with torch.jit, deprecated in recent torch
    warnings.simplefilter("ignore", DeprecationWarning)
    import rwkv.model as rwkv_model  # a test requirement (requirements.txt): CI must run these


def runtime_weights(module):
    """module's parameters the way RWKV_x070.__init__ prepares a checkpoint: Linear weights transposed to
    (in, out), every tensor squeezed ((1, 1, C) -> (C,)), r_k flattened to (H * N,)."""
    z = {}
    for name, p in module.state_dict().items():
        t = p.detach().float()
        if any(s in name for s in ("key.weight", "value.weight", "receptance.weight", "output.weight")):
            t = t.t().contiguous()
        t = t.squeeze()
        if name == "r_k":
            t = t.flatten()
        z[name] = t
    return z


TMIX_ARGS = ("x_r x_w x_k x_v x_a x_g w0 w1 w2 a0 a1 a2 v0 v1 v2 g1 g2 k_k k_a r_k receptance.weight key.weight "
             "value.weight output.weight ln_x.weight ln_x.bias").split()


@pytest.mark.parametrize("layer_id", [0, 2])
@pytest.mark.parametrize("from_state", [False, True])
def test_timemix_matches_official_runtime(layer_id, from_state):
    m = make(layer_id)
    H, N = m.n_head, m.head_size
    z = runtime_weights(m)
    args = [z[n] for n in TMIX_ARGS]
    x, v_first = inputs(B=2, T_=37)
    x_prev0, S0 = random_state(2, H, N) if from_state else (torch.zeros(2, C), torch.zeros(2, H, N, N))
    state = (x_prev0, S0) if from_state else None
    vf_in = None if layer_id == 0 else v_first
    with torch.no_grad():
        y, (xp, S), vf = m(x, state, vf_in)
        y_one, state_one = [], state
        for t in range(x.shape[1]):
            y_t, state_one, _ = m.step(x[:, t:t + 1], state_one, None if vf_in is None else vf_in[:, t:t + 1])
            y_one.append(y_t)
        y_one = torch.cat(y_one, 1)
        for b in range(2):
            vf_b = torch.empty(0) if vf_in is None else vf_in[b]
            # sequence mode
            out, xp_ref, S_ref, vf_ref = rwkv_model.RWKV_x070_TMix_seq(
                layer_id, H, N, x[b], x_prev0[b], vf_b, S0[b].clone(), *args)
            assert rel(y[b], out) < 1e-4 and rel(S[b], S_ref) < 1e-4
            assert torch.equal(xp[b], xp_ref) and torch.allclose(vf[b], vf_ref, atol=1e-5)
            # one token at a time
            x_prev_b, S_b, outs = x_prev0[b], S0[b].clone(), []
            for t in range(x.shape[1]):
                vf_t = torch.empty(0) if vf_in is None else vf_in[b, t]
                o, x_prev_b, S_b, _ = rwkv_model.RWKV_x070_TMix_one(layer_id, H, N, x[b, t], x_prev_b, vf_t, S_b, *args)
                outs.append(o)
            assert rel(y_one[b], torch.stack(outs)) < 1e-4 and rel(state_one[1][b], S_b) < 1e-4


def test_channelmix_matches_official_runtime():
    cmix = ChannelMix7(config(), 1)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        cmix.x_k.copy_(torch.rand(1, 1, C, generator=gen))
        cmix.value.weight.copy_(torch.randn(C, 4 * C, generator=gen) / (4 * C) ** 0.5)
        z = runtime_weights(cmix)
        x, _ = inputs(B=2, T_=19)
        x_prev = torch.randn(2, C, generator=gen)
        y, xp = cmix(x, x_prev)
        y1, _ = cmix(x[:, :1], x_prev)
        for b in range(2):
            out, xp_ref = rwkv_model.RWKV_x070_CMix_seq(x[b], x_prev[b], z["x_k"], z["key.weight"], z["value.weight"])
            assert rel(y[b], out) < 1e-5 and torch.equal(xp[b], xp_ref)
            out1, _ = rwkv_model.RWKV_x070_CMix_one(x[b, 0], x_prev[b], z["x_k"], z["key.weight"], z["value.weight"])
            assert rel(y1[b, 0], out1) < 1e-5


# ---------------------------------------------------------------------------------------------------- 4


@pytest.mark.parametrize("layer_id", [0, 2])
def test_causal_and_batch_independent(layer_id):
    m = make(layer_id)
    x, v_first = inputs(B=3)
    vf_in = None if layer_id == 0 else v_first
    with torch.no_grad():
        y, _, vf = m(x, None, vf_in)
        t = 20
        x2 = x.clone()
        x2[1, t] += torch.randn(C)
        y2, _, vf2 = m(x2, None, vf_in)
        assert torch.equal(y2[:, :t], y[:, :t]) and torch.equal(vf2[:, :t], vf[:, :t])
        assert (y2[1, t:] - y[1, t:]).abs().amax(-1).min() > 0  # it does reach every later token
        assert torch.equal(y2[[0, 2]], y[[0, 2]])
        if layer_id > 0:  # v_first of token t reaches only token t
            vf3 = vf_in.clone()
            vf3[1, t] += 1.0
            y3, _, _ = m(x, None, vf3)
            assert torch.equal(y3[:, :t], y[:, :t]) and torch.equal(y3[[0, 2]], y[[0, 2]])


# ---------------------------------------------------------------------------------------------------- 5


def test_autocast_bf16_stays_close_and_state_is_float32():
    m = make(2)
    x, v_first = inputs()
    state = random_state(2, m.n_head, m.head_size)
    with torch.no_grad():
        y, (_, S), _ = m(x, state, v_first)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16, (_, S16), _ = m(x, state, v_first)
            y1, (_, S1), _ = m.step(x[:, :1], state, v_first[:, :1])
    assert S16.dtype == torch.float32 and S1.dtype == torch.float32
    assert rel(y16.float(), y) < 0.05 and rel(S16, S) < 0.05


@pytest.mark.parametrize("layer_id", [0, 2])
def test_gradients_match_naive_recurrence(layer_id):
    m = make(layer_id).double()
    x, v_first = inputs()
    state = random_state(2, m.n_head, m.head_size)
    state = (state[0].double().requires_grad_(), state[1].double().requires_grad_())
    x = x.double().requires_grad_()
    vf_in = None if layer_id == 0 else v_first.double().requires_grad_()
    leaves = [x, *state] + ([vf_in] if vf_in is not None else []) + list(m.parameters())
    w = torch.randn(2, T, C, dtype=torch.float64)

    def grads(fn):
        y, (_, S), vf = fn(m, x, state, vf_in)
        loss = (y * w).sum() + S.square().sum() + (vf.square().sum() if layer_id == 0 else 0)
        return torch.autograd.grad(loss, leaves, allow_unused=True)

    got = grads(lambda m_, *a: m_(*a))
    ref = grads(naive)
    for g, r in zip(got, ref):
        if r is None:  # layer 0's v0/v1/v2: unused, like the runtime's
            assert g is None
            continue
        assert torch.isfinite(g).all() and rel(g, r) < 1e-8
    # float32: close to float64's; under bf16 autocast: finite
    m32 = make(layer_id)
    leaves32 = [t.detach().float().requires_grad_() for t in (x, *state)]
    vf32 = None if vf_in is None else vf_in.detach().float().requires_grad_()
    y32, (_, S32), vf_out = m32(leaves32[0], tuple(leaves32[1:]), vf32)
    loss = (y32 * w.float()).sum() + S32.square().sum() + (vf_out.square().sum() if layer_id == 0 else 0)
    got32 = torch.autograd.grad(loss, leaves32 + ([vf32] if vf32 is not None else []) + list(m32.parameters()),
                                allow_unused=True)
    for g, r in zip(got32, ref):
        assert (g is None) == (r is None) and (r is None or rel(g, r.float()) < 1e-4)
    x16 = x.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, _, _ = m32(x16, None, vf32)
    y16.float().mul(w.float()).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m32.parameters() if p.grad is not None)
    assert torch.isfinite(x16.grad).all()


# ---------------------------------------------------------------------------------------------------- 6


@pytest.mark.parametrize("chunk_len", [16, 64])
def test_long_sequence_with_extreme_decays(chunk_len):
    """T = 300 >> chunk_len; half the channels decay as fast as RWKV-7 allows (w ~ 0.545: 0.545^64 ~ 1e-17
    inside one chunk), half barely at all (w ~ 1 - 1e-5): nothing over- or underflows into a wrong answer."""
    m = make(2, head_size=32, chunk_len=chunk_len)
    with torch.no_grad():
        m.w0.copy_(torch.where(torch.arange(C) % 2 == 0, 12.0, -12.0).view(1, 1, C))
        m.w2.mul_(0.1)
    x, v_first = inputs(B=1, T_=300)
    state = random_state(1, m.n_head, m.head_size)
    with torch.no_grad():
        y, (_, S), _ = m(x, state, v_first)
        y_ref, (_, S_ref), _ = naive(m, x.double(), state, v_first.double())
    assert torch.isfinite(y).all() and rel(y, y_ref.float()) < 1e-4 and rel(S, S_ref.float()) < 1e-4


# ---------------------------------------------------------------------------------------------------- init / optimizer


def test_init_and_optimizer_groups():
    cfg = SimpleNamespace(n_embd=768, head_size=64, n_layer=12, chunk_len=16, dropout=0.0)
    m = TimeMix7(cfg, 0)
    assert (m.w1.shape, m.a1.shape, m.v1.shape, m.g1.shape) == ((768, 64), (768, 64), (768, 32), (768, 128))
    assert m.r_k.shape == (12, 64) and m.x_r.shape == (1, 1, 768) and m.ln_x.eps == 64e-5
    w = torch.exp(-0.606531 * torch.sigmoid(m.w0))
    assert 0.54 < w.min() < 0.6 and w.max() > 0.99  # fast to slow heads at init
    assert torch.count_nonzero(m.output.weight) == 0
    model = MicroRWKV(GPTConfig(n_layer=2, n_embd=64, head_size=32, n_head=2, vocab_size=97, rwkv_version="x070",
                                use_swa=False, use_gqa=False, use_moe=False, chunk_len=16))
    assert torch.count_nonzero(model.blocks[1].tmix.output.weight) == 0  # GPT-2's init did not overwrite it
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    names = {id(p): n for n, p in model.named_parameters()}
    by = {(g["lr_scale"], g["weight_decay"]): {names[id(p)] for p in g["params"]} for g in opt.param_groups}
    assert by[(2.0, 0.0)] == {"blocks.0.tmix.w0", "blocks.1.tmix.w0"}
    assert by[(1.0, 0.1)] == {"wte.weight"} | {f"blocks.{i}.{m}.weight" for i in range(2) for m in (
        "tmix.receptance", "tmix.key", "tmix.value", "tmix.output", "cmix.key", "cmix.value")}
    assert "blocks.1.tmix.w1" in by[(1.0, 0.0)] and "blocks.1.tmix.r_k" in by[(1.0, 0.0)]  # LoRAs, r_k: no decay
