"""
MicroRWKV and a GPT baseline, in one file.

A MicroRWKV layer is five pre-norm residual sub-layers, in this order:

    x = x + TimeMix(ln(x))       RWKV linear attention with a matrix-valued state per head: RWKV-5 ("x051a",
                                 TimeMix) or, with rwkv_version="x070", RWKV-7 (TimeMix7: per-channel
                                 data-dependent decay, delta-rule state update, value residual)
    x = x + ChannelMix(ln(x))    RWKV feed-forward with token shift (ChannelMix or ChannelMix7)
    x = x + SWA(ln(x))           causal sliding-window attention (rotary positions)
    x = x + GQA(ln(x))           causal grouped-query attention (rotary positions)
    x = x + TinyMoE(ln(x))       top-k routed expert MLPs with a load-balancing loss

Every block has a parallel form (training: the whole sequence at once) and a recurrent form (generation:
one token at a time, carrying a state). Both live side by side in the same class, and
`forward_with_state` runs either from any state, so a prompt is prefilled in parallel and then decoded
token by token. RWKV state is constant in size; the SWA cache holds exactly window_size - 1 entries; only
GQA's cache grows with the context. The default is pure RWKV-7 (TimeMix7 + ChannelMix7, use_swa, use_gqa
and use_moe False): the README's results say why.

There is no learned absolute position embedding in MicroRWKV (unless learned_pos=True, for ablations):
RWKV's token shift and decay carry order, and the attention blocks use rotary embeddings, so generation
can run past block_size. States are named tuples (TimeMixState, KVCache, LayerState; GPT: KVCache, or
ShiftedKVCache with token_shift) that own their memory.
"""

import importlib.util
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024  # training context length (MicroRWKV can generate past it; GPT cannot)
    vocab_size: int = 50304  # GPT-2's 50257 rounded up to a multiple of 64
    n_layer: int = 8
    n_head: int = 8  # query heads of the attention blocks
    n_embd: int = 768
    num_experts: int = 4
    num_active_experts: int = 4  # experts each token is routed to (top-k)
    expert_dim: int = 512  # hidden size of each expert MLP
    dropout: float = 0.0
    bias: bool = False  # bias in Linear layers and LayerNorms
    model_type: str = "microrwkv"  # "microrwkv" | "gpt"
    window_size: int = 256  # SWA: position t attends to t-window_size+1 .. t
    n_kv_head: int = 2  # GQA: key/value heads shared by n_head // n_kv_head query heads each
    aux_loss_weight: float = 0.01  # weight of the MoE load-balancing loss in the training loss
    # default: pure RWKV-7. Switching SWA, GQA or MoE on did not lower the loss on our configs; pure RWKV-7 learned
    # associative recall on every seed, and one GQA layer in four did not make it more reliable (README: results)
    use_swa: bool = False
    use_gqa: bool = False
    use_moe: bool = False
    attn_every: int = 1  # SWA/GQA sub-layers only in every attn_every-th layer (the last of each group)
    layers: str = ""  # per-layer attention, one letter a layer: R (none), S (SWA), G (GQA), A (both); "" = from the 3 above
    head_size: int = 64  # RWKV TimeMix head size (the state per head is head_size x head_size)
    chunk_len: int = 64  # TimeMix chunk length in the parallel form (x051a: an upper bound, see TimeMix.chunk_length)
    cmix_mult: float = 3.5  # ChannelMix hidden size, in multiples of n_embd
    init_scheme: str = "rwkv"  # x051a: "rwkv": RWKV's per-parameter init (0.11 nats better, README: ablations) | "gpt2": normal(0.02)
    ln_emb: bool = True  # MicroRWKV: LayerNorm on the token embedding (RWKV's ln0)
    ln_emb_init: float = 0.02  # initial gain of that LayerNorm; at 1 the embedding dwarfs the blocks (README: ablations)
    learned_pos: bool = False  # MicroRWKV: add a learned position embedding (wpe), as nanoGPT does
    rwkv_version: str = "x070"  # MicroRWKV's TimeMix/ChannelMix: "x070" (RWKV-7; chunk_len <= 64) or "x051a" (RWKV-5)
    kernel: str = "torch"  # TimeMix's parallel form on CUDA: "torch" (pure PyTorch, the reference) | "fla" (fla-core's Triton kernels)
    lora_w: int = 0  # x070: rank of the decay LoRA (w1, w2); 0: lora_dim's rule (as for the next three)
    lora_a: int = 0  # x070: rank of the in-context learning rate LoRA (a1, a2)
    lora_v: int = 0  # x070: rank of the value-residual LoRA (v1, v2)
    lora_g: int = 0  # x070: rank of the gate LoRA (g1, g2)
    tie_head: bool = True  # MicroRWKV: the LM head is the token embedding (official RWKV-7 models: False)
    rotary: bool = False  # GPT: rotary positions in its attention instead of learned ones (no wpe, no end at block_size)
    token_shift: bool = False  # GPT: each attention input mixed per channel with the previous token's (RWKV's shift)
    tokenizer: str = "gpt2"  # the token ids the model reads: "gpt2" (GPT-2 BPE) or "rwkv_world" (RWKV World, 65,536)

    def __post_init__(self):
        """Refuse an impossible architecture here, with the fields to change, not deep inside a block."""
        problems = []

        def need(ok, msg):
            if not ok:
                problems.append(msg)

        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "attn_every", "chunk_len"):
            need(getattr(self, name) >= 1, f"{name}={getattr(self, name)} must be >= 1")
        need(self.model_type in ("microrwkv", "gpt"), f"model_type={self.model_type!r} must be 'microrwkv' or 'gpt'")
        need(0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)")
        need(self.tie_head or self.model_type == "microrwkv", "tie_head=False is for MicroRWKV only (GPT ties its head)")
        need(not self.rotary or self.model_type == "gpt", "rotary=True is for GPT (MicroRWKV's attention is rotary already)")
        need(not self.token_shift or self.model_type == "gpt", "token_shift=True is for GPT (MicroRWKV shifts tokens already)")
        if self.rotary and self.n_head >= 1 and self.n_embd % self.n_head == 0:
            need(self.n_embd // self.n_head % 2 == 0, f"n_embd // n_head = {self.n_embd // self.n_head} must be even "
                                                      "(rotary positions)")
        need(self.tokenizer in ("gpt2", "rwkv_world"), f"tokenizer={self.tokenizer!r} must be 'gpt2' or 'rwkv_world'")
        need(self.n_head >= 1 and self.n_embd % self.n_head == 0,
             f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head} (e.g. n_head=1)")
        swa = any(c in "SA" for c in self.layers) if self.layers else self.use_swa
        gqa = any(c in "GA" for c in self.layers) if self.layers else self.use_gqa
        attention = self.model_type == "gpt" or swa or gqa
        if self.model_type == "microrwkv":
            need(self.head_size >= 1 and self.n_embd % self.head_size == 0,
                 f"n_embd={self.n_embd} must be a multiple of head_size={self.head_size} (e.g. head_size="
                 f"{math.gcd(self.n_embd, 64)})")
            need(self.cmix_mult > 0, f"cmix_mult={self.cmix_mult} must be > 0")
            need(self.ln_emb_init > 0, f"ln_emb_init={self.ln_emb_init} must be > 0")
            need(self.init_scheme in ("gpt2", "rwkv"), f"init_scheme={self.init_scheme!r} must be 'gpt2' or 'rwkv'")
            need(self.rwkv_version in ("x051a", "x070"), f"rwkv_version={self.rwkv_version!r} must be 'x051a' or 'x070'")
            need(self.kernel in ("torch", "fla"), f"kernel={self.kernel!r} must be 'torch' or 'fla'")
            if self.kernel == "fla":
                need(torch.cuda.is_available(), "kernel='fla' needs CUDA (use kernel='torch')")
                need(importlib.util.find_spec("fla") is not None,
                     "kernel='fla' needs fla-core (pip install -r requirements-gpu.txt, or use kernel='torch')")
            need(self.rwkv_version != "x070" or self.chunk_len <= MAX_CHUNK_LEN_X070,
                 f"chunk_len={self.chunk_len} must be <= {MAX_CHUNK_LEN_X070} for rwkv_version='x070' (float32 range of "
                 "its in-chunk decays)")
            for name in ("lora_w", "lora_a", "lora_v", "lora_g"):
                need(getattr(self, name) >= 0, f"{name}={getattr(self, name)} must be >= 0 (0: lora_dim's rule)")
            if attention and self.n_head >= 1 and self.n_embd % self.n_head == 0:
                need(self.n_embd // self.n_head % 2 == 0,
                     f"n_embd // n_head = {self.n_embd // max(self.n_head, 1)} must be even (rotary positions)")
            if swa:
                need(self.window_size >= 1, f"window_size={self.window_size} must be >= 1")
            if gqa:
                need(self.n_kv_head >= 1 and self.n_head % self.n_kv_head == 0,
                     f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head} (e.g. n_kv_head=1)")
            if self.use_moe:
                need(self.num_experts >= 1 and self.expert_dim >= 1,
                     f"num_experts={self.num_experts} and expert_dim={self.expert_dim} must be >= 1")
                need(1 <= self.num_active_experts <= self.num_experts,
                     f"num_active_experts={self.num_active_experts} must be in 1..num_experts={self.num_experts}")
                need(self.aux_loss_weight >= 0, f"aux_loss_weight={self.aux_loss_weight} must be >= 0")
        if self.layers:
            need(len(self.layers) == self.n_layer and set(self.layers) <= set("RSGA"),
                 f"layers={self.layers!r} must be one letter per layer (n_layer={self.n_layer}) from R (RWKV only), "
                 f"S (+ SWA), G (+ GQA), A (+ both), e.g. {'R' * (self.n_layer - 1) + 'G'!r}")
        if problems:
            raise ValueError("bad model config: " + "; ".join(problems))

    def layer_attention(self, layer_id):
        """(has SWA, has GQA) of layer `layer_id`: from `layers` when it is set, else from use_swa, use_gqa and
        attn_every (SWA and GQA in every attn_every-th layer), which is what configs without `layers` meant."""
        if self.layers:
            letter = self.layers[layer_id]
            return letter in "SA", letter in "GA"
        every = (layer_id + 1) % self.attn_every == 0
        return self.use_swa and every, self.use_gqa and every


# ----------------------------------------------------------------------------------------------------
# Recurrent state, by name. A model's state is a list with one entry per layer (None = empty context).


class TimeMixState(NamedTuple):
    x_prev: torch.Tensor  # (B, C): the last input token, for the token shift
    S: torch.Tensor  # (B, H, N, N) float32: the matrix-valued state of every head


class KVCache(NamedTuple):
    k: torch.Tensor  # (B, n_kv_head, n, head_dim) past keys (SWA: exactly window_size - 1, zero-padded)
    v: torch.Tensor  # (B, n_kv_head, n, head_dim) past values
    pos: int  # tokens seen so far: the absolute position of the next token


