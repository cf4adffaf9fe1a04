"""
Prepare OpenWebText (or your own text files) as token files for train.py, like nanoGPT's data/openwebtext/prepare.py.

Writes data/<name>/train.bin and val.bin (flat uint16 token ids, every document followed by the end-of-text token)
and meta.json, the layout prepare_tinystories.py writes: both scripts read, split, tokenize and write with data.py,
and train.py reads the files with data.load_tokens().

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
from pathlib import Path

import numpy as np

from data import (TOKENIZER, DataError, add_output_args, already_prepared, batched, check_files, count_stories,
                  describe, exit_on_error, hub_reachable, hub_stories, load_hub_dataset, local_stories,
                  split_by_fraction, write_dataset, write_token_files)

HF_DATASET = "openwebtext"
NEOX_REPO = "RWKV/rwkv-4-169m-pile"  # ships the GPT-NeoX-20B tokenizer, which every RWKV-4 Pile model uses


# -----------------------------------------------------------------------------
# Hugging Face tokenizers (--tokenizer other than r50k_base)


def hf_tokenizer(name):
    """The Hugging Face tokenizer `name` (a hub id or a directory; 'neox' is GPT-NeoX-20B's), checked for uint16."""
    repo = NEOX_REPO if name == "neox" else name
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError(f"--tokenizer {name} needs transformers: pip install transformers") from None
    local_only = not Path(repo).is_dir() and not hub_reachable()
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


def write_hf_dataset(out_dir, items, meta, tokenizer_name, tok):
    """data.write_dataset, which is tied to tiktoken, for a Hugging Face tokenizer: the same files, written the
    same way (data.write_token_files). A fast tokenizer parallelizes each batch itself, so no process pool."""
    def encoded():
        for splits, docs in batched(items):
            # split_special_tokens: a literal "<|endoftext|>" in a document stays text, as with tiktoken
            ids = tok(list(docs), add_special_tokens=False, split_special_tokens=True)["input_ids"]
            tokens = np.array([t for doc_ids in ids for t in (*doc_ids, tok.eos_token_id)], dtype=np.uint16)
            yield splits, (tokens, [len(doc_ids) + 1 for doc_ids in ids])

    tokenizer = {"tokenizer": tokenizer_name, "vocab_size": len(tok), "eot_token": tok.eos_token_id}
    meta, dt = write_token_files(out_dir, encoded(), tokenizer, meta, noun="documents")
    print(f"wrote {out_dir}: train {meta['train_tokens']:,} tokens ({meta['train_stories']:,} documents), "
          f"val {meta['val_tokens']:,} tokens ({meta['val_stories']:,} documents) in {dt:.1f} s")
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
    parser.add_argument("--tokenizer", default=TOKENIZER,
                        help="r50k_base (GPT-2 BPE, for GPT-2 and this project's models), 'neox' (GPT-NeoX-20B, for "
                             "RWKV-4 Pile models), or any Hugging Face tokenizer id or directory (default: %(default)s)")
    parser.add_argument("--val_fraction", type=float, default=0.0005,
                        help="fraction of the documents held out for val, chosen by --seed (default: %(default)s, "
                             "as nanoGPT)")
    parser.add_argument("--seed", type=int, default=2357, help="seed of the val split (default: %(default)s)")
    add_output_args(parser,
                    name_help="output goes to data/<name>/, which train.py finds as dataset=<name> (default: "
                              "openwebtext, or openwebtext_<tokenizer> for another tokenizer)",
                    num_proc_help="processes for the download and the r50k_base tokenizer (default: %(default)s)")
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
    if tokenizer == TOKENIZER:
        return "openwebtext"
    return "openwebtext_" + Path(tokenizer.rstrip("/")).name.lower()


def prepare(args):
    """Resolve the source and tokenizer, check the output, write. Returns the output directory."""
    if args.source:
        params = {"source": "local", "files": [describe(p) for p in args.source]}
    else:
        params = {"source": f"hf:{args.hf_dataset}"}
    params.update(val_fraction=args.val_fraction, split_seed=args.seed, tokenizer=args.tokenizer)
    out_dir = Path(args.out_dir) if args.out_dir else Path("data") / (args.name or default_name(args.tokenizer))
    if already_prepared(out_dir, params, args.force):
        return out_dir
    tok = None if args.tokenizer == TOKENIZER else hf_tokenizer(args.tokenizer)  # fail before the long part

    if args.source:
        check_files(args.source)
        print(f"counting documents in {len(args.source)} file(s)...")
        n = count_stories(args.source)
        docs, desc = local_stories(args.source), f"local files {', '.join(args.source)}"
    else:
        # the train split (OpenWebText has no other), downloaded once into the datasets cache
        ds = load_hub_dataset(args.hf_dataset, "use --source FILE", split="train", num_proc=args.num_proc)
        n, docs, desc = len(ds), hub_stories(ds), f"Hugging Face hub {args.hf_dataset} (train split)"
    items = split_by_fraction(docs, n, args.val_fraction, args.seed)
    meta = {"source": desc, "name": out_dir.name, "params": params}
    if tok is None:
        write_dataset(out_dir, items, n, meta, args.num_proc)
    else:
        write_hf_dataset(out_dir, items, meta, args.tokenizer, tok)
    return out_dir


def main(argv=None):
    """Command line entry. Bad input: one line `error: ...` on stderr and SystemExit(1)."""
    return exit_on_error(prepare, parse_args(argv))


if __name__ == "__main__":
    main()
