"""Tokenizers: byte round trips, and the World tokenizer against the rwkv package's own."""
from __future__ import annotations

import random

import pytest

from rwkvlab import tokenizer as tk

SAMPLES = ["", "a", "Hello, world!\n", "  leading spaces and\ttabs\r\n", "naïve café — ünïcödé",
           "中文文本，和标点。", "emoji 🙂🚀 and a ZWJ family 👨‍👩‍👧", "def f(x):\n    return x ** 2\n",
           "\x00\x01 control bytes \x7f"]


@pytest.fixture(scope="module")
def world():
    return tk.WorldTokenizer()


def _random_texts(n, seed):
    rng = random.Random(seed)
    pools = [(32, 126), (0xA0, 0x7FF), (0x4E00, 0x9FFF), (0x1F600, 0x1F64F), (0, 31)]
    for _ in range(n):
        yield "".join(chr(rng.randint(*rng.choice(pools))) for _ in range(rng.randint(1, 40)))


def test_byte_round_trip():
    bt = tk.ByteTokenizer()
    for s in SAMPLES + list(_random_texts(50, 0)):
        ids = bt.encode(s)
        assert all(0 <= i < 256 for i in ids) and len(ids) == len(s.encode("utf-8"))
        assert bt.decode(ids) == s


def test_world_round_trip(world):
    for s in SAMPLES + list(_random_texts(100, 1)):
        ids = world.encode(s)
        assert all(1 <= i < 65536 for i in ids)
        assert world.decode(ids) == s


def test_world_matches_the_rwkv_package_tokenizer(world):
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    ref = TRIE_TOKENIZER(str(tk.world_vocab_path()))
    for s in SAMPLES + list(_random_texts(100, 2)):
        assert world.encode(s) == ref.encode(s), repr(s)


def test_world_is_greedy_longest_match(world):
    ids = world.encode("Hello world")
    assert world.decode([ids[0]]) == "Hello"                   # a whole word is one token
    assert len(world.encode(" " * 128)) == 1                   # the longest entry: 128 spaces
    # greedy: each token is the longest vocabulary entry the remaining text starts with
    text = "internationalization of everything".encode()
    pos = 0
    for i in world.encode_bytes(text):
        piece = world.id_to_bytes[i]
        assert text.startswith(piece, pos)
        longer = [b for b in world.bytes_to_id if len(b) > len(piece) and text.startswith(b, pos)]
        assert not longer
        pos += len(piece)


def test_stream_decoder_holds_back_partial_characters():
    bt = tk.ByteTokenizer()
    s = "é🙂x"
    dec = tk.StreamDecoder(bt)
    pieces = [dec.push(i) for i in bt.encode(s)]
    assert pieces[0] == "" and "".join(pieces) + dec.flush() == s


def test_custom_vocab_path_and_errors(tmp_path):
    lines = [f"{i + 1} {bytes([i])!r} 1" for i in range(256)] + ["257 'ab' 2", "258 'abc' 3"]
    p = tmp_path / "vocab.txt"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    t = tk.WorldTokenizer(p)
    assert t.encode("abcab") == [258, 257]
    assert t.decode([258, 257]) == "abcab"
    with pytest.raises(ValueError, match=r"^vocab_path:"):
        tk.WorldTokenizer(tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_text("1 'ab' 5\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^vocab_path:"):
        tk.WorldTokenizer(tmp_path / "bad.txt")
    (tmp_path / "small.txt").write_text("1 'a' 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="vocab_path.*single bytes"):
        tk.WorldTokenizer(tmp_path / "small.txt")


def test_bad_inputs(world):
    with pytest.raises(ValueError, match=r"^text:"):
        tk.ByteTokenizer().encode(b"bytes")
    with pytest.raises(ValueError, match=r"^ids:"):
        tk.ByteTokenizer().decode([300])
    with pytest.raises(ValueError, match=r"^ids:"):
        world.decode([70000])
    with pytest.raises(ValueError, match=r"^vocab_size:"):
        tk.for_vocab(1000)
    assert isinstance(tk.for_vocab(256), tk.ByteTokenizer)