class ShiftedKVCache(NamedTuple):
    """The state of a GPT layer with token_shift: its attention's KV cache and its last attention input."""
    kv: KVCache
    x_prev: torch.Tensor  # (B, C): the last token's ln_1 output, for the token shift

    @property
    def pos(self):
        return self.kv.pos


class LayerState(NamedTuple):
    """The state of one MicroRWKV layer; None for a sub-layer the layer does not have."""
    tmix: TimeMixState | None = None
    cmix: torch.Tensor | None = None  # ChannelMix's x_prev (B, C)
    swa: KVCache | None = None
    gqa: KVCache | None = None
    pos: int = 0  # tokens seen so far


def last_token(x):
    """x[:, -1] as a tensor of its own: a view would keep the whole (B, T, C) input alive in the state."""
    return x[:, -1].clone()


class Linear(nn.Linear):
    """nn.Linear with a decoding path. Decoding asks for a few rows at a time, and there x W^T is a short-and-wide
    product that MKL runs well below the speed at which the (out, in) matrix streams from memory; the same
    product as W x^T (tall and skinny) measured 1.4-1.6x faster for 8 rows on CPU (`benchmark_inference_time.py
    --batch_size 8`), and one row as a matrix-vector product (torch.mv) 1.5x faster in bf16 (50304 x 512, 2
    threads: 1.19 against 1.80 ms; 768 x 3072: 130 against 192 us; float32 the same either way)."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)


def linear(x, weight, bias=None):
    """F.linear(x, weight, bias), by Linear's decoding path on CPU when x has at most 16 rows."""
    rows = x.reshape(-1, x.shape[-1])
    if x.device.type != "cpu" or rows.shape[0] > 16:
        return F.linear(x, weight, bias)
    if rows.shape[0] == 1:
        # W @ x is torch.mv for a vector x, and under autocast it returns the autocast dtype as every path does
        y = weight @ rows[0]
    else:
        y = (weight @ rows.T).T
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*x.shape[:-1], weight.shape[0])


# ----------------------------------------------------------------------------------------------------
# RWKV blocks


def token_shift(x, x_prev):
    """The sequence shifted right by one token, with x_prev (B, C) (or zeros) in front."""
    first = torch.zeros_like(x[:, :1]) if x_prev is None else x_prev.unsqueeze(1).to(x.dtype)
    return torch.cat([first, x[:, :-1]], dim=1)


