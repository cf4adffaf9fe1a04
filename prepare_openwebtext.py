"""
Prepare OpenWebText (or your own text files) as token files for train.py, like nanoGPT's data/openwebtext/prepare.py.

Writes data/<name>/train.bin and val.bin (flat uint16 token ids, every document followed by the end-of-text token)
and meta.json: the layout of prepare_tinystories.py, whose file reading, splitting, tokenizing and writing this
reuses, and which train.py reads with load_tokens().

# the Hugging Face hub (default): OpenWebText's 8M documents (a ~54 GB download into the datasets cache, ~9B
# tokens), 0.05% of them held out for val as in nanoGPT -> data/openwebtext/ (train.bin ~17 GB)
$ python prepare_openwebtext.py
# local files instead: .txt (documents separated by a line <|endoftext|>; a file without one is one document),
# .json or .jsonl (records with a "text" field), concatenated
$ python prepare_openwebtext.py --source owt/part-*.jsonl
# for the RWKV-4 baselines (config/eval_rwkv4_*.py): the same documents in the GPT-NeoX-20B tokens RWKV-4 reads
$ python prepare_openwebtext.py --tokenizer neox                  # -> data/openwebtext_neox/

Offline, tiktoken needs its BPE file: TIKTOKEN_CACHE_DIR=../shared/tiktoken_cache works in this repo.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import prepare_tinystories as pt
from prepare_tinystories import DataError

HF_DATASET = "openwebtext"
NEOX_REPO = "RWKV/rwkv-4-169m-pile"  # ships the GPT-NeoX-20B tokenizer, which every RWKV-4 Pile model uses


# -----------------------------------------------------------------------------
# sources


def hub_documents(name, num_proc):
    """The train split of a hub dataset (OpenWebText has no other), downloaded once into the datasets cache."""
    if not pt.hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"  # a cached copy still loads, and without one datasets fails at once
    import datasets

    try:
        return datasets.load_dataset(name, split="train", num_proc=num_proc)
    except ConnectionError:
        raise DataError(f"could not download {name} from the Hugging Face hub (no network?); use --source FILE") from None
    except FileNotFoundError:  # datasets' DatasetNotFoundError
        raise DataError(f"dataset {name} not found on the Hugging Face hub or on disk") from None
    except ValueError as e:
        raise DataError(f"could not load dataset {name}: {str(e).splitlines()[0]}") from None


# -----------------------------------------------------------------------------
# Hugging Face tokenizers (--tokenizer other than r50k_base)


def hf_tokenizer(name):
    """The Hugging Face tokenizer `name` (a hub id or a directory; 'neox' is GPT-NeoX-20B's), checked for uint16."""
    repo = NEOX_REPO if name == "neox" else name
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError(f"--tokenizer {name} needs transformers: pip install transformers") from None
    local_only = not os.path.isdir(repo) and not pt.hub_reachable()
    try:
        tok = AutoTokenizer.from_pretrained(repo, local_files_only=local_only)
    except (OSError, ValueError) as e:
        reason = "the hub is unreachable and it is not cached" if local_only else str(e).strip().splitlines()[0]
        raise DataError(f"cannot load tokenizer {repo}: {reason}") from None
    if tok.eos_token_id is None:
        raise DataError(f"tokenizer {repo} has no end-of-text (eos) token to end documents with")
    if len(tok) > 2 ** 16:
        raise DataError(f"tokenizer {repo} has {len(tok)} tokens: more than uint16 token files hold")
    return tok


def write_hf_dataset(out_dir, items, total, meta, tokenizer_name, tok):
    """prepare_tinystories.write_dataset, which is tied to tiktoken, for a Hugging Face tokenizer: the same files,
    written to *.tmp and renamed only when complete. A fast tokenizer parallelizes each batch itself."""
    out_dir = Path(out_dir)
    names = ("train.bin", "val.bin", "meta.json")
    tmp = {n: out_dir / (n + ".tmp") for n in names}
    counts = {"train_tokens": 0, "val_tokens": 0, "train_stories": 0, "val_stories": 0}
    items = iter(items)
    t0 = time.time()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(tmp["train.bin"], "wb") as ftrain, open(tmp["val.bin"], "wb") as fval:
            while batch := [item for _, item in zip(range(pt.BATCH_STORIES), items)]:
                # split_special_tokens: a literal "<|endoftext|>" in a document stays text, as with tiktoken
                ids = tok([doc for _, doc in batch], add_special_tokens=False, split_special_tokens=True)["input_ids"]
                for (split, _), doc_ids in zip(batch, ids):
                    tokens = np.array(doc_ids + [tok.eos_token_id], dtype=np.uint16)
                    (fval if split == "val" else ftrain).write(tokens.tobytes())
                    counts[f"{split}_tokens"] += len(tokens)
                    counts[f"{split}_stories"] += 1
        for split in ("train", "val"):
            if counts[f"{split}_stories"] == 0:
                raise DataError(f"no {split} documents: the {split} source is empty")
        meta = {"tokenizer": tokenizer_name, "vocab_size": len(tok), "eot_token": tok.eos_token_id, "dtype": "uint16",
                **counts, **meta}
        tmp["meta.json"].write_text(json.dumps(meta, indent=2) + "\n")
        (out_dir / "meta.json").unlink(missing_ok=True)  # meta.json goes last: it marks the directory as complete
        for n in names:
            os.replace(tmp[n], out_dir / n)
    except BaseException:
        for p in tmp.values():
            p.unlink(missing_ok=True)
        raise
    print(f"wrote {out_dir}: train {counts['train_tokens']:,} tokens ({counts['train_stories']:,} documents), "
          f"val {counts['val_tokens']:,} tokens ({counts['val_stories']:,} documents) in {time.time() - t0:.1f} s")
    return meta


# -----------------------------------------------------------------------------
# command line


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Tokenize OpenWebText into data/<name>/{train,val}.bin + meta.json (uint16 token ids, an "
                    "end-of-text token after every document). Without --source it downloads the hub dataset.")
    parser.add_argument("--source", nargs="+", metavar="PATH",
                        help="local files instead of the hub: .txt (documents separated by a line <|endoftext|>), "
                             ".json or .jsonl (records with a 'text' field); several files are concatenated")
    parser.add_argument("--hf_dataset", default=HF_DATASET,
                        help="Hugging Face dataset read without --source: a hub id or a directory datasets.load_dataset "
                             "reads; its 'train' split, 'text' field (default: %(default)s)")
    parser.add_argument("--tokenizer", default=pt.TOKENIZER,
                        help="r50k_base (GPT-2 BPE, for GPT-2 and this project's models), 'neox' (GPT-NeoX-20B, for "
                             "RWKV-4 Pile models), or any Hugging Face tokenizer id or directory (default: %(default)s)")
    parser.add_argument("--val_fraction", type=float, default=0.0005,
                        help="fraction of the documents held out for val, chosen by --seed (default: %(default)s, "
                             "as nanoGPT)")
    parser.add_argument("--seed", type=int, default=2357, help="seed of the val split (default: %(default)s)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--name", help="output goes to data/<name>/, which train.py finds as dataset=<name> (default: "
                                    "openwebtext, or openwebtext_<tokenizer> for another tokenizer)")
    out.add_argument("--out_dir", help="output directory, overriding data/<name>/")
    parser.add_argument("--num_proc", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes for the download and the r50k_base tokenizer (default: %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite an output directory that was prepared with different parameters")
    args = parser.parse_args(argv)
    if args.hf_dataset != HF_DATASET and args.source:
        parser.error("--hf_dataset applies only without --source")
    if not 0 < args.val_fraction < 1:
        parser.error("--val_fraction must be between 0 and 1")
    if args.num_proc < 1:
        parser.error("--num_proc must be at least 1")
    return args


def default_name(tokenizer):
    """openwebtext, openwebtext_neox, openwebtext_<last part of a tokenizer id or path>."""
    if tokenizer == pt.TOKENIZER:
        return "openwebtext"
    return "openwebtext_" + Path(tokenizer.rstrip("/")).name.lower()


def prepare(args):
    """Resolve the source and tokenizer, check the output, write. Returns the output directory."""
    if args.source:
        params = {"source": "local", "files": [pt._describe(p) for p in args.source]}
    else:
        params = {"source": f"hf:{args.hf_dataset}"}
    params.update(val_fraction=args.val_fraction, split_seed=args.seed, tokenizer=args.tokenizer)
    out_dir = Path(args.out_dir) if args.out_dir else Path("data") / (args.name or default_name(args.tokenizer))
    if pt._already_prepared(out_dir, params, args.force):
        return out_dir
    tok = None if args.tokenizer == pt.TOKENIZER else hf_tokenizer(args.tokenizer)  # fail before the long part

    if args.source:
        pt.check_files(args.source)
        print(f"counting documents in {len(args.source)} file(s)...")
        n = pt.count_stories(args.source)
        docs, desc = pt.local_stories(args.source), f"local files {', '.join(args.source)}"
    else:
        ds = hub_documents(args.hf_dataset, args.num_proc)
        n, docs, desc = len(ds), pt.hub_stories(ds), f"Hugging Face hub {args.hf_dataset} (train split)"
    items = pt.split_by_fraction(docs, n, args.val_fraction, args.seed)
    meta = {"source": desc, "name": out_dir.name, "params": params}
    if tok is None:
        pt.write_dataset(out_dir, items, n, meta, args.num_proc)
    else:
        write_hf_dataset(out_dir, items, n, meta, args.tokenizer, tok)
    return out_dir


def main(argv=None):
    """Command line entry. Bad input: one line `error: ...` on stderr and SystemExit(1)."""
    args = parse_args(argv)
    try:
        return prepare(args)
    except (DataError, OSError) as e:  # OSError: a full disk, a read-only directory, a lost connection...
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
