"""
MicroRWKV and a GPT baseline, in one file.

A MicroRWKV layer is five pre-norm residual sub-layers, in this order:

    x = x + TimeMix(ln(x))       RWKV-5 ("x051a") linear attention with a matrix-valued state per head
    x = x + ChannelMix(ln(x))    RWKV feed-forward with token shift
    x = x + SWA(ln(x))           causal sliding-window attention (rotary positions)
    x = x + GQA(ln(x))           causal grouped-query attention (rotary positions)
    x = x + TinyMoE(ln(x))       top-k routed expert MLPs with a load-balancing loss

Every block has a parallel form (training: the whole sequence at once) and a recurrent form (generation:
one token at a time, carrying a state). Both live side by side in the same class, and
`forward_with_state` runs either from any state, so a prompt is prefilled in parallel and then decoded
token by token. RWKV state is constant in size; the SWA cache holds exactly window_size - 1 entries; only
GQA's cache grows with the context (switch it off with use_gqa=False for a constant-memory model).

There is no learned absolute position embedding in MicroRWKV: RWKV's token shift and decay carry order,
and the attention blocks use rotary embeddings, so generation can run past block_size.
"""

import math
from dataclasses import dataclass

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
    use_swa: bool = True
    use_gqa: bool = True
    use_moe: bool = True
    attn_every: int = 1  # SWA/GQA sub-layers only in every attn_every-th layer (the last of each group)
    head_size: int = 64  # RWKV TimeMix head size (the state per head is head_size x head_size)
    chunk_len: int = 64  # TimeMix chunk length in the parallel form


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
    The parallel form is computed chunk by chunk: inside a chunk of L tokens it is a masked (L x L)
    attention, and only the N x N state crosses chunk boundaries. The output is GroupNorm'ed per head and
    gated by SiLU(g). r, k, v, g come from token-shifted inputs lerp(x_t, x_{t-1}, time_maa_*).
    State: (x_prev (B, C), S (B, H, N, N) in float32).
    """

    def __init__(self, config, layer_id):
        super().__init__()
        C, N = config.n_embd, config.head_size
        assert C % N == 0, "n_embd must be a multiple of head_size"
        self.n_head, self.head_size, self.chunk_len = C // N, N, config.chunk_len
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
        y = self.ln_x(y.to(g.dtype)).view(B, T, H * N) * g
        return self.dropout(self.output(y))

    def forward(self, x, state=None):
        """Parallel (chunked) form over x (B, T, C), starting from `state` (None = empty context)."""
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        x_prev, S = (None, None) if state is None else state
        r, k, v, g = self._projections(x, x_prev)
        r, k, v = r.float(), k.float(), v.float()  # decays and state stay in float32 under autocast
        S = x.new_zeros(B, H, N, N, dtype=torch.float32) if S is None else S
        log_w = -torch.exp(self.time_decay.float())  # (H,), log of the per-head decay
        u = self.time_faaaa.float()

        # full chunks, then the remainder: each piece is (B, H, n_chunks, L, N)
        L = min(self.chunk_len, T)
        n_full = T // L
        ys = []
        with torch.autocast(x.device.type, enabled=False):
            for start, n_chunks, length in ((0, n_full, L), (n_full * L, 1, T - n_full * L)):
                if length == 0:
                    continue
                piece = slice(start, start + n_chunks * length)
                rc, kc, vc = (t[:, :, piece].reshape(B, H, n_chunks, length, N) for t in (r, k, v))
                y, S = self._chunked(rc, kc, vc, S, log_w, u)
                ys.append(y.reshape(B, H, n_chunks * length, N))
        y = torch.cat(ys, dim=2) if len(ys) > 1 else ys[0]
        return self._output(y, g), (x[:, -1], S)

    @staticmethod
    def _chunked(r, k, v, S, log_w, u):
        """r, k, v: (B, H, n, L, N) chunks; S: (B, H, N, N) state entering the first chunk."""
        L = r.shape[3]
        t = torch.arange(L, device=r.device, dtype=torch.float32)
        lw = log_w.view(-1, 1, 1)  # (H, 1, 1)
        # intra-chunk: y_t += sum_{s<t} w^(t-1-s) (r_t . k_s) v_s  +  (r_t . (u * k_t)) v_t
        diff = (t.view(L, 1) - 1 - t.view(1, L)).clamp(min=0)
        decay = torch.exp(lw * diff) * (t.view(L, 1) > t.view(1, L))  # (H, L, L), zero on/above diagonal
        y = ((r @ k.transpose(-1, -2)) * decay.unsqueeze(1)) @ v
        y = y + (r * u.view(1, -1, 1, 1, u.shape[-1]) * k).sum(-1, keepdim=True) * v
        # what each chunk adds to the state at its end: sum_s w^(L-1-s) k_s^T v_s
        k_to_end = k * torch.exp(lw * (L - 1 - t)).view(1, -1, 1, L, 1)
        dS = k_to_end.transpose(-1, -2) @ v  # (B, H, n, N, N)
        w_L = torch.exp(lw * L).unsqueeze(0)  # (1, H, 1, 1): decay across a whole chunk
        states = []  # the state entering each chunk; a short sequential scan over chunks
        for c in range(r.shape[2]):
            states.append(S)
            S = w_L * S + dS[:, :, c]
        states = torch.stack(states, dim=2)  # (B, H, n, N, N)
        # inter-chunk: y_t += w^t r_t S_in
        y = y + (r * torch.exp(lw * t).view(1, -1, 1, L, 1)) @ states
        return y, S

    def step(self, x, state=None):
        """Recurrent form: one token x (B, 1, C); the same function as forward() with T = 1."""
        B, _, C = x.shape
        H, N = self.n_head, self.head_size
        x_prev, S = (None, None) if state is None else state
        r, k, v, g = self._projections(x, x_prev)
        r, k, v = r.float().view(B, H, N), k.float().view(B, H, N), v.float().view(B, H, N)
        S = x.new_zeros(B, H, N, N, dtype=torch.float32) if S is None else S
        w = torch.exp(-torch.exp(self.time_decay.float())).view(1, H, 1, 1)
        kv = k.unsqueeze(-1) * v.unsqueeze(-2)  # k_t^T v_t, (B, H, N, N)
        with torch.autocast(x.device.type, enabled=False):
            y = (r.unsqueeze(-2) @ (S + self.time_faaaa.float().unsqueeze(-1) * kv)).view(B, H, 1, N)
        S = w * S + kv
        return self._output(y, g), (x[:, -1], S)


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
        hidden = int(3.5 * C) // 32 * 32  # RWKV-5's 3.5x (not 4x): with TimeMix's gate, a layer stays near GPT's size
        self.key = nn.Linear(C, hidden, bias=config.bias)
        self.value = nn.Linear(hidden, C, bias=config.bias)
        self.receptance = nn.Linear(C, C, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, state=None):
        shifted = token_shift(x, state)
        k = torch.relu(self.key(torch.lerp(x, shifted, self.time_maa_k))).square()
        r = torch.sigmoid(self.receptance(torch.lerp(x, shifted, self.time_maa_r)))
        return self.dropout(r * self.value(k)), x[:, -1]


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


class CausalSelfAttention(nn.Module):
    """Causal attention with n_head query heads sharing n_kv_head key/value heads.

    parallel:   y_t = softmax_{s in window(t)}(q_t . k_s / sqrt(D)) v_s, window(t) = [t-W+1, t] (or [0, t])
    recurrent:  the same, with k_s, v_s of past tokens read from a cache instead of recomputed.
    - SWA (window_size=W): the cache keeps exactly the last W-1 keys/values: constant memory.
    - GQA (n_kv_head < n_head, no window): the cache keeps every past key/value: it grows with the context,
      n_head / n_kv_head times slower than a multi-head cache (appended in place, see append_to_cache).
    - GPT (rotary=False, n_kv_head=n_head, no window): nanoGPT's attention with a KV cache.
    State: (k_cache, v_cache, pos) where pos counts the tokens seen so far.
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
        pos = 0 if state is None else state[2]
        if self.rotary:
            positions = torch.arange(pos, pos + T, device=x.device)
            q, k = apply_rotary(q, positions), apply_rotary(k, positions)
        if state is not None and self.window_size is not None:
            k, v = torch.cat([state[0], k], dim=2), torch.cat([state[1], v], dim=2)  # at most W-1+T keys
        elif state is not None:
            k, v = append_to_cache(state[0], k), append_to_cache(state[1], v)
        # key j sits at absolute position pos + T - S + j (S keys); SWA slots before position 0 are empty
        S = k.shape[2]
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
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=KV != H,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )
        y = self.dropout(self.output(y.transpose(1, 2).reshape(B, T, C)))
        if self.window_size is not None:  # keep exactly the last W-1 keys/values, zero-padded in front
            keep = self.window_size - 1
            pad = max(keep - S, 0)
            k, v = (F.pad(t, (0, 0, pad, 0))[:, :, -keep:] if keep > 0 else t[:, :, :0] for t in (k, v))
        return y, (k, v, pos + T)


