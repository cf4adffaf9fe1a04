"""prepare_openwebtext.py, offline: local files with the GPT-2 BPE and with a small Hugging Face tokenizer."""

import json
import re

import numpy as np
import pytest

import prepare_openwebtext as po
from data import load_tokens


@pytest.fixture(scope="module")
def transformers():
    import transformers  # a requirement (requirements.txt): missing, it is a failure, not a skip
    return transformers


DOCS = [f"Document {i}: the web page says {'hello ' * (i % 7)}world, and <|endoftext|> in a page is text."
        for i in range(40)]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    return str(path)


def split_docs(tokens, eot):
    ends = np.flatnonzero(np.asarray(tokens) == eot)
    assert len(tokens) and tokens[-1] == eot
    return [t[:-1].tolist() for t in np.split(np.asarray(tokens), ends + 1)[:-1]]


def test_prepare_openwebtext_gpt2_bpe(tmp_path, source, capsys):
    import tiktoken
    enc = tiktoken.get_encoding("r50k_base")
    out = tmp_path / "owt"
    argv = ["--source", source, "--out_dir", str(out), "--val_fraction", "0.1", "--num_proc", "1"]
    po.main(argv)
    train, val, meta = load_tokens(out, 50304)
    assert (meta["tokenizer"], meta["eot_token"], meta["val_stories"]) == ("r50k_base", 50256, 4)
    docs = [enc.decode(t) for t in split_docs(train, 50256) + split_docs(val, 50256)]
    assert sorted(docs) == sorted(DOCS)  # every document once, whole, in one split
    po.main(argv)  # same parameters: nothing to do
    assert "already prepared" in capsys.readouterr().out
    assert po.default_name("r50k_base") == "openwebtext" and po.default_name("neox") == "openwebtext_neox"


def test_prepare_openwebtext_hf_tokenizer(transformers, tmp_path, source):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for d in DOCS for w in re.findall(r"\w+|[^\w\s]+", d)})
    vocab = {"<|endoftext|>": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok_dir = tmp_path / "tok"
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                         unk_token="[UNK]").save_pretrained(tok_dir)
    out = tmp_path / "owt_tok"
    po.main(["--source", source, "--out_dir", str(out), "--tokenizer", str(tok_dir), "--val_fraction", "0.1"])
    train, val, meta = load_tokens(out)
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_token"]) == (str(tok_dir), len(vocab), 0)
    expected = sorted([vocab[w] for w in re.findall(r"\w+|[^\w\s]+", d)] for d in DOCS)
    assert sorted(split_docs(train, 0) + split_docs(val, 0)) == expected


def test_prepare_openwebtext_errors(tmp_path, capsys):
    for argv, message in ((["--source", str(tmp_path / "missing.jsonl")], "no such file"),
                          (["--source", str(tmp_path / "missing.jsonl"), "--tokenizer", str(tmp_path / "none")],
                           "tokenizer")):
        with pytest.raises(SystemExit) as e:
            po.main(argv + ["--out_dir", str(tmp_path / "out")])
        assert e.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
