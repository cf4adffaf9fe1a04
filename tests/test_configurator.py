"""configurator.py: config files + --key=value overrides, checked against the defaults."""
import pytest

from configurator import ConfigError, apply_config, format_help, read_keys

DEFAULTS = {"batch_size": 12, "learning_rate": 6e-4, "compile": True, "out_dir": "out", "dataset": "tinystories_15k",
            "max_iters": 5000, "lr_decay_iters": 5000, "device": "cpu"}


def write(tmp_path, text, name="cfg.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_file_then_overrides(tmp_path):
    cfg = write(tmp_path, "import math\nbatch_size = 4\nmax_iters = 100\nlr_decay_iters = max_iters\n"
                          "learning_rate = 1e-3\n_private = 'ignored'\ndef helper():\n    return 1\n")
    out = apply_config([cfg, "--batch_size=8", "--compile=False", "--out_dir=out-x", "--device='cuda:1'"], DEFAULTS)
    assert out == {**DEFAULTS, "batch_size": 8, "max_iters": 100, "lr_decay_iters": 100, "learning_rate": 1e-3,
                   "compile": False, "out_dir": "out-x", "device": "cuda:1"}
    assert DEFAULTS["batch_size"] == 12  # the defaults are not modified


def test_later_arguments_win(tmp_path):
    a = write(tmp_path, "batch_size = 4\n", "a.py")
    b = write(tmp_path, "batch_size = 6\n", "b.py")
    assert apply_config(["--batch_size=2", a, b], DEFAULTS)["batch_size"] == 6
    assert apply_config([a, "--batch_size=2", b, "--batch_size=3"], DEFAULTS)["batch_size"] == 3


def test_bare_strings_and_int_for_float():
    out = apply_config(["--dataset=tinystories_sample", "--device=cuda:0", "--out_dir=123", "--learning_rate=1"],
                       DEFAULTS)
    assert out["dataset"] == "tinystories_sample" and out["device"] == "cuda:0" and out["out_dir"] == "123"
    assert out["learning_rate"] == 1.0 and isinstance(out["learning_rate"], float)


@pytest.mark.parametrize("arg, needle", [
    ("--nonexistent=3", "unknown config key 'nonexistent'"),
    ("--batch_size=2.5", "batch_size expects int, got float"),
    ("--batch_size=True", "batch_size expects int, got bool"),
    ("--compile=1", "compile expects bool, got int"),
    ("--learning_rate=True", "learning_rate expects float, got bool"),
    ("--learning_rate=fast", "learning_rate expects float, got str"),
    ("--batch_size", "expected --key=value"),
    ("-b", "expected a config file or --key=value"),
])
def test_bad_overrides(arg, needle):
    with pytest.raises(ConfigError) as e:
        apply_config([arg], DEFAULTS)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text, needle", [
    ("batch_sise = 4\n", "unknown config key 'batch_sise'"),
    ("compile = 'yes'\n", "compile expects bool, got str"),
    ("batch_size = 4 +\n", "syntax error"),
    ("batch_size = 1 // 0\n", "ZeroDivisionError"),
])
def test_bad_files(tmp_path, text, needle):
    cfg = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        apply_config([cfg], DEFAULTS)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found: nope.py"):
        apply_config(["nope.py"], DEFAULTS)


def test_help_lists_keys():
    text = format_help(DEFAULTS)
    assert "batch_size" in text and "12" in text


def test_read_keys_ignores_other_scripts_keys_but_checks_types(tmp_path):
    cfg = write(tmp_path, "batch_size = 4\nn_layer = 2\n")
    assert read_keys(cfg, {"batch_size": 12, "dataset": "x"}) == {"batch_size": 4, "dataset": "x"}
    with pytest.raises(ConfigError, match="batch_size expects int"):
        read_keys(write(tmp_path, "batch_size = 'four'\n", "bad.py"), {"batch_size": 12})
    with pytest.raises(ConfigError, match="config file not found"):
        read_keys(str(tmp_path / "missing.py"), {"batch_size": 12})
