"""
The data code shared by the two prepare scripts and train.py: the token-file layout and its loader, the
readers of local files and of Hugging Face datasets, the exact-duplicate filter, the val split, and the
tokenize-and-write path.

A prepared dataset is data/<name>/train.bin and val.bin (flat uint16 token ids, every story or document
followed by the end-of-text token) and meta.json (tokenizer, vocab size, token and story counts, source,
the parameters it was prepared with).

- prepare_tinystories.py and prepare_openwebtext.py write it: each resolves its own sources and command
  line, and everything after that (reading, dedup, splitting, tokenizing, writing) is here.
- train.py reads it with load_tokens().
- pretrained.py uses hub_reachable() before it asks the hub for a checkpoint.

Nothing here parses a command line or needs torch.
"""

import hashlib
import itertools
import json
import math
import os
import random
import re
import socket
import sys
import time
import urllib.parse
from collections import deque
from pathlib import Path

import numpy as np
import tiktoken
import torch
from tqdm import tqdm

from tokenizer import TokenizerError, get_tokenizer

TOKENIZER = "r50k_base"  # the GPT-2 BPE ranks; tiktoken's "gpt2" is the same but needs more files offline
VOCAB_SIZE = 50257
EOT_TOKEN = 50256
EOT_TEXT = "<|endoftext|>"
BATCH_STORIES = 1024  # stories per tokenizer task: big enough to amortize pickling, small enough to stream
JSON_CHUNK_CHARS = 1 << 20  # a .json array is parsed from a buffer of about this many characters, not loaded whole
FORMATS = (".txt", ".json", ".jsonl")
META_KEYS = ("tokenizer", "vocab_size", "eot_token", "train_tokens", "val_tokens", "train_stories", "val_stories",
             "source")


class DataError(ValueError):
    """Bad input or missing/mismatched data. The message is one line that says what to do."""


# -----------------------------------------------------------------------------
# the loader train.py uses


