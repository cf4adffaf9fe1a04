"""
Pretrained GPT-2 and RWKV-4 checkpoints from the Hugging Face hub (or a local copy), as evaluation baselines.

    python prepare_openwebtext.py                          # data/openwebtext, GPT-2 BPE
    python train.py config/eval_gpt2.py                    # OpenAI GPT-2 124M
    python prepare_openwebtext.py --tokenizer neox         # data/openwebtext_neox, GPT-NeoX-20B BPE
    python train.py config/eval_rwkv4_169m.py              # RWKV-4 169M, trained on the Pile

- GPT-2 loads into model.py's GPT (GPT.from_gpt2, as GPT.from_pretrained does): the same architecture, with biases, GPT-2's vocabulary
  of 50257 and its Conv1D weights transposed into nn.Linear ones.
- RWKV-4 loads into RWKV4 below, a port of transformers' RwkvForCausalLM that keeps its parameter names (so its
  state dict loads as is) but computes the WKV recurrence chunk by chunk in parallel instead of one token at a
  time: transformers' fast path is a CUDA kernel it downloads from the hub, and its fallback is a Python loop
  over every token, far too slow for an evaluation of 500 x 8 x 1024 tokens.

RWKV-4 Pile models read GPT-NeoX-20B token ids, not GPT-2's: give them data prepared with that tokenizer.
GPT-2 ids fed to RWKV-4 run without an error and measure nothing, so check_tokenizer() refuses them. (Even
then, losses per token of different tokenizers are not directly comparable: the NeoX BPE splits the same
text into a slightly different number of tokens.)

transformers is needed only to read and download checkpoints; it is imported on first use.
"""

import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from data import hub_reachable
from model import GPT, LanguageModel, token_shift

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HUB_PREFIXES = ("openai-community/gpt2", "RWKV/rwkv-4-")
GPT2_TOKENIZERS = ("r50k_base", "gpt2")  # the GPT-2 BPE as prepare_*.py name it in meta.json


class PretrainedError(RuntimeError):
    """A pretrained model that cannot be loaded (or used on this data). The message is one line."""


def is_pretrained_name(init_from):
    """True if init_from is for load_pretrained: a GPT-2 or RWKV-4 hub id, or a directory (saved by transformers)."""
    return init_from in GPT2_NAMES or init_from.startswith(HUB_PREFIXES) or os.path.isdir(init_from)


def load_pretrained(init_from, device="cpu", dropout=0.0):
    """The GPT-2 or RWKV-4 model that init_from names (a hub id or a local directory), on device.

    Returns (model, model_args): for GPT-2, model.py's GPT and its GPTConfig fields; for RWKV-4, an RWKV4 and a
    dict describing it. Raises PretrainedError with a one-line message when it cannot be loaded.
    """
    model_type = _from_pretrained(_transformers().AutoConfig, init_from).model_type
    if model_type == "gpt2":
        model = load_gpt2(init_from, dropout=dropout)
        model_args = dataclasses.asdict(model.config)
    elif model_type == "rwkv":
        model = load_rwkv4(init_from)
        model_args = {"model_type": "rwkv4", "init_from": init_from, **dataclasses.asdict(model.config)}
    else:
        raise PretrainedError(f"{init_from} holds a {model_type!r} model; only GPT-2 ('gpt2') and RWKV-4 ('rwkv') load")
    return model.to(device), model_args


def load_for_training(init_from, block_size, eval_only, dropout=0.0):
    """load_pretrained for train.py: RWKV-4 only for evaluation, and GPT-2's learned positions cropped to the
    configured block_size (the batches keep it), as nanoGPT does. PretrainedError on a bad combination."""
    model, model_args = load_pretrained(init_from, device="cpu", dropout=dropout)
    if model_args.get("model_type") not in ("microrwkv", "gpt") and not eval_only:
        raise PretrainedError(f"{init_from} is a {model_args.get('model_type')} model, which train.py only "
                              "evaluates: set eval_only=True")
    if block_size > model_args["block_size"]:
        raise PretrainedError(f"block_size={block_size} exceeds the pretrained model's context of "
                              f"{model_args['block_size']}")
    if model_args.get("model_type") == "gpt":
        model.crop_block_size(block_size)
        model_args["block_size"] = block_size
    return model, model_args


