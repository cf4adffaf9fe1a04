"""
Prepare TinyStories (or your own story files) as GPT-2 BPE token files for training.

Writes data/<name>/train.bin and val.bin (flat uint16 token ids, every story followed by
<|endoftext|> = 50256) and meta.json (tokenizer, vocab size, token and story counts, source).
train.py reads them through load_tokens() below. Exact duplicate stories are dropped (the first is
kept) before the train/val split, so no story is in both; meta.json says how many (duplicates_dropped).

Three sources, one tokenize-and-write path:

# the Hugging Face hub (default): roneneldan/TinyStories train + validation splits -> data/tinystories/
$ python prepare_tinystories.py
# the 15k-story subset the README table's model trains on: first 15000 train stories (+ first 1500 validation) -> data/tinystories_15k/
$ python prepare_tinystories.py --num_stories 15000

# local files -> data/tinystories_local/: the upstream raw text layout (TinyStoriesV2-GPT4-*.txt,
# stories separated by a line <|endoftext|>) or JSON / JSONL records with a "text" or "story" field
$ python prepare_tinystories.py --source TinyStoriesV2-GPT4-train.txt --val_source TinyStoriesV2-GPT4-valid.txt
$ python prepare_tinystories.py --source ../shared/data/tinystories/train_sample_lower.txt --val_fraction 0.05

# no network at all -> data/synthetic/: 2000 stories from a small procedural generator below.
# A smoke-test corpus (does the pipeline run end to end?), NOT TinyStories.
$ python prepare_tinystories.py --synthetic 2000

Offline, tiktoken needs its BPE file: TIKTOKEN_CACHE_DIR=../shared/tiktoken_cache works in this repo.
"""

import argparse
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
from tqdm import tqdm

TOKENIZER = "r50k_base"  # the GPT-2 BPE ranks; tiktoken's "gpt2" is the same but needs more files offline
VOCAB_SIZE = 50257
EOT_TOKEN = 50256
EOT_TEXT = "<|endoftext|>"
HF_DATASET = "roneneldan/TinyStories"
BATCH_STORIES = 1024  # stories per tokenizer task: big enough to amortize pickling, small enough to stream
JSON_CHUNK_CHARS = 1 << 20  # a .json array is parsed from a buffer of about this many characters, not loaded whole
FORMATS = (".txt", ".json", ".jsonl")
META_KEYS = ("tokenizer", "vocab_size", "eot_token", "train_tokens", "val_tokens", "train_stories", "val_stories",
             "source")


class DataError(ValueError):
    """Bad input or missing/mismatched data. The message is one line that says what to do."""


# -----------------------------------------------------------------------------
# sources: each yields story strings, stripped, empty ones dropped


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
                        yield from _nonempty("".join(lines))
                        lines = []
                    else:
                        lines.append(line)
                yield from _nonempty("".join(lines))  # the last story may lack its separator
            else:
                # .json may be one array (HF's to_json and the upstream TinyStories_all_data files
                # differ), or one object per line like .jsonl; both stream, one record at a time.
                head = f.read(4096).lstrip()
                f.seek(0)
                if path.suffix == ".json" and head.startswith("["):
                    for i, record in enumerate(json_array(f, path)):
                        yield from _nonempty(_record_text(record, f"{path}: record {i}"))
                else:
                    for lineno, line in enumerate(f, 1):
                        if line.strip():
                            yield from _nonempty(_record_text(json.loads(line), f"{path}:{lineno}"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} after line {lineno})") from None
    except json.JSONDecodeError as e:
        where = f"line {lineno}" if lineno else f"line {e.lineno}"
        raise DataError(f"{path}: not valid JSON at {where} ({e.msg})") from None


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


def _record_text(record, where):
    if isinstance(record, str):
        return record
    text = record.get("text", record.get("story")) if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise DataError(f"{where}: no 'text' or 'story' string field")
    return text


def _nonempty(story):
    story = story.strip()
    if story:
        yield story


def check_files(paths):
    """Fail early, before anything is written, on files that cannot be a source."""
    for p in map(Path, paths):
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


