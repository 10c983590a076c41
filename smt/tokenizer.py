"""**kern text <-> token streams (kern, ekern, bekern) and the vocabulary that numbers them.

Layout is made of tokens too, so that a transcription can be written back exactly:
`<b>` is a line break, `<t>` the tab between spines, `<s>` the space between notes of a chord
(or between words of a comment line).

The three formats differ only in how finely a kern field (one note, one barline, one
interpretation) is cut:

- `kern`: one token per field (`8A-L`, `*clefG2`). Small streams, large vocabulary.
- `ekern`: the field is split into its core (duration, pitch, accidentals, glued with `@`)
  and one token per decoration (`·`): `8A-L` -> `8@A@-`, `L`.
- `bekern`: every part is its own token: `8A-L` -> `8`, `A`, `-`, `L`. The SMT papers use
  this one: about 180 tokens cover piano music, so the decoder's softmax stays small.

The `@` / `·` markers are our internal join characters; `detokenize` strips them and glues
the parts of a field back together, so every format writes out the same plain **kern.
Input that already carries these markers (the GrandStaff `.bekrn` files) must first go
through `normalize_kern`, which turns it into plain **kern.

Comment and reference lines (`!!!OTL: Title`) are cut into the `!!!OTL:` key and one token per
character in ekern/bekern, so that free text does not grow the vocabulary without bound.

The `ref-*` formats are the reference SMT's own tokenizations (`smt.reference_tokens`): a
published model converted by `smt.convert` reads them. They take the text as the reference's
datasets hold it (markers and measure numbers included) and cut it exactly as the reference did.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from autotune.atomic import atomic_write_json
from smt.reference_tokens import REFERENCE_FORMATS, reference_tokens

Format = Literal["kern", "ekern", "bekern", "ref-system", "ref-kern", "ref-ekern", "ref-bekern"]
# Our own formats: `detokenize` then `tokenize` gives the same tokens back.
FORMATS: tuple[str, ...] = ("kern", "ekern", "bekern")
# Every format a run, a preparation or a converted model may name.
ALL_FORMATS: tuple[str, ...] = FORMATS + REFERENCE_FORMATS

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
LINE, TAB, SPACE = "<b>", "<t>", "<s>"
SPECIALS: tuple[str, ...] = (PAD, BOS, EOS, LINE, TAB, SPACE)
LAYOUT = {LINE: "\n", TAB: "\t", SPACE: " "}
_LAYOUT_OF = {v: k for k, v in LAYOUT.items()}

CORE_SEP = "@"      # joins duration, pitch and accidentals of one note (ekern core token)
PART_SEP = "·"      # separates the core from each decoration
MARKERS = (CORE_SEP, PART_SEP)

# A note or rest field: optional prefix signifiers, duration with dots, pitch (a run of one
# letter, or `r` for a rest), accidentals, then any decorations.
_NOTE = re.compile(
    r"^(?P<pre>[^0-9a-gA-Gr]*?)"
    r"(?P<dur>\d+\.*)"
    r"(?P<pitch>(?P<letter>[a-gA-G])(?P=letter)*|r+)"
    r"(?P<acc>#+|-+|n)?"
    r"(?P<post>.*)$"
)
_COMMENT_KEY = re.compile(r"^(!+[^:\s]*:?)(.*)$", re.S)
_MEASURE_NUM = re.compile(r"^(=+)(\d+)(.*)$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class TokenizeError(ValueError):
    """Text that cannot be turned into tokens (markers inside, unknown format, empty)."""


def _check_format(fmt: str) -> None:
    if fmt not in ALL_FORMATS:
        raise ValueError(f"unknown kern format {fmt!r}; expected one of {', '.join(ALL_FORMATS)}")


def _field_parts(field: str) -> list[tuple[str, str]]:
    """Cut one kern field into (separator-before, part) pairs; separator '' for the first."""
    if not field:
        return []
    if any(m in field for m in MARKERS):
        raise TokenizeError(f"kern field {field!r} contains an ekern marker; normalize_kern() first")
    if field.startswith("!"):
        m = _COMMENT_KEY.match(field)
        assert m is not None
        key, rest = m.group(1), m.group(2)
        parts = [("", key)] if key else []
        parts += [(PART_SEP, ch) for ch in rest]
        return parts
    if field.startswith("*") or field.startswith("="):
        # Interpretations and barlines form a small closed set: keep them whole. Barline
        # numbers are split off so that `=12` does not become a token of its own.
        m = _MEASURE_NUM.match(field)
        if m:
            parts = [("", m.group(1))] + [(PART_SEP, d) for d in m.group(2)]
            if m.group(3):
                parts.append((PART_SEP, m.group(3)))
            return parts
        return [("", field)]
    m = _NOTE.match(field)
    if not m:
        # Null tokens `.`, grace notes without duration and other rare fields stay whole.
        return [("", field)]
    parts: list[tuple[str, str]] = [(PART_SEP, ch) for ch in m.group("pre")]
    core = [m.group("dur"), m.group("pitch")] + ([m.group("acc")] if m.group("acc") else [])
    for i, piece in enumerate(core):
        parts.append((PART_SEP if i == 0 else CORE_SEP, piece))
    parts += [(PART_SEP, ch) for ch in m.group("post")]
    parts[0] = ("", parts[0][1])
    return parts


def _field_tokens(field: str, fmt: str) -> list[str]:
    if fmt == "kern":
        if any(m in field for m in MARKERS):
            raise TokenizeError(f"kern field {field!r} contains an ekern marker; normalize_kern() first")
        return [field] if field else []
    parts = _field_parts(field)
    if fmt == "bekern":
        return [p for _, p in parts]
    tokens: list[str] = []
    for sep, part in parts:
        if sep == CORE_SEP and tokens:
            tokens[-1] += CORE_SEP + part
        else:
            tokens.append(part)
    return tokens


def _global_comment_tokens(line: str, fmt: str) -> list[str]:
    """`!!!OTL: Title words` spans all spines: key, then words (kern) or characters."""
    if any(m in line for m in MARKERS):
        raise TokenizeError(f"comment line {line!r} contains an ekern marker; normalize_kern() first")
    m = _COMMENT_KEY.match(line)
    assert m is not None
    key, rest = m.group(1), m.group(2)
    tokens = [key]
    pieces = re.split(r"([ \t])", rest) if fmt == "kern" else list(rest)
    tokens += [_LAYOUT_OF.get(p, p) for p in pieces if p]
    return tokens


def plain_lines(text: str) -> str:
    """A transcription as written by any editor -> "\n"-separated text: the one place that
    drops a leading UTF-8 byte-order mark (Windows editors write one; it would glue onto the
    first token as "\ufeff**kern", a new vocabulary entry) and turns CRLF / CR into LF."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def tokenize(kern: str, fmt: Format = "bekern") -> list[str]:
    """Plain **kern text -> tokens (no `<bos>`/`<eos>`; the Vocab adds those on encode).

    Raises `TokenizeError` for empty text or fields carrying ekern markers.
    """
    _check_format(fmt)
    text = plain_lines(kern).rstrip("\n")
    if not text.strip():
        raise TokenizeError("empty transcription")
    bad = _CONTROL.search(text)
    if bad:
        raise TokenizeError(f"control character {bad.group()!r} in the transcription (binary data?)")
    if fmt in REFERENCE_FORMATS:
        # The raw text (CRLF read as LF there): the reference's cleaning treats an
        # unterminated last line apart.
        return reference_tokens(kern, fmt)
    tokens: list[str] = []
    for li, line in enumerate(text.split("\n")):
        if li:
            tokens.append(LINE)
        if line.startswith("!!"):
            tokens.extend(_global_comment_tokens(line, fmt))
            continue
        for si, spine in enumerate(line.split("\t")):
            if si:
                tokens.append(TAB)
            for fi, field in enumerate(spine.split(" ")):
                if fi:
                    tokens.append(SPACE)
                tokens.extend(_field_tokens(field, fmt))
    return tokens


