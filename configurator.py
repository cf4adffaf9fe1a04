"""
Configuration from plain Python files and command-line overrides, nanoGPT style.

    python train.py config/train_tinystories.py --batch_size=8 --compile=False

Arguments are processed left to right:
  - an argument without a leading '--' is a config file: it is executed as Python and every
    top-level name it assigns (other than _private names, imported modules, functions and classes)
    must be an existing config key with a value of the right type;
  - '--key=value' overrides one key; the value is parsed as a Python literal
    (ast.literal_eval), and for string keys the raw text is used when it is not a string literal
    (so --device=cuda:1 and --resume_ckpt=ckpt-500 work without quotes).

Type checking is against the default value's type: an int is accepted (and converted) where a
float is expected, but a bool is not accepted where an int or float is expected (and vice versa).
A key whose default is None accepts any value.

Any problem raises ConfigError with a one-line message; train.py prints it as `error: ...` and
exits non-zero. Unlike nanoGPT's exec-into-globals configurator, an unknown key is an error, not
a silent new global.
"""

import ast
import os
import types

__all__ = ["ConfigError", "apply_config", "check_value", "format_help", "read_keys"]


class ConfigError(ValueError):
    """A bad config file or command-line override (one-line message)."""


def _type_name(value):
    return type(value).__name__


def check_value(key, value, default, source):
    """Return `value` converted to the type of `default`, or raise ConfigError."""
    if default is None:
        return value
    expected = type(default)
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, float)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(
            f"{source}: {key} expects {expected.__name__}, got {_type_name(value)} {value!r}"
        )
    return value


def _is_config_value(value):
    return not isinstance(value, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type))


def _apply_file(path, config, unknown_keys="error"):
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        code = compile(source, path, "exec")
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    # the file sees the current values (so it may write e.g. `lr_decay_iters = max_iters`)
    namespace = dict(config)
    namespace["__file__"] = path
    namespace["__name__"] = "__config__"
    try:
        exec(code, namespace)
    except Exception as e:  # a config file is user code: report its error on one line
        raise ConfigError(f"{path}: {type(e).__name__}: {e}") from None
    for key, value in namespace.items():
        if key.startswith("_") or not _is_config_value(value):
            continue
        if key not in config:
            if unknown_keys == "ignore":
                continue
            raise ConfigError(f"{path}: unknown config key '{key}'")
        config[key] = check_value(key, value, config[key], path)


def _parse_override(arg, config):
    key, sep, raw = arg[2:].partition("=")
    if not sep or not key:
        raise ConfigError(f"expected --key=value, got '{arg}'")
    if key not in config:
        raise ConfigError(f"unknown config key '{key}' (from '{arg}')")
    default = config[key]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw  # not a literal: treat as a bare string
    if isinstance(default, str) and not isinstance(value, str):
        value = raw  # e.g. --wandb_run_name=123 or --dataset=None stay strings
    config[key] = check_value(key, value, default, f"--{key}")


def apply_config(args, config):
    """Apply config files and --key=value overrides in `args` to a copy of `config`.

    `config` maps every known key to its default value. Returns the updated dict.
    """
    config = dict(config)
    for arg in args:
        if arg.startswith("--"):
            _parse_override(arg, config)
        elif arg.startswith("-") and arg != "-":
            raise ConfigError(f"expected a config file or --key=value, got '{arg}'")
        else:
            _apply_file(arg, config)
    return config


def read_keys(path, config):
    """The values one config file gives the keys of `config` (their defaults for the rest), type-checked as
    apply_config checks them; names the file assigns that are not keys of `config` (another script's keys,
    e.g. batch_size for a script that only wants the model's fields) are ignored. ConfigError on a bad file."""
    config = dict(config)
    _apply_file(path, config, unknown_keys="ignore")
    return config


def format_help(config, prog="train.py"):
    lines = [
        f"usage: python {prog} [config_file.py ...] [--key=value ...]",
        "",
        "config keys (defaults):",
    ]
    width = max((len(k) for k in config), default=0)
    for key, value in config.items():
        lines.append(f"  {key:<{width}} = {value!r}  ({_type_name(value)})")
    return "\n".join(lines)
