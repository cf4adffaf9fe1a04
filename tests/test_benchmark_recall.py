"""benchmark_recall.py: MQAR rows are labelled as the task defines them, and the task measures recall: a tiny
global-attention model learns it in seconds, while sliding-window attention whose window is shorter than
every key-query distance cannot."""
import json

import pytest
import torch
import torch.nn as nn

import benchmark_recall
from benchmark_recall import key_distances, make_mqar
from conftest import tiny_config
from model import CausalSelfAttention


@pytest.mark.parametrize("seq_len, pairs", [(32, 4), (64, 16), (512, 64)])
def test_mqar_labels_are_the_value_after_the_keys_earlier_occurrence(seq_len, pairs):
    V = 256
    inputs, targets = make_mqar(20, seq_len, pairs, V, seed=3)
    assert inputs.shape == targets.shape == (20, seq_len) and inputs.dtype == targets.dtype == torch.long
    for row, labels in zip(inputs.tolist(), targets.tolist()):
        keys, values = row[0:2 * pairs:2], row[1:2 * pairs:2]
        assert len(set(keys)) == pairs and all(k < V // 2 for k in keys) and all(V // 2 <= v < V for v in values)
        supervised = [t for t, y in enumerate(labels) if y != -1]
        assert len(supervised) == pairs and all(t >= 2 * pairs for t in supervised)
        for t in supervised:
            earlier = row.index(row[t])  # the key's first occurrence
            assert earlier < t and labels[t] == row[earlier + 1]
        # every other position is unsupervised, and no unsupervised token after the pairs is a key
        assert all(row[t] >= V // 2 for t in range(2 * pairs, seq_len) if t not in supervised)
    # the distances are those of the rows, one per supervised position, row-major
    d = key_distances(inputs, targets)
    rows, cols = torch.nonzero(targets >= 0, as_tuple=True)
    assert d.tolist() == [c - inputs[r].tolist().index(inputs[r, c].item()) for r, c in zip(rows.tolist(), cols.tolist())]


def test_mqar_queries_are_mostly_near_but_reach_far():
    """Zoology's power law: most queries come in the first slots after the pairs, some much later."""
    inputs, targets = make_mqar(200, 512, 16, 512, seed=0)
    slots = (torch.nonzero(targets >= 0, as_tuple=True)[1] - 32) // 2
    assert (slots < 24).float().mean() > 0.3 and slots.max() > 200


def test_mqar_is_seeded_and_refuses_impossible_settings():
    a, b = make_mqar(4, 64, 8, 64, seed=1), make_mqar(4, 64, 8, 64, seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], make_mqar(4, 64, 8, 64, seed=2)[0])
    with pytest.raises(ValueError, match="seq_len"):
        make_mqar(4, 30, 8, 64, seed=0)  # 8 queries need 8 slots after the 16 pair tokens


class AttentionOnly(nn.Module):
    """Two pre-norm attention layers and MLPs, nothing else that mixes tokens: recall must come from attention."""

    def __init__(self, window, V=32, C=64):
        super().__init__()
        cfg = tiny_config(n_embd=C, n_head=2, dropout=0.0)
        self.wte, self.head = nn.Embedding(V, C), nn.Linear(C, V)
        self.attn = nn.ModuleList(CausalSelfAttention(cfg, n_kv_head=2, window_size=window) for _ in range(2))
        self.mlp = nn.ModuleList(nn.Sequential(nn.LayerNorm(C), nn.Linear(C, 2 * C), nn.GELU(), nn.Linear(2 * C, C))
                                 for _ in range(2))
        self.norms = nn.ModuleList(nn.LayerNorm(C) for _ in range(3))

    def forward(self, idx):
        x = self.wte(idx)
        for attn, mlp, norm in zip(self.attn, self.mlp, self.norms):
            x = x + attn(norm(x))[0]
            x = x + mlp(x)
        return self.head(self.norms[2](x))


def recall_after_training(window, steps=120):
    torch.manual_seed(0)
    model = AttentionOnly(window)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        x, y = make_mqar(32, 24, 3, 32, seed=step)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = make_mqar(512, 24, 3, 32, seed=10**6)
    with torch.no_grad():
        pred = model(x).argmax(-1)
    return (pred[y >= 0] == y[y >= 0]).float().mean().item(), key_distances(x, y).min().item()


def test_global_attention_learns_tiny_mqar_and_a_window_shorter_than_every_distance_cannot():
    acc, _ = recall_after_training(window=None)
    assert acc > 0.9
    acc_swa, nearest = recall_after_training(window=2)  # sees itself and one token back
    assert nearest >= 2  # every key is out of the window's reach
    assert acc_swa < 0.3  # guessing among the row's 3 values would give about 1/3


def test_a_tiny_sweep_writes_runs_a_table_and_a_plot(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark_recall, "TRAIN_SETTINGS", [(32, 4)])
    monkeypatch.setattr(benchmark_recall, "TEST_SETTINGS", [(32, 4), (64, 8), (512, 64), (1024, 64)])
    out = tmp_path / "recall"
    benchmark_recall.main(["--models", "gpt,rwkv7-gqa4", "--d_model", "64", "--steps", "2", "--tokens_per_step", "64",
                           "--test_examples", "4", "--lrs", "1e-3", "--out_dir", str(out)])
    runs = json.loads((out / "recall_runs.json").read_text())
    assert {r["model"] for r in runs["summary"]} == {"gpt", "rwkv7-gqa4"}
    gpt = next(r for r in runs["runs"] if r["model"] == "gpt")
    hybrid = next(r for r in runs["runs"] if r["model"] == "rwkv7-gqa4")
    assert gpt["results"]["1024x64"] is None and hybrid["results"]["1024x64"] is not None  # learned positions end at 512
    assert gpt["loss_curve"] == [gpt["final_train_loss"]]  # one point per 100 steps: here both are the mean of 2
    # d_model 64 with head size 64 is one head. GPT's state is a K/V cache of 4 layers x 2 x 512 x 64 floats;
    # the hybrid's is one GQA layer's K/V cache (2 x 512 x 64) plus 4 RWKV-7 states (x_prev of both mixers,
    # 2 x 64, and one 64 x 64 matrix per layer)
    assert gpt["state_bytes"] == 4 * 2 * 512 * 64 * 4
    assert hybrid["state_bytes"] == (2 * 512 * 64 + 4 * (2 * 64 + 64 * 64)) * 4
    # after 4,096 tokens (fresh models of the same layouts): GPT's cache grows 8x, the hybrid's only in its GQA layer
    long = {r["model"]: r["state_bytes_long"] for r in runs["summary"]}
    assert long["gpt"] == 4 * 2 * 4096 * 64 * 4
    assert long["rwkv7-gqa4"] == (2 * 4096 * 64 + 4 * (2 * 64 + 64 * 64)) * 4
    assert "| rwkv7-gqa4 | RRRG |" in (out / "recall_table.md").read_text()
    assert (out / "recall_vs_state.png").stat().st_size > 0
    # a finished run is reused only for the same task and model
    with pytest.raises(SystemExit, match="vocab_size"):
        benchmark_recall.main(["--models", "gpt", "--d_model", "64", "--steps", "2", "--tokens_per_step", "64",
                               "--lrs", "1e-3", "--vocab_size", "256", "--out_dir", str(out)])
    # the table holds one training budget: a report for another number of steps leaves these runs out
    with pytest.raises(SystemExit, match="no finished runs of 3 steps"):
        benchmark_recall.main(["--report_only", "--d_model", "64", "--steps", "3", "--tokens_per_step", "64",
                               "--out_dir", str(out)])
    benchmark_recall.main(["--report_only", "--d_model", "64", "--steps", "2", "--tokens_per_step", "64",
                           "--out_dir", str(out)])
    assert "| gpt | G |" in (out / "recall_table.md").read_text()


def test_short_weight_draws_the_shortest_setting_that_many_times_as_often(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark_recall, "TRAIN_SETTINGS", [(32, 4), (64, 8)])
    monkeypatch.setattr(benchmark_recall, "TEST_SETTINGS", [(32, 4), (512, 64)])
    drawn = []  # seq_len of every row batch the run makes, training first, then the test rows
    real = benchmark_recall.make_mqar
    monkeypatch.setattr(benchmark_recall, "make_mqar",
                        lambda n, seq_len, *a, **k: drawn.append(seq_len) or real(n, seq_len, *a, **k))
    share = {}
    for weight in (1, 5):
        drawn.clear()
        benchmark_recall.main(["--models", "gpt", "--d_model", "64", "--n_layer", "1", "--steps", "300",
                               "--tokens_per_step", "64", "--test_examples", "4", "--lrs", "1e-3",
                               "--short_weight", str(weight), "--out_dir", str(tmp_path)])
        share[weight] = drawn[:300].count(32) / 300
    assert abs(share[1] - 1 / 2) < 0.09 and abs(share[5] - 5 / 6) < 0.065  # 3 standard deviations of 300 draws
    # each mix is its own run file, and a report takes only the runs of the mix it is given
    runs = json.loads((tmp_path / "recall_runs.json").read_text())["runs"]
    assert [r["short_weight"] for r in runs] == [5]
    assert len(list((tmp_path / "runs").glob("*.json"))) == 2
