"""
Fast recurrent decoding for pure RWKV-7 models: the step of every TimeMix7 and ChannelMix7 of a MicroRWKV in
one function, on (B, C) rows. generate.py decodes through it where it applies (decoder_for).

At batch 1 a decoding step reads every weight once, so its floor is the time to stream the weights from
memory. Through model.py's modules the same step also makes about 1,700 small calls per token (views, dtype
casts, autocast switches, module calls), which cost more than the arithmetic they do; here it is about 75
per layer:
  - the six token-shift mixes are one lerp against their stacked (6, 1, C) coefficients;
  - the projections multiply the model's own weights, no copy: float32 ones as x @ W^T with W^T row-major
    (the runtime's layout, faster than torch.mv at batch 1), bf16 ones by torch.mv (model.Linear), with
    float32 inputs and outputs;
  - the LoRA factors and per-channel vectors are float32 copies made once (small bf16 products are slower
    than float32 ones on CPU), and the state update is two baddbmm.
The equations are TimeMix7's (model.py), in the same order; tests/test_decode.py checks the logits and every
state tensor against the model's own recurrent step in float64.

Decoder(model, int8=True) multiplies int8 copies of the projection and head weights instead (one scale per
output row, absmax / 127; bf16 activations, by torch's weight-only int8 kernel, _weight_int8pack_mm): a
quarter of float32's bytes to stream per token. Everything else stays as above, in float32. Its logits are
the float32 model's within a few percent of their range, not equal to them (tests/test_decode.py).

Decoder(model).next_state(history, state) stands in for model.next_state: model.py's LayerStates (S in
float32) and the same logits (the head is the model's, so hooks on it apply). With bf16 weights the residual
stream and the token-shift states stay in float32, where the model's own step rounds them to bf16. Other
layouts (x051a, SWA, GQA, MoE, learned positions) decode through the model.
"""

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from model import DECAY_SCALE, LayerState, MicroRWKV, TimeMixState, linear


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


