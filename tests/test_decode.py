"""decode.py: the fast RWKV-7 step gives the model's own recurrent step (logits and every state tensor), in
float64 on random official-shape weights of real scale, batch 2, from a prefilled prompt; bf16 weights follow
the float32 model; generate.py decodes pure RWKV-7 through it and every other layout through the model."""
import pytest
import torch

import benchmark_rwkv_runtime
import decode
import generate
import import_rwkv
from checkpoint import cast_weights
from conftest import FULL_X051A, tiny_config
from decode import Decoder, decoder_for
from model import MicroRWKV

V = 300


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A MicroRWKV imported from an official-shape file (untied head, LoRA ranks of their own), 3 x 64."""
    path = tmp_path_factory.mktemp("decode") / "model.pth"
    torch.save(benchmark_rwkv_runtime.official_weights(3, 64, 32, V, (24, 16, 8, 40), seed=1), path)
    sd, config, _ = import_rwkv.import_pth(str(path), tokenizer="gpt2")
    model = MicroRWKV(config)
    model.load_state_dict(sd)
    return model.eval()


def steps(stepper, model, prompt, tokens):
    """Prefill prompt (B, T) with the model, then feed tokens (B, n) one at a time through stepper."""
    logits, state = generate.prefill(model, prompt)
    out = [logits]
    for t in range(tokens.shape[1]):
        logits, state = stepper.next_state([tokens[:, t:t + 1]], state)
        out.append(logits[:, -1])
    return torch.stack(out, 1), state


def flat(state):
    return [t for layer in state for t in (*layer.tmix, layer.cmix)]


@torch.no_grad()
def test_decoder_is_the_models_recurrent_step_in_float64(official):
    model = official.double()
    gen = torch.Generator().manual_seed(0)
    prompt, tokens = torch.randint(0, V, (2, 7), generator=gen), torch.randint(0, V, (2, 12), generator=gen)
    ours, ours_state = steps(Decoder(model), model, prompt, tokens)
    ref, ref_state = steps(model, model, prompt, tokens)
    assert ours.dtype == torch.float64 and ours.std() > 0.5  # logits of a real scale, not near zero
    assert (ours - ref).abs().max() < 1e-10 * ref.abs().max()
    assert [s.pos for s in ours_state] == [s.pos for s in ref_state] == [19] * 3
    for a, b in zip(flat(ours_state), flat(ref_state)):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert (a - b).abs().max() < 1e-10 * b.abs().max()
    # rows are independent: row 1 alone gives row 1's logits
    alone, _ = steps(Decoder(model), model, prompt[1:], tokens[1:])
    assert (alone[0] - ours[1]).abs().max() < 1e-10 * ref.abs().max()
    official.float()


@torch.no_grad()
def test_bf16_weights_follow_the_float32_model(official):
    gen = torch.Generator().manual_seed(1)
    prompt, tokens = torch.randint(0, V, (2, 5), generator=gen), torch.randint(0, V, (2, 8), generator=gen)
    ref, _ = steps(official, official, prompt, tokens)
    bf16 = cast_weights(MicroRWKV(official.config).eval(), torch.bfloat16)
    bf16.load_state_dict(official.state_dict())
    ours, state = steps(Decoder(bf16), bf16, prompt, tokens)
    assert state[0].tmix.S.dtype == torch.float32
    err = ((ours.float() - ref).abs().max() / ref.abs().max()).item()
    assert 1e-4 < err < 0.05  # bf16 rounding, not a wrong formula


def test_generate_decodes_pure_rwkv7_through_the_decoder(official, monkeypatch):
    assert isinstance(decoder_for(official), Decoder)
    for layout in (dict(FULL_X051A), dict(rwkv_version="x070", layers="RG"), dict(rwkv_version="x070", use_moe=True)):
        model = MicroRWKV(tiny_config(**{**FULL_X051A, "use_swa": False, "use_gqa": False, "use_moe": False, **layout}))
        assert decoder_for(model) is model, layout
    calls = []
    step = Decoder.next_state
    monkeypatch.setattr(Decoder, "next_state", lambda self, *a: calls.append(1) or step(self, *a))
    idx = torch.tensor([[1, 2, 3]])
    out = list(generate.token_stream(official, idx, generate.prefill(official, idx), 5, lambda lg: lg.argmax(-1, keepdim=True)))
    assert len(out) == 5 and len(calls) == 4


@torch.no_grad()
@pytest.mark.parametrize("vnni", [True, False])
def test_int8_weights_follow_the_float32_model(official, monkeypatch, vnni):
    monkeypatch.setattr(decode, "VNNI", vnni)  # without VNNI the inputs are rounded to 7 bits, not 8
    gen = torch.Generator().manual_seed(2)
    prompt, tokens = torch.randint(0, V, (2, 5), generator=gen), torch.randint(0, V, (2, 8), generator=gen)
    ref, ref_state = steps(official, official, prompt, tokens)
    decoder = Decoder(official, int8=True)
    assert torch.ops.quantized.linear_unpack(decoder.layers[0].packed[0])[0].dtype == torch.qint8
    assert torch.ops.quantized.linear_unpack(decoder.head[1][0])[0].shape == (V, 64)  # (float32 list, int8 list)
    ours, state = steps(decoder, official, prompt, tokens)
    assert ours.dtype == state[0].tmix.S.dtype == torch.float32
    err = ((ours - ref).abs().max() / ref.abs().max()).item()
    assert 1e-4 < err < (0.03 if vnni else 0.05)  # 8-bit rounding of weights and inputs, not a wrong formula
    # each row is rounded on its own scale: a row decoded in a batch is the row decoded alone (up to float32's
    # order of sums, about 1e-7; one scale for the batch would move it by about 1e-2)
    alone, _ = steps(decoder, official, prompt[1:], tokens[1:])
    assert ((alone[0] - ours[1]).abs().max() / ref.abs().max()).item() < 1e-5
    # the head's forward hooks still apply (generate.py masks the padding ids with one)
    handle = official.lm_head.register_forward_hook(lambda m, a, logits: logits.index_fill(-1, torch.arange(290, V), -1e9))
    try:
        masked, _ = steps(decoder, official, prompt, tokens[:, :1])
    finally:
        handle.remove()
    assert (masked[:, 1, 290:] == -1e9).all() and (masked[:, 1, :290] == ours[:, 1, :290]).all()
    with pytest.raises(ValueError, match="pure RWKV-7"):
        decoder_for(MicroRWKV(tiny_config(**FULL_X051A)), int8=True)
