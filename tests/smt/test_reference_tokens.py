"""The reference SMT's tokenizations (`ref-system`, `ref-bekern`/`ref-ekern`/`ref-kern`): a
published model fine-tunes only if our tokens of its kind of transcription are exactly the ones
it was trained on. Expected tokens below are the reference's for each text."""
from __future__ import annotations

from pathlib import Path

import pytest

from autotune.errors import UserError
from smt.tokenizer import ALL_FORMATS, TokenizeError, Vocab, detokenize, tokenize

T, B, S = "<t>", "<b>", "<s>"

SYSTEM = [
    # header kept, chords split on <s>, bar numbers dropped
    ("**kern\t**kern\n*clefF4\t*clefG2\n4C 4E 4G\t4c 4e 4g\n=1\t=1\n",
     ["**kern", T, "**kern", B, "*clefF4", T, "*clefG2", B, "4C", S, "4E", S, "4G", T,
      "4c", S, "4e", S, "4g", B, "=", T, "="]),
    # ties and beams stay inside the field
    ("[4c\t8eL\n4c]\t8gJ\n", ["[4c", T, "8eL", B, "4c]", T, "8gJ"]),
    # spines splitting and joining
    ("*\t*^\n4C\t4e\t4g\n*\t*v\t*v\n",
     ["*", T, "*^", B, "4C", T, "4e", T, "4g", B, "*", T, "*v", T, "*v"]),
    # a grace note is one field
    ("8qcc#\t4e\n", ["8qcc#", T, "4e"]),
    # a global comment is split on its spaces like any line
    ("!!!COM: Chopin\n4c\t4e\n", ["!!!COM:", S, "Chopin", B, "4c", T, "4e"]),
    # numbers after any `=` go, double barlines stay
    ("=12\t=12\n==\t==\n", ["=", T, "=", B, "==", T, "=="]),
    # the ekern part marker is removed, the core marker is not the system models' business
    ("4c·L\t4e\n", ["4cL", T, "4e"]),
    # two separators in a row give the empty token the reference's split gives
    ("4c\t\t4e\n", ["4c", T, "", T, "4e"]),
    # surrounding spaces and newlines are stripped, a CRLF file reads as LF
    ("\n 4c\t4e \n\n", ["4c", T, "4e"]),
    ("4c\t4e\r\n=2\t=2\r\n", ["4c", T, "4e", B, "=", T, "="]),
]

PAGE = "**bekern\t**bekern\n"
PAGE_BEKERN = [
    # header dropped, a field cut at both markers
    (PAGE + "*clefF4\t*clefG2\n4@C\t4@c@#·L\n*-\t*-\n",
     ["*clefF4", T, "*clefG2", B, "4", "C", T, "4", "c", "#", "L", B, "*-", T, "*-"]),
    # *staff lines and lines of null interpretations dropped, bar numbers and stems too
    ("**ekern\t**ekern\n*staff2\t*staff1\n*\t*\n=3\t=3\n4@c@#·/·L\t8@e@-·\\·J\n",
     ["=", T, "=", B, "4", "c", "#", "L", T, "8", "e", "-", "J"]),
    # spines splitting and joining (a `*` beside `*^` is not a null line)
    (PAGE + "*\t*^\n4@C\t4@e\t4@g\n*\t*v\t*v\n",
     ["*", T, "*^", B, "4", "C", T, "4", "e", T, "4", "g", B, "*", T, "*v", T, "*v"]),
    # a stem marker without its `·` after it: accidental and beam stay one token
    (PAGE + "!!LO:TX\n4@c@#·/L\t2@r\n", ["!!LO:TX", B, "4", "c", "#L", T, "2", "r"]),
    # ties open and close, a grace note's parts
    (PAGE + "[·4@c\t4@e·]\n8@q@c@c\t.\n",
     ["[", "4", "c", T, "4", "e", "]", B, "8", "q", "c", "c", T, "."]),
    # plain **kern (no markers): whole fields, chords on <s>
    ("**kern\t**kern\n4C 4E\t4c\n=12\t=12\n", ["4C", S, "4E", T, "4c", B, "=", T, "="]),
    # the last line is kept even with a dropped interpretation when nothing ends it
    (PAGE + "4@c\t4@e\n*ped\t*", ["4", "c", T, "4", "e", B, "*ped", T, "*"]),
    (PAGE + "4@c\t4@e\n*ped\t*\n", ["4", "c", T, "4", "e"]),
]