class Decoder:
    def __init__(self, model, int8=False):
        self.model, self.int8 = model, int8
        t0 = model.blocks[0].tmix
        self.dt = torch.promote_types(t0.w0.dtype, torch.float32)  # the compute dtype: float64 for a float64 model
        self.C, self.H, self.N = model.config.n_embd, t0.n_head, t0.head_size
        vec = lambda p: p.detach().to(self.dt).reshape(-1)
        norm = lambda ln: (vec(ln.weight), None if ln.bias is None else vec(ln.bias), ln.eps)
        self.ln_in = norm(model.ln_in) if isinstance(model.ln_in, torch.nn.LayerNorm) else None
        self.ln_f = norm(model.ln_f)
        head = self.matrix(model.lm_head)  # int8: a copy; else the model's module multiplies it (hooks apply)
        self.head = head if int8 else None
        self.layers = []
        for block in model.blocks:
            t, c = block.tmix, block.cmix
            lora = {n: getattr(t, n).detach().to(self.dt) for n in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")}
            self.layers.append(SimpleNamespace(
                ln1=norm(block.ln_tmix), ln2=norm(block.ln_cmix), lnx=norm(t.ln_x),
                mix=torch.stack([vec(getattr(t, n)) for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")]).unsqueeze(1),
                **{n: vec(getattr(t, n)) for n in ("w0", "a0", "v0", "k_k", "k_a")},
                r_k=t.r_k.detach().to(self.dt), **lora,
                R=self.matrix(t.receptance), K=self.matrix(t.key), V=self.matrix(t.value), O=self.matrix(t.output),
                ffn_mix=vec(c.x_k), FK=self.matrix(c.key), FV=self.matrix(c.value)))

    def matrix(self, module):
        """What linear() multiplies by: a float32 (float64) weight as its transpose W^T (in, out), re-laid out in
        place, so that the model's weight becomes a column-major view of the same memory (the same values; the
        model's own products take either layout); any other weight (bf16) as it is. With int8: (int8 W, bf16 scale
        per row), the scale rounded to bf16 before it divides W, so that scale * int8 is the closest to W."""
        W = module.weight
        if self.int8:
            W = W.detach().float()
            scale = (W.abs().amax(1) / 127).clamp_min(1e-30).to(torch.bfloat16)
            return (W / scale.float().unsqueeze(1)).round().clamp(-128, 127).to(torch.int8).contiguous(), scale
        if W.dtype != self.dt:
            return W
        if W.stride() != (1, W.shape[0]):
            W.data = W.data.t().contiguous().t()
        return W.t()

    def linear(self, x, W):
        """x (B, in) times a matrix from matrix(), in the compute dtype. One row (B = 1) in float32 reads W^T row by
        row (x @ W^T, the runtime's layout: measured faster than torch.mv on the row-major W); in bf16, torch.mv
        on W (out, in) is the fast one (model.Linear)."""
        if isinstance(W, tuple):  # int8
            return torch._weight_int8pack_mm(x.to(torch.bfloat16).contiguous(), *W).to(self.dt)
        if W.dtype == self.dt:
            return x @ W
        return linear(x.to(W.dtype), W).to(self.dt)

    @torch.no_grad()
    def next_state(self, history, state):
        """Logits (B, 1, vocab) and the state after the last token of history[-1] (B, T), from `state`."""
        m, (C, H, N), dt = self.model, (self.C, self.H, self.N), self.dt
        x = m.wte(history[-1][:, -1]).to(dt)
        B = x.shape[0]
        if self.ln_in is not None:
            x = F.layer_norm(x, (C,), *self.ln_in)
        heads = lambda t, shape: t.reshape(B * H, *shape)  # (B, C) rows as B * H heads
        new_state, v_first = [], None
        for i, (L, s) in enumerate(zip(self.layers, state)):
            (x_prev, S), cmix_prev = s.tmix, s.cmix
            xt = F.layer_norm(x, (C,), *L.ln1)
            xr, xw, xk, xv, xa, xg = torch.lerp(xt, x_prev.to(dt), L.mix).unbind()
            r, k, v = self.linear(xr, L.R), self.linear(xk, L.K), self.linear(xv, L.V)
            w = torch.exp(-DECAY_SCALE * torch.sigmoid(L.w0 + torch.tanh(xw @ L.w1) @ L.w2))
            a = torch.sigmoid(L.a0 + xa @ L.a1 @ L.a2)
            g = torch.sigmoid(xg @ L.g1) @ L.g2
            kk = F.normalize((k * L.k_k).reshape(B, H, N), dim=-1).view(B, C)
            k = k * (1 + (a - 1) * L.k_a)
            if i == 0:
                v_first = v
            else:
                v = v + (v_first - v) * torch.sigmoid(L.v0 + xv @ L.v1 @ L.v2)
            # S <- S diag(w) - (S kk) (kk * a)^T + v k^T, per head; then y = S r
            S = heads(S.to(dt), (N, N))
            S = torch.baddbmm(S * heads(w, (1, N)), S @ heads(kk, (N, 1)), heads(kk * a, (1, N)), alpha=-1)
            S = torch.baddbmm(S, heads(v, (N, 1)), heads(k, (1, N)))
            y = F.group_norm((S @ heads(r, (N, 1))).view(B, C), H, *L.lnx)
            y = y + ((r * k).reshape(B, H, N) * L.r_k).sum(-1, keepdim=True).mul(v.reshape(B, H, N)).view(B, C)
            x = x + self.linear(y * g, L.O)
            xc = F.layer_norm(x, (C,), *L.ln2)
            x = x + self.linear(torch.relu(self.linear(torch.lerp(xc, cmix_prev.to(dt), L.ffn_mix), L.FK)).square(), L.FV)
            new_state.append(LayerState(TimeMixState(xt, S.view(B, H, N, N)), xc, pos=s.pos + 1))
        x = F.layer_norm(x, (C,), *self.ln_f)
        if self.head is not None:  # int8: the head's product is ours, its forward hooks (generate.py's) still apply
            logits = self.linear(x, self.head)
            for hook in m.lm_head._forward_hooks.values():
                out = hook(m.lm_head, (x,), logits)
                logits = logits if out is None else out
            return logits.unsqueeze(1), new_state
        return m.lm_head(x.to(m.lm_head.weight.dtype)).unsqueeze(1), new_state