def hub_splits(name, streaming):
    """Open the train and validation splits of a hub dataset (datasets is imported only here)."""
    if not hub_reachable():
        # offline mode: a previously downloaded copy still loads from the cache, and without one
        # datasets fails at once instead of retrying. Read when datasets is imported, i.e. just below.
        os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets

    try:
        ds = datasets.load_dataset(name, streaming=streaming)
    except ConnectionError:
        raise DataError(f"could not download {name} from the Hugging Face hub (no network?); "
                        "use --source FILE or --synthetic N") from None
    except FileNotFoundError:  # datasets' DatasetNotFoundError
        raise DataError(f"dataset {name} not found on the Hugging Face hub or on disk") from None
    except ValueError as e:  # e.g. a dataset with several configs and no default one
        raise DataError(f"could not load dataset {name}: {str(e).splitlines()[0]}") from None
    for split in ("train", "validation"):
        if split not in ds:
            raise DataError(f"dataset {name} has no '{split}' split (it has: {', '.join(ds)})")
    return ds["train"], ds["validation"]


def hub_stories(rows):
    for i, row in enumerate(rows):
        yield from _nonempty(_record_text(row, f"row {i}"))


# -----------------------------------------------------------------------------
# synthetic children's stories: a smoke-test corpus for machines with no network


NAMES = [("Lily", "she"), ("Tom", "he"), ("Mia", "she"), ("Ben", "he"), ("Sue", "she"), ("Max", "he"),
         ("Anna", "she"), ("Sam", "he"), ("Lucy", "she"), ("Tim", "he"), ("Emma", "she"), ("Jack", "he"),
         ("Zoe", "she"), ("Leo", "he"), ("Ella", "she"), ("Finn", "he"), ("Rosie", "she"), ("Bob", "he")]
KINDS = {"she": ["little girl", "small bunny", "curious cat", "little bird", "happy duck"],
         "he": ["little boy", "friendly dog", "small bear", "brave mouse", "little frog"]}
PLACES = {"the park": "There were tall trees, a big slide and a pond with ducks.",
          "the garden": "There were red flowers, green leaves and a small path made of stones.",
          "the beach": "The sand was warm and the waves went splash, splash.",
          "the forest": "The trees were very tall and the birds sang in the branches.",
          "the farm": "There were cows, pigs and a big red barn.",
          "the hill": "From the top you could see all the houses in the town.",
          "the lake": "The water was blue and calm, and little fish swam near the shore."}
OBJECTS = ["red ball", "blue kite", "shiny stone", "toy car", "yellow hat", "little boat", "teddy bear",
           "box of crayons", "green bucket", "soft blanket"]
AT = {"the park": "in the park", "the garden": "in the garden", "the beach": "on the beach",
      "the forest": "in the forest", "the farm": "on the farm", "the hill": "on the hill", "the lake": "by the lake"}
WEATHER = ["sunny", "windy", "warm", "bright", "cool"]
HIDING = ["under a big bush", "behind a tree", "next to a rock", "in the tall grass", "under a bench"]
FEARS = ["the big dark room", "the loud thunder", "the tall slide", "the deep water", "the big barking dog"]
TROUBLES = [("a little bird", "could not fly back to its nest"), ("a small kitten", "was stuck up in a tree"),
            ("a baby duck", "could not find its mom"), ("an old turtle", "was stuck on its back")]
BUILDS = [("a sand castle", "castle"), ("a tall tower of stones", "tower"), ("a little house of sticks", "house"),
          ("a bridge of sticks and leaves", "bridge")]
GOOD = ["happy", "proud", "glad", "excited"]
LESSONS = {"lost": "that good friends help you look for things",
           "share": "that sharing makes playing more fun",
           "brave": "that being brave is not so hard when someone believes in you",
           "help": "that helping others makes your heart feel warm",
           "build": "that if something falls down, you can always try again"}


def synthetic_stories(n, seed=1337):
    """n short children's stories, deterministic in seed (the first k of n are the same as for k)."""
    rng = random.Random(seed)
    return [_synthetic_story(rng) for _ in range(n)]