def check_tokenizer(model, meta):
    """Raise PretrainedError unless a dataset's meta.json (from prepare_*.py) suits this pretrained model."""
    gpt2_bpe = meta.get("tokenizer") in GPT2_TOKENIZERS
    if isinstance(model, RWKV4) and gpt2_bpe:
        raise PretrainedError("RWKV-4 reads GPT-NeoX-20B token ids but this dataset holds GPT-2 BPE ids; prepare it "
                              "with `python prepare_openwebtext.py --tokenizer neox` and set dataset='openwebtext_neox'")
    if isinstance(model, GPT) and not gpt2_bpe:
        raise PretrainedError(f"GPT-2 reads GPT-2 BPE (r50k_base) token ids but this dataset was tokenized with "
                              f"{meta.get('tokenizer')}; use dataset='openwebtext' (python prepare_openwebtext.py)")
    if meta.get("vocab_size", 0) > model.config.vocab_size:
        raise PretrainedError(f"the dataset's tokenizer has {meta['vocab_size']} tokens, more than the model's "
                              f"vocabulary of {model.config.vocab_size}")


# -----------------------------------------------------------------------------
# reading checkpoints with transformers


def _transformers():
    try:
        import transformers
    except ImportError:
        raise PretrainedError("transformers is not installed: pip install transformers") from None
    return transformers


def _from_pretrained(cls, init_from, **kwargs):
    """cls.from_pretrained(init_from) with one-line errors. Offline, only the local cache is tried: otherwise
    huggingface_hub retries for ~25 s before it gives up."""
    local_only = not os.path.isdir(init_from) and not hub_reachable()
    try:
        return cls.from_pretrained(init_from, local_files_only=local_only, **kwargs)
    except (OSError, ValueError) as e:
        if local_only:
            raise PretrainedError(f"cannot load {init_from}: the Hugging Face hub is unreachable and it is not in the "
                                  "local cache; download it once with network, or pass a directory written by "
                                  "save_pretrained()") from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PretrainedError(f"cannot load {init_from}: {reason}") from None


def load_gpt2(name_or_path, dropout=0.0):
    """OpenAI GPT-2 weights in model.py's GPT (GPT.from_gpt2), with one-line errors for the command line."""
    hf = _from_pretrained(_transformers().GPT2LMHeadModel, name_or_path, dtype=torch.float32)
    try:
        return GPT.from_gpt2(hf, dropout=dropout)
    except ValueError as e:
        raise PretrainedError(f"{name_or_path}: {e}") from None


def load_rwkv4(name_or_path):
    """An RWKV-4 checkpoint (transformers' RwkvForCausalLM format) in RWKV4, in float32."""
    hf = _from_pretrained(_transformers().RwkvForCausalLM, name_or_path, dtype=torch.float32)
    c = hf.config
    config = RWKV4Config(vocab_size=c.vocab_size, block_size=c.context_length, n_layer=c.num_hidden_layers,
                         n_embd=c.hidden_size, dim_att=c.attention_hidden_size or c.hidden_size,
                         dim_ffn=c.intermediate_size or 4 * c.hidden_size, layer_norm_epsilon=c.layer_norm_epsilon)
    with torch.device("meta"):
        model = RWKV4(config)
    # RwkvForCausalLM minus its "rwkv." prefix; assign=True takes its tensors over instead of copying them
    sd = {k.removeprefix("rwkv."): v for k, v in hf.state_dict().items()}
    model.load_state_dict(sd, assign=True)
    return model