class TimeMix(nn.Module):
    """RWKV-5 time mixing ("x051a": one scalar decay per head), a linear attention with a matrix state.

    Per head, with r_t, k_t, v_t in R^N (N = head_size), decay w = exp(-exp(time_decay)) in (0, 1) and
    bonus u = time_faaaa in R^N:
        recurrent:  y_t = r_t S_{t-1} + (r_t . (u * k_t)) v_t        S_t = w S_{t-1} + k_t^T v_t
        parallel:   y_t = sum_{s<t} w^(t-1-s) (r_t . k_s) v_s + (r_t . (u * k_t)) v_t + w^t r_t S_0
    The parallel form is computed in chunks of L tokens, all at once: inside a chunk it is a masked (L x L)
    attention; across chunks only the N x N state passes, and with a scalar decay the states entering all
    chunks are one product, S_in = M dS (M_cj = w^(cL - e_j) for the chunks j ending, e_j tokens in, before
    chunk c starts; dS_j what chunk j writes), plus w^(cL) S_0. With kernel='fla' on CUDA, fla-core's
    kernel computes it (fla_wkv5). The output is GroupNorm'ed per head and gated by SiLU(g). r, k, v, g come
    from token-shifted inputs lerp(x_t, x_{t-1}, time_maa_*).
    State: TimeMixState(x_prev (B, C), S (B, H, N, N) in float32, float64 for a float64 model). forward() runs
    the recurrent step() itself for a single token after a state.
    """

    def __init__(self, config, layer_id):
        super().__init__()
        C, N = config.n_embd, config.head_size
        assert C % N == 0, "n_embd must be a multiple of head_size"
        self.n_head, self.head_size, self.chunk_len = C // N, N, config.chunk_len
        self.kernel = getattr(config, "kernel", "torch")
        H = self.n_head

        # RWKV initialisation: early layers and low channels mix more of the previous token; decay speeds
        # are spread across heads (fast-forgetting to long-memory heads), slower in deeper layers.
        ratio_0_to_1 = layer_id / max(config.n_layer - 1, 1)
        ratio_1_to_almost0 = 1.0 - layer_id / config.n_layer
        ddd = torch.arange(C) / C
        self.time_maa_k = nn.Parameter(1.0 - ddd.pow(ratio_1_to_almost0))
        self.time_maa_v = nn.Parameter(1.0 - (ddd.pow(ratio_1_to_almost0) + 0.3 * ratio_0_to_1))
        self.time_maa_r = nn.Parameter(1.0 - ddd.pow(0.5 * ratio_1_to_almost0))
        self.time_maa_g = nn.Parameter(1.0 - ddd.pow(0.5 * ratio_1_to_almost0))
        h = torch.arange(H) / max(H - 1, 1)
        self.time_decay = nn.Parameter(-6.0 + 5.0 * h.pow(0.7 + 1.3 * ratio_0_to_1))
        zigzag = ((torch.arange(N) + 1) % 3 - 1) * 0.1
        self.time_faaaa = nn.Parameter((ratio_0_to_1 * (1.0 - h)).view(H, 1) + zigzag)

        self.receptance = nn.Linear(C, C, bias=config.bias)
        self.key = nn.Linear(C, C, bias=config.bias)
        self.value = nn.Linear(C, C, bias=config.bias)
        self.gate = nn.Linear(C, C, bias=config.bias)
        self.output = nn.Linear(C, C, bias=config.bias)
        self.ln_x = nn.GroupNorm(H, C, eps=64e-5)
        self.dropout = nn.Dropout(config.dropout)

    def _projections(self, x, x_prev):
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        shifted = token_shift(x, x_prev)
        r = self.receptance(torch.lerp(x, shifted, self.time_maa_r)).view(B, T, H, N).transpose(1, 2)
        k = self.key(torch.lerp(x, shifted, self.time_maa_k)).view(B, T, H, N).transpose(1, 2)
        v = self.value(torch.lerp(x, shifted, self.time_maa_v)).view(B, T, H, N).transpose(1, 2)
        g = F.silu(self.gate(torch.lerp(x, shifted, self.time_maa_g)))
        return r, k, v, g

    def _output(self, y, g):
        B, H, T, N = y.shape
        y = y.transpose(1, 2).reshape(B * T, H * N)
        with torch.autocast(y.device.type, enabled=False):  # normalise the float32 y, then round
            ln = self.ln_x  # (its parameters cast to y's dtype: the model may hold bf16 weights)
            # GroupNorm with one group per head is a LayerNorm over each head's N channels followed by the
            # per-channel affine: the same function, but layer_norm's CPU kernels are faster (measured 30 ->
            # 18 ms forward + backward at 4096 x 384)
            y = F.layer_norm(y.view(B * T, H, N), (N,), eps=ln.eps).view(B * T, H * N) * ln.weight.to(y.dtype)
            y = y if ln.bias is None else y + ln.bias.to(y.dtype)
        y = y.view(B, T, H * N).to(g.dtype) * g
        return self.dropout(self.output(y))

    def forward(self, x, state=None, v_first=None):
        """Parallel (chunked) form over x (B, T, C), starting from `state` (None = empty context). v_first
        (RWKV-7's value residual) passes through unused, so both versions are called alike."""
        B, T, C = x.shape
        if T == 1 and state is not None:
            return self.step(x, state, v_first)
        H, N = self.n_head, self.head_size
        x_prev, S = (None, None) if state is None else state
        r, k, v, g = self._projections(x, x_prev)
        dt = torch.promote_types(x.dtype, torch.float32)  # decays and state: float32 under autocast, float64 for float64 x
        S = x.new_zeros(B, H, N, N, dtype=dt) if S is None else S.to(dt)
        log_w = -torch.exp(self.time_decay.to(dt))  # (H,), log of the per-head decay
        # under autocast, the chunk's r k^T scores take operands in the autocast dtype (tensor cores on a GPU);
        # the products with v and the state stay float32: their outputs carry a head's common offset, which
        # the GroupNorm removes only if it was not rounded first (test_bf16_autocast_logits_stay_close_to_float32)
        autocast = dt == torch.float32 and torch.is_autocast_enabled(x.device.type)
        low = torch.get_autocast_dtype(x.device.type) if autocast else None
        with torch.autocast(x.device.type, enabled=False):
            if self.kernel == "fla" and x.is_cuda:
                y, S = fla_wkv5(r, k, v, S, log_w, self.time_faaaa.to(dt))
            else:
                r, k, v = (t.to(dt).contiguous() for t in (r, k, v))
                y, S = self._chunked(r, k, v, S, log_w, self.time_faaaa.to(dt), self.chunk_length(T, x.device), low)
        return self._output(y, g), TimeMixState(last_token(x), S), v_first

    def chunk_length(self, T, device=None):
        """The chunk length L for T tokens: chunk_len (the upper bound the config sets), but no longer than T
        needs nor than the device's best. On a CPU that is max(head_size, 32): per token a chunk costs ~4 L N
        multiply-adds inside it and 4 N^2 for the state, so L ~ N balances the two; shorter chunks pay more
        per-chunk overhead. Measured (forward + backward, 1 thread, 4096 tokens): N = 64: L = 32 and 64 within
        noise, 16 and 128 7-25% slower; N = 32: L = 32 fastest, 64 ~8% and 128 20-50% slower. On a GPU, where
        a chunk is one batched product and longer ones keep its units busy, 64 (the chunk of fla's kernels).
        The dtype does not enter: the decays inside a chunk are float32 under any autocast."""
        best = 64 if device is not None and device.type == "cuda" else max(self.head_size, 32)
        return min(self.chunk_len, T, best)

    @staticmethod
    def _chunked(r, k, v, S, log_w, u, L, low=None):
        """The chunked parallel form. r, k, v: (B, H, T, N); S: (B, H, N, N) entering the first token; log_w (H,);
        u (H, N); L: chunk length; low: the dtype of the scores' operands (None: r's). Returns y (B, H, T, N) and
        the state after the last token.

        Every chunk is computed at once, in one batch: the last one is padded with zero tokens, which read
        nothing and write nothing, and the decays (which depend only on positions) are built once. With a
        scalar decay the state after p tokens is w^p S_0 + sum_j w^(p - e_j) dS_j over the chunks j that end
        (e_j tokens in) by then, where dS_j = sum_{s in j} w^(e_j - 1 - s) k_s^T v_s is what chunk j writes:
        the states entering all chunks are one (n + 1) x n lower-triangular matrix of decay powers times the
        stacked dS_j, with no loop over chunks."""
        B, H, T, N = r.shape
        n = -(-T // L)  # chunks
        if n * L > T:
            r, k, v = (F.pad(t, (0, 0, 0, n * L - T)) for t in (r, k, v))
        r, k, v = (t.reshape(B, H, n, L, N) for t in (r, k, v))
        t = torch.arange(L, device=r.device, dtype=r.dtype)
        lw = log_w.view(-1, 1, 1)  # (H, 1, 1)

        # intra-chunk: y_t += sum_{s<t} w^(t-1-s) (r_t . k_s) v_s  +  (r_t . (u * k_t)) v_t
        diff = (t.view(L, 1) - 1 - t.view(1, L)).clamp(min=0)
        decay = torch.exp(lw * diff) * (t.view(L, 1) > t.view(1, L))  # (H, L, L), zero on/above diagonal
        scores = r @ k.transpose(-1, -2) if low is None else (r.to(low) @ k.to(low).transpose(-1, -2)).to(r.dtype)
        y = (scores * decay.unsqueeze(1)) @ v
        y = y + (r * u.view(1, -1, 1, 1, N) * k).sum(-1, keepdim=True) * v

        # dS_j, with e_j = min((j + 1) L, T): the padded keys of the last chunk are zero (clamp, not mask)
        ends = torch.arange(1, n + 1, device=r.device, dtype=r.dtype).mul(L).clamp(max=T)  # e_j (n,)
        starts = torch.arange(n, device=r.device, dtype=r.dtype) * L
        to_end = torch.exp(lw * (ends.view(n, 1) - 1 - starts.view(n, 1) - t).clamp(min=0))  # (H, n, L)
        dS = (k * to_end.unsqueeze(-1)).transpose(-1, -2) @ v  # (B, H, n, N, N)
        # the state at p = 0, L, ..., (n - 1) L (entering each chunk) and at p = T (after the last token)
        p = torch.cat([starts, starts.new_full((1,), T)])  # (n + 1,)
        gap = p.view(-1, 1) - ends.view(1, -1)  # (n + 1, n): p - e_j, negative where chunk j has not ended
        powers = torch.exp(lw * gap.clamp(min=0)) * (gap >= 0)  # (H, n + 1, n)
        states = (powers @ dS.flatten(-2)).view(B, H, n + 1, N, N) + torch.exp(lw * p).view(H, n + 1, 1, 1) * S.unsqueeze(2)
        # inter-chunk: y_t += w^t r_t S_in
        y = y + (r * torch.exp(lw * t).view(1, -1, 1, L, 1)) @ states[:, :, :n]
        return y.reshape(B, H, n * L, N)[:, :, :T], states[:, :, n].clone()  # (a view would keep all n + 1 alive)

    def step(self, x, state=None, v_first=None):
        """Recurrent form: one token x (B, 1, C); the same function as forward() with T = 1."""
        B, _, C = x.shape
        H, N = self.n_head, self.head_size
        x_prev, S = (None, None) if state is None else state
        r, k, v, g = self._projections(x, x_prev)
        dt = torch.promote_types(x.dtype, torch.float32)
        r, k, v = r.to(dt).view(B, H, N), k.to(dt).view(B, H, N), v.to(dt).view(B, H, N)
        S = x.new_zeros(B, H, N, N, dtype=dt) if S is None else S.to(dt)
        w = torch.exp(-torch.exp(self.time_decay.to(dt))).view(1, H, 1, 1)
        kv = k.unsqueeze(-1) * v.unsqueeze(-2)  # k_t^T v_t, (B, H, N, N)
        with torch.autocast(x.device.type, enabled=False):
            y = (r.unsqueeze(-2) @ (S + self.time_faaaa.to(dt).unsqueeze(-1) * kv)).view(B, H, 1, N)
        S = w * S + kv
        return self._output(y, g), TimeMixState(last_token(x), S), v_first

    def flops(self, T):
        """Forward FLOPs per token of the chunked form: the five projections; per head, inside a chunk of
        L tokens r k^T and (.) v (2 L N multiply-adds), across chunks k^T v into the state and r S (2 N^2)."""
        L, N = self.chunk_length(T), self.head_size
        return linear_flops(self.receptance, self.key, self.value, self.gate, self.output) + \
            self.n_head * (4 * L * N + 4 * N * N)

    def residual_projections(self):
        return [self.output]

    @torch.no_grad()
    def rwkv_init(self):
        """RWKV-LM's per-parameter init instead of GPT-2's normal(0.02): orthogonal projections, small keys
        and gates, a zero output projection (each layer starts as the identity)."""
        for linear, gain in ((self.receptance, 1.0), (self.key, 0.1), (self.value, 1.0), (self.gate, 0.1),
                             (self.output, 0.0)):
            nn.init.orthogonal_(linear.weight, gain=gain) if gain > 0 else nn.init.zeros_(linear.weight)


def fla_wkv5(r, k, v, S, log_w, u):
    """TimeMix._chunked through fla-core's scalar-decay kernel (GPTConfig.kernel = 'fla', CUDA only); r, k, v: (B, H, T, N)
    in the projections' dtype, S (B, H, N, N), log_w (H,), u (H, N) in the state's dtype.

    chunk_simple_gla with g_gamma = log w computes o_t = sum_{s<=t} w^(t-s) (q_t . k_s) v_s, the current token
    included at w^0; x051a reads the state before the current token, sum_{s<t} w^(t-1-s) (r_t . k_s) v_s, which is
    that sum over keys and values shifted one token later (zero at t = 0). The entering state, the bonus term and
    the last token's write are added here, exactly: y_t += w^t r_t S_0 + (r_t . (u * k_t)) v_t, and
    S_T = w^T S_0 + w S_kernel + k_{T-1}^T v_{T-1}, with S_kernel the kernel's state after the shifted sequence."""
    from fla.ops.simple_gla import chunk_simple_gla
    B, H, T, N = r.shape
    shifted = lambda t: F.pad(t, (0, 0, 1, 0))[:, :, :T].transpose(1, 2)  # (B, T, H, N), fla's layout
    o, S_kernel = chunk_simple_gla(r.transpose(1, 2), shifted(k), shifted(v), g_gamma=log_w.float(), scale=1.0,
                                   output_final_state=True)
    r, k, v = (t.to(S.dtype) for t in (r, k, v))
    t = torch.arange(T, device=r.device, dtype=S.dtype)
    lw = log_w.view(1, H, 1, 1)
    y = o.transpose(1, 2).to(S.dtype) + (r * torch.exp(lw * t.view(1, 1, T, 1))) @ S + \
        (r * u.view(1, H, 1, N) * k).sum(-1, keepdim=True) * v
    S = torch.exp(lw * T) * S + torch.exp(lw) * S_kernel.to(S.dtype) + k[:, :, -1:].transpose(-1, -2) @ v[:, :, -1:]
    return y, S


class ChannelMix(nn.Module):
    """RWKV channel mixing: a token-shifted feed-forward with a squared-ReLU key and a sigmoid receptance.

        k = relu(W_k lerp(x_t, x_{t-1}, maa_k))^2      y_t = sigmoid(W_r lerp(x_t, x_{t-1}, maa_r)) * W_v k
    Parallel and recurrent forms are the same code: the only state is x_prev (B, C).
    """

    def __init__(self, config, layer_id):
        super().__init__()
        C = config.n_embd
        ddd = torch.arange(C) / C
        ratio_1_to_almost0 = 1.0 - layer_id / config.n_layer
        self.time_maa_k = nn.Parameter(1.0 - ddd.pow(ratio_1_to_almost0))
        self.time_maa_r = nn.Parameter(1.0 - ddd.pow(ratio_1_to_almost0))
        hidden = int(config.cmix_mult * C) // 32 * 32  # RWKV-5's 3.5x (not 4x): with TimeMix's gate, a layer stays near GPT's size
        self.key = nn.Linear(C, hidden, bias=config.bias)
        self.value = nn.Linear(hidden, C, bias=config.bias)
        self.receptance = nn.Linear(C, C, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, state=None):
        shifted = token_shift(x, state)
        k = torch.relu(self.key(torch.lerp(x, shifted, self.time_maa_k))).square()
        r = torch.sigmoid(self.receptance(torch.lerp(x, shifted, self.time_maa_r)))
        return self.dropout(r * self.value(k)), last_token(x)

    def flops(self, T):
        return linear_flops(self.key, self.value, self.receptance)

    def residual_projections(self):
        return [self.value]

    @torch.no_grad()
    def rwkv_init(self):
        """RWKV-LM's per-parameter init: orthogonal key, zero receptance and value."""
        nn.init.orthogonal_(self.key.weight, gain=1.0)
        nn.init.zeros_(self.receptance.weight)
        nn.init.zeros_(self.value.weight)


# ----------------------------------------------------------------------------------------------------
# RWKV-7 blocks ("x070", rwkv_version="x070"): parameter names and shapes are the official ones (RWKV-LM's
# v7 trainer, the `rwkv` runtime), so export_rwkv.py only renames the prefixes.


# -log(w) = exp(-0.5) * sigmoid(.): every per-token decay w lies in (exp(-0.606531), 1) = (0.545, 1). The
# runtime rounds exp(-0.5) to 0.606531; so do we, to match it bit for bit where we can.
DECAY_SCALE = 0.606531


def lora_dim(C, factor):
    """The reference's suggested LoRA rank: factor * sqrt(C), rounded to a multiple of 32, at least 32."""
    return max(32, int(round(factor * C ** 0.5 / 32) * 32))


def ortho_(w, scale):
    """Orthogonal init as the reference's ortho_init: tall matrices get gain sqrt(rows / cols) first."""
    rows, cols = w.shape
    gain = math.sqrt(rows / cols) if rows > cols else 1.0
    return nn.init.orthogonal_(w, gain=gain * scale)


# The longest chunk TimeMix7's parallel form takes (GPTConfig refuses a longer chunk_len for x070): within a chunk
# it builds exp(-g_i) for cumulative log-decays g_i >= -L * DECAY_SCALE, up to exp(64 * 0.606531) ~ 7e16, and
# products of it with exp(g_t) >= 1.4e-17: inside float32's (and bfloat16's) range by 10^21 either way.
MAX_CHUNK_LEN_X070 = 64


def decayed_scores(queries, keys, g):
    """scores[..., q, t, j, i] = sum_n queries[q, t, n] exp(g_t - g_i)[n] keys[j, i, n] for i <= t, else 0.

    queries, keys: (..., Q, L, N) and (..., J, L, N); g: (..., L, N), cumulative log-decays within the chunk
    (0 >= g_0 >= ... >= g_{L-1} >= -L * DECAY_SCALE). Materialising exp(g_t - g_i) for the L x L pairs would
    cost L^2 N exponentials and products; split as exp(g_t) exp(-g_i) and folded into both sides, all scores are
    one matmul. exp(g_t) <= 1 and exp(-g_i) <= exp(L * DECAY_SCALE), so for L <= MAX_CHUNK_LEN_X070 nothing
    over- or underflows, and each kept score is still a sum of products of the true terms (nothing lost to
    rounding). Above the diagonal (i > t) the two factors do not cancel: those entries are computed, then zeroed.
    Each [q, :, j, :] slice is a matrix with unit column stride, which matmul takes as it is.
    """
    *batch, Q, L, N = queries.shape
    J = keys.shape[-3]
    rows = lambda t, decay: (t * decay.unsqueeze(-3)).flatten(-3, -2)  # (..., Q|J L, N)
    scores = rows(queries, torch.exp(g)) @ rows(keys, torch.exp(-g)).transpose(-1, -2)
    causal = torch.ones(L, L, dtype=torch.bool, device=g.device).tril()  # [t, i]
    return scores.view(*batch, Q, L, J, L) * causal.view(L, 1, L).to(scores.dtype)


def scan_affine(AB):
    """The maps S -> S A_c + B_c (c = 0 .. n-1 along dim -3, stacked as AB[..., c, :, :] = [A_c; B_c], (2N, N)),
    composed from the first: [P_c; Q_c] with S -> S P_c + Q_c the map of 0 .. c. An inclusive scan in
    ceil(log2 n) steps (Hillis-Steele): applying [P; Q] after [P'; Q'] gives [P' P; Q' P + Q], so each step
    composes every element with the one k before it, k = 1, 2, 4, ... The identity [I; 0] stands in before
    chunk 0: padded once in front (2^steps - 1 of them), each step then drops the first k elements. The chunk
    index goes first and the rest is flattened (m maps per chunk), so that "k chunks before" is k * m rows
    before in one 3-D tensor and a step is a single baddbmm: a handful of operators per step, whatever the batch."""
    *batch, n, N2, N = AB.shape
    m = math.prod(batch)
    pad = (1 << (n - 1).bit_length()) - 1
    identity = torch.eye(N2, N, dtype=AB.dtype, device=AB.device).expand(pad * m, N2, N)
    AB = torch.cat([identity, AB.movedim(-3, 0).reshape(n * m, N2, N)])
    only_B = (torch.arange(N2, device=AB.device) >= N).to(AB.dtype).view(N2, 1)  # [0; 1]
    k = 1
    while k <= pad:
        later = AB[k * m:]
        AB = torch.baddbmm(later * only_B, AB[:-k * m], later[:, :N])
        k *= 2
    return AB.view(n, *batch, N2, N).movedim(0, -3)


class TimeMix7(nn.Module):
    """RWKV-7 time mixing: a linear attention whose matrix state per head follows a delta rule with a
    vector-valued decay (a "diagonal plus low-rank" transition).

    Per head (N = head_size), with column vectors r_t, w_t, k_t, v_t, kk_t, a_t in R^N, w_t in (0.545, 1),
    |kk_t| = 1, a_t in (0, 1), and the state S in R^{N x N} laid out as the runtime's (value index, key index):
        recurrent:  S_t = S_{t-1} (diag(w_t) - kk_t (kk_t * a_t)^T) + v_t k_t^T        y_t = S_t r_t
    i.e. decay each key column, then take a step of size a_t (per channel) that replaces what S stored
    under the direction kk_t, then write v_t under k_t. Writing z_t = -S_{t-1} kk_t and b_t = kk_t * a_t, the
    low-rank term is one more rank-1 write z_t b_t^T, so with g_t = sum_{s<=t} log w_s (cumulative in a chunk):
        parallel:   S_t = S_0 diag(e^{g_t}) + sum_{i<=t} (z_i b_i^T + v_i k_i^T) diag(e^{g_t - g_i})
                    y_t = S_t r_t        z_t = -S_{t-1} kk_t     (only z is implicit: a triangular system)
    Inside a chunk of L tokens the z_t solve a unit lower-triangular L x L system (the WY / UT representation
    of the product of the transitions), so the chunk is a handful of matmuls and one triangular solve, for all
    chunks at once. Only the N x N state crosses chunk boundaries, through a map affine in it:
        across chunks:  S_c = S_{c-1} A_c + B_c     A_c = diag(e^{g_end}) + W_c^T b_end,  B_c = V^T k_end + U_c^T b_end
    composed by an associative scan in ceil(log2 n) steps (scan_affine), not a loop over the n chunks. Decays
    stay in log space, as cumulative sums within a chunk of at most 64 tokens, so no factor built from them
    exceeds exp(64 * 0.606531) (see decayed_scores). With kernel='fla' on CUDA, fla-core's chunk_rwkv7 computes
    the same recurrence (fla_wkv7).

    The output is GroupNorm'ed per head, plus a "bonus" ((r_t * k_t * r_k).sum() v_t) for the current token,
    times a LoRA gate g, then projected. Inputs come from token-shifted mixes lerp(x_t, x_{t-1}, x_*).
        w_t = exp(-0.606531 sigmoid(w0 + tanh(x_w W1) W2))      a_t = sigmoid(a0 + x_a A1 A2)
        kk_t = normalize(k_t * k_k) per head                   k_t <- k_t (1 + (a_t - 1) k_a)
        v_t <- v_t + (v_first_t - v_t) sigmoid(v0 + x_v V1 V2)   (layers > 0; layer 0's v is v_first)
        g_t = sigmoid(x_g G1) G2
    State: TimeMixState(x_prev (B, C), S (B, H, N, N) in float32). v_first is not state: layer 0 computes it
    for the tokens at hand and every later layer reads it.
    """

    def __init__(self, config, layer_id):
        super().__init__()
        C, N = config.n_embd, config.head_size
        self.layer_id, self.n_layer = layer_id, config.n_layer
        self.n_head, self.head_size, self.chunk_len = C // N, N, min(config.chunk_len, MAX_CHUNK_LEN_X070)
        self.kernel = getattr(config, "kernel", "torch")
        H = self.n_head

        # token-shift mixes, decay base, ICL-rate base, value-residual base and the key/bonus scales: (1, 1, C)
        # and (H, N) as in official checkpoints; init_weights fills them
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a"):
            setattr(self, name, nn.Parameter(torch.empty(1, 1, C)))
        self.r_k = nn.Parameter(torch.empty(H, N))
        # LoRAs: x @ W1 @ W2 with the rank the reference derives from C. Layer 0 has v0/v1/v2 too (unused,
        # like the runtime's): official checkpoints carry them, so state dicts load without renaming.
        D_decay, D_aaa, D_mv, D_gate = lora_dim(C, 2.5), lora_dim(C, 2.5), lora_dim(C, 1.7), lora_dim(C, 5)
        for prefix, D in (("w", D_decay), ("a", D_aaa), ("v", D_mv), ("g", D_gate)):
            setattr(self, prefix + "1", nn.Parameter(torch.empty(C, D)))
            setattr(self, prefix + "2", nn.Parameter(torch.empty(D, C)))

        self.receptance = Linear(C, C, bias=False)
        self.key = Linear(C, C, bias=False)
        self.value = Linear(C, C, bias=False)
        self.output = Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=64e-5)  # the reference's eps: (1e-5 * head_size_divisor 8 ** 2)
        self.dropout = nn.Dropout(config.dropout)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """The reference's init: RWKV-LM v7's RWKV_Tmix_x070.__init__, with the Linear weights and ln_x as its
        trainer's generate_init_weight leaves them (what official x070 runs start from)."""
        C, N, L, l = self.n_head * self.head_size, self.head_size, self.n_layer, self.layer_id
        ratio_0_to_1 = l / max(L - 1, 1)
        ratio_1_to_almost0 = 1.0 - l / L
        ddd = (torch.arange(C) / C).view(1, 1, C)
        # early layers and low channels mix in more of the previous token
        for name, power in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
            getattr(self, name).copy_(1.0 - ddd.pow(power * ratio_1_to_almost0))
        n = torch.arange(C, dtype=torch.float32)
        linear = n / (C - 1) - 0.5  # -0.5 .. 0.5 across channels
        zigzag = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)  # -1 .. 1 within each head, squared-signed
        zigzag = zigzag * zigzag.abs()
        # decay base from fast (-6 + 0.5 - 2.5) to slow channels, slower in deeper layers; a zigzag gives every
        # head both fast and slow channels
        www = -6 + 6 * (n / (C - 1)).pow(1 + ratio_0_to_1 ** 0.3)
        self.w0.copy_((www + 0.5 + zigzag * 2.5).view(1, 1, C))
        self.a0.copy_((-0.19 + zigzag * 0.3 + linear * 0.4).view(1, 1, C))
        self.v0.copy_((0.73 - linear * 0.4).view(1, 1, C))
        self.k_k.copy_((0.71 - linear * 0.1).view(1, 1, C))
        self.k_a.fill_(1.02)
        self.r_k.fill_(-0.04)
        # LoRAs start as constants (first factor zero) with a small orthogonal second factor, so the gradient
        # reaches the first factor from step one
        for prefix in "wavg":
            nn.init.zeros_(getattr(self, prefix + "1"))
            ortho_(getattr(self, prefix + "2"), 0.1)
        ortho_(self.receptance.weight, 1.0)
        ortho_(self.key.weight, 0.1)
        ortho_(self.value.weight, 1.0)
        nn.init.zeros_(self.output.weight)  # each residual branch starts as the identity
        self.ln_x.weight.fill_(((1 + l) / L) ** 0.7)
        nn.init.zeros_(self.ln_x.bias)

    def _projections(self, x, shifted, v_first):
        """Everything per token, for tokens x and the tokens before them (shifted), both (..., C): r, log w, k, v,
        kk, a (..., C) in the compute dtype, the gate g and v_first. The same code for a sequence (B, T, C) and
        for the one token (B, C) of the recurrent step."""
        C, H, N = x.shape[-1], self.n_head, self.head_size
        xr, xw, xk, xv, xa, xg = (torch.lerp(x, shifted, m.view(C)) for m in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)  # in autocast's dtype, if on
        w_lora = torch.tanh(xw @ self.w1) @ self.w2
        a_lora = (xa @ self.a1) @ self.a2
        v_lora = (xv @ self.v1) @ self.v2 if self.layer_id > 0 else None
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        # from here on: float32 (float64 if x is), whatever autocast says: decays, the normalisation of kk
        # and the state are all sensitive to rounding
        dt = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            r, k, v = r.to(dt), k.to(dt), v.to(dt)
            log_w = -DECAY_SCALE * torch.sigmoid(self.w0.view(C).to(dt) + w_lora.to(dt))  # log of the decay, in (-0.61, 0)
            a = torch.sigmoid(self.a0.view(C).to(dt) + a_lora.to(dt))
            kk = F.normalize((k * self.k_k.view(C).to(dt)).unflatten(-1, (H, N)), dim=-1).flatten(-2)
            k = k * (1 + (a - 1) * self.k_a.view(C).to(dt))
            if self.layer_id == 0:
                v_first = v
            else:
                assert v_first is not None, "layers > 0 need layer 0's v_first"
                v = v + (v_first.to(dt) - v) * torch.sigmoid(self.v0.view(C).to(dt) + v_lora.to(dt))
        return r, log_w, k, v, kk, a, g, v_first

    def _output(self, y, r, k, v, g):
        """GroupNorm per head, the current token's bonus, the gate and the output projection; all (..., C)."""
        C, H, N = y.shape[-1], self.n_head, self.head_size
        with torch.autocast(y.device.type, enabled=False):
            ln = self.ln_x  # in float32 even with bf16 params
            y = F.group_norm(y.reshape(-1, C), H, ln.weight.to(y.dtype), ln.bias.to(y.dtype), ln.eps).view(y.shape)
            bonus = ((r * k).unflatten(-1, (H, N)) * self.r_k.to(y.dtype)).sum(-1, keepdim=True) * v.unflatten(-1, (H, N))
            y = ((y + bonus.flatten(-2)) * g.to(y.dtype)).to(g.dtype)
        return self.dropout(self.output(y))

    def forward(self, x, state=None, v_first=None):
        """Parallel (chunked) form over x (B, T, C) from `state` (None = empty context).
        Returns (y, (x_prev, S), v_first); a single token with a state takes the recurrent step."""
        if x.shape[1] == 1 and state is not None:
            return self.step(x, state, v_first)
        B, T, C = x.shape
        x_prev, S = (None, None) if state is None else state
        r, log_w, k, v, kk, a, g, v_first = self._projections(x, token_shift(x, x_prev), v_first)
        heads = lambda t: t.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, H, T, N)
        with torch.autocast(x.device.type, enabled=False):
            S = r.new_zeros(B, self.n_head, self.head_size, self.head_size) if S is None else S.to(r.dtype)
            wkv = fla_wkv7 if self.kernel == "fla" and x.is_cuda else self._chunked
            y, S_out = wkv(heads(r), heads(log_w), heads(k), heads(v), heads(-kk), heads(kk * a), S, min(self.chunk_len, T))
        y = self._output(y.transpose(1, 2).reshape(B, T, C), r, k, v, g)
        return y, TimeMixState(last_token(x), S_out), v_first

    @staticmethod
    def _chunked(r, log_w, k, v, alpha, beta, S, L):
        """The WKV-7 recurrence S_t = S_{t-1} (diag(w_t) + alpha_t beta_t^T) + v_t k_t^T, y_t = S_t r_t, chunk by
        chunk. r, log_w, k, v, alpha, beta: (B, H, T, N); S: (B, H, N, N) entering the first token; L: chunk
        length, at most MAX_CHUNK_LEN_X070. Returns y (B, H, T, N) and the state after the last token."""
        B, H, T, N = r.shape
        pad = -T % L
        if pad:  # trailing tokens with w = 1 and nothing written or read leave the state as it is
            r, log_w, k, v, alpha, beta = (F.pad(t, (0, 0, 0, pad)) for t in (r, log_w, k, v, alpha, beta))
        n = (T + pad) // L
        r, log_w, k, v, alpha, beta = (t.reshape(B, H, n, L, N) for t in (r, log_w, k, v, alpha, beta))

        # From here on a chunk's vectors are the rows of (L, N) matrices: R, K, V, Z, W, U hold r_t, k_t, ... in row t.
        g = log_w.cumsum(dim=-2)  # g_t = sum_{s<=t} log w_s within the chunk: 0 >= g_0 >= ... >= g_{L-1}
        g_prev = F.pad(g[..., :-1, :], (0, 0, 1, 0))  # g_{t-1} (g_{-1} = 0), exactly, not as g_t - log w_t
        g_end = g[..., -1:, :]  # decay over the whole chunk

        # Pairwise scores within a chunk, sum_n q_t[n] exp(g_t - g_i)[n] key_i[n] for i <= t:
        #   y_t reads v_i and z_i:  q = r_t at row t, against keys k_i and b_i
        #   z_t reads v_i and z_i:  alpha_t meets S_{t-1}, so q = alpha_{t+1} at row t, shifted down a row after
        #                           (row t - 1 holds exp(g_{t-1} - g_i) for i <= t - 1: the strict mask for free)
        alpha_next = F.pad(alpha[..., 1:, :], (0, 0, 0, 1))
        scores = decayed_scores(torch.stack([r, alpha_next], dim=-3), torch.stack([k, beta], dim=-3), g)
        r_k, r_b = scores[..., 0, :, 0, :], scores[..., 0, :, 1, :]  # (B, H, n, L, L): [t, i]
        a_k, a_b = (F.pad(scores[..., 1, :-1, j, :], (0, 0, 1, 0)) for j in (0, 1))

        # z_t = S_0 (alpha_t e^{g_{t-1}}) + sum_{i<t} a_b[t, i] z_i + a_k[t, i] v_i: a unit lower-triangular system
        # (I - a_b) Z = (alpha e^{g_prev}) S_0^T + a_k V. Solve it once for both right-hand sides, so that
        # Z = W S_0^T + U with W, U independent of the state (the WY / UT transform): every chunk in parallel.
        eye = torch.eye(L, dtype=r.dtype, device=r.device)
        rhs = torch.cat([alpha * torch.exp(g_prev), a_k @ v], dim=-1)  # (B, H, n, L, 2N)
        WU = torch.linalg.solve_triangular(eye - a_b, rhs, upper=False, unitriangular=True)
        W, U = WU[..., :N], WU[..., N:]

        # y_t = S_0 (r_t e^{g_t}) + sum_{i<=t} r_b[t, i] z_i + r_k[t, i] v_i  =  R S_0^T + Y_intra
        R = r * torch.exp(g) + r_b @ W  # (B, H, n, L, N): what each token reads from the entering state
        Y_intra = r_b @ U + r_k @ v  # what it reads from this chunk's own writes
        # The state after the chunk, S_0 diag(e^{g_end}) + Z^T (b e^{g_end - g}) + V^T (k e^{g_end - g}), is affine in
        # S_0 (Z = W S_0^T + U): S_c = S_{c-1} A_c + B_c with A_c = diag(e^{g_end}) + W^T b_end, B_c = V^T k_end + U^T b_end,
        # stacked as one (2N, N) matrix [A_c; B_c] per chunk (W^T and U^T are the halves of WU^T).
        to_end = torch.exp(g_end - g)  # (0, 1]
        AB = WU.transpose(-1, -2) @ (beta * to_end) + torch.cat(
            [torch.diag_embed(torch.exp(g_end).squeeze(-2)), v.transpose(-1, -2) @ (k * to_end)], dim=-2)
        PQ = scan_affine(AB)  # [P_c; Q_c]: the state after chunk c is S_0 P_c + Q_c
        after = S.unsqueeze(2) @ PQ[..., :N, :] + PQ[..., N:, :]  # (B, H, n, N, N)
        entering = torch.cat([S.unsqueeze(2), after[:, :, :-1]], dim=2)
        y = R @ entering.transpose(-1, -2) + Y_intra
        return y.reshape(B, H, n * L, N)[:, :, :T], after[:, :, -1].clone()  # (a view would keep all n alive)

    def step(self, x, state=None, v_first=None):
        """Recurrent form: one token x (B, 1, C); the same function as forward() with T = 1, on (B, C) rows."""
        B, _, C = x.shape
        H, N = self.n_head, self.head_size
        x_prev, S = (None, None) if state is None else state
        shifted = torch.zeros_like(x.view(B, C)) if x_prev is None else x_prev.to(x.dtype)
        r, log_w, k, v, kk, a, g, v_first = self._projections(
            x.view(B, C), shifted, None if v_first is None else v_first.view(B, C))
        col = lambda t: t.view(B, H, N, 1)  # a (B, C) token as H columns
        row = lambda t: t.view(B, H, 1, N)
        with torch.autocast(x.device.type, enabled=False):
            S = r.new_zeros(B, H, N, N) if S is None else S.to(r.dtype)
            S = S * row(torch.exp(log_w)) + (S @ col(-kk)) @ row(kk * a) + col(v) @ row(k)
            y = (S @ col(r)).view(B, C)
        return self._output(y, r, k, v, g).view(B, 1, C), TimeMixState(last_token(x), S), v_first.view(B, 1, C)

    def flops(self, T):
        """Forward FLOPs per token: the four projections and four LoRAs; per head, in a chunk of L tokens,
        four L x L score matrices, the triangular solve and four products with them (about 9 L N
        multiply-adds), four N x N products per token with the state (the chunk's map [A; B] and its reads), and
        per chunk the scan's (2N x N) (N x N) compositions and the state after it (N^3)."""
        L, N = min(self.chunk_len, T), self.head_size
        n = -(-T // L)
        pad = (1 << (n - 1).bit_length()) - 1  # as scan_affine pads
        compositions = sum(n + pad - (1 << s) for s in range(pad.bit_length()))
        loras = sum(2 * p.numel() for n_, p in self.named_parameters() if n_[0] in "wavg" and n_[1] in "12"
                    and not (self.layer_id == 0 and n_[0] == "v"))
        return linear_flops(self.receptance, self.key, self.value, self.output) + loras + \
            self.n_head * (18 * L * N + 8 * N * N + 2 * (2 * compositions + n) * N ** 3 // T)

    def residual_projections(self):
        return []  # init_weights zeroes the output projection: nothing for GPT-2's scaled init to do


def fla_wkv7(r, log_w, k, v, alpha, beta, S, L=None):
    """TimeMix7._chunked through fla-core's chunk_rwkv7 (GPTConfig.kernel = 'fla', CUDA only), the same arguments
    (L unused: the kernel picks its own chunks). fla's state is (key, value), the transpose of ours; its
    recurrence S_t = diag(w_t) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T, o_t = S_t^T q_t is ours with a = alpha = -kk,
    b = beta = kk * a, q = r and scale 1."""
    from fla.ops.rwkv7 import chunk_rwkv7
    rows = lambda t: t.transpose(1, 2)  # (B, H, T, N) -> (B, T, H, N), fla's layout
    o, S_out = chunk_rwkv7(rows(r), rows(log_w), rows(k), rows(v), rows(alpha), rows(beta), scale=1.0,
                           initial_state=S.transpose(-1, -2), output_final_state=True)
    return rows(o).to(S.dtype), S_out.transpose(-1, -2).to(S.dtype)


class ChannelMix7(nn.Module):
    """RWKV-7 channel mixing: a token-shifted squared-ReLU feed-forward, 4C wide, without RWKV-5's receptance.

        k_t = relu(W_k lerp(x_t, x_{t-1}, x_k))^2        y_t = W_v k_t
    Parallel and recurrent forms are the same code: the only state is x_prev (B, C).
    """

    def __init__(self, config, layer_id):
        super().__init__()
        C = config.n_embd
        self.layer_id, self.n_layer = layer_id, config.n_layer
        self.x_k = nn.Parameter(torch.empty(1, 1, C))
        self.key = Linear(C, 4 * C, bias=False)
        self.value = Linear(4 * C, C, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """RWKV-LM v7's RWKV_CMix_x070 init, with key/value as generate_init_weight leaves them."""
        C = self.x_k.shape[-1]
        ratio_1_to_almost0 = 1.0 - self.layer_id / self.n_layer
        self.x_k.copy_(1.0 - (torch.arange(C) / C).view(1, 1, C).pow(ratio_1_to_almost0 ** 4))
        nn.init.orthogonal_(self.key.weight, gain=1.0)
        nn.init.zeros_(self.value.weight)  # the residual branch starts as the identity

    def forward(self, x, state=None):
        k = torch.relu(self.key(torch.lerp(x, token_shift(x, state), self.x_k))).square()
        return self.dropout(self.value(k)), last_token(x)

    def flops(self, T):
        return linear_flops(self.key, self.value)

    def residual_projections(self):
        return []  # value starts at zero (init_weights)


# ----------------------------------------------------------------------------------------------------
# Attention: sliding-window (MicroRWKV), grouped-query (MicroRWKV) and plain multi-head (GPT)


def apply_rotary(x, positions, base=10000.0):
    """Rotary position embedding of x (B, H, T, D) at absolute integer positions (T,)."""
    D = x.shape[-1]
    freqs = base ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)
    angles = positions.float().unsqueeze(-1) * freqs  # (T, D/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def append_to_cache(cache, new):
    """cache (B, H, n, D) with new (B, H, T, D) appended along dim 2, in amortised O(T) time.

    The returned cache is a view of the first n + T slots of a buffer with spare room, which later calls
    write into in place, doubling it when it is full: appending by torch.cat would copy the whole cache
    for every token. (Continuing twice from the same state, as beam search would, needs a clone first.)
    """
    B, H, n, D = cache.shape
    m = n + new.shape[2]
    capacity = cache.stride(1) // D
    has_room = (cache.stride() == (H * capacity * D, capacity * D, D, 1) and cache.storage_offset() == 0
                and capacity >= m and cache.untyped_storage().nbytes() >= B * H * capacity * D * cache.element_size())
    if has_room:
        buffer = cache.as_strided((B, H, capacity, D), cache.stride())
    else:
        buffer = cache.new_empty(B, H, max(2 * n, m, 16), D)
        buffer[:, :, :n] = cache
    buffer[:, :, n:m] = new
    return buffer[:, :, :m]


def sliding_window_attention(q, k, v, window, pos=0, dropout_p=0.0):
    """Causal attention of each query to the last `window` positions, in O(T window) time and memory.

    q (B, H, T, D): the queries at absolute positions pos .. pos+T-1; k, v (B, KV, P+T, D): the keys/values
    at positions pos-P .. pos+T-1, P <= window (SWA's cache: P = window-1, zero slots before position 0).
    Returns (B, H, T, D), what the dense form softmax(q k^T / sqrt(D) + mask) v gives with the mask
    pos_q - window < pos_k <= pos_q, pos_k >= 0.
    Cut into blocks of W = window queries: block b sees exactly the key blocks b-1 and b (every query's
    window ends in its own block and starts at most W-1 positions before it), so each block is one W x 2W
    attention with a fixed band mask, all blocks batched in one SDPA call: 2 T W scores instead of T^2.
    """
    B, H, T, D = q.shape
    KV, P, W = k.shape[1], k.shape[2] - T, window
    assert 0 <= P <= W
    nb = -(-T // W)  # query blocks; the last one padded with zero queries, dropped at the end
    # exactly W key slots in front of the queries (zeros where there is no key), the last block padded
    k, v = (F.pad(t, (0, 0, W - P, nb * W - T)) for t in (k, v))  # (B, KV, (nb+1) W, D): positions pos-W ..
    q = F.pad(q, (0, 0, 0, nb * W - T))

    def blocks(t):  # (B, heads, n W, D) -> (B, n, heads, W, D)
        return t.unflatten(2, (-1, W)).transpose(1, 2)

    # query block b: keys of key blocks b (the W positions before it) and b+1 (its own)
    k, v = (torch.cat([blocks(t)[:, :-1], blocks(t)[:, 1:]], dim=3) for t in (k, v))  # (B, nb, KV, 2W, D)
    i = torch.arange(W, device=q.device).view(1, W, 1)  # query i of a block
    j = torch.arange(2 * W, device=q.device).view(1, 1, 2 * W)  # key j of its 2W keys
    first = pos - W + W * torch.arange(nb, device=q.device).view(nb, 1, 1)  # position of each block's key 0
    mask = (j > i) & (j <= i + W) & (first + j >= 0)  # (nb, W, 2W): the window, and no empty slots
    mask = mask.unsqueeze(1).expand(B, nb, 1, W, 2 * W).flatten(0, 1)  # (B nb, 1, W, 2W): every head
    y = F.scaled_dot_product_attention(blocks(q).flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), attn_mask=mask,
                                       dropout_p=dropout_p, enable_gqa=KV != H)  # (B nb, H, W, D)
    return y.unflatten(0, (B, nb)).transpose(1, 2).flatten(2, 3)[:, :, :T]


class CausalSelfAttention(nn.Module):
    """Causal attention with n_head query heads sharing n_kv_head key/value heads.

    parallel:   y_t = softmax_{s in window(t)}(q_t . k_s / sqrt(D)) v_s, window(t) = [t-W+1, t] (or [0, t])
    recurrent:  the same, with k_s, v_s of past tokens read from a cache instead of recomputed.
    - SWA (window_size=W): the cache keeps exactly the last W-1 keys/values: constant memory.
    - GQA (n_kv_head < n_head, no window): the cache keeps every past key/value: it grows with the context,
      n_head / n_kv_head times slower than a multi-head cache (appended in place, see append_to_cache).
    - GPT (rotary=False, n_kv_head=n_head, no window): nanoGPT's attention with a KV cache.
    State: KVCache(k, v, pos) where pos counts the tokens seen so far.
    """

    def __init__(self, config, n_kv_head, window_size=None, rotary=True):
        super().__init__()
        C, H = config.n_embd, config.n_head
        assert C % H == 0 and H % n_kv_head == 0
        self.n_head, self.n_kv_head, self.head_dim = H, n_kv_head, C // H
        self.window_size, self.rotary = window_size, rotary
        self.query = nn.Linear(C, C, bias=config.bias)
        self.key = nn.Linear(C, n_kv_head * self.head_dim, bias=config.bias)  # real sharing: narrow K/V
        self.value = nn.Linear(C, n_kv_head * self.head_dim, bias=config.bias)
        self.output = nn.Linear(C, C, bias=config.bias)
        self.attn_dropout = config.dropout
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, state=None):
        B, T, C = x.shape
        H, KV, D = self.n_head, self.n_kv_head, self.head_dim
        q = self.query(x).view(B, T, H, D).transpose(1, 2)
        k = self.key(x).view(B, T, KV, D).transpose(1, 2)
        v = self.value(x).view(B, T, KV, D).transpose(1, 2)
        pos = 0 if state is None else state.pos
        if self.rotary:
            positions = torch.arange(pos, pos + T, device=x.device)
            q, k = apply_rotary(q, positions), apply_rotary(k, positions)
        if state is not None and self.window_size is not None:
            k, v = torch.cat([state.k, k], dim=2), torch.cat([state.v, v], dim=2)  # at most W-1+T keys
        elif state is not None:
            k, v = append_to_cache(state.k, k), append_to_cache(state.v, v)
        # key j sits at absolute position pos + T - S + j (S keys); SWA slots before position 0 are empty
        S = k.shape[2]
        dropout_p = self.attn_dropout if self.training else 0.0
        if self.window_size is not None and T > 2 * self.window_size:
            # long input: a dense T x S mask would cost O(T^2) however small the window; the band costs O(T W)
            y = sliding_window_attention(q, k, v, self.window_size, pos, dropout_p)
        else:
            if state is None and self.window_size is None:
                mask, is_causal = None, True  # plain causal training: let SDPA pick its fastest kernel
            elif T == 1 and self.window_size is None:
                mask, is_causal = None, False  # one new token sees the whole cache
            else:
                q_pos = torch.arange(pos, pos + T, device=x.device).view(T, 1)
                k_pos = torch.arange(pos + T - S, pos + T, device=x.device).view(1, S)
                mask = (k_pos <= q_pos) & (k_pos >= 0)
                if self.window_size is not None:
                    mask = mask & (k_pos > q_pos - self.window_size)
                is_causal = False
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=KV != H,
                                               dropout_p=dropout_p)
        y = self.dropout(self.output(y.transpose(1, 2).reshape(B, T, C)))
        if self.window_size is not None:  # keep exactly the last W-1 keys/values, zero-padded in front
            keep = self.window_size - 1
            pad = max(keep - S, 0)
            # a copy, not a view: the cache must not keep all T of a long prompt's keys alive
            k, v = (F.pad(t, (0, 0, pad, 0))[:, :, S + pad - keep:].clone() for t in (k, v))
        return y, KVCache(k, v, pos + T)

    def flops(self, T):
        """Projections plus q k^T and (.) v over the context: the window for SWA, all T tokens otherwise."""
        context = T if self.window_size is None else min(self.window_size, T)
        return linear_flops(self.query, self.key, self.value, self.output) + \
            4 * self.n_head * self.head_dim * context

    def residual_projections(self):
        return [self.output]