def _synthetic_story(rng):
    name, p = rng.choice(NAMES)
    friend, fp = rng.choice([x for x in NAMES if x[0] != name])
    kind, place, obj = rng.choice(KINDS[p]), rng.choice(list(PLACES)), rng.choice(OBJECTS)
    his, him, He = ("his", "him", "He") if p == "he" else ("her", "her", "She")
    fhis = "his" if fp == "he" else "her"
    plot = rng.choice(list(LESSONS))
    s = [rng.choice([f"Once upon a time, there was a {kind} named {name}.",
                     f"One {rng.choice(WEATHER)} day, a {kind} named {name} went to {place}.",
                     f"There once was a {kind} named {name} who loved to play outside."])]
    if plot == "lost":
        s += [f"{name} had a {obj}. {He} loved it very much and took it everywhere.",
              f"One day, {name} and {his} friend {friend} played {AT[place]}. {PLACES[place]}",
              f"When it was time to go home, {name} looked for the {obj}, but it was gone!",
              f"{name} felt very sad. {He} started to cry.",
              f'"Do not worry," said {friend}. "I will help you look for it."',
              f"They looked everywhere. At last, {friend} found the {obj} {rng.choice(HIDING)}.",
              f"{name} gave {friend} a big hug. \"Thank you!\" {p} said. {He} felt happy again."]
    elif plot == "share":
        s += [f"{name} had a new {obj}. {He} played with it all morning {AT[place]}.",
              f"Then {friend} came by. \"Can I play with your {obj} too?\" asked {friend}.",
              f'"No, it is mine," said {name}. {friend} looked sad and sat down alone.',
              f"{name} saw that {friend} was sad. {He} did not feel good inside.",
              f'So {name} walked over and said, "I am sorry. Let us play together."',
              f"{friend} smiled a big smile. They took turns with the {obj} and laughed all day.",
              f"{name} felt {rng.choice(GOOD)}. Playing with a friend was much better than playing alone."]
    elif plot == "brave":
        fear = rng.choice(FEARS)
        s += [f"{name} liked to go to {place}, but {p} was scared of {fear}.",
              f"One day, {name} held {his} {obj} tight and said, \"I do not want to go.\"",
              f'{his.capitalize()} mom smiled and said, "You are braver than you think. I will be right here."',
              f"{name} took a deep breath. {He} took one small step, and then another.",
              f"Soon {name} was not scared anymore. It was not so bad after all!",
              f"{friend} saw {him} and clapped. \"You did it, {name}!\"",
              f"{name} felt very {rng.choice(GOOD)}. {He} ran home to tell everyone."]
    elif plot == "help":
        animal, trouble = rng.choice(TROUBLES)
        the_animal = "the " + animal.split(" ", 1)[1]
        s += [f"{name} went to {place} with {his} {obj}. {PLACES[place]}",
              f"Suddenly, {name} heard a small sound. It was {animal} that {trouble}.",
              f"{name} wanted to help, but {p} did not know how. {He} ran to get {his} friend {friend}.",
              f"{friend} had an idea. Together, they worked slowly and carefully.",
              f"At last, {the_animal} was safe. It looked at them as if to say thank you.",
              f"{name} and {friend} smiled. They felt {rng.choice(GOOD)} because they had helped."]
    else:  # build
        thing, short = rng.choice(BUILDS)
        s += [f"{name} and {friend} went to {place} to play. {PLACES[place]}",
              f"They decided to make {thing}. {name} brought {his} {obj} to help.",
              f"They worked very hard. The {short} was the best one they had ever made.",
              "But then a big wind came, and whoosh! It all fell down.",
              f"{name} was sad, but {friend} said, \"Let us make it again, even bigger!\"",
              f"So they tried again, and this time it stood tall. {friend} put {fhis} hat on top.",
              f"They jumped up and down. They were so {rng.choice(GOOD)}."]
    s.append(rng.choice([f"From that day on, {name} knew {LESSONS[plot]}.",
                         f"That night, {name} went to sleep with a smile. {He} had learned {LESSONS[plot]}.",
                         f"And {name} and {friend} stayed best friends forever. The end."]))
    return " ".join(s)


# -----------------------------------------------------------------------------
# tokenize and write

_enc = None


def _init_worker():
    global _enc
    _enc = tiktoken.get_encoding(TOKENIZER)


