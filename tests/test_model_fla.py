"""model.py's kernel='fla' path: fla_wkv5 / fla_wkv7 (the glue around fla-core's kernels) against the PyTorch chunked
forms. On a CPU the kernels are stand-ins written here from fla's documented recurrences, so the glue (token
shift, decay offset, bonus, state layout) is checked everywhere; the tests marked cuda run the real kernels."""
import importlib.util
import sys
import types

import pytest
import torch

from conftest import randomize
from model import GPTConfig, TimeMix, TimeMix7, fla_wkv5, fla_wkv7

HAS_CUDA = torch.cuda.is_available()
HAS_FLA = importlib.util.find_spec("fla") is not None


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def simple_gla(q, k, v, g_gamma, scale, output_final_state, initial_state=None):
    """fla's chunk_simple_gla, token by token (fla layout (B, T, H, N), state (key, value)):
    S_t = exp(g_gamma) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t."""
    B, T, H, N = q.shape
    S = q.new_zeros(B, H, N, v.shape[-1]) if initial_state is None else initial_state
    o = []
    for t in range(T):
        S = torch.exp(g_gamma).view(1, H, 1, 1) * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        o.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(o, 1), S


def rwkv7(r, w, k, v, a, b, scale, initial_state, output_final_state):
    """fla's chunk_rwkv7 token by token (its dplr_recurrence): S_t = diag(exp(w_t)) S + b_t (a_t^T S) + k_t^T v_t."""
    S, o = initial_state, []
    for t in range(r.shape[1]):
        a_S = torch.einsum("bhk,bhkv->bhv", a[:, t], S)
        S = torch.exp(w[:, t, :, :, None]) * S + b[:, t, :, :, None] * a_S[:, :, None] + k[:, t, :, :, None] * v[:, t, :, None]
        o.append(scale * torch.einsum("bhk,bhkv->bhv", r[:, t], S))
    return torch.stack(o, 1), S


@pytest.fixture
def stand_in_fla(monkeypatch):
    modules = {name: types.ModuleType(name) for name in ("fla", "fla.ops", "fla.ops.simple_gla", "fla.ops.rwkv7")}
    modules["fla.ops.simple_gla"].chunk_simple_gla = simple_gla
    modules["fla.ops.rwkv7"].chunk_rwkv7 = rwkv7
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


def inputs(B=2, H=3, T=37, N=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)


def test_fla_glue_equals_chunked_forms(stand_in_fla):
    B, H, T, N = 2, 3, 37, 8
    randn = inputs()
    r, k, v, S = randn(B, H, T, N), randn(B, H, T, N), randn(B, H, T, N), randn(B, H, N, N)
    log_w, u = -torch.exp(randn(H)), randn(H, N)
    y, S_out = fla_wkv5(r, k, v, S, log_w, u)
    y_ref, S_ref = TimeMix._chunked(r, k, v, S, log_w, u, 16)
    assert rel(y, y_ref) < 1e-6 and rel(S_out, S_ref) < 1e-6  # the kernel takes g_gamma in float32
    log_w = -0.6 * torch.sigmoid(randn(B, H, T, N))
    kk = torch.nn.functional.normalize(randn(B, H, T, N), dim=-1)
    a = torch.sigmoid(randn(B, H, T, N))
    y, S_out = fla_wkv7(r, log_w, k, v, -kk, kk * a, S)
    y_ref, S_ref = TimeMix7._chunked(r, log_w, k, v, -kk, kk * a, S, 16)
    assert rel(y, y_ref) < 1e-12 and rel(S_out, S_ref) < 1e-12


@pytest.mark.skipif(HAS_CUDA and HAS_FLA, reason="this machine has CUDA and fla-core: kernel='fla' is allowed here")
def test_fla_kernel_without_cuda_or_package_is_a_one_line_error():
    with pytest.raises(ValueError, match="kernel='fla' needs (CUDA|fla-core)") as e:
        GPTConfig(kernel="fla")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="kernel='triton' must be 'torch' or 'fla'"):
        GPTConfig(kernel="triton")


def block(version, kernel, seed=0):
    config = GPTConfig(n_layer=4, n_embd=256, head_size=64, rwkv_version=version, kernel=kernel)
    torch.manual_seed(seed)
    m = (TimeMix if version == "x051a" else TimeMix7)(config, layer_id=2)
    return randomize(m, scale=0.5, seed=seed).cuda()


@pytest.mark.cuda
@pytest.mark.skipif(not (HAS_CUDA and HAS_FLA), reason="needs a CUDA GPU (fla's Triton kernels do not run on a CPU)"
                    if not HAS_CUDA else "needs fla-core: pip install -r requirements-gpu.txt")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("version", ["x051a", "x070"])
def test_fla_equals_torch_forward_and_backward_on_cuda(version, dtype):
    """kernel='fla' against kernel='torch' (the same weights), from a random state, T = 300 (chunks of 64 and a
    part), forward (y, S) and backward (gradients of x, the state and every parameter). bf16: under autocast."""
    B, T, C = 2, 300, 256
    gen = torch.Generator(device="cuda").manual_seed(1)
    x0 = torch.randn(B, T, C, device="cuda", generator=gen)
    S0 = 0.5 * torch.randn(B, C // 64, 64, 64, device="cuda", generator=gen)
    v_first0 = torch.randn(B, T, C, device="cuda", generator=gen)
    w = torch.randn(B, T, C, device="cuda", generator=gen)
    results = []
    for kernel in ("torch", "fla"):
        m = block(version, kernel)
        x, S_in = x0.clone().requires_grad_(), S0.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y, (_, S), _ = m(x, (x0[:, 0], S_in), v_first0)
        loss = (y.float() * w).sum() + S.square().sum()
        grads = torch.autograd.grad(loss, [x, S_in] + list(m.parameters()), allow_unused=True)
        results.append((y.float(), S, grads))
    (y_ref, S_ref, g_ref), (y, S, g) = results
    tol = 2e-3 if dtype == torch.float32 else 3e-2  # float32: Triton's dots round inputs to tf32
    assert rel(y, y_ref) < tol and rel(S, S_ref) < tol
    for a, b in zip(g, g_ref):
        assert (a is None) == (b is None) and (b is None or rel(a, b) < 2 * tol)