# ----------------------------------------------------------------------------------------------------
# Mixture of experts


class MLP(nn.Module):
    """Position-wise feed-forward c_proj(act(c_fc(x))): GPT's MLP and each TinyMoE expert."""

    def __init__(self, n_in, n_hidden, config, activation):
        super().__init__()
        self.c_fc = nn.Linear(n_in, n_hidden, bias=config.bias)
        self.act = activation
        self.c_proj = nn.Linear(n_hidden, n_in, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class TinyMoE(nn.Module):
    """Top-k routed mixture of expert MLPs with a Switch/GShard load-balancing loss.

        p = softmax(W_router x)      chosen = top-k of p,  gates = p[chosen] / sum(p[chosen])  (k > 1)
                                                           gates = p[chosen]                   (k = 1)
        y = sum_{e in chosen} gates_e * W2_e gelu(W1_e x)
    With k = 1 the renormalised gate would be p / p = 1, leaving the router without a gradient from the
    language-model loss, so top-1 uses the raw probability (as the Switch Transformer does).
        aux = E * sum_e f_e * P_e          f_e = share of routing slots that went to e, P_e = mean_t p_e
    aux is 1 for perfectly balanced routing and grows to E when every token picks the same experts. Each
    expert only computes the tokens routed to it. Position-wise, so its recurrent form is itself: no state.
    """

    def __init__(self, config):
        super().__init__()
        C, E = config.n_embd, config.num_experts
        self.num_experts, self.num_active = E, config.num_active_experts
        self.router = nn.Linear(C, E, bias=False)
        self.experts = nn.ModuleList(MLP(C, config.expert_dim, config, nn.GELU()) for _ in range(E))

    def forward(self, x):
        B, T, C = x.shape
        E, K = self.num_experts, self.num_active
        x = x.reshape(B * T, C)
        probs = F.softmax(self.router(x).float(), dim=-1)  # (BT, E)
        gates, chosen = probs.topk(K, dim=-1)  # (BT, K)
        if K > 1:
            gates = gates / gates.sum(-1, keepdim=True)
        y, counts = (self._dense if torch.compiler.is_compiling() else self._dispatch)(x, gates, chosen)
        share = counts.float() / (B * T * K)  # f_e (no gradient: a count)
        aux_loss = E * (share * probs.mean(0)).sum()
        return y.view(B, T, C), aux_loss

    # eager even under torch.compile: the slices' sizes depend on the routing, which would make it recompile
    @torch.compiler.disable
    def _dispatch(self, x, gates, chosen):
        """y = sum over each token's chosen experts of gate * expert(x), and the tokens per expert (E,).

        The (token, slot) pairs are sorted by expert, so that each expert's tokens are one contiguous slice of
        one gather of the inputs, with no scan of `chosen` per expert. Each expert's output is scatter-added
        on its own: one scatter-add of all pairs needs their outputs concatenated first, a full-size
        temporary that measured a few % slower on CPU (fresh pages every step) than E smaller ones."""
        E, K = self.num_experts, self.num_active
        order = chosen.flatten().argsort(stable=True)  # (BT K,): pairs grouped by expert, tokens ascending
        counts = torch.bincount(chosen.flatten(), minlength=E)  # tokens per expert
        sizes = counts.tolist()
        token = order // K
        gate = gates.flatten()[order].unsqueeze(-1).to(x.dtype)
        y = torch.zeros_like(x)
        pieces = zip(self.experts, x[token].split(sizes), token.split(sizes), gate.split(sizes))
        for expert, x_e, token_e, gate_e in pieces:
            if token_e.numel() > 0:
                y.index_add_(0, token_e, expert(x_e) * gate_e)
        return y, counts

    def _dense(self, x, gates, chosen):
        """_dispatch as torch.compile traces it: every expert on every token, times its gate (0 where not chosen).
        The same sums with no routing-dependent sizes, so no graph break, at E / K times the expert FLOPs (the
        same FLOPs with all experts active, the default)."""
        E = self.num_experts
        weights = torch.zeros(x.shape[0], E, dtype=x.dtype, device=x.device).scatter(1, chosen, gates.to(x.dtype))
        y = sum(expert(x) * weights[:, e:e + 1] for e, expert in enumerate(self.experts))
        counts = torch.zeros(E, dtype=torch.long, device=x.device).scatter_add_(0, chosen.flatten(), torch.ones_like(chosen.flatten()))
        return y, counts

    def flops(self, T):
        """The router, and only the num_active_experts experts each token is routed to."""
        expert = self.experts[0]
        return linear_flops(self.router) + self.num_active * linear_flops(expert.c_fc, expert.c_proj)

    def residual_projections(self):
        return [expert.c_proj for expert in self.experts]


# ----------------------------------------------------------------------------------------------------
# Models


class LanguageModel(nn.Module):
    """What MicroRWKV and GPT share: the loss, generation, optimizer set-up and bookkeeping.

    Subclasses implement forward_with_state(idx, state) -> (logits, state, aux_loss); the parallel
    training pass is forward_with_state from the empty state.
    """

    def forward(self, idx, targets=None, return_aux_loss=False):
        logits, _, aux_loss = self._forward(idx, None, all_logits=targets is not None)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
            loss = loss + self.config.aux_loss_weight * aux_loss
        return (logits, loss, aux_loss) if return_aux_loss else (logits, loss)

    def forward_with_state(self, idx, state=None):
        """Run idx (B, T) from `state` (None = empty context): all logits (B, T, vocab) and the new state."""
        logits, state, _ = self._forward(idx, state, all_logits=True)
        return logits, state

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None):
        """Prefill idx (B, T) once, then one forward_with_state step per new token; returns idx + new tokens."""
        new = list(self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, generator))
        return torch.cat([idx, *new], dim=1)

    @torch.no_grad()
    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None):
        """Like generate(), but yields each new token (B, 1) as soon as it is sampled."""
        logits, state, _ = self._forward(self.crop_prompt(idx), None, all_logits=False)  # last position only
        history = [idx]  # the context in pieces: appending is O(1) per token, unlike torch.cat
        for i in range(max_new_tokens):
            idx_next = sample(logits[:, -1, :], temperature, top_k, top_p, generator)
            yield idx_next
            if i + 1 < max_new_tokens:
                history.append(idx_next)
                logits, state = self.next_state(history, state)

    def crop_prompt(self, idx):
        return idx

    def next_state(self, history, state):
        """Logits of the last position and the state after history[-1] (history: the context in pieces)."""
        return self._forward(history[-1], state, all_logits=False)[:2]

    def get_num_params(self, non_embedding=True):
        """Parameter count; GPT's position embedding is left out by default, as nanoGPT does."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding and hasattr(self, "wpe"):
            n_params -= self.wpe.weight.numel()
        return n_params

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, decay_time=False):
        """AdamW. Weight decay only on the weight matrices of Linear layers and embeddings: not on norms,
        biases, RWKV-7's LoRA factors and r_k (as RWKV-LM's v7 trainer does), nor (unless decay_time) on
        x051a's time_faaaa, a per-channel bonus. RWKV-7's decay base w0 trains at twice the learning rate, as
        in the reference: each group's "lr_scale" multiplies the scheduled rate (train.py applies it)."""
        def group(name, p):
            if name.endswith(".w0"):
                return "fast"
            matrix = p.dim() >= 2 and (name.endswith(".weight") or (decay_time and ".time_" in name))
            return "decay" if matrix else "plain"

        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        settings = {"decay": (weight_decay, 1.0), "plain": (0.0, 1.0), "fast": (0.0, 2.0)}
        groups = [{"params": [p for n, p in params.items() if group(n, p) == g], "weight_decay": wd, "lr_scale": scale}
                  for g, (wd, scale) in settings.items()]
        groups = [g for g in groups if g["params"]]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")

    def _through_blocks(self, x, state):
        """x through every block, each from its entry of `state` (None: the empty context): (x, new state).
        For blocks that return (x, state); MicroRWKV's Block also carries the MoE aux loss and RWKV-7's v_first."""
        new_state = []
        for block, layer_state in zip(self.blocks, state or [None] * len(self.blocks)):
            x, layer_state = block(x, layer_state)
            new_state.append(layer_state)
        return x, new_state

    def flops_per_token(self, seq_len):
        """Training FLOPs (forward + backward = 3 x forward) per token at context length seq_len.

        Counts matrix multiplies only (2 FLOPs per multiply-add): every Linear a token passes through (only
        the experts it is routed to), the LM head, and each block's token-mixing work (see its flops()).
        Attention scores are counted over the whole context (or window), as nanoGPT/PaLM count them, not
        halved for the causal mask. Norms, activations and the embedding lookup are left out."""
        return 3 * (sum(block.flops(seq_len) for block in self.blocks) + linear_flops(self.lm_head))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _init_residual_projections(self, projections, n_residual):
        # GPT-2's scaled init: the last projection of each residual branch shrinks with the number of
        # residual branches (sub-layers), so the residual stream's variance does not grow with depth
        for linear in projections:
            nn.init.normal_(linear.weight, mean=0.0, std=0.02 / math.sqrt(n_residual))