def load_tokens(data_dir, vocab_size=None):
    """Open data_dir/train.bin and val.bin as read-only uint16 memmaps. Returns (train, val, meta).
    Raises DataError if the data is missing or incomplete, or needs a bigger vocab than the model's."""
    data_dir = Path(data_dir)
    hint = (f"run `python prepare_tinystories.py --out_dir {data_dir} --synthetic 2000` for an offline "
            f"smoke-test corpus, or see `python prepare_tinystories.py --help` for TinyStories")
    try:
        meta = json.loads((data_dir / "meta.json").read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or not all(k in meta for k in META_KEYS):
        raise DataError(f"no prepared dataset in {data_dir} (meta.json missing or unreadable); {hint}")
    splits = []
    for split in ("train", "val"):
        path = data_dir / f"{split}.bin"
        size = path.stat().st_size if path.is_file() else 0
        if size % 2:
            raise DataError(f"{path} has an odd number of bytes ({size}), so it is not a file of uint16 token ids; "
                            f"re-run prepare_tinystories.py with --force")
        n = size // 2
        if n == 0 or n != meta.get(f"{split}_tokens"):
            raise DataError(f"{path} is missing or does not match meta.json ({n} tokens, meta says "
                            f"{meta.get(f'{split}_tokens')}); re-run prepare_tinystories.py with --force")
        splits.append(np.memmap(path, dtype=np.uint16, mode="r"))
    if vocab_size is not None and meta["vocab_size"] > vocab_size:
        raise DataError(f"{data_dir} uses {meta['tokenizer']} with {meta['vocab_size']} tokens but the model's "
                        f"vocab_size is {vocab_size}; set vocab_size >= {meta['vocab_size']} (e.g. 50304)")
    for split, data in zip(("train", "val"), splits if vocab_size is not None else []):
        if (top := max_token(data)) >= vocab_size:  # the embedding would fail mid-run, on whichever batch holds it
            raise DataError(f"{data_dir / f'{split}.bin'} holds token id {top} but the model's vocab_size is "
                            f"{vocab_size}; set vocab_size >= {top + 1}, or re-prepare the data")
    return splits[0], splits[1], meta


def max_token(data, budget=1 << 26, chunk=1 << 20):
    """The largest token id in a memmap: over all of it if it holds at most `budget` tokens (128 MB), else over budget // chunk evenly spaced chunks, the first and the last included."""
    if len(data) <= budget:
        return int(data.max())
    starts = np.linspace(0, len(data) - chunk, budget // chunk).astype(np.int64)
    return max(int(data[i:i + chunk].max()) for i in starts)


def get_batch(data, block_size, batch_size, generator, device, rank=0, world_size=1):
    """Random windows of a token memmap: inputs and next-token targets (batch_size, block_size) on device.
    Every process draws the same global batch of batch_size * world_size start positions from `generator` and
    takes its own rows, so the batches depend on the seed only, not on the number of processes."""
    ix = torch.randint(len(data) - block_size, (batch_size * world_size,), generator=generator)
    ix = ix[rank * batch_size:(rank + 1) * batch_size].tolist()
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    if torch.device(device).type == "cuda":  # pinned memory: the copy to the GPU runs asynchronously
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def already_prepared(out_dir, params, force):
    """True if out_dir holds this exact dataset; DataError if it holds another one (unless force)."""
    if force or not any((out_dir / n).exists() for n in ("train.bin", "val.bin", "meta.json")):
        return False
    try:
        _, _, meta = load_tokens(out_dir)
        same = meta.get("params") == params
    except DataError:
        same = False
    if not same:
        raise DataError(f"{out_dir} already holds a dataset prepared with different parameters; "
                        "pass --force to overwrite it, or pick another --name / --out_dir")
    print(f"{out_dir} is already prepared with these parameters; nothing to do (--force rebuilds it)")
    return True


def describe(path):
    """A file as recorded in meta.json: absolute path and size, so a changed file is a changed parameter."""
    p = Path(path)
    return {"path": str(p.resolve()), "bytes": p.stat().st_size if p.is_file() else None}


# -----------------------------------------------------------------------------
# local files: each source yields story strings, stripped, empty ones dropped


def read_stories(path):
    """Yield the stories of one local file (.txt raw layout, .json or .jsonl), streaming."""
    path = Path(path)
    lineno = 0
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: tolerate a BOM, some editors add one
            if path.suffix == ".txt":
                lines = []
                for lineno, line in enumerate(f, 1):
                    if line.strip() == EOT_TEXT:
                        yield from nonempty("".join(lines))
                        lines = []
                    else:
                        lines.append(line)
                yield from nonempty("".join(lines))  # the last story may lack its separator
            else:
                # .json may be one array (HF's to_json and the upstream TinyStories_all_data files
                # differ), or one object per line like .jsonl; both stream, one record at a time.
                head = f.read(4096).lstrip()
                f.seek(0)
                if path.suffix == ".json" and head.startswith("["):
                    for i, record in enumerate(json_array(f, path)):
                        yield from nonempty(record_text(record, f"{path}: record {i}"))
                else:
                    for lineno, line in enumerate(f, 1):
                        if line.strip():
                            yield from nonempty(record_text(json.loads(line), f"{path}:{lineno}"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} after line {lineno})") from None
    except json.JSONDecodeError as e:
        where = f"line {lineno}" if lineno else f"line {e.lineno}"
        raise DataError(f"{path}: not valid JSON at {where} ({e.msg}); expected one record per line (JSON Lines) "
                        f"or one array of records, not an object spread over several lines") from None


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def json_array(f, where, chunk_chars=None):
    """Yield the values of the JSON array in text file f one at a time. json.load would hold the whole
    text and every record at once (many GB for a 2 GB file); here raw_decode parses each value from a
    buffer of about chunk_chars characters, refilled from f as the values are used up. A value cut off
    by the end of the buffer is parsed again once more text is in. Errors: a one-line DataError with
    the line and column, as json.load would report them."""
    chunk_chars = chunk_chars or JSON_CHUNK_CHARS
    decoder = json.JSONDecoder()
    buf, pos, eof = "", 0, False
    lines, line_start = 0, 0  # newlines in the text already dropped from buf; where the current line starts
    dropped = 0  # characters dropped from the front of buf
    state = "["  # what comes next: "[", "first" value or "]", "value", "," or "]", "end" of the file

    def fail(msg, at):
        nl = buf.rfind("\n", 0, at)
        line = lines + buf.count("\n", 0, at) + 1
        column = at - nl if nl >= 0 else dropped + at - line_start + 1
        raise DataError(f"{where}: not valid JSON at line {line} column {column} ({msg})")

    while True:
        pos = _JSON_SPACE.match(buf, pos).end()
        more = pos == len(buf)  # need more text before going on
        if not more:
            c = buf[pos]
            if state == "[":
                if c != "[":
                    fail("Expecting '['", pos)
                pos, state = pos + 1, "first"
            elif state == "first" and c == "]":
                pos, state = pos + 1, "end"
            elif state in ("first", "value"):
                try:
                    value, end = decoder.raw_decode(buf, pos)
                    # a number near the end of buf may go on in the next chunk: "1e-" parses as 1
                    more = not eof and end > len(buf) - 8
                except json.JSONDecodeError as e:
                    # cut off by the end of buf, not malformed: an error at its very end, or a string that
                    # runs past it (reported at the string's start). A real error is reported at once,
                    # without reading the rest of the file into buf first.
                    if eof or not (e.pos >= len(buf) - 8 or e.msg.startswith("Unterminated string")):
                        fail(e.msg, e.pos)
                    more = True
                if not more:
                    pos, state = end, ","
                    yield value
            elif state == ",":
                if c not in ",]":
                    fail("Expecting ',' delimiter", pos)
                pos, state = pos + 1, "value" if c == "," else "end"
            else:
                fail("Extra data", pos)
        if more:
            if eof:
                if state == "end":
                    return
                fail("Expecting ',' delimiter" if state == "," else "Expecting value", pos)
            # at least as much as is pending, so a value many chunks long is parsed O(log) times, not O(n)
            chunk = f.read(max(chunk_chars, len(buf) - pos))
            eof = not chunk
            # drop the text before pos: buf holds one chunk plus at most the value being parsed
            nl = buf.rfind("\n", 0, pos)
            if nl >= 0:
                lines, line_start = lines + buf.count("\n", 0, pos), dropped + nl + 1
            buf, pos, dropped = buf[pos:] + chunk, 0, dropped + pos


def record_text(record, where):
    """The text of one record: a string, or a dict's 'text' (or TinyStories' 'story') field."""
    if isinstance(record, str):
        return record
    text = record.get("text", record.get("story")) if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise DataError(f"{where}: no 'text' or 'story' string field")
    return text


def nonempty(story):
    story = story.strip()
    if story:
        yield story


def check_files(paths):
    """Fail early, before anything is written, on files that cannot be a source."""
    for p in map(Path, paths):
        if p.is_dir():
            raise DataError(f"{p}: is a directory; give the files in it (e.g. {p / '*.txt'}), each one of "
                            f"{', '.join(FORMATS)}")
        if not p.is_file():
            raise DataError(f"{p}: no such file")
        if p.suffix not in FORMATS:
            raise DataError(f"{p}: unknown format '{p.suffix}' (expected one of {', '.join(FORMATS)})")
        if p.stat().st_size == 0:
            raise DataError(f"{p}: file is empty")


def local_stories(paths):
    for p in paths:
        yield from read_stories(p)


class Unique:
    """Drops exact duplicate stories, keeping the first: a story in both train and val makes val loss
    partly a score of memorization. It keeps 16-byte blake2b digests, not the texts, so a source streams
    in ~100 bytes of RAM per story (~0.3 GB for 2.7M stories) instead of the size of the corpus."""

    def __init__(self):
        self.seen, self.dropped = set(), 0

    def add(self, story):
        """True (and remember it) if story is new, False (and count it as dropped) if seen before."""
        digest = hashlib.blake2b(story.encode(), digest_size=16).digest()
        if digest in self.seen:
            self.dropped += 1
            return False
        self.seen.add(digest)
        return True

    def filter(self, stories):
        return (s for s in stories if self.add(s))


def count_stories(paths, unique=None, limit=None):
    """One streaming pass over the files: exact counts for the val split and the progress bar,
    and every decode/format error surfaces here, before any output exists. With a Unique, counts only
    the stories it has not seen (and remembers them); with a limit, the first limit of them, as
    islice(unique.filter(...), limit) will take them, so that unique then holds exactly those."""
    total = 0
    for p in paths:
        n = 0
        for story in read_stories(p):
            n += 1
            if limit is None or total < limit:
                total += unique.add(story) if unique else 1
        if n == 0:
            raise DataError(f"{p}: no stories found")
    return total


# -----------------------------------------------------------------------------
# Hugging Face datasets


def hub_reachable(timeout=3.0):
    """A quick TCP connect to the hub. Without it datasets retries for ~25 s before failing."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct connect proves nothing; let datasets try
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def load_hub_dataset(name, instead, **kwargs):
    """datasets.load_dataset(name, **kwargs) (datasets is imported only here), its failures one-line
    DataErrors; instead: what to do when the hub cannot be reached, e.g. "use --source FILE"."""
    if not hub_reachable():
        # offline mode: a previously downloaded copy still loads from the cache, and without one
        # datasets fails at once instead of retrying. Read when datasets is imported, i.e. just below.
        os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets

    try:
        return datasets.load_dataset(name, **kwargs)
    except ConnectionError:
        raise DataError(f"could not download {name} from the Hugging Face hub (no network?); {instead}") from None
    except FileNotFoundError:  # datasets' DatasetNotFoundError
        raise DataError(f"dataset {name} not found on the Hugging Face hub or on disk") from None
    except ValueError as e:  # e.g. a dataset with several configs and no default one
        raise DataError(f"could not load dataset {name}: {str(e).splitlines()[0]}") from None


def hub_stories(rows):
    for i, row in enumerate(rows):
        yield from nonempty(record_text(row, f"row {i}"))


# -----------------------------------------------------------------------------
# the val split


def split_by_fraction(stories, n, val_fraction, seed):
    """(split, story) pairs: a seeded random choice of round(n * val_fraction) story indices goes to
    val, in source order; stories are never cut across the split."""
    k = max(1, round(n * val_fraction))
    if n < 2 or k >= n:
        raise DataError(f"cannot split {n} stories with --val_fraction {val_fraction}: train or val would be empty")
    val_idx = set(random.Random(seed).sample(range(n), k))
    return (("val" if i in val_idx else "train", s) for i, s in enumerate(stories))


# -----------------------------------------------------------------------------
# tokenize and write

_enc = None


def _init_worker(name=TOKENIZER):
    global _enc
    _enc = tiktoken.get_encoding(TOKENIZER) if name == TOKENIZER else get_tokenizer(name)


def _encode_batch(stories):
    """Tokens of a batch of stories as one flat uint16 array (+ per-story lengths):
    one array per batch pickles far faster between processes than a list per story."""
    ids, lens = [], []
    for story in stories:
        t = _enc.encode_ordinary(story)  # ordinary: a literal "<|endoftext|>" in a story stays text
        t.append(_enc.eot_token)
        ids.extend(t)
        lens.append(len(t))
    return np.array(ids, dtype=np.uint16), lens


def _tokenized(batches, num_proc, name=TOKENIZER):
    """Yield (splits, (tokens, lens)) in order. Pool.imap would read the whole input ahead into
    its task queue (a 2 GB file in RAM), so at most 2 batches per process are in flight."""
    if num_proc == 1:
        _init_worker(name)
        for splits, stories in batches:
            yield splits, _encode_batch(stories)
        return
    import multiprocessing as mp
    # spawn, not fork: forking a process that already runs threads (torch, tqdm) can deadlock
    with mp.get_context("spawn").Pool(num_proc, initializer=_init_worker, initargs=(name,)) as pool:
        pending = deque()
        for splits, stories in batches:
            pending.append((splits, pool.apply_async(_encode_batch, (stories,))))
            if len(pending) >= 2 * num_proc:
                splits, result = pending.popleft()
                yield splits, result.get()
        while pending:
            splits, result = pending.popleft()
            yield splits, result.get()


def batched(items):
    """(splits, stories) tuples of up to BATCH_STORIES of the (split, story) items, streaming."""
    items = iter(items)
    return iter(lambda: tuple(zip(*itertools.islice(items, BATCH_STORIES))), ())


def write_dataset(out_dir, items, total, meta, num_proc=1, unique=None, tokenizer=TOKENIZER):
    """Tokenize items, an iterable of (split, story) with split "train" or "val", with the GPT-2 BPE
    (or tokenizer="rwkv_world") in num_proc processes into out_dir/train.bin, val.bin, meta.json (see
    write_token_files). unique: the Unique that filtered items, read once they are used up, for meta.json's
    duplicates_dropped."""
    num_proc = max(1, min(num_proc, math.ceil(total / BATCH_STORIES)))  # a spawned process costs ~0.3 s to start
    if tokenizer == TOKENIZER:
        fields = {"tokenizer": TOKENIZER, "vocab_size": VOCAB_SIZE, "eot_token": EOT_TOKEN}
    else:
        try:
            enc = get_tokenizer(tokenizer)  # fails here, before any file is opened
        except TokenizerError as e:
            raise DataError(str(e)) from None
        fields = {"tokenizer": tokenizer, "vocab_size": enc.n_vocab, "eot_token": enc.eot_token}
    meta, dt = write_token_files(out_dir, _tokenized(batched(items), num_proc, tokenizer), fields, meta, total,
                                 unique)
    n_tok = meta["train_tokens"] + meta["val_tokens"]
    print(f"wrote {out_dir}: train {meta['train_tokens']:,} tokens ({meta['train_stories']:,} stories), "
          f"val {meta['val_tokens']:,} tokens ({meta['val_stories']:,} stories)")
    if unique is not None:
        print(f"dropped {unique.dropped:,} exact duplicate stories (the first of each is kept)")
    print(f"tokenized {n_tok:,} tokens in {dt:.2f} s: {n_tok / max(dt, 1e-9):,.0f} tokens/s with num_proc={num_proc}")
    return meta


def write_token_files(out_dir, encoded, tokenizer, meta, total=None, unique=None, noun="stories"):
    """Write encoded, (splits, (tokens, lens)) batches from any tokenizer (tokens: one flat uint16 array of
    the batch's stories, each ended by the end-of-text token; lens: their lengths), to out_dir/train.bin and
    val.bin, then meta.json: the tokenizer's fields (tokenizer, vocab_size, eot_token), the counts, then meta.
    Everything goes to *.tmp files first and is renamed only when complete, so an interrupted or failed run
    leaves no .bin that looks finished. total: stories expected, for the progress bar (None: no bar).
    Returns (meta, seconds)."""
    out_dir = Path(out_dir)
    missing_dirs = [d for d in [out_dir, *out_dir.parents] if not d.exists()]  # removed again on failure
    names = ("train.bin", "val.bin", "meta.json")
    tmp = {n: out_dir / (n + ".tmp") for n in names}
    counts = {"train_tokens": 0, "val_tokens": 0, "train_stories": 0, "val_stories": 0}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(tmp["train.bin"], "wb") as ftrain, open(tmp["val.bin"], "wb") as fval, \
                tqdm(total=total, unit=" stories", desc="tokenizing", disable=total is None) as bar:
            for splits, (tokens, lens) in encoded:
                is_val = np.array([s == "val" for s in splits])
                mask = np.repeat(is_val, lens)
                ftrain.write(tokens[~mask].tobytes())
                fval.write(tokens[mask].tobytes())
                counts["val_tokens"] += int(mask.sum())
                counts["train_tokens"] += len(tokens) - int(mask.sum())
                counts["val_stories"] += int(is_val.sum())
                counts["train_stories"] += len(splits) - int(is_val.sum())
                bar.update(len(splits))
        dt = time.time() - t0
        if unique is not None:
            counts["duplicates_dropped"] = unique.dropped
        for split in ("train", "val"):
            if counts[f"{split}_stories"] == 0:
                raise DataError(f"no {split} {noun}: the {split} source is empty")
        meta = {**tokenizer, "dtype": "uint16", **counts, **meta}
        tmp["meta.json"].write_text(json.dumps(meta, indent=2) + "\n")
        # meta.json goes last: its absence marks the directory as not (or not yet) prepared
        (out_dir / "meta.json").unlink(missing_ok=True)
        for n in names:
            os.replace(tmp[n], out_dir / n)
    except BaseException:
        for p in tmp.values():
            p.unlink(missing_ok=True)
        for d in missing_dirs:  # deepest first; only directories this run created, and only if empty
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return meta, dt


# -----------------------------------------------------------------------------
# what both command lines share


def add_output_args(parser, name_help, num_proc_help):
    """--name / --out_dir, --num_proc and --force, the output options of both prepare scripts."""
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--name", help=name_help)
    out.add_argument("--out_dir", help="output directory, overriding data/<name>/")
    parser.add_argument("--num_proc", type=int, default=min(8, os.cpu_count() or 1), help=num_proc_help)
    parser.add_argument("--force", action="store_true",
                        help="overwrite an output directory that was prepared with different parameters")


def exit_on_error(prepare, args):
    """prepare(args), with bad input as one line `error: ...` on stderr and SystemExit(1)."""
    try:
        return prepare(args)
    except (DataError, OSError) as e:  # OSError: a full disk, a read-only directory, a lost connection...
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
