"""
Fast recurrent decoding for pure RWKV-7 models: the step of a TimeMix7 and a ChannelMix7 of a MicroRWKV in one
TorchScript function, on (B, C) rows. generate.py decodes through it where it applies (decoder_for).

At batch 1 a decoding step reads every weight once, so its floor is the time to stream the weights from
memory. Through model.py's modules the same step also makes about 1,700 small calls per token (views, dtype
casts, autocast switches, module calls), which cost more than the arithmetic they do; here it is about 75
per layer, run by TorchScript's interpreter rather than Python's (as the official runtime runs its step), which
cuts the cost of each call:
  - the six token-shift mixes are one lerp against their stacked (6, 1, C) coefficients;
  - the projections multiply the model's own weights, no copy: float32 ones as x @ W^T with W^T row-major
    (the runtime's layout, faster than torch.mv at batch 1), bf16 ones by torch.mv (model.Linear), with
    float32 inputs and outputs;
  - the LoRA factors and per-channel vectors are float32 copies made once (small bf16 products are slower
    than float32 ones on CPU), and the state update is two baddbmm.
The equations are TimeMix7's (model.py), in the same order; tests/test_decode.py checks the logits and every
state tensor against the model's own recurrent step in float64.

Decoder(model, int8=True) multiplies int8 copies of the projection and head weights instead (one scale per
output row, absmax / 127) by 8-bit copies of their inputs (one scale per row of x, made at each call): torch's
dynamic-quantized linear (fbgemm), a quarter of float32's bytes to stream per token and integer dot products.
Everything else stays as above, in float32. Its logits are the float32 model's within a few percent of their
range, not equal to them (tests/test_decode.py).

Decoder(model).next_state(history, state) stands in for model.next_state: model.py's LayerStates (S in
float32) and the same logits (the head's weight is the model's, and its forward hooks apply). With bf16 weights
the residual stream, the token-shift states and the logits stay in float32, where the model's own step rounds
them to bf16. Other layouts (x051a, SWA, GQA, MoE, learned positions) decode through the model.
"""

import re
import warnings
from typing import List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from model import DECAY_SCALE, LayerState, MicroRWKV, TimeMixState


def has_vnni():
    """Whether the CPU has VNNI (x86 flags in /proc/cpuinfo). Without it fbgemm adds pairs of u8 x s8 products in
    16 bits, which 8-bit inputs can saturate: it then needs 7-bit ones (reduce_range), at twice the rounding."""
    try:
        with open("/proc/cpuinfo") as f:
            return re.search(r"\b(avx512_vnni|avx_vnni)\b", f.read()) is not None
    except OSError:
        return False


VNNI = has_vnni()


def is_pure_rwkv7(model):
    cfg = model.config
    return isinstance(model, MicroRWKV) and cfg.rwkv_version == "x070" and not cfg.learned_pos and \
        all(b.swa is None and b.gqa is None and b.moe is None for b in model.blocks)


def decoder_for(model, int8=False):
    """A Decoder for a pure RWKV-7 MicroRWKV, else the model itself (both have next_state); int8 needs the former."""
    pure = is_pure_rwkv7(model)
    if int8 and not pure:
        raise ValueError("int8 decoding needs a pure RWKV-7 model (x070, no SWA, GQA, MoE or learned positions)")
    return Decoder(model, int8) if pure else model