def detokenize(tokens: Iterable[str], fmt: Format = "bekern") -> str:
    """Tokens -> plain **kern text. Specials other than layout are dropped; `<eos>` ends.

    For the full-page `ref-*` formats the text has no header (the reference's tokens have
    none) and does not tokenize back to the same tokens: compare their tokens, not texts."""
    _check_format(fmt)
    out: list[str] = []
    for tok in tokens:
        if tok == EOS:
            break
        if tok in (PAD, BOS):
            continue
        if tok in LAYOUT:
            out.append(LAYOUT[tok])
        else:
            out.append(tok.replace(CORE_SEP, "").replace(PART_SEP, ""))
    return "".join(out)


def normalize_kern(text: str) -> str:
    """Bring a transcription to the plain **kern our tokenizer reads.

    Strips ekern markers (`@`, `·`) and turns `**ekern*`/`**bekern*` headers into `**kern`;
    drops measure numbers (`=12` -> `=`) as the reference SMT code does, because a model
    cannot read them from a system image; drops trailing blank lines, `\r` and a leading
    byte-order mark (`plain_lines`).
    """
    text = plain_lines(text)
    lines = []
    for line in text.split("\n"):
        fields = []
        for spine in line.split("\t"):
            spine = re.sub(r"^\*\*b?ekern\S*$", "**kern", spine)
            spine = spine.replace(CORE_SEP, "").replace(PART_SEP, "")
            spine = " ".join(re.sub(r"^(=+)\d+", r"\1", f) for f in spine.split(" "))
            fields.append(spine)
        lines.append("\t".join(fields))
    return "\n".join(lines).strip("\n")


