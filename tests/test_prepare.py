"""Tests of prepare_tinystories.py, offline, on subsets of ../shared/data/tinystories/ (its command line end to
end; the data.py functions it uses are tested on their own in test_data.py)."""

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, SAMPLE as TRAIN_TXT, SHARED  # noqa: E402

VALID_TXT = SHARED / "data" / "tinystories" / "valid_sample.txt"

import tiktoken  # noqa: E402

import data  # noqa: E402
import prepare_tinystories as pt  # noqa: E402
from data import load_tokens  # noqa: E402

ENC = tiktoken.get_encoding("r50k_base")
EOT = 50256


def parse_raw(path, n):
    """The first n stories of a raw TinyStories file, parsed independently of the code under test."""
    parts = re.split(r"^<\|endoftext\|>$", Path(path).read_text(encoding="utf-8"), flags=re.M)
    return [s.strip() for s in parts if s.strip()][:n]


def write_raw(path, stories, newline="\n"):
    with open(path, "w", encoding="utf-8", newline=newline) as f:
        for s in stories:
            f.write(s + "\n<|endoftext|>\n")
    return str(path)


def decode(tokens):
    """Token stream -> list of stories; every story must end with <|endoftext|>."""
    tokens = np.asarray(tokens)
    assert len(tokens) and tokens[-1] == EOT
    ends = np.flatnonzero(tokens == EOT)
    return [ENC.decode(t.tolist()) for t in np.split(tokens, ends + 1)[:-1] for t in [t[:-1]]]


def run(argv):
    return pt.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def stories():
    return parse_raw(TRAIN_TXT, 300)


def test_roundtrip_split_and_counts(tmp_path, stories):
    src = write_raw(tmp_path / "stories.txt", stories)
    out = tmp_path / "out"
    assert run(["--source", src, "--out_dir", out, "--val_fraction", 0.2, "--seed", 7, "--num_proc", 1]) == out
    train, val, meta = load_tokens(out, vocab_size=50257)
    assert train.dtype == np.uint16 and isinstance(train, np.memmap)
    tr, va = decode(train), decode(val)
    # every story exactly once, none lost or duplicated across the split, order kept within each split
    assert Counter(tr + va) == Counter(stories)
    assert len(va) == 60
    val_set = set(va)
    assert tr == [s for s in stories if s not in val_set]
    assert va == [s for s in stories if s in val_set]
    assert meta["train_tokens"] == len(train) and meta["val_tokens"] == len(val)
    assert meta["train_stories"] == len(tr) == (train == EOT).sum() and meta["val_stories"] == len(va)
    assert meta["vocab_size"] == 50257 and meta["tokenizer"] == "r50k_base" and meta["eot_token"] == EOT
    assert "stories.txt" in meta["source"]
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    # the split is a function of the seed
    pick = lambda seed: [s for s, _ in data.split_by_fraction(iter(stories), 300, 0.2, seed)]  # noqa: E731
    assert pick(7) == pick(7) != pick(8)


def test_formats_give_identical_tokens(tmp_path, stories):
    val_stories = parse_raw(VALID_TXT, 40)
    vsrc = write_raw(tmp_path / "valid.txt", val_stories)
    # raw text with Windows line ends and extra blank lines around stories: same stories after strip
    raw = write_raw(tmp_path / "a.txt", ["\n" + s + "\n\n" for s in stories], newline="\r\n")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("".join(json.dumps({"text": s, "id": i}) + "\n" for i, s in enumerate(stories)))
    arr = tmp_path / "c.json"
    arr.write_text(json.dumps([{"story": s, "summary": "x"} for s in stories]))
    outs = []
    for i, src in enumerate([raw, jsonl, arr]):
        outs.append(tmp_path / f"out{i}")
        run(["--source", src, "--val_source", vsrc, "--out_dir", outs[-1], "--num_proc", 1])
    for name in ("train.bin", "val.bin"):
        assert len({(o / name).read_bytes() for o in outs}) == 1
    train, val, meta = load_tokens(outs[0])
    assert decode(train) == stories and decode(val) == val_stories
    assert (meta["train_stories"], meta["val_stories"]) == (300, 40)


