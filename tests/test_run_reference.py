"""tools/run_reference.py on a fake checkout: a tmp directory whose model.py has nanoGPT's interface
(GPTConfig, GPT(config), forward(idx, targets) -> (logits, loss), configure_optimizers, get_num_params). The
driver trains it on train.py's batches, evaluates it on train.py's evaluation batches, and writes the JSON
that ablate.py --reference reads."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))
import ablate  # noqa: E402
import run_reference  # noqa: E402
from data import get_batch, load_tokens  # noqa: E402

FAKE_MODEL = '''
import math
from dataclasses import dataclass
import torch
import torch.nn as nn
import torch.nn.functional as F

SEEN = []  # the first token of every batch the model was given, in order


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.scale = nn.Parameter(torch.tensor(ZERO_OR_ONE))  # 0: logits all zero, the loss is ln(vocab_size)

    def forward(self, idx, targets=None):
        SEEN.append((self.training, idx.shape, int(idx[0, 0])))
        logits = self.scale * self.lm_head(self.wte(idx))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def get_num_params(self, non_embedding=True):
        return sum(p.numel() for p in self.parameters())

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay)
'''
TINY = ["--max_iters=4", "--eval_interval=2", "--eval_iters=2", "--batch_size=2", "--block_size=16", "--n_layer=1",
        "--n_embd=32", "--warmup_iters=1", "--lr_decay_iters=4"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    prep = subprocess.run([sys.executable, "prepare_tinystories.py", "--synthetic", "200", "--out_dir", str(data),
                           "--num_proc", "1"], cwd=ROOT, capture_output=True, text=True)
    assert prep.returncode == 0, prep.stderr
    return data


def fake_checkout(path, scale):
    path.mkdir()
    (path / "model.py").write_text(FAKE_MODEL.replace("ZERO_OR_ONE", scale))
    return path


def test_reference_run_on_a_fake_checkout(data_dir, tmp_path, capsys):
    repo = fake_checkout(tmp_path / "nanoGPT", "1.0")
    out = tmp_path / "ref.json"
    args = ["--impl", "nanogpt", "--repo", str(repo), "--seeds", "5,6", "--out", str(out), f"--data_dir={data_dir}", *TINY]
    assert run_reference.main(args) == 0
    ref = json.loads(out.read_text())
    assert ablate.load_reference("nanoGPT", str(out)) == ref  # ablate.py --reference reads it
    assert ref["tokens"] == 4 * 2 * 16 and ref["params"] == 2 * 50304 * 32 + 1
    assert [r["seed"] for r in ref["runs"]] == [5, 6] and "nanoGPT's own model.py" in ref["how"]
    run = ref["runs"][0]
    assert [c[0] for c in run["curve"]] == [0, 2, 4] and run["final_val"] == run["curve"][-1][4]
    assert run["curve"][-1][4] < run["curve"][0][4]  # it learned
    assert run["tok_s"] > 0 and 0 < run["train_s"] <= run["wall_s"]
    assert "nanoGPT seed 6: val" in capsys.readouterr().out
    # the batches were train.py's: the training generator seeded with the seed, evaluation with its own
    seen = sys.modules["reference_nanogpt_model"].SEEN
    train_data, val_data, _ = load_tokens(data_dir)
    gen = torch.Generator().manual_seed(5)
    expected = [int(get_batch(train_data, 16, 2, gen, "cpu")[0][0, 0]) for _ in range(4)]
    assert [s[2] for s in seen if s[0]][:4] == expected
    val_gen = torch.Generator().manual_seed(5 + 2 * 7_919)
    first_eval_val = [s[2] for s in seen if not s[0]][2:4]  # iter 0: 2 train batches, then 2 val batches
    assert first_eval_val == [int(get_batch(val_data, 16, 2, val_gen, "cpu")[0][0, 0]) for _ in range(2)]
    # a seed run again replaces its row and keeps the others
    assert run_reference.main([*args[:4], "--seeds", "6", *args[6:]]) == 0
    assert [r["seed"] for r in json.loads(out.read_text())["runs"]] == [5, 6]


def test_the_evaluation_is_cross_entropy(data_dir, tmp_path):
    """A model whose logits are all zero scores ln(vocab_size) exactly, on every split and evaluation."""
    repo = fake_checkout(tmp_path / "flat", "0.0")
    out = tmp_path / "flat.json"
    assert run_reference.main(["--impl", "nanorwkv", "--repo", str(repo), "--out", str(out), f"--data_dir={data_dir}",
                               *TINY, "--learning_rate=0.0", "--min_lr=0.0"]) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert all(c[3] == pytest.approx(math.log(50304)) and c[4] == pytest.approx(math.log(50304)) for c in run["curve"])


@pytest.mark.parametrize("args, message", [
    (["--repo", "/no/such/checkout"], "no model.py there"),
    (["--repo", "{tmp}", "--seeds", "1,x"], "--seeds must be comma-separated integers"),
    (["--repo", "{tmp}", "--n_layr=2"], "n_layr"),
    (["--repo", "{tmp}", "--data_dir=/no/such/data"], "no prepared dataset"),
])
def test_bad_input(tmp_path, args, message):
    fake_checkout(tmp_path / "repo", "1.0")
    args = [a.replace("{tmp}", str(tmp_path / "repo")) for a in args]
    with pytest.raises(run_reference.ReferenceError, match=message):
        run_reference.main(["--impl", "nanogpt", "--out", str(tmp_path / "o.json"), *args])
    assert not (tmp_path / "o.json").exists()


def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path):
    res = subprocess.run([sys.executable, "tools/run_reference.py", "--impl", "nanogpt", "--repo", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