class Vocab:
    """Token <-> id. Specials first (`<pad>`=0, `<bos>`=1, `<eos>`=2, `<b>`, `<t>`, `<s>`), then
    every other token sorted, so the same corpus always gives the same ids.

    `given_ids=True` keeps an order fixed elsewhere (a converted checkpoint's output rows):
    `<pad>`, `<bos>` and `<eos>` may then sit at any id, and are looked up."""

    def __init__(self, tokens: Sequence[str], fmt: str | None = None, *, given_ids: bool = False) -> None:
        if given_ids:
            missing = [t for t in (PAD, BOS, EOS) if t not in tokens]
            if missing:
                raise ValueError(f"vocabulary lacks the special token(s) {missing}")
        elif tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary has duplicate tokens")
        self.tokens: list[str] = list(tokens)
        self.fmt = fmt
        self.given_ids = given_ids
        self._ids = {t: i for i, t in enumerate(self.tokens)}

    # -- construction --------------------------------------------------------------------
    @classmethod
    def build(cls, token_lists: Iterable[Iterable[str]], fmt: str | None = None) -> "Vocab":
        seen: set[str] = set()
        for tokens in token_lists:
            seen.update(tokens)
        rest = sorted(seen.difference(SPECIALS))
        return cls(list(SPECIALS) + rest, fmt=fmt)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Vocab":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(data["tokens"], fmt=data.get("format"), given_ids=bool(data.get("given_ids", False)))

    def save(self, path: str | os.PathLike[str]) -> Path:
        data: dict[str, object] = {"format": self.fmt, "size": len(self), "tokens": self.tokens}
        if self.given_ids:
            data["given_ids"] = True
        return atomic_write_json(path, data, indent=1)

    def extended(self, tokens: Iterable[str]) -> "Vocab":
        """This vocabulary with `tokens` it lacks appended (sorted) after its last id, so every
        existing id keeps its meaning (the model's rows for them stay valid)."""
        new = sorted(set(tokens) - set(self.tokens))
        return Vocab(self.tokens + new, fmt=self.fmt, given_ids=True)

    # -- lookups -------------------------------------------------------------------------
    pad_id = property(lambda self: self._ids[PAD])
    bos_id = property(lambda self: self._ids[BOS])
    eos_id = property(lambda self: self._ids[EOS])

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.tokens == other.tokens

    def id(self, token: str) -> int:
        return self._ids[token]

    def encode(self, tokens: Iterable[str], add_special: bool = False) -> list[int]:
        """Tokens -> ids; `add_special` wraps them in `<bos>` ... `<eos>`.
        Unknown tokens raise `ValueError` naming them all."""
        tokens = list(tokens)
        unknown = sorted({t for t in tokens if t not in self._ids})
        if unknown:
            shown = ", ".join(repr(t) for t in unknown[:10])
            more = f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else ""
            raise ValueError(f"tokens not in the vocabulary: {shown}{more}")
        ids = [self._ids[t] for t in tokens]
        return [self.bos_id, *ids, self.eos_id] if add_special else ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> tokens, stopping at `<eos>` and dropping `<bos>`/`<pad>`."""
        out: list[str] = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            out.append(self.tokens[i])
        return out