def _encode_batch(stories):
    """Tokens of a batch of stories as one flat uint16 array (+ per-story lengths):
    one array per batch pickles far faster between processes than a list per story."""
    ids, lens = [], []
    for story in stories:
        t = _enc.encode_ordinary(story)  # ordinary: a literal "<|endoftext|>" in a story stays text
        t.append(EOT_TOKEN)
        ids.extend(t)
        lens.append(len(t))
    return np.array(ids, dtype=np.uint16), lens


def _tokenized(batches, num_proc):
    """Yield (splits, (tokens, lens)) in order. Pool.imap would read the whole input ahead into
    its task queue (a 2 GB file in RAM), so at most 2 batches per process are in flight."""
    if num_proc == 1:
        _init_worker()
        for splits, stories in batches:
            yield splits, _encode_batch(stories)
        return
    import multiprocessing as mp
    # spawn, not fork: forking a process that already runs threads (torch, tqdm) can deadlock
    with mp.get_context("spawn").Pool(num_proc, initializer=_init_worker) as pool:
        pending = deque()
        for splits, stories in batches:
            pending.append((splits, pool.apply_async(_encode_batch, (stories,))))
            if len(pending) >= 2 * num_proc:
                splits, result = pending.popleft()
                yield splits, result.get()
        while pending:
            splits, result = pending.popleft()
            yield splits, result.get()


def write_dataset(out_dir, items, total, meta, num_proc=1, unique=None):
    """Tokenize items, an iterable of (split, story) with split "train" or "val", into
    out_dir/train.bin, val.bin, meta.json. Everything goes to *.tmp files first and is renamed only
    when complete, so an interrupted or failed run leaves no .bin that looks finished. unique: the
    Unique that filtered items, read once they are used up, for meta.json's duplicates_dropped."""
    out_dir = Path(out_dir)
    missing_dirs = [d for d in [out_dir, *out_dir.parents] if not d.exists()]  # removed again on failure
    names = ("train.bin", "val.bin", "meta.json")
    tmp = {n: out_dir / (n + ".tmp") for n in names}
    num_proc = max(1, min(num_proc, math.ceil(total / BATCH_STORIES)))  # a spawned process costs ~0.3 s to start
    counts = {"train_tokens": 0, "val_tokens": 0, "train_stories": 0, "val_stories": 0}
    items = iter(items)
    batches = iter(lambda: tuple(zip(*itertools.islice(items, BATCH_STORIES))), ())
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(tmp["train.bin"], "wb") as ftrain, open(tmp["val.bin"], "wb") as fval, \
                tqdm(total=total, unit=" stories", desc="tokenizing") as bar:
            for splits, (tokens, lens) in _tokenized(batches, num_proc):
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
                raise DataError(f"no {split} stories: the {split} source is empty")
        meta = {"tokenizer": TOKENIZER, "vocab_size": VOCAB_SIZE, "eot_token": EOT_TOKEN, "dtype": "uint16",
                **counts, **meta}
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
    n_tok = counts["train_tokens"] + counts["val_tokens"]
    print(f"wrote {out_dir}: train {counts['train_tokens']:,} tokens ({counts['train_stories']:,} stories), "
          f"val {counts['val_tokens']:,} tokens ({counts['val_stories']:,} stories)")
    if unique is not None:
        print(f"dropped {unique.dropped:,} exact duplicate stories (the first of each is kept)")
    print(f"tokenized {n_tok:,} tokens in {dt:.2f} s: {n_tok / max(dt, 1e-9):,.0f} tokens/s with num_proc={num_proc}")
    return meta


def split_by_fraction(stories, n, val_fraction, seed):
    """(split, story) pairs: a seeded random choice of round(n * val_fraction) story indices goes to
    val, in source order; stories are never cut across the split."""
    k = max(1, round(n * val_fraction))
    if n < 2 or k >= n:
        raise DataError(f"cannot split {n} stories with --val_fraction {val_fraction}: train or val would be empty")
    val_idx = set(random.Random(seed).sample(range(n), k))
    return (("val" if i in val_idx else "train", s) for i, s in enumerate(stories))


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
        n = path.stat().st_size // 2 if path.is_file() else 0
        if n == 0 or n != meta.get(f"{split}_tokens"):
            raise DataError(f"{path} is missing or does not match meta.json ({n} tokens, meta says "
                            f"{meta.get(f'{split}_tokens')}); re-run prepare_tinystories.py with --force")
        splits.append(np.memmap(path, dtype=np.uint16, mode="r"))
    if vocab_size is not None and meta["vocab_size"] > vocab_size:
        raise DataError(f"{data_dir} uses {meta['tokenizer']} with {meta['vocab_size']} tokens but the model's "
                        f"vocab_size is {vocab_size}; set vocab_size >= {meta['vocab_size']} (e.g. 50304)")
    return splits[0], splits[1], meta