class LMHead(Linear):
    """The language-model head: bias-free, its weight tied to the token embedding unless tie_head=False."""


def linear_flops(*linears):
    """Forward FLOPs per token of nn.Linear layers: 2 per weight (a multiply and an add)."""
    return sum(2 * linear.in_features * linear.out_features for linear in linears)


def sample(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One token per row from logits (B, vocab): greedy at temperature 0, else top-k / nucleus sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cumulative - F.softmax(sorted_logits, dim=-1) > top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)


class Block(nn.Module):
    """One MicroRWKV layer: TimeMix -> ChannelMix -> [SWA] -> [GQA] -> [TinyMoE], each pre-norm residual."""

    def __init__(self, config, layer_id):
        super().__init__()
        C, bias = config.n_embd, config.bias
        has_swa, has_gqa = config.layer_attention(layer_id)
        v7 = config.rwkv_version == "x070"
        self.ln_tmix, self.tmix = nn.LayerNorm(C, bias=bias), (TimeMix7 if v7 else TimeMix)(config, layer_id)
        self.ln_cmix, self.cmix = nn.LayerNorm(C, bias=bias), (ChannelMix7 if v7 else ChannelMix)(config, layer_id)
        self.swa = self.gqa = self.moe = None
        if has_swa:
            self.ln_swa = nn.LayerNorm(C, bias=bias)
            self.swa = CausalSelfAttention(config, n_kv_head=config.n_head, window_size=config.window_size)
        if has_gqa:
            self.ln_gqa = nn.LayerNorm(C, bias=bias)
            self.gqa = CausalSelfAttention(config, n_kv_head=config.n_kv_head)
        if config.use_moe:
            self.ln_moe, self.moe = nn.LayerNorm(C, bias=bias), TinyMoE(config)

    def residual_branches(self):
        return [m for m in (self.tmix, self.cmix, self.swa, self.gqa, self.moe) if m is not None]

    def forward(self, x, state=None, v_first=None):
        """state: a LayerState (None = empty context); v_first: layer 0's values (RWKV-7's value residual).
        Returns (x, new LayerState, MoE aux loss, v_first)."""
        state = state or LayerState()
        y, tmix, v_first = self.tmix(self.ln_tmix(x), state.tmix, v_first)
        x = x + y
        y, cmix = self.cmix(self.ln_cmix(x), state.cmix)
        x = x + y
        swa = gqa = None
        if self.swa is not None:
            y, swa = self.swa(self.ln_swa(x), state.swa)
            x = x + y
        if self.gqa is not None:
            y, gqa = self.gqa(self.ln_gqa(x), state.gqa)
            x = x + y
        aux_loss = x.new_zeros((), dtype=torch.float32)
        if self.moe is not None:
            y, aux_loss = self.moe(self.ln_moe(x))
            x = x + y
        return x, LayerState(tmix, cmix, swa, gqa, state.pos + x.shape[1]), aux_loss, v_first

    def flops(self, T):
        return sum(branch.flops(T) for branch in self.residual_branches())


