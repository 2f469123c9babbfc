"""Tokenizers: bytes for the book's small models, and the RWKV "World" vocabulary.

* :class:`ByteTokenizer` — token id = byte value (vocab 256). Any text round-trips; the book's
  tiny models use it so that no vocabulary file is needed.
* :class:`WorldTokenizer` — the 65,536-entry vocabulary of BlinkDL's World models
  (``rwkv_vocab_v20230424.txt``, shipped inside the ``rwkv`` PyPI package, or any path you
  give). Encoding is greedy longest match over UTF-8 bytes: at each position take the longest
  vocabulary entry that the remaining bytes start with. Every single byte is in the
  vocabulary, so encoding never fails and ``decode(encode(s)) == s`` for any string.

The vocabulary file has one entry per line, ``<id> <python literal> <byte length>``, where the
literal is a ``str`` (stored as UTF-8) or a ``bytes`` object (for pieces that are not valid
UTF-8 on their own). Id 0 is not in the file: World models use it as the end-of-text token.
"""
from __future__ import annotations

import ast
import codecs
import importlib.util
import operator
import os
from pathlib import Path

WORLD_VOCAB_NAME = "rwkv_vocab_v20230424.txt"


def _utf8(text) -> bytes:
    """``text`` as UTF-8; a non-str or a str that is not valid Unicode (a lone surrogate, as
    ``surrogateescape`` makes of undecodable bytes) is a ValueError naming ``text``."""
    if not isinstance(text, str):
        raise ValueError(f"text: expected a str, got {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"text: character {e.start} ({text[e.start]!r}) is a lone surrogate, not valid "
                         "Unicode, so it has no UTF-8 bytes to encode") from None


def _token_ids(ids) -> list[int]:
    """``ids`` as a list of ints. Accepts ints, numpy integers and integer 0-d tensors (anything
    with ``__index__``); a float such as 3.7, None or a bool is a ValueError naming ``ids``."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise ValueError(f"ids: expected a sequence of token ids (ints), got {type(ids).__name__}")
    out = []
    for i in ids:
        try:
            if isinstance(i, bool):
                raise TypeError
            out.append(operator.index(i))
        except TypeError:
            raise ValueError(f"ids: token ids must be ints, got {i!r} ({type(i).__name__})") from None
    return out


class ByteTokenizer:
    """UTF-8 bytes as tokens: ``vocab_size = 256``."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(_utf8(text))

    def decode_bytes(self, ids) -> bytes:
        ids = _token_ids(ids)
        bad = [i for i in ids if not 0 <= i < 256]
        if bad:
            raise ValueError(f"ids: byte tokens must be ints in [0, 256), got {bad[0]!r}")
        return bytes(ids)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def world_vocab_path() -> Path | None:
    """The vocabulary file shipped in the ``rwkv`` package, or None if it is not installed."""
    spec = importlib.util.find_spec("rwkv")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        p = Path(folder) / WORLD_VOCAB_NAME
        if p.is_file():
            return p
    return None


class WorldTokenizer:
    """Greedy longest-match tokenizer over the RWKV World vocabulary (``vocab_size = 65536``)."""

    vocab_size = 65536

    def __init__(self, vocab_path: str | os.PathLike | None = None):
        path = Path(vocab_path) if vocab_path is not None else world_vocab_path()
        if path is None:
            raise ValueError("vocab_path: no World vocabulary found; `pip install rwkv` ships "
                             f"{WORLD_VOCAB_NAME}, or pass the path of that file")
        if not path.is_file():
            raise ValueError(f"vocab_path: no file at {str(path)!r}")
        self.path = path
        self.id_to_bytes: dict[int, bytes] = {}
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"vocab_path: {str(path)!r} is not UTF-8 text (byte {e.start}); expected the World "
                             f"vocabulary file {WORLD_VOCAB_NAME}") from None
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                first, last = line.index(" "), line.rindex(" ")
                idx, piece, length = int(line[:first]), ast.literal_eval(line[first + 1:last]), int(line[last + 1:])
            except (ValueError, SyntaxError) as e:
                raise ValueError(f"vocab_path: line {n} of {path.name} is not '<id> <literal> <length>': {line[:60]!r}") from e
            if not isinstance(piece, (str, bytes)):
                raise ValueError(f"vocab_path: line {n} of {path.name}: the piece is a {type(piece).__name__}, "
                                 "expected a str or bytes literal")
            piece = piece.encode("utf-8") if isinstance(piece, str) else piece
            if len(piece) != length:
                raise ValueError(f"vocab_path: line {n}: piece has {len(piece)} bytes, the file says {length}")
            self.id_to_bytes[idx] = piece
        self.bytes_to_id = {b: i for i, b in self.id_to_bytes.items()}
        # For each first byte, the lengths of the pieces that start with it, longest first:
        # a greedy match then tries only lengths that exist.
        lengths: dict[int, set[int]] = {}
        for b in self.bytes_to_id:
            lengths.setdefault(b[0], set()).add(len(b))
        self._lengths = {first: sorted(ls, reverse=True) for first, ls in lengths.items()}
        missing = [b for b in range(256) if bytes([b]) not in self.bytes_to_id]
        if missing:
            raise ValueError(f"vocab_path: the vocabulary lacks single bytes {missing[:5]}, so some text cannot be encoded")

    def encode_bytes(self, data: bytes) -> list[int]:
        out, i, n = [], 0, len(data)
        table, lengths = self.bytes_to_id, self._lengths
        while i < n:
            for L in lengths[data[i]]:
                if L <= n - i:
                    tok = table.get(data[i:i + L])
                    if tok is not None:
                        out.append(tok)
                        i += L
                        break
        return out

    def encode(self, text: str) -> list[int]:
        return self.encode_bytes(_utf8(text))

    def decode_bytes(self, ids) -> bytes:
        try:
            return b"".join(self.id_to_bytes[i] for i in _token_ids(ids) if i != 0)
        except KeyError as e:
            raise ValueError(f"ids: token {e.args[0]} is not in the World vocabulary") from None

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


class StreamDecoder:
    """Turns token ids into text one at a time, holding back bytes of an unfinished UTF-8
    character (a World token, or a byte token, can end in the middle of one)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._dec.decode(self.tok.decode_bytes([token_id]))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


def for_vocab(vocab_size: int, vocab_path=None):
    """The tokenizer that goes with a model's vocabulary size: bytes for 256, World for 65536."""
    if vocab_size == 256:
        return ByteTokenizer()
    if vocab_size == 65536:
        return WorldTokenizer(vocab_path)
    raise ValueError(f"vocab_size: no built-in tokenizer for a {vocab_size}-token vocabulary "
                     "(256 → bytes, 65536 → RWKV World)")