def test_parallel_matches_serial(tmp_path):
    # 2100 stories = 3 tokenizer batches, so num_proc 2 really runs a pool
    outs = [tmp_path / "p1", tmp_path / "p2"]
    for n, out in zip((1, 2), outs):
        run(["--source", TRAIN_TXT, "--num_stories", 2100, "--out_dir", out, "--num_proc", n])
    for name in ("train.bin", "val.bin"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
    train, val, meta = load_tokens(outs[1])
    assert decode(np.concatenate([train, val])) and meta["train_stories"] + meta["val_stories"] == 2100


def test_synthetic_stories(tmp_path, monkeypatch):
    a = pt.synthetic_stories(200, seed=3)
    assert a == pt.synthetic_stories(200, seed=3) != pt.synthetic_stories(200, seed=4)
    assert a[:50] == pt.synthetic_stories(50, seed=3)
    assert len(set(a)) == len(a)
    lengths = [len(ENC.encode_ordinary(s)) for s in a]
    assert 100 <= np.mean(lengths) <= 200 and min(lengths) >= 80 and max(lengths) <= 230
    for s in a:
        assert s.isascii() and s[0].isupper() and s.endswith(".") and "{" not in s and "  " not in s
        assert any(name in s for name, _ in pt.NAMES)
    monkeypatch.chdir(tmp_path)
    assert run(["--synthetic", 200, "--seed", 3, "--num_proc", 1]) == Path("data/synthetic")
    train, val, meta = load_tokens("data/synthetic", vocab_size=50304)
    assert Counter(decode(train) + decode(val)) == Counter(a)
    assert meta["val_stories"] == 20 and "not TinyStories" in meta["source"]


def test_default_names(tmp_path, monkeypatch, stories):
    assert [pt.dataset_name("tinystories", n) for n in (None, 15000, 1500)] == \
        ["tinystories", "tinystories_15k", "tinystories_1500"]
    src = write_raw(tmp_path / "s.txt", stories)
    vsrc = write_raw(tmp_path / "v.txt", stories[:50])
    monkeypatch.chdir(tmp_path)
    assert run(["--source", src, "--val_source", vsrc, "--num_stories", 40, "--num_proc", 1]) == \
        Path("data/tinystories_local_40")
    _, _, meta = load_tokens("data/tinystories_local_40")
    assert (meta["train_stories"], meta["val_stories"]) == (40, 4)  # a separate val set is cut to N // 10
    assert run(["--source", src, "--name", "mine", "--num_proc", 1]) == Path("data/mine")


def _bad_inputs(tmp):
    good = "once upon a time there was a cat.\n<|endoftext|>\n"
    (tmp / "empty.txt").write_text("")
    (tmp / "seps.txt").write_text("<|endoftext|>\n\n<|endoftext|>\n")
    (tmp / "s.csv").write_text("text\nhello\n")
    (tmp / "bad.txt").write_bytes(good.encode() * 50 + b"a story with \xff\xfe bytes\n<|endoftext|>\n")
    (tmp / "nofield.jsonl").write_text('{"text": "ok"}\n{"title": "no story here"}\n')
    (tmp / "broken.json").write_text('[{"text": "ok"}, {"text": ')
    (tmp / "one.txt").write_text(good)
    (tmp / "pretty.json").write_text(json.dumps({"text": "once upon a time"}, indent=2))
    (tmp / "stories").mkdir()
    (tmp / "good.txt").write_text(good * 5)
    return {
        "missing": (["--source", tmp / "nope.txt"], "no such file"),
        "empty": (["--source", tmp / "empty.txt"], "file is empty"),
        "no stories": (["--source", tmp / "seps.txt"], "no stories found"),
        "unknown format": (["--source", tmp / "s.csv"], "unknown format '.csv'"),
        "undecodable": (["--source", tmp / "bad.txt"], "not UTF-8 text"),
        "no text field": (["--source", tmp / "nofield.jsonl"], "nofield.jsonl:2: no 'text' or 'story'"),
        "bad json": (["--source", tmp / "broken.json"], "not valid JSON"),
        "empty val": (["--source", tmp / "good.txt", "--val_source", tmp / "empty.txt"], "file is empty"),
        "too few to split": (["--source", tmp / "one.txt"], "cannot split 1 stories"),
        "pretty object": (["--source", tmp / "pretty.json"], "line 1 (Expecting property name enclosed in double "
                          "quotes); expected one record per line (JSON Lines) or one array of records"),
        "directory": (["--source", tmp / "stories"], f"{tmp / 'stories'}: is a directory; give the files in it"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "no stories", "unknown format", "undecodable",
                                  "no text field", "bad json", "empty val", "too few to split", "pretty object",
                                  "directory"])
def test_bad_input(tmp_path, capsys, case):
    argv, message = _bad_inputs(tmp_path)[case]
    out = tmp_path / "data" / "x"
    with pytest.raises(SystemExit) as e:
        run(argv + ["--out_dir", out, "--num_proc", 1])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "data").exists()


