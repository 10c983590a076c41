"""Recognition metrics of the SMT papers: corpus-level edit distances x100.

    CER: characters of the **kern text    SER: tokens (symbols)    LER: whole lines

Each is the sum over the corpus of Levenshtein distances divided by the sum of reference
lengths, times 100 (so a long piece weighs more than a short one, and a rate can exceed 100
when predictions are longer than references). Trailing line breaks are ignored: a missing
final newline is not a recognition error.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from rapidfuzz.distance import Levenshtein

Tokenizer = Callable[[str], list[str]]


def edit_rate(predictions: Sequence[Sequence[Hashable]], references: Sequence[Sequence[Hashable]]) -> float:
    """100 * sum(Levenshtein(p, r)) / sum(len(r)) over paired sequences (strings or lists)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("references are all empty: the edit rate is undefined")
    distance = sum(Levenshtein.distance(p, r) for p, r in zip(predictions, references))
    return 100.0 * distance / total


def _text(kern: str) -> str:
    return kern.replace("\r\n", "\n").rstrip("\n")


def _lines(kern: str) -> list[str]:
    text = _text(kern)
    return text.split("\n") if text else []


def cer(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Character error rate (%) of **kern strings."""
    return edit_rate([_text(p) for p in predictions], [_text(r) for r in references])


def ler(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Line error rate (%): each line of the **kern text is one symbol."""
    return edit_rate([_lines(p) for p in predictions], [_lines(r) for r in references])


def _tokens(item: str | Sequence[str], tokenize: Tokenizer) -> list[str]:
    if isinstance(item, str):
        return tokenize(_text(item)) if _text(item).strip() else []
    return list(item)


def default_tokenizer(fmt: str = "bekern") -> Tokenizer:
    # Imported here: the tokenizer belongs to the data side and metrics must not need it
    # when callers pass their own tokens.
    from smt.tokenizer import tokenize

    return lambda text: tokenize(text, fmt)


def ser(predictions: Sequence[str | Sequence[str]], references: Sequence[str | Sequence[str]],
        fmt: str = "bekern", tokenize: Tokenizer | None = None) -> float:
    """Symbol error rate (%): token edit distance. Strings are tokenized with `tokenize`
    (default: `smt.tokenizer.tokenize(text, fmt)`, layout tokens included); token lists are
    used as they are; an empty prediction is an empty token list."""
    tok = tokenize or default_tokenizer(fmt)
    return edit_rate([_tokens(p, tok) for p in predictions], [_tokens(r, tok) for r in references])


def compute_metrics(predictions: Sequence[str], references: Sequence[str], fmt: str = "bekern",
                    tokenize: Tokenizer | None = None) -> dict[str, float]:
    """{"cer", "ser", "ler"} in percent for paired **kern strings."""
    return {"cer": cer(predictions, references),
            "ser": ser(predictions, references, fmt, tokenize),
            "ler": ler(predictions, references)}