# ----------------------------------------------------------------------------------------------------
# Mixture of experts


class TinyMoE(nn.Module):
    """Top-k routed mixture of expert MLPs with a Switch/GShard load-balancing loss.

        p = softmax(W_router x)            chosen = top-k of p,  gates = p[chosen] / sum(p[chosen])
        y = sum_{e in chosen} gates_e * W2_e gelu(W1_e x)
        aux = E * sum_e f_e * P_e          f_e = share of routing slots that went to e, P_e = mean_t p_e
    aux is 1 for perfectly balanced routing and grows to E when every token picks the same experts. Each
    expert only computes the tokens routed to it. Position-wise, so its recurrent form is itself: no state.
    """

    def __init__(self, config):
        super().__init__()
        C, E = config.n_embd, config.num_experts
        assert 1 <= config.num_active_experts <= E
        self.num_experts, self.num_active = E, config.num_active_experts
        self.router = nn.Linear(C, E, bias=False)
        self.experts = nn.ModuleList(
            nn.Sequential(
                nn.Linear(C, config.expert_dim, bias=config.bias),
                nn.GELU(),
                nn.Linear(config.expert_dim, C, bias=config.bias),
                nn.Dropout(config.dropout),
            )
            for _ in range(E)
        )

    def forward(self, x):
        B, T, C = x.shape
        E, K = self.num_experts, self.num_active
        x = x.reshape(B * T, C)
        probs = F.softmax(self.router(x).float(), dim=-1)  # (BT, E)
        gates, chosen = probs.topk(K, dim=-1)  # (BT, K)
        gates = gates / gates.sum(-1, keepdim=True)
        y = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)
            if token.numel() > 0:
                y.index_add_(0, token, expert(x[token]) * gates[token, slot].unsqueeze(-1).to(x.dtype))
        share = F.one_hot(chosen, E).sum(dim=(0, 1)).float() / (B * T * K)  # f_e (no gradient: a count)
        aux_loss = E * (share * probs.mean(0)).sum()
        return y.view(B, T, C), aux_loss


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

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW; weight decay only on matrices, not on norms, biases or the RWKV time_* parameters."""
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        decay = [p for n, p in params.items() if p.dim() >= 2 and ".time_" not in n]
        no_decay = [p for n, p in params.items() if not (p.dim() >= 2 and ".time_" not in n)]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")

    def estimate_mfu(self, fwdbwd_per_iter, dt):
        """Model flops utilisation against an A100's bf16 peak (312 TFLOPS), as nanoGPT reports it."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = 6 * self.get_num_params() + 12 * L * H * Q * T
        return flops_per_token * T * fwdbwd_per_iter / dt / 312e12

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _init_residual_projections(self, projections):
        # GPT-2's scaled init: the last projection of each residual branch shrinks with their number
        for linear in projections:
            nn.init.normal_(linear.weight, mean=0.0, std=0.02 / math.sqrt(len(projections)))


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
        has_attn = (layer_id + 1) % config.attn_every == 0
        self.ln_tmix, self.tmix = nn.LayerNorm(C, bias=bias), TimeMix(config, layer_id)
        self.ln_cmix, self.cmix = nn.LayerNorm(C, bias=bias), ChannelMix(config, layer_id)
        self.swa = self.gqa = self.moe = None
        if config.use_swa and has_attn:
            self.ln_swa = nn.LayerNorm(C, bias=bias)
            self.swa = CausalSelfAttention(config, n_kv_head=config.n_head, window_size=config.window_size)
        if config.use_gqa and has_attn:
            self.ln_gqa = nn.LayerNorm(C, bias=bias)
            self.gqa = CausalSelfAttention(config, n_kv_head=config.n_kv_head)
        if config.use_moe:
            self.ln_moe, self.moe = nn.LayerNorm(C, bias=bias), TinyMoE(config)

    def forward(self, x, state=None):
        """state: dict with one entry per stateful sub-layer (None = empty context)."""
        state = state or {}
        new_state, aux_loss = {}, x.new_zeros((), dtype=torch.float32)
        tmix = self.tmix.step if x.shape[1] == 1 and state.get("tmix") is not None else self.tmix
        for name, sub in (("tmix", tmix), ("cmix", self.cmix), ("swa", self.swa), ("gqa", self.gqa)):
            if sub is not None:
                y, new_state[name] = sub(getattr(self, "ln_" + name)(x), state.get(name))
                x = x + y
        if self.moe is not None:
            y, aux_loss = self.moe(self.ln_moe(x))
            x = x + y
        return x, new_state, aux_loss