def test_existing_output(tmp_path, capsys, stories):
    src = write_raw(tmp_path / "s.txt", stories[:100])
    out = tmp_path / "out"
    base = ["--source", src, "--out_dir", out, "--num_proc", 1]
    run(base)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    run(base)  # same parameters: nothing to do
    assert "already prepared" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        run(base + ["--seed", 2])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different parameters" in err[0] and "--force" in err[0]
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    run(base + ["--seed", 2, "--force"])
    assert (out / "val.bin").read_bytes() != before["val.bin"][0]
    # a directory with token files but no meta.json (e.g. an interrupted older run) is not ours to overwrite
    (out / "meta.json").unlink()
    with pytest.raises(SystemExit):
        run(base + ["--seed", 2])


def _cli(args, tmp_path, **env):
    return subprocess.run([sys.executable, str(ROOT / "prepare_tinystories.py"), *map(str, args)], cwd=tmp_path,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_cli_help_and_exit_code(tmp_path):
    r = _cli(["--help"], tmp_path)
    assert r.returncode == 0
    for flag in ("--source", "--val_source", "--val_fraction", "--synthetic", "--hf_dataset", "--num_stories",
                 "--seed", "--name", "--out_dir", "--num_proc", "--force"):
        assert flag in r.stdout
    r = _cli(["--source", "nope.txt"], tmp_path)
    assert r.returncode == 1 and r.stderr.strip() == "error: nope.txt: no such file"
    assert not (tmp_path / "data").exists()


def test_hub_offline_is_a_clear_error(tmp_path):
    # nothing mocked: the hub endpoint is a closed local port and the HF cache is empty, exactly
    # what a machine without network sees (and this test never downloads on one with network)
    t0 = time.time()
    r = _cli(["--num_stories", 15000], tmp_path, HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    assert r.returncode == 1 and time.time() - t0 < 60
    assert r.stderr.strip().splitlines() == [
        "error: could not download roneneldan/TinyStories from the Hugging Face hub (no network?); "
        "use --source FILE or --synthetic N"]
    assert not (tmp_path / "data").exists()


def test_hub_path_on_a_local_dataset_dir(tmp_path, stories):
    # the same datasets.load_dataset code path, fed a local dataset directory instead of the hub id
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "train.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in stories[:200]))
    (ds / "validation.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in stories[200:230]))
    offline = dict(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    r = _cli(["--hf_dataset", ds, "--num_stories", 100, "--num_proc", 1], tmp_path, **offline)
    assert r.returncode == 0, r.stderr
    train, val, meta = load_tokens(tmp_path / "data" / "ds_100")
    assert decode(train) == stories[:100] and decode(val) == stories[200:210]
    assert meta["params"]["source"] == f"hf:{ds}"
    (ds / "validation.jsonl").unlink()
    r = _cli(["--hf_dataset", ds, "--out_dir", "nosplit"], tmp_path, **offline)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == \
        f"error: dataset {ds} has no 'validation' split (it has: train)"
    assert not (tmp_path / "nosplit").exists()


# -----------------------------------------------------------------------------
# exact duplicates: dropped before the split, so no story is in both train and val


def _split_stories(out):
    train, val, meta = load_tokens(out)
    return decode(train), decode(val), meta


def test_duplicates_are_dropped_before_the_split(tmp_path, capsys, stories):
    # 80 distinct stories, story i written 1 + i % 3 times in a shuffled order, some copies with
    # extra blank lines and spaces around them (the same story once stripped)
    rng = np.random.default_rng(0)
    copies = [s for i, s in enumerate(stories[:80]) for _ in range(1 + i % 3)]
    copies = [copies[i] for i in rng.permutation(len(copies))]
    copies = [f"\n  {s}  \n" if i % 5 == 0 else s for i, s in enumerate(copies)]
    src = write_raw(tmp_path / "dups.txt", copies)
    first = list(dict.fromkeys(s.strip() for s in copies))  # by hand: each story once, at its first copy
    assert len(first) == 80 and len(copies) == 27 + 27 * 2 + 26 * 3  # i % 3 == 0, 1, 2: once, twice, thrice
    out = tmp_path / "out"
    run(["--source", src, "--out_dir", out, "--val_fraction", 0.25, "--num_proc", 1])
    tr, va, meta = _split_stories(out)
    assert not set(tr) & set(va)
    assert Counter(tr + va) == Counter(first)  # every story exactly once
    assert len(va) == 20  # the fraction of the 80 unique stories, not of the 159 copies
    assert tr == [s for s in first if s not in set(va)]  # source order, first copies kept
    assert meta["duplicates_dropped"] == 159 - 80 and (meta["train_stories"], meta["val_stories"]) == (60, 20)
    assert "dropped 79 exact duplicate stories" in capsys.readouterr().out


def test_val_source_story_in_train_is_dropped_from_val(tmp_path, capsys, stories):
    train_copies = stories[:50] + [stories[7], stories[49]]
    # val: 2 train stories, 3 new ones (one of them twice), and train story 45 (kept below only when
    # --num_stories 40 leaves story 45 out of train.bin)
    val_copies = [stories[3], stories[100], stories[101], stories[10], stories[100], stories[102], stories[45]]
    src, vsrc = write_raw(tmp_path / "t.txt", train_copies), write_raw(tmp_path / "v.txt", val_copies)
    out = tmp_path / "out"
    run(["--source", src, "--val_source", vsrc, "--out_dir", out, "--num_proc", 1])
    tr, va, meta = _split_stories(out)
    assert tr == stories[:50] and va == [stories[100], stories[101], stories[102]]
    assert meta["duplicates_dropped"] == 2 + 4  # 2 repeats in train; in val 3 train stories and 1 repeat
    # the first 40 train stories; val, cut to 40 // 10 = 4, is checked against those 40
    out = tmp_path / "out40"
    run(["--source", src, "--val_source", vsrc, "--num_stories", 40, "--out_dir", out, "--num_proc", 1])
    tr, va, meta = _split_stories(out)
    assert tr == stories[:40] and va == [stories[100], stories[101], stories[102], stories[45]]
    assert meta["duplicates_dropped"] == 3  # stories 3, 10 and the second 100 (train's repeats come after 40)
    # a val file with nothing but train stories leaves val empty: a clear error, nothing written
    only = write_raw(tmp_path / "only.txt", stories[5:8])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run(["--source", src, "--val_source", only, "--out_dir", tmp_path / "none", "--num_proc", 1])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no val stories" in err[0] and "also a train story" in err[0], err
    assert not (tmp_path / "none").exists()


def test_shared_sample_has_no_story_in_both_splits(tmp_path, capsys):
    everything = parse_raw(TRAIN_TXT, None)
    dups = len(everything) - len(set(everything))
    assert dups > 0  # the sample has repeated stories: without dedup some land in both splits
    out = tmp_path / "out"
    run(["--source", TRAIN_TXT, "--out_dir", out, "--val_fraction", 0.1, "--num_proc", 1])
    tr, va, meta = _split_stories(out)
    assert not set(tr) & set(va)
    assert Counter(tr + va) == Counter(set(everything))
    assert meta["duplicates_dropped"] == dups and len(va) == round(0.1 * len(set(everything)))
    assert f"dropped {dups} exact duplicate stories" in capsys.readouterr().out


def test_synthetic_duplicates_are_dropped(tmp_path, monkeypatch):
    # the generator can repeat a story (5 times in 20000); a stand-in that repeats many
    base = pt.synthetic_stories(40, seed=1)
    monkeypatch.setattr(pt, "synthetic_stories", lambda n, seed: (base * 3)[:n])
    out = tmp_path / "syn"
    run(["--synthetic", 100, "--out_dir", out, "--num_proc", 1])
    tr, va, meta = _split_stories(out)
    assert not set(tr) & set(va) and Counter(tr + va) == Counter(base)
    assert meta["duplicates_dropped"] == 60 and len(va) == 4


def test_hub_path_drops_duplicates(tmp_path, stories):
    ds = tmp_path / "ds"
    ds.mkdir()
    train = stories[:60] + stories[10:20]
    val = [stories[5], stories[200], stories[201], stories[200], stories[59]]
    (ds / "train.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in train))
    (ds / "validation.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in val))
    r = _cli(["--hf_dataset", ds, "--num_stories", 1000, "--out_dir", "out", "--num_proc", 1], tmp_path,
             HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    tr, va, meta = _split_stories(tmp_path / "out")
    assert tr == stories[:60] and va == stories[200:202]
    assert meta["duplicates_dropped"] == 10 + 3 and "dropped 13 exact duplicate stories" in r.stdout


# -----------------------------------------------------------------------------
# .json arrays stream (data.json_array, tested in test_data.py); a malformed one is one line on the command line


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_malformed_json_array_is_a_one_line_error(tmp_path, capsys, monkeypatch, stories, chunk):
    monkeypatch.setattr(data, "JSON_CHUNK_CHARS", chunk)
    lines = [json.dumps({"text": s}) + "," for s in stories[:200]]
    lines[150] = lines[150].replace('"}', '" "x"}')  # a record broken deep inside the file
    text = "[\n" + "\n".join(lines)[:-1] + "\n]\n"
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    e = expected.value
    assert e.lineno == 152  # line 1 is "[", record 150 is on line 152
    with pytest.raises(SystemExit):
        run(["--source", tmp_path / "bad.json", "--out_dir", tmp_path / "out", "--num_proc", 1])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'bad.json'}: not valid JSON at line 152 column {e.colno} ({e.msg})"]
    assert not (tmp_path / "out").exists()