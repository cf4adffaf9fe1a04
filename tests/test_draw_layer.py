"""draw_layer.py: a PNG for the default config and for the CPU config, printed state sizes equal to sizes
computed by hand, switched-off blocks and attn_every, the default output under out/ (never assets/), and bad
input as a one-line error."""
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import draw_layer

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
NAMES = ("TimeMix", "ChannelMix", "SWA", "GQA", "TinyMoE", "layer", "layer, no attn", "model")


def sizes(stdout):
    """{block: bytes column} of the printed table ('off', an int, or '<n>/token')."""
    rows = {}
    for line in stdout.splitlines():
        cols = re.split(r"\s{2,}", line.strip())
        if cols[0] in NAMES and len(cols) >= 2:
            rows[cols[0]] = int(cols[1]) if cols[1].isdigit() else cols[1]
    return rows


def run(argv, capsys):
    rc = draw_layer.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def check_png(path):
    import matplotlib.image
    assert path.read_bytes()[:8] == PNG
    assert matplotlib.image.imread(path).shape[:2] == (1200, 1080)  # 9 x 10 inches at dpi 120
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]  # renamed, nothing left over


def test_default_config(tmp_path, capsys):
    out_png = tmp_path / "layer.png"
    rc, out, err = run(["--out", str(out_png)], capsys)
    assert rc == 0 and err == ""
    check_png(out_png)
    assert f"wrote {out_png}" in out
    C, N, H = 768, 64, 12  # GPTConfig defaults: pure RWKV-7, n_embd 768, head_size 64, 8 layers
    s = sizes(out)
    assert s["TimeMix"] == 4 * (C + H * N * N) and s["ChannelMix"] == 4 * C
    assert s["SWA"] == s["GQA"] == s["TinyMoE"] == "off"
    assert s["model"] == 8 * (4 * (C + H * N * N) + 4 * C)


def test_tinystories_cpu_config(tmp_path, capsys):
    out_png = tmp_path / "sub" / "layer.png"
    rc, out, _ = run(["--config", str(ROOT / "config/train_tinystories_cpu.py"), "--out", str(out_png)], capsys)
    assert rc == 0
    check_png(out_png)
    s = sizes(out)  # pure RWKV-7: n_embd 128, head_size 32, n_head 4, n_layer 4
    assert s["TimeMix"] == 4 * (128 + 4 * 32 * 32) == 16896
    assert s["ChannelMix"] == 4 * 128
    assert s["SWA"] == s["GQA"] == s["TinyMoE"] == "off"
    assert s["model"] == 4 * (16896 + 512)
    # with every block on: SWA keeps window_size - 1 keys and values, GQA 2 x n_kv_head 2 x head_dim 32 floats a token
    full = tmp_path / "full.py"
    full.write_text((ROOT / "config/train_tinystories_cpu.py").read_text()
                    + "use_swa = True\nuse_gqa = True\nuse_moe = True\n")
    rc, out, _ = run(["--config", str(full), "--out", str(tmp_path / "full.png")], capsys)
    s = sizes(out)
    assert rc == 0 and s["SWA"] == 2 * 63 * 128 * 4 and s["GQA"] == "512/token" and s["TinyMoE"] == 0
    assert s["model"] == 4 * (16896 + 512 + 64512)


