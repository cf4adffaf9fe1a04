"""
The two tokenizers a MicroRWKV model can read, by the name GPTConfig.tokenizer and a dataset's meta.json give:

    gpt2        GPT-2's BPE (tiktoken's r50k_base, 50,257 tokens, <|endoftext|> = 50256): what the models
                trained here read. Offline, tiktoken needs TIKTOKEN_CACHE_DIR (e.g. ../shared/tiktoken_cache).
    rwkv_world  the RWKV "World" tokenizer of the official RWKV-5/6/7 models (65,536 ids; id 0 ends a document).
                Its vocabulary ships inside the `rwkv` package (rwkv_vocab_v20230424.txt), so it works offline.

get_tokenizer(name) returns an object with tiktoken's interface as the scripts use it: encode_ordinary(text),
encode(text, allowed_special={"<|endoftext|>"}), decode_single_token_bytes(id), decode(ids), n_vocab, eot_token.
"""

import ast
import importlib.util
import os

NAMES = ("gpt2", "rwkv_world")
# what a meta.json may say for each: prepare_*.py record GPT-2's BPE under tiktoken's name "r50k_base"
ALIASES = {"gpt2": "gpt2", "r50k_base": "gpt2", "rwkv_world": "rwkv_world"}
EOT_TEXT = "<|endoftext|>"


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded; the message is one line."""


def canonical(name):
    """The tokenizer name of GPTConfig for a meta.json's "tokenizer" entry (None for one a model cannot read)."""
    return ALIASES.get(name)


def world_vocab_path():
    spec = importlib.util.find_spec("rwkv")
    if spec is None:
        raise TokenizerError("the RWKV World tokenizer needs the rwkv package: pip install rwkv")
    return os.path.join(spec.submodule_search_locations[0], "rwkv_vocab_v20230424.txt")


class WorldTokenizer:
    """RWKV World: the longest vocabulary entry that prefixes the rest of the UTF-8 bytes, token after token
    (greedy longest match; every single byte is an entry, so any text encodes). The vocabulary file has one
    line per token, `id repr(token) length`, with the token a Python str or bytes literal."""

    n_vocab = 65536
    eot_token = 0

    def __init__(self, path=None):
        path = path or world_vocab_path()
        self.id_to_bytes = {}
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    idx, rest = line.rstrip("\n").split(" ", 1)
                    literal, length = rest.rsplit(" ", 1)
                    token = ast.literal_eval(literal)  # a literal only: the file cannot run code
                    token = token.encode("utf-8") if isinstance(token, str) else token
                    if len(token) != int(length):
                        raise ValueError(f"token {idx} has {len(token)} bytes, the file says {length}")
                    self.id_to_bytes[int(idx)] = token
        except (OSError, ValueError, SyntaxError) as e:
            raise TokenizerError(f"cannot read the RWKV World vocabulary {path} ({type(e).__name__}: {e})") from None
        self.id_to_bytes[self.eot_token] = b""  # id 0 is the end of a document: no text
        # a byte trie of nested dicts; the id of the token that ends at a node is under the key None
        self.trie = {}
        for idx, token in self.id_to_bytes.items():
            if token:
                node = self.trie
                for byte in token:
                    node = node.setdefault(byte, {})
                node[None] = idx
        if any(None not in self.trie.get(b, {}) for b in range(256)):
            raise TokenizerError(f"{path} is not the RWKV World vocabulary: it lacks single-byte tokens")

    def encode_ordinary(self, text):
        data, ids, i, n = text.encode("utf-8"), [], 0, 0
        while i < len(data):
            node, j, best, end = self.trie, i, None, i
            while j < len(data) and data[j] in node:
                node = node[data[j]]
                j += 1
                if None in node:
                    best, end = node[None], j
            ids.append(best)
            i = end
        return ids

    def encode(self, text, allowed_special=()):
        """encode_ordinary, but a literal <|endoftext|> (if allowed) becomes the end-of-document id 0."""
        if EOT_TEXT not in allowed_special and allowed_special != "all":
            return self.encode_ordinary(text)
        ids = []
        for k, part in enumerate(text.split(EOT_TEXT)):
            ids += ([self.eot_token] if k else []) + self.encode_ordinary(part)
        return ids

    def decode_single_token_bytes(self, idx):
        return self.id_to_bytes.get(idx, b"")

    def decode(self, ids):
        return b"".join(self.decode_single_token_bytes(i) for i in ids).decode("utf-8", errors="replace")


def get_tokenizer(name):
    """The tokenizer called `name` (see NAMES, or a meta.json alias); TokenizerError if it cannot be loaded."""
    name = canonical(name) or name
    if name == "rwkv_world":
        return WorldTokenizer()
    if name != "gpt2":
        raise TokenizerError(f"unknown tokenizer {name!r}; expected one of {', '.join(NAMES)}")
    import tiktoken
    try:
        return tiktoken.get_encoding("r50k_base")
    except Exception as e:
        raise TokenizerError(f"cannot load the GPT-2 tokenizer r50k_base ({type(e).__name__}); offline, set "
                             f"TIKTOKEN_CACHE_DIR to a folder with its files (e.g. ../shared/tiktoken_cache)") from None