class MicroRWKV(LanguageModel):
    """Token embedding -> n_layer Blocks -> LayerNorm -> LM head (tied to the embedding unless tie_head=False).
    State: a list of LayerStates."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.learned_pos:
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        # RWKV's ln0 normalises the embedding
        self.ln_in = nn.LayerNorm(config.n_embd, bias=config.bias) if config.ln_emb else nn.Identity()
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = LMHead(config.n_embd, config.vocab_size, bias=False)
        if config.tie_head:
            self.lm_head.weight = self.wte.weight  # weight tying, as in GPT
        ranks = {p: getattr(config, "lora_" + p) for p in "wavg"} if config.rwkv_version == "x070" else {}
        for block in self.blocks:  # an official model's LoRA ranks, where given (init_weights below fills them)
            for prefix, D in ranks.items():
                if D:
                    setattr(block.tmix, prefix + "1", nn.Parameter(torch.empty(config.n_embd, D)))
                    setattr(block.tmix, prefix + "2", nn.Parameter(torch.empty(D, config.n_embd)))
        self.apply(self._init_weights)
        if config.ln_emb:  # with a gain of 1 the embedding (norm sqrt(C)) dwarfs every block's initial output
            nn.init.constant_(self.ln_in.weight, config.ln_emb_init)
        branches = [branch for b in self.blocks for branch in b.residual_branches()]
        projections = [p for branch in branches for p in branch.residual_projections()]
        self._init_residual_projections(projections, n_residual=len(branches))
        for block in self.blocks:
            if config.rwkv_version == "x070":  # RWKV-7 blocks always start from the reference's init
                block.tmix.init_weights()
                block.cmix.init_weights()
            elif config.init_scheme == "rwkv":
                block.tmix.rwkv_init()
                block.cmix.rwkv_init()

    def _forward(self, idx, state, all_logits):
        x = self.wte(idx)
        if self.config.learned_pos:
            x = x + self.wpe(positions(state, idx.shape[1], self.config.block_size, idx.device))
        x = self.drop(self.ln_in(x))
        state = state or [None] * len(self.blocks)
        new_state, aux_losses, v_first = [], [], None
        for block, layer_state in zip(self.blocks, state):
            x, s, aux, v_first = block(x, layer_state, v_first)
            new_state.append(s)
            aux_losses.append(aux)
        x = self.ln_f(x)
        logits = self.lm_head(x if all_logits else x[:, [-1]])
        return logits, new_state, torch.stack(aux_losses).mean()


def positions(state, T, block_size, device):
    """Absolute positions of the next T tokens after `state`, for a learned position embedding."""
    pos = 0 if state is None else state[0].pos  # a KVCache, ShiftedKVCache or LayerState: all count the tokens seen
    if pos + T > block_size:
        raise ValueError(f"a context of {pos + T} tokens exceeds the learned positions of block_size={block_size}")
    return torch.arange(pos, pos + T, device=device)


class GPTBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        self.ln_1 = nn.LayerNorm(C, bias=config.bias)
        self.attn = CausalSelfAttention(config, n_kv_head=config.n_head, rotary=config.rotary)
        self.ln_2 = nn.LayerNorm(C, bias=config.bias)
        self.mlp = MLP(C, 4 * C, config, nn.GELU(approximate="tanh"))  # GPT-2's GELU: its weights load exactly
        # token_shift: h_t + shift * (h_{t-1} - h_t) per channel, so one attention layer can match a key on the
        # token before it (a lookup that plain attention builds from two layers)
        self.shift = nn.Parameter(torch.full((C,), 0.5)) if config.token_shift else None

    def forward(self, x, state=None):
        h = self.ln_1(x)
        if self.shift is None:
            y, state = self.attn(h, state)
        else:
            kv, x_prev = (None, None) if state is None else state
            y, kv = self.attn(torch.lerp(h, token_shift(h, x_prev), self.shift), kv)
            state = ShiftedKVCache(kv, last_token(h))
        x = x + y
        return x + self.mlp(self.ln_2(x)), state

    def flops(self, T):
        return self.attn.flops(T) + linear_flops(self.mlp.c_fc, self.mlp.c_proj)


class GPT(LanguageModel):
    """nanoGPT's transformer: learned positions, causal multi-head attention, GELU MLP, tied embeddings.

    Its recurrent form is a KV cache (a KVCache per layer) that grows with the context; learned positions
    stop it at block_size, so generation keeps a window of the context: when the cache is full it is
    re-prefilled with the last block_size // 2 tokens (see context_window).
    rotary=True: rotary positions on queries and keys instead of wpe (as in MicroRWKV's attention blocks and
    most transformers since), so relative offsets come without learning and the context has no end.
    token_shift=True: RWKV's token shift on each attention input (Zoology's attention reference for recall has
    a short convolution there); the layer state is then a ShiftedKVCache.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if not config.rotary:
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(GPTBlock(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = LMHead(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        self._init_residual_projections([p for b in self.blocks for p in (b.attn.output, b.mlp.c_proj)],
                                        n_residual=2 * config.n_layer)

    @classmethod
    def from_pretrained(cls, name_or_path, dropout=0.0):
        """OpenAI GPT-2 weights: a hub id ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl') or a local directory
        saved by transformers (imported only here). pretrained.py wraps this with one-line errors."""
        from transformers import GPT2LMHeadModel
        return cls.from_gpt2(GPT2LMHeadModel.from_pretrained(name_or_path, dtype=torch.float32), dropout)

    @classmethod
    def from_gpt2(cls, hf, dropout=0.0):
        """This GPT with the weights of a transformers GPT2LMHeadModel; ValueError if it is not plain GPT-2."""
        c = hf.config
        # what GPT hard-codes; GPT-2 checkpoints all have it, variants saved by transformers might not
        differences = {
            "activation_function": (c.activation_function, "gelu_new"),
            "n_inner": (c.n_inner, None if c.n_inner is None else 4 * c.n_embd),
            "layer_norm_epsilon": (c.layer_norm_epsilon, 1e-5),
            "scale_attn_weights": (c.scale_attn_weights, True),
            "scale_attn_by_inverse_layer_idx": (c.scale_attn_by_inverse_layer_idx, False),
            "tie_word_embeddings": (c.tie_word_embeddings, True),
        }
        for key, (have, want) in differences.items():
            if have != want:
                raise ValueError(f"{key}={have!r} is not GPT-2's {want!r}, which model.py's GPT implements")
        config = GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head,
                           n_embd=c.n_embd, dropout=dropout, bias=True, model_type="gpt")
        hf_sd = hf.state_dict()
        sd = {"wte.weight": hf_sd["transformer.wte.weight"], "wpe.weight": hf_sd["transformer.wpe.weight"],
              "ln_f.weight": hf_sd["transformer.ln_f.weight"], "ln_f.bias": hf_sd["transformer.ln_f.bias"]}
        sd["lm_head.weight"] = sd["wte.weight"]
        for i in range(c.n_layer):
            h, b = f"transformer.h.{i}.", f"blocks.{i}."
            for ln in ("ln_1", "ln_2"):
                sd[b + ln + ".weight"], sd[b + ln + ".bias"] = hf_sd[h + ln + ".weight"], hf_sd[h + ln + ".bias"]
            # GPT-2's Conv1D stores weights as (in, out), nn.Linear as (out, in); c_attn is query|key|value fused
            q, k, v = hf_sd[h + "attn.c_attn.weight"].t().split(c.n_embd, dim=0)
            qb, kb, vb = hf_sd[h + "attn.c_attn.bias"].split(c.n_embd)
            for name, w, bias in (("query", q, qb), ("key", k, kb), ("value", v, vb),
                                  ("output", hf_sd[h + "attn.c_proj.weight"].t(), hf_sd[h + "attn.c_proj.bias"])):
                sd[b + f"attn.{name}.weight"], sd[b + f"attn.{name}.bias"] = w, bias
            for name in ("mlp.c_fc", "mlp.c_proj"):  # the same names as GPT-2's
                sd[b + name + ".weight"] = hf_sd[h + name + ".weight"].t()
                sd[b + name + ".bias"] = hf_sd[h + name + ".bias"]
        with torch.device("meta"):  # no random init of weights that are about to be replaced
            model = cls(config)
        model.load_state_dict({k: v.contiguous() for k, v in sd.items()}, assign=True)
        model.lm_head.weight = model.wte.weight  # assign=True replaced both: tie them again
        return model

    def _forward(self, idx, state, all_logits):
        x = self.wte(idx)
        if not self.config.rotary:
            x = x + self.wpe(positions(state, idx.shape[1], self.config.block_size, idx.device))
        x = self.drop(x)
        x, new_state = self._through_blocks(x, state)
        x = self.ln_f(x)
        logits = self.lm_head(x if all_logits else x[:, [-1]])
        return logits, new_state, x.new_zeros((), dtype=torch.float32)

    def crop_block_size(self, block_size):
        """Shrink the learned positions to a smaller context (e.g. fine-tuning GPT-2 at 256), as nanoGPT does."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        if self.config.rotary:
            return
        self.wpe.weight = nn.Parameter(self.wpe.weight[:block_size].clone())
        self.wpe.num_embeddings = block_size

    def crop_prompt(self, idx):
        return idx if self.config.rotary else idx[:, -self.config.block_size:]

    def context_window(self, context):
        """The part of a context (B, T) that generation conditions on: all of it while it fits block_size,
        then the last block_size // 2 tokens (the cache is re-prefilled with them once per block_size // 2
        tokens). Recurrent decoding and generate.py --recompute both follow this rule, so greedy text agrees."""
        if self.config.rotary or context.shape[1] <= self.config.block_size:
            return context
        return context[:, -(self.config.block_size // 2):]

    def next_state(self, history, state):
        if self.config.rotary or state[0].pos < self.config.block_size:
            return super().next_state(history, state)
        context = self.context_window(torch.cat([history[0][:, -self.config.block_size:], *history[1:]], dim=1))
        history[:] = [context]  # once per block_size // 2 tokens
        return self._forward(context, None, all_logits=False)[:2]  # cache full: re-prefill


def build_model(config):
    """The model that config.model_type names."""
    models = {"microrwkv": MicroRWKV, "gpt": GPT}
    if config.model_type not in models:
        raise ValueError(f"unknown model_type {config.model_type!r}; expected one of {sorted(models)}")
    return models[config.model_type](config)


if __name__ == "__main__":
    # The README's large configuration (config/train_tinystories.py, the defaults): build it and print its size.
    model = MicroRWKV(GPTConfig())
    print(f"MicroRWKV (README table config): {model.get_num_params() / 1e6:.2f}M parameters")