# -----------------------------------------------------------------------------
# RWKV-4


@dataclass
class RWKV4Config:
    vocab_size: int = 50277  # the GPT-NeoX-20B tokenizer
    block_size: int = 1024  # the context it was trained on (an RNN, it runs past it too)
    n_layer: int = 12
    n_embd: int = 768
    dim_att: int = 768
    dim_ffn: int = 3072
    layer_norm_epsilon: float = 1e-5
    chunk_len: int = 32  # WKV tokens computed in parallel; a chunk costs (B, chunk_len, chunk_len, dim_att) floats
    aux_loss_weight: float = 0.0  # LanguageModel.forward adds aux_loss_weight * aux_loss; RWKV-4 has no aux loss


def wkv4(time_decay, time_first, k, v, state=None, chunk_len=32):
    """RWKV-4's WKV, per channel, with decay w = exp(time_decay) and bonus u = time_first:

        y_t = (a_{t-1} + e^(u + k_t) v_t) / (b_{t-1} + e^(u + k_t))
        a_t = e^-w a_{t-1} + e^k_t v_t          b_t = e^-w b_{t-1} + e^k_t

    i.e. y_t is a softmax-weighted mean of v_s (s <= t) with logits (t-1-s)(-w) + k_s (s < t) and u + k_t (s = t).
    Inside a chunk those logits are a (L x L) matrix per channel, max-subtracted like a softmax; across chunks
    the state (a, b) travels as (num, den, p) with a = num e^p, b = den e^p, so nothing overflows.
    k, v: (B, T, C). state: (num, den, p), each (B, C) float32, or None for an empty context.
    """
    B, T, C = k.shape
    k, v = k.float(), v.float()
    log_w = -torch.exp(time_decay.float())  # log of the per-step decay, (C,)
    u = time_first.float()
    if state is None:
        num, den, p = k.new_zeros(B, C), k.new_zeros(B, C), k.new_full((B, C), -1e38)
    else:
        num, den, p = state
    ys = []
    for start in range(0, T, chunk_len):
        kc, vc = k[:, start:start + chunk_len], v[:, start:start + chunk_len]
        L = kc.shape[1]
        t = torch.arange(L, device=k.device, dtype=torch.float32)
        lag = (t.view(L, 1) - 1 - t.view(1, L)).unsqueeze(-1)  # t-1-s, (L, L, 1)
        below, diag = lag >= 0, lag == -1
        bias = torch.where(below, lag * log_w, torch.where(diag, u, float("-inf")))  # (L, L, C)
        logits = bias + kc.unsqueeze(1)  # (B, t, s, C)
        state_logit = p.unsqueeze(1) + t.view(1, L, 1) * log_w  # the incoming state, decayed t steps: (B, L, C)
        m = torch.maximum(logits.amax(dim=2), state_logit)
        e, e_state = torch.exp(logits - m.unsqueeze(2)), torch.exp(state_logit - m)
        y = (e_state * num.unsqueeze(1) + torch.einsum("btsc,bsc->btc", e, vc)) / (e_state * den.unsqueeze(1) + e.sum(2))
        ys.append(y)
        # the state after the chunk: a <- e^(-wL) a + sum_s e^((L-1-s)(-w) + k_s) v_s, and b alike
        end_logit = (L - 1 - t).view(1, L, 1) * log_w + kc
        p_end = torch.maximum(end_logit.amax(dim=1), p + L * log_w)
        e_end, e_old = torch.exp(end_logit - p_end.unsqueeze(1)), torch.exp(p + L * log_w - p_end)
        num, den, p = e_old * num + (e_end * vc).sum(1), e_old * den + e_end.sum(1), p_end
    return torch.cat(ys, dim=1), (num, den, p)


