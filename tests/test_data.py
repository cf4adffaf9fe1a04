"""Tests of data.py, the data code both prepare scripts and train.py share: the loader, the atomic writer, the
duplicate filter, the streaming .json reader and the hub check. Offline; the scripts' command lines are tested in
test_prepare.py and test_prepare_openwebtext.py."""

import io
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, SHARED  # noqa: E402
sys.path.insert(0, str(ROOT))

import data  # noqa: E402


@pytest.fixture(scope="module")
def stories():
    """The first 300 stories of the shared sample (test_prepare.py checks read_stories against its own parser)."""
    return list(itertools.islice(data.read_stories(SHARED / "data" / "tinystories" / "train_sample_lower.txt"), 300))


def write_small(out):
    """A complete little dataset in out: 30 stories, every tenth one in val."""
    items = [("val" if i % 10 == 0 else "train", f"Story {i}: once upon a time there was a cat.") for i in range(30)]
    return data.write_dataset(out, items, len(items), {"source": "test"}, num_proc=1)


# -----------------------------------------------------------------------------
# the loader and the writer


def test_load_tokens_errors(tmp_path):
    with pytest.raises(data.DataError, match=r"prepare_tinystories.py --out_dir .*nothing --synthetic 2000"):
        data.load_tokens(tmp_path / "nothing")
    out = tmp_path / "syn"
    write_small(out)
    with pytest.raises(data.DataError, match="vocab_size is 50000"):
        data.load_tokens(out, vocab_size=50000)
    assert issubclass(data.DataError, ValueError)
    with open(out / "train.bin", "r+b") as f:  # a truncated file no longer matches meta.json
        f.truncate(10)
    with pytest.raises(data.DataError, match="does not match meta.json"):
        data.load_tokens(out)


def test_load_tokens_names_an_odd_length_file(tmp_path):
    write_small(tmp_path)
    with open(tmp_path / "train.bin", "ab") as f:
        f.write(b"\0")
    with pytest.raises(data.DataError, match=f"^{tmp_path / 'train.bin'} has an odd number of bytes"):
        data.load_tokens(tmp_path)