# -----------------------------------------------------------------------------
# command line


def dataset_name(base, num_stories):
    """tinystories, tinystories_15k (15000), tinystories_1500 (1500)."""
    if num_stories is None:
        return base
    return f"{base}_{num_stories // 1000}k" if num_stories % 1000 == 0 else f"{base}_{num_stories}"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Tokenize TinyStories with the GPT-2 BPE into data/<name>/{train,val}.bin + meta.json. "
                    "Without --source or --synthetic it downloads the hub dataset into data/tinystories/.")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--source", nargs="+", metavar="PATH",
                     help="local files instead of the hub: .txt (stories separated by a line <|endoftext|>, "
                          "the TinyStoriesV2-GPT4-*.txt layout), .json or .jsonl (records with a 'text' or "
                          "'story' field); several files are concatenated. Default name: tinystories_local")
    src.add_argument("--synthetic", type=int, metavar="N",
                     help="N procedurally generated children's stories, for a machine with no network: a "
                          "smoke-test corpus, not TinyStories. Default name: synthetic")
    parser.add_argument("--hf_dataset", default=HF_DATASET,
                        help="Hugging Face dataset used when neither --source nor --synthetic is given: a hub id, or a "
                             "directory datasets.load_dataset reads (e.g. train.jsonl + validation.jsonl); it needs "
                             "'train' and 'validation' splits with a 'text' or 'story' field (default: %(default)s)")
    parser.add_argument("--val_source", nargs="+", metavar="PATH",
                        help="validation files for --source (same formats); otherwise --val_fraction is split off")
    parser.add_argument("--val_fraction", type=float,
                        help="fraction of the stories held out for val with --source (no --val_source) or "
                             "--synthetic; chosen by --seed (default: 0.1)")
    parser.add_argument("--num_stories", type=int, metavar="N",
                        help="use only the first N train stories (and the first N // 10 of a separate "
                             "validation set); the name gets a suffix, e.g. tinystories_15k")
    parser.add_argument("--seed", type=int, default=1337,
                        help="seed of the --val_fraction split and of --synthetic (default: %(default)s)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--name",
                     help="dataset name: output goes to data/<name>/, which train.py finds as dataset=<name>")
    out.add_argument("--out_dir", help="output directory, overriding data/<name>/")
    parser.add_argument("--num_proc", type=int, default=min(8, os.cpu_count() or 1),
                        help="tokenizer processes (default: min(8, CPU count) = %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite an output directory that was prepared with different parameters")
    args = parser.parse_args(argv)

    if args.val_source and not args.source:
        parser.error("--val_source needs --source")
    if args.val_fraction is not None and (args.val_source or not (args.source or args.synthetic)):
        parser.error("--val_fraction applies only to --source without --val_source, or to --synthetic")
    if args.hf_dataset != HF_DATASET and (args.source or args.synthetic):
        parser.error("--hf_dataset applies only to the hub source")
    for flag in ("synthetic", "num_stories", "num_proc"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    if args.val_fraction is None:
        args.val_fraction = 0.1
    elif not 0 < args.val_fraction < 1:
        parser.error("--val_fraction must be between 0 and 1")
    return args


def prepare(args):
    """Resolve the source, check the output, write. Returns the output directory."""
    n_max = args.num_stories
    n_val_max = None if n_max is None else max(1, n_max // 10)
    if args.source:
        params = {"source": "local", "files": [_describe(p) for p in args.source]}
        name = dataset_name("tinystories_local", n_max)
    elif args.synthetic:
        params = {"source": "synthetic", "stories": args.synthetic, "seed": args.seed}
        name = "synthetic"
    else:
        params = {"source": f"hf:{args.hf_dataset}"}
        name = dataset_name("tinystories" if args.hf_dataset == HF_DATASET else
                            args.hf_dataset.rstrip("/").split("/")[-1].lower(), n_max)
    if args.val_source:
        params["val_files"] = [_describe(p) for p in args.val_source]
    elif args.source or args.synthetic:
        params.update(val_fraction=args.val_fraction, split_seed=args.seed)
    # dedup: a dataset prepared before exact duplicates were dropped is not this one; --force rebuilds it
    params.update(num_stories=n_max, tokenizer=TOKENIZER, dedup="exact")
    out_dir = Path(args.out_dir) if args.out_dir else Path("data") / (args.name or name)
    if _already_prepared(out_dir, params, args.force):
        return out_dir

    # exact duplicates are dropped before the split (the first one is kept), and a val story that is
    # also a train story is dropped from val: every story is in one split only, and at most once
    unique = Unique()
    if args.source:
        check_files(args.source + (args.val_source or []))
        print(f"counting stories in {len(args.source) + len(args.val_source or [])} file(s)...")
        # the counting pass dedups as the writing pass will (with a Unique of its own), so that
        # --val_fraction splits the unique stories and val is checked against the train stories kept
        counted = Unique()
        n_train = count_stories(args.source, counted, n_max)
        n_val = count_stories(args.val_source, counted, n_val_max) if args.val_source else 0
        if args.val_source and n_val == 0:
            raise DataError(f"no val stories: every story of {', '.join(args.val_source)} is also a train story")
        del counted  # only one set of digests in RAM at a time
        # islice by n_max, not n_train: without --num_stories the whole file is read, so that the
        # repeats after the last new story are counted as dropped too
        train = itertools.islice(unique.filter(local_stories(args.source)), n_max)
        if args.val_source:
            val = itertools.islice(unique.filter(local_stories(args.val_source)), n_val_max)
            items, total = _labeled(train, val), n_train + n_val
        else:
            items, total = split_by_fraction(train, n_train, args.val_fraction, args.seed), n_train
    elif args.synthetic:
        stories = list(unique.filter(synthetic_stories(min(args.synthetic, n_max or math.inf), args.seed)))
        n = len(stories)
        items, total = split_by_fraction(stories, n, args.val_fraction, args.seed), n
    else:
        # streaming reads only the first shards when a subset is asked for; the full set is
        # downloaded once into the HF cache (memory-mapped Arrow, so RAM stays small)
        train, val = hub_splits(args.hf_dataset, streaming=n_max is not None)
        # progress bar total only: a subset may be shorter, and no pass counts the duplicates first
        n_train = n_max if n_max is not None else len(train)
        n_val = n_val_max if n_val_max is not None else len(val)
        items = _labeled(itertools.islice(unique.filter(hub_stories(train)), n_max),
                         itertools.islice(unique.filter(hub_stories(val)), n_val_max))
        total = n_train + n_val
    desc = {"local": f"local files {', '.join(args.source or [])}" + (f" (val: {', '.join(args.val_source)})"
                                                                      if args.val_source else ""),
            "synthetic": f"synthetic smoke-test stories (generator seed {args.seed}), not TinyStories"
            }.get(params["source"], f"Hugging Face hub {args.hf_dataset} (train/validation splits)")
    write_dataset(out_dir, items, total, {"source": desc, "name": out_dir.name, "params": params}, args.num_proc,
                  unique)
    return out_dir


def _labeled(train, val):
    return itertools.chain((("train", s) for s in train), (("val", s) for s in val))


def _describe(path):
    """A file as recorded in meta.json: absolute path and size, so a changed file is a changed parameter."""
    p = Path(path)
    return {"path": str(p.resolve()), "bytes": p.stat().st_size if p.is_file() else None}


def _already_prepared(out_dir, params, force):
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


def main(argv=None):
    """Command line entry. Bad input: one line `error: ...` on stderr and SystemExit(1)."""
    args = parse_args(argv)
    try:
        return prepare(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as e:  # a full disk, a read-only directory, a connection lost mid-download...
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