class MicroRWKV(LanguageModel):
    """Token embedding -> n_layer Blocks -> LayerNorm -> tied LM head. State: a list of per-layer dicts."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.ln_in = nn.LayerNorm(config.n_embd, bias=config.bias)  # RWKV's ln0: normalise the embedding
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as in GPT
        self.apply(self._init_weights)
        self._init_residual_projections([
            linear for b in self.blocks for linear in (
                b.tmix.output, b.cmix.value, b.swa and b.swa.output, b.gqa and b.gqa.output,
                *(expert[2] for expert in (b.moe.experts if b.moe else [])),
            ) if linear is not None
        ])

    def _forward(self, idx, state, all_logits):
        x = self.drop(self.ln_in(self.wte(idx)))
        state = state or [None] * len(self.blocks)
        new_state, aux_losses = [], []
        for block, layer_state in zip(self.blocks, state):
            x, s, aux = block(x, layer_state)
            new_state.append(s)
            aux_losses.append(aux)
        x = self.ln_f(x)
        logits = self.lm_head(x if all_logits else x[:, [-1]])
        aux_loss = torch.stack(aux_losses).mean() if self.config.use_moe else x.new_zeros((), dtype=torch.float32)
        return logits, new_state, aux_loss


class GPTBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        self.ln_1 = nn.LayerNorm(C, bias=config.bias)
        self.attn = CausalSelfAttention(config, n_kv_head=config.n_head, rotary=False)
        self.ln_2 = nn.LayerNorm(C, bias=config.bias)
        self.mlp = nn.Sequential(
            nn.Linear(C, 4 * C, bias=config.bias), nn.GELU(approximate="tanh"),  # GPT-2's GELU: its weights load exactly
            nn.Linear(4 * C, C, bias=config.bias), nn.Dropout(config.dropout),
        )

    def forward(self, x, state=None):
        y, state = self.attn(self.ln_1(x), state)
        x = x + y
        return x + self.mlp(self.ln_2(x)), state


class GPT(LanguageModel):
    """nanoGPT's transformer: learned positions, causal multi-head attention, GELU MLP, tied embeddings.

    Its recurrent form is a KV cache that grows with the context; learned positions stop it at block_size,
    so generate() re-prefills the last block_size // 2 tokens when the cache is full.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(GPTBlock(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        self._init_residual_projections([linear for b in self.blocks for linear in (b.attn.output, b.mlp[2])])

    @classmethod
    def from_pretrained(cls, name_or_path, dropout=0.0):
        """OpenAI GPT-2 weights: a hub id ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl') or a local directory
        saved by transformers. Needs transformers, so the loading lives in pretrained.py."""
        from pretrained import load_gpt2
        return load_gpt2(name_or_path, dropout=dropout)

    def _forward(self, idx, state, all_logits):
        B, T = idx.shape
        pos = 0 if state is None else state[0][2]
        if pos + T > self.config.block_size:
            raise ValueError(f"GPT context of {pos + T} tokens exceeds block_size={self.config.block_size}")
        positions = torch.arange(pos, pos + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(positions))
        state = state or [None] * len(self.blocks)
        new_state = []
        for block, layer_state in zip(self.blocks, state):
            x, s = block(x, layer_state)
            new_state.append(s)
        x = self.ln_f(x)
        logits = self.lm_head(x if all_logits else x[:, [-1]])
        return logits, new_state, x.new_zeros((), dtype=torch.float32)

    def crop_prompt(self, idx):
        return idx[:, -self.config.block_size:]

    def next_state(self, history, state):
        if state[0][2] < self.config.block_size:
            return super().next_state(history, state)
        context = torch.cat(history, dim=1)[:, -(self.config.block_size // 2):]
        history[:] = [context]  # once per block_size // 2 tokens
        return self._forward(context, None, all_logits=False)[:2]  # cache full: re-prefill


def build_model(config):
    """The model that config.model_type names."""
    models = {"microrwkv": MicroRWKV, "gpt": GPT}
    if config.model_type not in models:
        raise ValueError(f"unknown model_type {config.model_type!r}; expected one of {sorted(models)}")
    return models[config.model_type](config)


if __name__ == "__main__":
    # The original README's configuration: build it and print its size.
    model = MicroRWKV(GPTConfig())
    print(f"MicroRWKV (README table config): {model.get_num_params() / 1e6:.2f}M parameters")