class RWKV4TimeMix(nn.Module):
    """RWKV-4 time mixing: output(sigmoid(r) * wkv(k, v)), r/k/v from lerps of x_t and x_{t-1}.
    State: (x_prev (B, C), WKV state (num, den, p))."""

    def __init__(self, config):
        super().__init__()
        C, A = config.n_embd, config.dim_att
        self.chunk_len = config.chunk_len
        self.time_decay = nn.Parameter(torch.zeros(A))
        self.time_first = nn.Parameter(torch.zeros(A))
        # transformers' layout (1, 1, C); time_mix = 1 takes all of x_t, 0 all of x_{t-1}
        self.time_mix_key = nn.Parameter(torch.ones(1, 1, C))
        self.time_mix_value = nn.Parameter(torch.ones(1, 1, C))
        self.time_mix_receptance = nn.Parameter(torch.ones(1, 1, C))
        self.key = nn.Linear(C, A, bias=False)
        self.value = nn.Linear(C, A, bias=False)
        self.receptance = nn.Linear(C, A, bias=False)
        self.output = nn.Linear(A, C, bias=False)

    def forward(self, x, state=None):
        x_prev, wkv_state = (None, None) if state is None else state
        shifted = token_shift(x, x_prev)
        k = self.key(torch.lerp(shifted, x, self.time_mix_key))
        v = self.value(torch.lerp(shifted, x, self.time_mix_value))
        r = torch.sigmoid(self.receptance(torch.lerp(shifted, x, self.time_mix_receptance)))
        with torch.autocast(x.device.type, enabled=False):  # exponentials of the keys: float32 only
            y, wkv_state = wkv4(self.time_decay, self.time_first, k, v, wkv_state, self.chunk_len)
        return self.output(r * y.to(r.dtype)), (x[:, -1], wkv_state)


class RWKV4ChannelMix(nn.Module):
    """RWKV-4 channel mixing: sigmoid(r) * value(relu(key(.))^2). State: x_prev (B, C)."""

    def __init__(self, config):
        super().__init__()
        C, F = config.n_embd, config.dim_ffn
        self.time_mix_key = nn.Parameter(torch.ones(1, 1, C))
        self.time_mix_receptance = nn.Parameter(torch.ones(1, 1, C))
        self.key = nn.Linear(C, F, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(F, C, bias=False)

    def forward(self, x, state=None):
        shifted = token_shift(x, state)
        k = torch.relu(self.key(torch.lerp(shifted, x, self.time_mix_key))).square()
        r = torch.sigmoid(self.receptance(torch.lerp(shifted, x, self.time_mix_receptance)))
        return r * self.value(k), x[:, -1]


class RWKV4Block(nn.Module):
    def __init__(self, config, layer_id):
        super().__init__()
        C, eps = config.n_embd, config.layer_norm_epsilon
        self.pre_ln = nn.LayerNorm(C, eps=eps) if layer_id == 0 else None  # RWKV's ln0 on the embeddings
        self.ln1, self.attention = nn.LayerNorm(C, eps=eps), RWKV4TimeMix(config)
        self.ln2, self.feed_forward = nn.LayerNorm(C, eps=eps), RWKV4ChannelMix(config)

    def forward(self, x, state=None):
        state = state or {}
        if self.pre_ln is not None:
            x = self.pre_ln(x)
        y, att = self.attention(self.ln1(x), state.get("att"))
        x = x + y
        y, ffn = self.feed_forward(self.ln2(x), state.get("ffn"))
        return x + y, {"att": att, "ffn": ffn}


class RWKV4(LanguageModel):
    """RWKV-4 as in transformers' RwkvForCausalLM (names without its "rwkv." prefix), as a LanguageModel:
    model(idx, targets) -> (logits, loss), generate(), and forward_with_state() as an RNN."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(RWKV4Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def _forward(self, idx, state, all_logits):
        x, new_state = self._through_blocks(self.embeddings(idx), state)
        x = self.ln_out(x)
        logits = self.head(x if all_logits else x[:, [-1]])
        return logits, new_state, x.new_zeros((), dtype=torch.float32)