PAGE_FLAVOURS = [
    ("ref-ekern", PAGE + "*clefG2\t*clefG2\n4@c@#·L\t[·4@e\n",
     ["*clefG2", T, "*clefG2", B, "4c#", "L", T, "[", "4e"]),
    ("ref-kern", PAGE + "*clefG2\t*clefG2\n4@c@#·L\t[·4@e\n",
     ["*clefG2", T, "*clefG2", B, "4c#L", T, "[4e"]),
]


@pytest.mark.parametrize(("text", "tokens"), SYSTEM)
def test_system_tokens_are_the_reference_ones(text: str, tokens: list[str]) -> None:
    assert tokenize(text, "ref-system") == tokens


@pytest.mark.parametrize(("text", "tokens"), PAGE_BEKERN)
def test_full_page_bekern_tokens_are_the_reference_ones(text: str, tokens: list[str]) -> None:
    assert tokenize(text, "ref-bekern") == tokens


@pytest.mark.parametrize(("fmt", "text", "tokens"), PAGE_FLAVOURS)
def test_full_page_ekern_and_kern_cut_less(fmt: str, text: str, tokens: list[str]) -> None:
    assert tokenize(text, fmt) == tokens


@pytest.mark.parametrize(("fmt", "tokens", "text"), [
    ("ref-system", ["4C", S, "4E", T, "8cL", B, "=", T, "="], "4C 4E\t8cL\n=\t="),
    ("ref-bekern", ["4", "c", "#", "L", T, "2", "r"], "4c#L\t2r"),
])
def test_predicted_tokens_read_back_as_plain_kern(fmt: str, tokens: list[str], text: str) -> None:
    assert detokenize(tokens, fmt) == text


@pytest.mark.parametrize("fmt", ["ref-system", "ref-bekern"])
def test_empty_text_is_refused_in_every_reference_format(fmt: str) -> None:
    with pytest.raises(TokenizeError):
        tokenize(" \n", fmt)


def _model_folder(folder: Path, fmt: str) -> Path:
    """The metadata a converted model's folder holds, enough to read its tokenization."""
    folder.mkdir(parents=True)
    (folder / "model.ckpt").write_bytes(b"")
    Vocab.build([["4c"]], fmt=fmt).save(folder / "vocab.json")
    return folder


@pytest.mark.parametrize(("given", "recorded", "expected"), [
    (None, "ref-system", "ref-system"),        # the model's, without asking
    ("ref-system", "ref-system", "ref-system"),
    (None, None, "bekern"),                    # no model: the default
    ("kern", None, "kern"),
])
def test_prepare_reads_as_the_model_does(tmp_path: Path, given: str | None, recorded: str | None,
                                         expected: str) -> None:
    from smt.data.__main__ import _format

    model = str(_model_folder(tmp_path / "m", recorded)) if recorded else None
    assert _format(given, model) == expected


def test_prepare_refuses_a_format_the_model_does_not_read(tmp_path: Path) -> None:
    from smt.data.__main__ import _format

    with pytest.raises(UserError, match="reads ref-bekern tokens"):
        _format("bekern", str(_model_folder(tmp_path / "m", "ref-bekern")))


def test_unknown_tokens_are_named_with_their_counts(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from smt.config import SMTConfig
    from smt.convert.finetune import InitWeights, fit_to_data

    vocab = Vocab(["<pad>", "<bos>", "<eos>", "<b>", "<t>", "<s>", "4c"], "ref-system", given_ids=True)
    config = SMTConfig.preset("debug").replace(vocab_size=len(vocab))
    state = {"embedding.weight": torch.zeros(len(vocab), 4), "head.weight": torch.zeros(len(vocab), 4),
             "head.bias": torch.zeros(len(vocab))}
    init = InitWeights(tmp_path / "model.ckpt", config, vocab, state)
    counts = {"4c": 9, "8dd#": 3, "*kcancel": 1}
    with pytest.raises(UserError) as err:
        fit_to_data(init, counts, "ref-system", False, 64, 64, 64)
    assert "2 token(s)" in str(err.value) and "'8dd#' (3x), '*kcancel' (1x)" in str(err.value)
    grown = fit_to_data(init, counts, "ref-system", True, 64, 64, 64)
    assert grown.vocab.tokens[:len(vocab)] == vocab.tokens and len(grown.vocab) == len(vocab) + 2
    assert "2 new token(s)" in capsys.readouterr().out


def test_every_reference_format_is_a_run_format() -> None:
    assert {"ref-system", "ref-kern", "ref-ekern", "ref-bekern"} <= set(ALL_FORMATS)
