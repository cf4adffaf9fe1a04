"""
Prepare TinyStories (or your own story files) as GPT-2 BPE token files for training (or, with
--tokenizer rwkv_world, as RWKV World token files, the ids official RWKV-7 models read: see import_rwkv.py).

Writes data/<name>/train.bin and val.bin (flat uint16 token ids, every story followed by
<|endoftext|> = 50256) and meta.json (tokenizer, vocab size, token and story counts, source).
train.py reads them through data.load_tokens(). Exact duplicate stories are dropped (the first is
kept) before the train/val split, so no story is in both; meta.json says how many (duplicates_dropped).

Three sources, one tokenize-and-write path (data.py's, shared with prepare_openwebtext.py):

# the Hugging Face hub (default): roneneldan/TinyStories train + validation splits -> data/tinystories/
$ python prepare_tinystories.py
# the 15k-story subset the README table's model trains on: first 15000 train stories (+ first 1500 validation) -> data/tinystories_15k/
$ python prepare_tinystories.py --num_stories 15000

# local files -> data/tinystories_local/: the upstream raw text layout (TinyStoriesV2-GPT4-*.txt,
# stories separated by a line <|endoftext|>) or JSON / JSONL records with a "text" or "story" field
$ python prepare_tinystories.py --source TinyStoriesV2-GPT4-train.txt --val_source TinyStoriesV2-GPT4-valid.txt
$ python prepare_tinystories.py --source ../shared/data/tinystories/train_sample_lower.txt --val_fraction 0.05

# World tokens for official RWKV-7 models -> data/tinystories_local_world/ (meta.json: "tokenizer": "rwkv_world")
$ python prepare_tinystories.py --source ../shared/data/tinystories/valid_sample.txt --tokenizer rwkv_world

# no network at all -> data/synthetic/: 2000 stories from a small procedural generator below.
# A smoke-test corpus (does the pipeline run end to end?), NOT TinyStories.
$ python prepare_tinystories.py --synthetic 2000

Offline, tiktoken needs its BPE file: TIKTOKEN_CACHE_DIR=../shared/tiktoken_cache works in this repo.
"""

import argparse
import itertools
import math
import random
from pathlib import Path

from data import (TOKENIZER, DataError, Unique, add_output_args, already_prepared, check_files, count_stories, describe,
                  exit_on_error, hub_stories, load_hub_dataset, local_stories, split_by_fraction, write_dataset)

HF_DATASET = "roneneldan/TinyStories"


# -----------------------------------------------------------------------------
# the Hugging Face hub


def hub_splits(name, streaming):
    """Open the train and validation splits of a hub dataset."""
    ds = load_hub_dataset(name, "use --source FILE or --synthetic N", streaming=streaming)
    for split in ("train", "validation"):
        if split not in ds:
            raise DataError(f"dataset {name} has no '{split}' split (it has: {', '.join(ds)})")
    return ds["train"], ds["validation"]


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
    parser.add_argument("--tokenizer", choices=["gpt2", "rwkv_world"], default="gpt2",
                        help="gpt2: GPT-2's BPE (meta.json says r50k_base); rwkv_world: the RWKV World tokenizer of "
                             "the official RWKV-7 models (the default name gets a _world suffix) (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1337,
                        help="seed of the --val_fraction split and of --synthetic (default: %(default)s)")
    add_output_args(parser,
                    name_help="dataset name: output goes to data/<name>/, which train.py finds as dataset=<name>",
                    num_proc_help="tokenizer processes (default: min(8, CPU count) = %(default)s)")
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
        params = {"source": "local", "files": [describe(p) for p in args.source]}
        name = dataset_name("tinystories_local", n_max)
    elif args.synthetic:
        params = {"source": "synthetic", "stories": args.synthetic, "seed": args.seed}
        name = "synthetic"
    else:
        params = {"source": f"hf:{args.hf_dataset}"}
        name = dataset_name("tinystories" if args.hf_dataset == HF_DATASET else
                            args.hf_dataset.rstrip("/").split("/")[-1].lower(), n_max)
    if args.val_source:
        params["val_files"] = [describe(p) for p in args.val_source]
    elif args.source or args.synthetic:
        params.update(val_fraction=args.val_fraction, split_seed=args.seed)
    # dedup: a dataset prepared before exact duplicates were dropped is not this one; --force rebuilds it
    tokenizer = TOKENIZER if args.tokenizer == "gpt2" else args.tokenizer
    params.update(num_stories=n_max, tokenizer=tokenizer, dedup="exact")
    name += "" if args.tokenizer == "gpt2" else "_world"
    out_dir = Path(args.out_dir) if args.out_dir else Path("data") / (args.name or name)
    if already_prepared(out_dir, params, args.force):
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
                  unique, tokenizer)
    return out_dir


def _labeled(train, val):
    return itertools.chain((("train", s) for s in train), (("val", s) for s in val))



def main(argv=None):
    """Command line entry. Bad input: one line `error: ...` on stderr and SystemExit(1)."""
    return exit_on_error(prepare, parse_args(argv))


if __name__ == "__main__":
    main()
