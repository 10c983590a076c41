"""Tokenizer: exact round trips, the token cuts the formats promise, deterministic vocabulary."""
from __future__ import annotations

import json

import pytest

from smt.tokenizer import (FORMATS, SPECIALS, TokenizeError, Vocab, detokenize, normalize_kern,
                           tokenize)

PIECE = (
    "**kern\t**kern\n"
    "*clefF4\t*clefG2\n"
    "*k[b-e-]\t*k[b-e-]\n"
    "*M3/4\t*M3/4\n"
    "!!!OTL: Little  Waltz\n"
    "=\t=\n"
    "[2.C 2.c\t(8ccL 8ee-\n"
    ".\t8dd#J)\n"
    "4r\t4.ff\n"
    "=\t=\n"
    "2.C]\t16gnLL\n"
    "*-\t*-"
)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_is_exact(fmt: str) -> None:
    assert detokenize(tokenize(PIECE, fmt), fmt) == PIECE


@pytest.mark.parametrize("field,fmt,expected", [
    ("8A-L", "kern", ["8A-L"]),
    ("8A-L", "ekern", ["8@A@-", "L"]),
    ("8A-L", "bekern", ["8", "A", "-", "L"]),
    ("[4.ccc#]", "bekern", ["[", "4.", "ccc", "#", "]"]),
    ("16rr", "bekern", ["16", "rr"]),
    ("*clefG2", "bekern", ["*clefG2"]),
    ("=12", "bekern", ["=", "1", "2"]),
])
def test_field_cuts(field: str, fmt: str, expected: list[str]) -> None:
    assert tokenize(field, fmt) == expected


def test_layout_tokens() -> None:
    toks = tokenize("4c 4e\t4g\n=\t=", "bekern")
    assert toks == ["4", "c", "<s>", "4", "e", "<t>", "4", "g", "<b>", "=", "<t>", "="]


@pytest.mark.parametrize("bad", ["", "  \n\n", "8@A·L", "!!!OTL: a·b", "**kern\n4c\x00"])
def test_untokenizable_text_raises(bad: str) -> None:
    with pytest.raises(TokenizeError):
        tokenize(bad, "bekern")


def test_normalize_turns_ekern_into_plain_kern() -> None:
    src = "**ekern_1.0\t**ekern_1.0\r\n*clefF4\t*clefG2\n=7\t=7\n8@A@-·L\t4@c\n"
    assert normalize_kern(src) == "**kern\t**kern\n*clefF4\t*clefG2\n=\t=\n8A-L\t4c"


def test_vocab_specials_first_then_sorted_and_deterministic(tmp_path) -> None:
    lists = [tokenize(PIECE, "bekern"), tokenize("4c\t4d", "bekern")]
    a = Vocab.build(lists, fmt="bekern")
    b = Vocab.build(reversed(lists), fmt="bekern")
    assert a == b
    assert tuple(a.tokens[:6]) == SPECIALS
    assert (a.pad_id, a.bos_id, a.eos_id) == (0, 1, 2)
    assert a.tokens[6:] == sorted(a.tokens[6:])
    a.save(tmp_path / "vocab.json")
    loaded = Vocab.load(tmp_path / "vocab.json")
    assert loaded == a and loaded.fmt == "bekern"
    assert json.loads((tmp_path / "vocab.json").read_text())["size"] == len(a)


def test_encode_decode() -> None:
    toks = tokenize(PIECE, "bekern")
    v = Vocab.build([toks])
    ids = v.encode(toks, add_special=True)
    assert ids[0] == v.bos_id and ids[-1] == v.eos_id
    assert v.decode(ids + [v.pad_id, 7]) == toks       # stops at <eos>
    assert v.decode([v.pad_id] + ids) == toks           # drops <pad>/<bos>


def test_unknown_tokens_are_named() -> None:
    v = Vocab.build([["4", "c"]])
    with pytest.raises(ValueError, match=r"'zz'.*'zzz'|'zzz'.*'zz'"):
        v.encode(["4", "zz", "zzz"])