def script(fn):
    """torch.jit.script, quietly: torch marks TorchScript deprecated in favour of torch.compile, which needs a C++
    compiler at run time and minutes of compiling; with torch pinned, TorchScript is what the runtime runs too."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(fn)


class Layer(NamedTuple):
    """One layer's weights for layer_step, vectors and LoRA factors in the compute dtype. Its six matrices (R, K, V,
    O, FK, FV) are in `mats` as matrix() gives them, or int8-packed in `packed`; the other list is empty."""
    ln1_w: Tensor
    ln1_b: Optional[Tensor]
    ln1_eps: float
    ln2_w: Tensor
    ln2_b: Optional[Tensor]
    ln2_eps: float
    lnx_w: Tensor
    lnx_b: Optional[Tensor]
    lnx_eps: float
    mix: Tensor  # (6, 1, C): the token-shift mixes of r, w, k, v, a, g
    w0: Tensor
    w1: Tensor
    w2: Tensor
    a0: Tensor
    a1: Tensor
    a2: Tensor
    v0: Tensor
    v1: Tensor
    v2: Tensor
    g1: Tensor
    g2: Tensor
    k_k: Tensor
    k_a: Tensor
    r_k: Tensor
    ffn_mix: Tensor
    mats: List[Tensor]
    packed: List[torch.classes.quantized.LinearPackedParamsBase]


@script
def product(x: Tensor, mats: List[Tensor], packed: List[torch.classes.quantized.LinearPackedParamsBase], i: int,
            reduce_range: bool) -> Tensor:
    """x (B, in) times matrix i, in x's dtype. float32: x @ W^T with W^T row-major (the runtime's layout, measured
    faster than torch.mv at one row); bf16: torch.mv on W (out, in) at one row (model.linear); int8: fbgemm."""
    if len(packed) > 0:
        # the kernel gives its whole input one 8-bit scale: one call per row keeps the rows independent
        rows = [torch.ops.quantized.linear_dynamic(x[b:b + 1].float(), packed[i], reduce_range)
                for b in range(x.shape[0])]
        return (rows[0] if len(rows) == 1 else torch.cat(rows)).to(x.dtype)
    W = mats[i]
    if W.dtype == x.dtype:
        return x @ W
    if x.shape[0] == 1:
        return (W @ x[0].to(W.dtype)).unsqueeze(0).to(x.dtype)
    return (W @ x.to(W.dtype).t()).t().to(x.dtype)


@script
def layer_step(x: Tensor, x_prev: Tensor, S: Tensor, cmix_prev: Tensor, v_first: Tensor, L: Layer, first: bool,
               H: int, decay_scale: float, reduce_range: bool):
    """One layer's step: x (B, C) and its state in; x, the new state, and layer 0's v (v_first) out."""
    B, C = x.shape
    N = C // H
    xt = F.layer_norm(x, [C], L.ln1_w, L.ln1_b, L.ln1_eps)
    xr, xw, xk, xv, xa, xg = torch.lerp(xt, x_prev.to(x.dtype), L.mix).unbind(0)
    r, k, v = product(xr, L.mats, L.packed, 0, reduce_range), product(xk, L.mats, L.packed, 1, reduce_range), \
        product(xv, L.mats, L.packed, 2, reduce_range)
    w = torch.exp(-decay_scale * torch.sigmoid(L.w0 + torch.tanh(xw @ L.w1) @ L.w2))
    a = torch.sigmoid(L.a0 + xa @ L.a1 @ L.a2)
    g = torch.sigmoid(xg @ L.g1) @ L.g2
    kk = F.normalize((k * L.k_k).reshape(B, H, N), dim=-1).view(B, C)
    k = k * (1 + (a - 1) * L.k_a)
    if first:
        v_first = v
    else:
        v = v + (v_first - v) * torch.sigmoid(L.v0 + xv @ L.v1 @ L.v2)
    # S <- S diag(w) - (S kk) (kk * a)^T + v k^T, per head; then y = S r
    S = S.to(x.dtype).reshape(B * H, N, N)
    S = torch.baddbmm(S * w.reshape(B * H, 1, N), S @ kk.reshape(B * H, N, 1), (kk * a).reshape(B * H, 1, N), alpha=-1)
    S = torch.baddbmm(S, v.reshape(B * H, N, 1), k.reshape(B * H, 1, N))
    y = F.group_norm((S @ r.reshape(B * H, N, 1)).view(B, C), H, L.lnx_w, L.lnx_b, L.lnx_eps)
    y = y + ((r * k).reshape(B, H, N) * L.r_k).sum(-1, keepdim=True).mul(v.reshape(B, H, N)).view(B, C)
    x = x + product(y * g, L.mats, L.packed, 3, reduce_range)
    xc = F.layer_norm(x, [C], L.ln2_w, L.ln2_b, L.ln2_eps)
    hidden = torch.relu(product(torch.lerp(xc, cmix_prev.to(x.dtype), L.ffn_mix), L.mats, L.packed, 4, reduce_range))
    x = x + product(hidden.square(), L.mats, L.packed, 5, reduce_range)
    return x, xt, S.view(B, H, N, N), xc, v_first


class Decoder:
    def __init__(self, model, int8=False):
        self.model, self.int8 = model, int8
        t0 = model.blocks[0].tmix
        self.dt = torch.promote_types(t0.w0.dtype, torch.float32)  # the compute dtype: float64 for a float64 model
        self.C, self.H = model.config.n_embd, t0.n_head
        vec = lambda p: p.detach().to(self.dt).reshape(-1)
        norm = lambda ln: (vec(ln.weight), None if ln.bias is None else vec(ln.bias), float(ln.eps))
        self.ln_in = norm(model.ln_in) if isinstance(model.ln_in, torch.nn.LayerNorm) else None
        self.ln_f = norm(model.ln_f)
        head = [self.matrix(model.lm_head)]
        self.head = ([], head) if int8 else (head, [])
        self.layers = []
        for block in model.blocks:
            t, c = block.tmix, block.cmix
            mats = [self.matrix(m) for m in (t.receptance, t.key, t.value, t.output, c.key, c.value)]
            self.layers.append(Layer(
                *norm(block.ln_tmix), *norm(block.ln_cmix), *norm(t.ln_x),
                mix=torch.stack([vec(getattr(t, n)) for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")]).unsqueeze(1),
                **{n: vec(getattr(t, n)) for n in ("w0", "a0", "v0", "k_k", "k_a")}, r_k=t.r_k.detach().to(self.dt),
                **{n: getattr(t, n).detach().to(self.dt) for n in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")},
                ffn_mix=vec(c.x_k), mats=[] if int8 else mats, packed=mats if int8 else []))

    def matrix(self, module):
        """What product() multiplies by: a float32 (float64) weight as its transpose W^T (in, out), re-laid out in
        place, so that the model's weight becomes a column-major view of the same memory (the same values; the
        model's own products take either layout); any other weight (bf16) as it is. With int8: fbgemm's packed
        int8 W with one float scale per row."""
        W = module.weight
        if self.int8:
            W = W.detach().float()
            scale = (W.abs().amax(1) / 127).clamp_min(1e-30).double()
            with warnings.catch_warnings():  # torch 2.13 marks quantized tensors deprecated; the kernel is current
                warnings.simplefilter("ignore", UserWarning)
                q = torch.quantize_per_channel(W, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
            return torch.ops.quantized.linear_prepack(q, None)
        if W.dtype != self.dt:
            return W
        if W.stride() != (1, W.shape[0]):
            W.data = W.data.t().contiguous().t()
        return W.t()

    @torch.no_grad()
    def next_state(self, history, state):
        """Logits (B, 1, vocab) and the state after the last token of history[-1] (B, T), from `state`."""
        m, C, dt = self.model, self.C, self.dt
        x = m.wte(history[-1][:, -1]).to(dt)
        if self.ln_in is not None:
            x = F.layer_norm(x, (C,), *self.ln_in)
        new_state, v_first = [], x
        for i, (L, s) in enumerate(zip(self.layers, state)):
            x, xt, S, xc, v_first = layer_step(x, s.tmix.x_prev, s.tmix.S, s.cmix, v_first, L, i == 0, self.H,
                                               DECAY_SCALE, not VNNI)
            new_state.append(LayerState(TimeMixState(xt, S), xc, pos=s.pos + 1))
        x = F.layer_norm(x, (C,), *self.ln_f)
        # the head multiplies as every other matrix; its forward hooks (generate.py masks padding ids with one) apply
        logits = product(x, *self.head, 0, not VNNI)
        for hook in m.lm_head._forward_hooks.values():
            out = hook(m.lm_head, (x,), logits)
            logits = logits if out is None else out
        return logits.unsqueeze(1), new_state