def test_load_tokens_checks_the_largest_token_id(tmp_path):
    write_small(tmp_path)
    ids = np.memmap(tmp_path / "val.bin", dtype=np.uint16, mode="r+")
    ids[len(ids) // 2] = 50304
    ids.flush()
    data.load_tokens(tmp_path, vocab_size=50305)
    with pytest.raises(data.DataError, match=f"^{tmp_path / 'val.bin'} holds token id 50304 but the model's "
                                             "vocab_size is 50304; set vocab_size >= 50305"):
        data.load_tokens(tmp_path, vocab_size=50304)


def test_max_token_of_a_big_file_scans_chunks_first_and_last_included():
    ids = np.zeros(1000, dtype=np.uint16)
    ids[999] = 7
    assert data.max_token(ids, budget=100, chunk=10) == 7
    ids[999], ids[0] = 0, 9
    assert data.max_token(ids, budget=100, chunk=10) == 9
    assert data.max_token(ids[:100], budget=100, chunk=10) == 9


def test_interrupted_write_leaves_nothing(tmp_path, stories):
    def interrupted():
        for i in range(3000):
            if i == 2500:
                raise KeyboardInterrupt
            yield ("val" if i % 10 == 0 else "train"), stories[i % len(stories)]

    out = tmp_path / "new" / "dir"
    with pytest.raises(KeyboardInterrupt):
        data.write_dataset(out, interrupted(), 3000, {"source": "test"}, num_proc=1)
    assert not (tmp_path / "new").exists()
    # over an existing dataset: the old files stay complete, no temp files remain
    write_small(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(KeyboardInterrupt):
        data.write_dataset(out, interrupted(), 3000, {"source": "test"}, num_proc=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    data.load_tokens(out)


def test_write_token_files_refuses_an_empty_split(tmp_path):
    # the path both tokenizers write through: a split with nothing in it is an error, and nothing is left behind
    tokenizer = {"tokenizer": "t", "vocab_size": 4, "eot_token": 0}
    encoded = [(("train", "train"), (np.array([1, 2, 0, 3, 0], dtype=np.uint16), [3, 2]))]
    out = tmp_path / "new" / "dir"
    with pytest.raises(data.DataError, match="^no val documents: the val source is empty$"):
        data.write_token_files(out, iter(encoded), tokenizer, {"source": "test"}, noun="documents")
    assert not (tmp_path / "new").exists()
    encoded.append((("val",), (np.array([3, 0], dtype=np.uint16), [2])))
    meta, _ = data.write_token_files(out, iter(encoded), tokenizer, {"source": "test"})
    assert list(meta) == list(data.META_KEYS[:3]) + ["dtype"] + list(data.META_KEYS[3:])
    train, val, _ = data.load_tokens(out)
    assert train.tolist() == [1, 2, 0, 3, 0] and val.tolist() == [3, 0]


# -----------------------------------------------------------------------------
# exact duplicates


def test_unique_keeps_the_first_of_each_story():
    unique = data.Unique()
    assert list(unique.filter(["a", "b", "a", "c", "b", "a"])) == ["a", "b", "c"] and unique.dropped == 3
    assert unique.add("d") and not unique.add("c") and unique.dropped == 4


def test_count_stories_counts_what_unique_and_a_limit_keep(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("".join(f"story {i}\n<|endoftext|>\n" for i in [1, 2, 1, 3, 4, 2, 5]))
    assert data.count_stories([path]) == 7
    unique = data.Unique()
    assert data.count_stories([path], unique, limit=3) == 3 and unique.dropped == 1  # 1, 2, (1), 3
    assert data.count_stories([path], data.Unique()) == 5


# -----------------------------------------------------------------------------
# the hub


def test_hub_reachable_offline(monkeypatch):
    # a closed local port is what a machine without network sees; behind a proxy a direct connect proves nothing
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t0 = time.time()
    assert data.hub_reachable() is False and time.time() - t0 < 5
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert data.hub_reachable() is True


# -----------------------------------------------------------------------------
# .json arrays stream: one record at a time, never the whole file in memory


def _json_value(rng, depth=0):
    """A random JSON value with the awkward parts: escapes, surrogate pairs, numbers like 1e-07."""
    r = rng.random()
    if depth > 2 or r < 0.3:
        return rng.choice([0, -12, 3.5e10, 1e-7, True, False, None, "", 'a"b\\c\n', "caf\u00e9 \U0001F600 \u2019"])
    if r < 0.6:
        return {"text": "x" * int(rng.integers(0, 30)) + "\U0001F600", "n": _json_value(rng, depth + 1)}
    return [_json_value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]


def test_json_array_matches_json_loads_at_any_chunk_size():
    # tiny chunks cut every value, string, escape and number at every possible place
    rng = np.random.default_rng(0)
    for trial in range(150):
        values = [_json_value(rng) for _ in range(int(rng.integers(0, 6)))]
        text = json.dumps(values, indent=[None, 1][trial % 2], ensure_ascii=trial % 3 == 0)
        if trial % 2:  # every other one corrupted: a character deleted, or the text cut short
            i = int(rng.integers(1, len(text)))
            text = text[:i] + (text[i + 1:] if trial % 4 == 1 else "")
        try:
            expected = json.loads(text)
        except json.JSONDecodeError as e:
            expected = f"line {e.lineno} column {e.colno} ("
        for chunk in (1, 2, 3, 7, 64):
            try:
                got = list(data.json_array(io.StringIO(text), "x.json", chunk_chars=chunk))
            except data.DataError as e:
                assert isinstance(expected, str) and "\n" not in str(e), (text, chunk, str(e))
                assert str(e).startswith("x.json: not valid JSON at " + expected), (text, chunk, str(e), expected)
            else:
                assert got == expected, (text, chunk)


@pytest.mark.parametrize("chunk", [5, 1 << 20])
def test_json_arrays_of_strings_and_stories(tmp_path, monkeypatch, stories, chunk):
    monkeypatch.setattr(data, "JSON_CHUNK_CHARS", chunk, raising=False)
    some = stories[:30] + ["a story with a literal <|endoftext|> and \u2019 and \U0001F600 in it"]
    strings, records = tmp_path / "strings.json", tmp_path / "records.json"
    strings.write_text(json.dumps([" " + s + "\n" for s in some] + ["   "], indent=2), encoding="utf-8")
    records.write_text(json.dumps([{"story": s, "n": i} for i, s in enumerate(some)], ensure_ascii=False),
                       encoding="utf-8")
    assert list(data.read_stories(strings)) == some == list(data.read_stories(records))
    (tmp_path / "mixed.json").write_text('[{"story": "ok"},\n "ok too",\n 12]')
    with pytest.raises(data.DataError, match=r"mixed.json: record 2: no 'text' or 'story' string field"):
        list(data.read_stories(tmp_path / "mixed.json"))


def test_json_array_streams_in_bounded_memory(tmp_path):
    # a ~70 MB array on one line (as json.dump writes it): json.load holds the text and all the records,
    # > 2x the file size; streaming holds about one 1M-character chunk. Bound: 24 MB over the baseline.
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc (Linux) to read the process's memory")
    n, path = 100_000, tmp_path / "big.json"
    story = "once upon a time, a little cat named tom went to the park with his red ball. " * 9
    with open(path, "w") as f:
        f.write("[" + ", ".join(json.dumps({"text": f"{i} {story}", "id": i}) for i in range(n)) + "]")
    size_mb = path.stat().st_size / 2 ** 20
    assert size_mb > 65
    code = (
        "import sys, re\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import data\n"
        "kb = lambda key: int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "before = kb('VmRSS')\n"
        f"stories = sum(1 for s in data.read_stories({str(path)!r}) if s.endswith('ball.'))\n"
        "print(stories, (kb('VmHWM') - before) / 1024)\n")  # VmHWM: the peak, >= anything allocated here
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    stories, peak_mb = r.stdout.split()
    assert int(stories) == n
    print(f"{size_mb:.0f} MB .json array: peak RSS {float(peak_mb):.1f} MB over the baseline")
    assert float(peak_mb) < 24, f"reading a {size_mb:.0f} MB .json array took {peak_mb} MB"

