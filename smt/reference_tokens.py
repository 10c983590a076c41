"""The reference SMT's own tokenizations, so that a published model fine-tunes on the very
token sequences it was trained on.

Written from the reference's documented behaviour (its data loading), not copied:

- `ref-system` (the system-level models: GrandStaff, Camera GrandStaff, string quartets): the
  whole transcription, stripped of spaces and newlines at both ends, with measure numbers
  dropped (`=12` -> `=`) and `·` removed, split on every single space, tab and newline; the
  separators become `<s>`, `<t>` and `<b>`. Fields stay whole (`8A-L`), `@` stays in them, the
  `**kern` header is kept, and two separators in a row give an empty-string token (the
  reference's `str.split(" ")`), which its vocabularies hold.
- `ref-bekern` / `ref-ekern` / `ref-kern` (the full-page models): the reference's
  `parse_kern`. It drops lines holding an interpretation the models do not read (`*staff1`,
  `*ped`, `*tuplet`, ... anywhere in the line, except on an unterminated last line), then lines
  made only of `*` (null interpretations), strips the text, drops measure numbers, marks the
  separators, drops stem directions (`·/`, `·\\`, and a `/` or `\\` that opens a field), then
  cuts the (`·`/`@`-marked) fields: bekern at both markers, ekern at `·` only, kern at neither.
  The first four tokens, the two-spine `**kern <t> **kern <b>` header, are dropped. The parts
  of a field are cut only where the text has markers: plain **kern input stays whole fields, and
  a pair the marking does not separate (e.g. `#L` after a dropped `·/`) stays one token.

Deviation, on purpose: `\\r\\n` line ends are read as `\\n` (the reference would keep `\\r`
inside the last token of each line, which no published vocabulary holds).
"""
from __future__ import annotations

import re

SYSTEM = "ref-system"
PAGE_FORMATS = {"ref-bekern": "bekern", "ref-ekern": "ekern", "ref-kern": "kern"}
REFERENCE_FORMATS: tuple[str, ...] = (SYSTEM, *PAGE_FORMATS)

# The interpretations the reference's full-page loading removes, by substring of a line.
DROPPED_INTERPRETATIONS: tuple[str, ...] = (
    "*staff2", "*staff1", "*Xped", "*tremolo", "*ped", "*Xtuplet", "*tuplet", "*Xtremolo",
    "*cue", "*Xcue", "*rscale:1/2", "*rscale:1", "*kcancel", "*below")
# The full-page header the reference cuts off: `**kern <t> **kern <b>` (two spines).
PAGE_HEADER_TOKENS = 4

_MEASURE_NUMBER = re.compile(r"=\d+")
# A line of null interpretations: `*` fields joined by single whitespace characters.
_NULL_INTERPRETATIONS = re.compile(r"\*(?:[^\S\n]\*)*")


def _mark_separators(text: str) -> str:
    """Spaces, tabs and newlines -> ` <s> `, ` <t> `, ` <b> ` (in that order, as the reference)."""
    return text.replace(" ", " <s> ").replace("\t", " <t> ").replace("\n", " <b> ")


def system_tokens(text: str) -> list[str]:
    """The system-level models' tokens of a transcription (no `<bos>`/`<eos>`)."""
    text = text.replace("\r\n", "\n").strip("\n ")
    text = _MEASURE_NUMBER.sub("=", text)
    text = text.replace(" ", " <s> ").replace("·", "")
    text = text.replace("\t", " <t> ").replace("\n", " <b> ")
    return text.split(" ")


def clean_page(text: str) -> str:
    """The reference's full-page cleaning: dropped interpretations, null-interpretation
    lines, surrounding whitespace."""
    lines = text.split("\n")
    last = len(lines) - 1
    kept = [ln for i, ln in enumerate(lines)
            if i == last or not any(t in ln for t in DROPPED_INTERPRETATIONS)]
    kept = [ln for ln in kept if not _NULL_INTERPRETATIONS.fullmatch(ln)]
    return "\n".join(kept).strip()


def page_tokens(text: str, flavour: str = "bekern") -> list[str]:
    """The full-page models' tokens (`parse_kern`, header dropped) in kern/ekern/bekern."""
    if flavour not in ("kern", "ekern", "bekern"):
        raise ValueError(f"unknown flavour {flavour!r}; expected kern, ekern or bekern")
    text = clean_page(text.replace("\r\n", "\n"))
    text = _MEASURE_NUMBER.sub("=", text)
    text = _mark_separators(text)
    for stem in (" /", " \\", "·/", "·\\"):     # stem directions: not read from the image
        text = text.replace(stem, "")
    part = " " if flavour in ("ekern", "bekern") else ""
    core = " " if flavour == "bekern" else ""
    text = text.replace("·", part).replace("@", core)
    return text.strip().split(" ")[PAGE_HEADER_TOKENS:]


def reference_tokens(text: str, fmt: str) -> list[str]:
    """Tokens of `text` in the reference format `fmt` (one of REFERENCE_FORMATS)."""
    if fmt == SYSTEM:
        return system_tokens(text)
    return page_tokens(text, PAGE_FORMATS[fmt])