def test_sizes_by_hand(tmp_path, capsys):
    cfg = tmp_path / "small.py"
    cfg.write_text("n_layer = 2\nn_embd = 128\nhead_size = 32\nn_head = 4\nn_kv_head = 1\nwindow_size = 9\n"
                   "block_size = n_embd\nrwkv_version = 'x051a'\nuse_swa = True\nuse_gqa = True\nuse_moe = True\n"
                   "batch_size = 3  # a train.py key: ignored\n")
    rc, out, _ = run(["--config", str(cfg), "--out", str(tmp_path / "l.png")], capsys)
    assert rc == 0
    C, N = 128, 32
    tmix, cmix, swa, gqa_per_token = 4 * (C + (C // N) * N * N), 4 * C, 2 * (9 - 1) * C * 4, 2 * 1 * (C // 4) * 4
    assert sizes(out) == {"TimeMix": tmix, "ChannelMix": cmix, "SWA": swa, "GQA": f"{gqa_per_token}/token",
                          "TinyMoE": 0, "layer": tmix + cmix + swa, "model": 2 * (tmix + cmix + swa)}
    assert "2 x n_kv_head x head_dim x T floats, grows" in out
    assert f"{gqa_per_token * 2}/token" in out  # the whole model's growth: 2 layers


def test_switches_and_attn_every(tmp_path, capsys):
    cfg = tmp_path / "sw.py"
    cfg.write_text("n_layer = 4\nn_embd = 64\nhead_size = 16\nn_head = 2\nwindow_size = 5\n"
                   "use_swa = True\nattn_every = 2\n")
    rc, out, _ = run(["--config", str(cfg), "--out", str(tmp_path / "l.png")], capsys)
    assert rc == 0
    s = sizes(out)
    plain, swa = 4 * (64 + 4 * 16 * 16) + 4 * 64, 2 * 4 * 64 * 4
    assert s["GQA"] == "off" and s["TinyMoE"] == "off"
    assert s["SWA"] == swa and s["layer"] == plain + swa and s["layer, no attn"] == plain
    assert s["model"] == 2 * (plain + swa) + 2 * plain  # SWA in layers 2 and 4 only
    assert "only in layers 2, 4 (2 of 4)" in out


def test_layers_pattern_counts_each_block_where_it_is(tmp_path, capsys):
    cfg = tmp_path / "pattern.py"
    cfg.write_text("n_layer = 4\nn_embd = 64\nhead_size = 16\nn_head = 2\nn_kv_head = 1\nwindow_size = 5\n"
                   "layers = 'SSRG'\n")
    rc, out, _ = run(["--config", str(cfg), "--out", str(tmp_path / "l.png")], capsys)
    assert rc == 0
    s = sizes(out)
    plain, swa = 4 * (64 + 4 * 16 * 16) + 4 * 64, 2 * 4 * 64 * 4
    gqa_per_token = 2 * 1 * 32 * 4  # one K/V head of 32
    assert s["SWA"] == swa and s["layer, no attn"] == plain
    assert s["model"] == 4 * plain + 2 * swa  # SWA in layers 1 and 2
    assert f"{gqa_per_token}/token" in out.splitlines()[-1]  # GQA in one layer
    assert "only in layers 1, 2 (2 of 4)" in out and "only in layer 4 (1 of 4)" in out


def test_rwkv_version_names_the_time_mix():
    fields = dict(n_embd=64, head_size=16, n_layer=2, n_head=2, n_kv_head=1, window_size=4, attn_every=1, layers="",
                  use_swa=True, use_gqa=True, use_moe=True, cmix_mult=3.5, num_experts=4, num_active_experts=2,
                  expert_dim=32, block_size=16)
    assert 'RWKV-5 "x051a"' in draw_layer.sublayers(types.SimpleNamespace(**fields))[0]["detail"]
    rows = draw_layer.sublayers(types.SimpleNamespace(rwkv_version="x070", **fields))
    assert 'RWKV-7 "x070"' in rows[0]["detail"] and rows[0]["nbytes"] == 4 * (64 + 4 * 16 * 16)
    assert "hidden 256" in rows[1]["detail"]  # RWKV-7's ChannelMix is 4x wide


def test_default_out_is_under_out_not_assets(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run([], capsys)
    assert rc == 0 and out.startswith("wrote out/layer.png")
    check_png(tmp_path / "out" / "layer.png")
    assert not (tmp_path / "assets").exists()


@pytest.mark.parametrize("body, message", [
    (None, "config file not found"),
    ("n_embd = 100\n", "must be a multiple of"),  # not a multiple of n_head / head_size
    ("n_layer = 'four'\n", "n_layer expects int"),
    ("n_layer = undefined_name\n", "NameError"),
    ("model_type = 'gpt'\n", "draws a MicroRWKV layer"),
])
def test_bad_config_is_one_line_error(tmp_path, capsys, body, message):
    cfg = tmp_path / "bad.py"
    if body is not None:
        cfg.write_text(body)
    rc, out, err = run(["--config", str(cfg), "--out", str(tmp_path / "l.png")], capsys)
    assert rc == 1 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "l.png").exists()


def test_cli_error_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "draw_layer.py", "--config", str(tmp_path / "missing.py"),
                        "--out", str(tmp_path / "l.png")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("error: config file not found") and r.stderr.count("\n") == 1
