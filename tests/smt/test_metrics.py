"""CER / SER / LER: corpus-level edit distances x100 on hand-checked cases."""
from __future__ import annotations

import pytest

from smt.metrics import cer, compute_metrics, edit_rate, ler, ser

REF = "**kern\t**kern\n4c\t4e\n4d\t4f\n*-\t*-"


@pytest.mark.parametrize(
    ("preds", "refs", "expected"),
    [
        (["abc"], ["abc"], 0.0),
        (["abd"], ["abc"], 100 / 3),                 # one substitution in 3 characters
        ([""], ["abcd"], 100.0),                      # everything deleted
        (["abcdef"], ["abc"], 100.0),                 # 3 insertions over 3 characters
        (["ab", "wxyz"], ["abc", "wxyz"], 100 / 7),   # corpus level: 1 error over 3 + 4
        (["abc\n"], ["abc"], 0.0),                     # a trailing newline is not an error
    ],
)
def test_cer_is_corpus_level_character_edit_distance(preds, refs, expected) -> None:
    assert cer(preds, refs) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("pred", "expected"),
    [
        (REF, 0.0),
        (REF.replace("4f", "4g"), 100 / 4),           # one wrong line of four
        (REF.replace("4d\t4f\n", ""), 100 / 4),        # one missing line
        ("", 100.0),
    ],
)
def test_ler_counts_whole_lines(pred: str, expected: float) -> None:
    assert ler([pred], [REF]) == pytest.approx(expected)


def test_ser_uses_tokens_from_given_tokenizer_or_lists() -> None:
    split = str.split
    assert ser(["a b c"], ["a b d"], tokenize=split) == pytest.approx(100 / 3)
    assert ser([["a", "b"]], [["a", "b", "c", "d"]]) == pytest.approx(50.0)
    # a "symbol" is a token, however many characters it has
    assert ser(["clefG2 x"], ["clefF4 x"], tokenize=split) == pytest.approx(50.0)


def test_ser_default_tokenizer_is_bekern() -> None:
    # bekern: `4f` is two tokens (`4`, `f`), so one wrong pitch is one error over all tokens
    from smt.tokenizer import tokenize

    n = len(tokenize(REF, "bekern"))
    assert ser([REF.replace("4f", "4g")], [REF]) == pytest.approx(100 / n)
    assert ser([""], [REF]) == pytest.approx(100.0)        # empty prediction: all deleted


def test_compute_metrics_returns_the_three_rates() -> None:
    scores = compute_metrics([REF, REF.replace("4e", "8e")], [REF, REF])
    assert set(scores) == {"cer", "ser", "ler"}
    assert scores["cer"] == pytest.approx(100 * 1 / (2 * len(REF)))
    assert scores["ler"] == pytest.approx(100 * 1 / 8)
    assert compute_metrics([REF], [REF]) == {"cer": 0.0, "ser": 0.0, "ler": 0.0}


@pytest.mark.parametrize(
    ("preds", "refs", "match"),
    [(["a"], ["a", "b"], "1 predictions but 2 references"), ([""], [""], "empty")],
)
def test_bad_input_is_a_clear_value_error(preds, refs, match) -> None:
    with pytest.raises(ValueError, match=match):
        edit_rate(preds, refs)
