"""`smt.train --init-from DIR|CKPT`: start training from existing weights (a folder written by
smt.convert, a run folder, or a checkpoint), with a fresh optimizer and schedule.

The vocabulary is the model's: its output rows are tied to its ids. Tokens of the user's data
that it lacks stop the run with their names, unless `--extend-vocab` appends them (new rows at
the end of the embedding and of the head, every old id kept).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autotune.errors import UserError
from smt.say import say

SHOWN_TOKENS = 20


@dataclass(frozen=True)
class InitWeights:
    checkpoint: Path
    config: Any                       # SMTConfig
    vocab: Any                        # Vocab
    state: dict[str, torch.Tensor]    # SMTModel.state_dict() keys (no "model." prefix)


def checkpoint_of(spec: str) -> Path:
    """The checkpoint `--init-from SPEC` names (a file, or the one a folder holds)."""
    from smt import checkpoint as ck
    from smt.convert.build import CHECKPOINT_NAME

    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / CHECKPOINT_NAME, path / "checkpoints" / ck.BEST_NAME,
                          path / "checkpoints" / ck.LAST_NAME):
            if candidate.is_file():
                return candidate
        raise UserError(f"--init-from {spec}: no {CHECKPOINT_NAME} (smt.convert) or "
                        f"checkpoints/{ck.BEST_NAME}|{ck.LAST_NAME} (smt.train) in it")
    raise UserError(f"--init-from {spec}: no such file or folder")


def recorded_format(spec: str) -> str | None:
    """The tokenization the model `spec` (as for --init-from) reads: its vocabulary's format
    (a converted model's is the reference's, e.g. `ref-system`), or None if it records none."""
    from smt import checkpoint as ck
    from smt.tokenizer import ALL_FORMATS

    vocab_path = ck.find_metadata(checkpoint_of(spec), ck.VOCAB_NAME)
    try:
        fmt = json.loads(vocab_path.read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(f"cannot read {vocab_path}: {exc}") from None
    return fmt if fmt in ALL_FORMATS else None


def load_init(spec: str) -> InitWeights:
    """Weights, model config and vocabulary to start from (read weights-only)."""
    from smt import checkpoint as ck
    from smt.config import SMTConfig
    from smt.tokenizer import Vocab

    path = checkpoint_of(spec)
    ckpt = ck.load_checkpoint(path)
    config_path, vocab_path = ck.find_metadata(path, ck.CONFIG_NAME), ck.find_metadata(path, ck.VOCAB_NAME)
    try:
        config, vocab = SMTConfig.load(config_path), Vocab.load(vocab_path)
    except (ValueError, KeyError, OSError) as exc:
        raise UserError(f"--init-from {spec}: {exc}") from None
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if len(vocab) != config.vocab_size:
        raise UserError(f"--init-from {spec}: {vocab_path} has {len(vocab)} tokens, "
                        f"{config_path} says vocab_size={config.vocab_size}")
    return InitWeights(path, config, vocab, state)


def fit_to_data(init: InitWeights, data_tokens: Iterable[str] | Mapping[str, int], fmt: str,
                extend: bool, max_height: int, max_width: int, max_seq_len: int) -> InitWeights:
    """The starting point for this data: the model's vocabulary (extended on request) and its
    size limits raised to the data's (positional tables are rebuilt, so limits can grow).

    `data_tokens` maps each token of the data to its occurrences (or lists the tokens): the
    ones the model lacks are named with their counts, in the refusal and when extended."""
    if init.vocab.fmt and init.vocab.fmt != fmt:
        raise UserError(f"--init-from {init.checkpoint}: the model reads {init.vocab.fmt} tokens, "
                        f"this run tokenizes as {fmt}; pass --format {init.vocab.fmt} (or no --format)")
    counts = data_tokens if isinstance(data_tokens, Mapping) else None
    unknown = sorted(set(data_tokens) - set(init.vocab.tokens))
    vocab, state = init.vocab, init.state
    if unknown and not extend:
        raise UserError(f"the data has {len(unknown)} token(s) the model's vocabulary lacks: "
                        f"{shown_tokens(unknown, counts)}; pass --extend-vocab to add output rows for them")
    if unknown:
        vocab = init.vocab.extended(unknown)
        state = grow_rows(init.state, len(vocab))
        say(f"--extend-vocab: {len(unknown)} new token(s) get fresh output rows: "
            f"{shown_tokens(unknown, counts)}")
    config = init.config.replace(vocab_size=len(vocab),
                                 max_height=max(init.config.max_height, max_height),
                                 max_width=max(init.config.max_width, max_width),
                                 max_seq_len=max(init.config.max_seq_len, max_seq_len))
    return InitWeights(init.checkpoint, config, vocab, state)


def shown_tokens(tokens: list[str], counts: Mapping[str, int] | None) -> str:
    """The first SHOWN_TOKENS tokens (most frequent first when counted), `'x' (n times)`."""
    if counts is not None:
        tokens = sorted(tokens, key=lambda t: (-counts[t], t))
    shown = ", ".join(repr(t) + (f" ({counts[t]}x)" if counts is not None else "")
                      for t in tokens[:SHOWN_TOKENS])
    more = f" (+{len(tokens) - SHOWN_TOKENS} more)" if len(tokens) > SHOWN_TOKENS else ""
    return shown + more


def token_counts(splits: Iterable[Any], fmt: str) -> dict[str, int]:
    """Occurrences of every token over the `transcription` column of each split."""
    from collections import Counter

    from smt.tokenizer import tokenize

    counts: Counter[str] = Counter()
    for split in splits:
        for text in split["transcription"]:
            counts.update(tokenize(text, fmt))
    return dict(counts)


def grow_rows(state: dict[str, torch.Tensor], vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Embedding and head with rows for ids [old size, vocab_size). New embeddings are drawn
    at the scale of the old ones; new head rows start at zero weight and the lowest old bias,
    so at the first step the model still predicts what it did before."""
    emb, weight, bias = state["embedding.weight"], state["head.weight"], state["head.bias"]
    extra = vocab_size - emb.shape[0]
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    out["embedding.weight"] = torch.cat([emb, torch.randn(extra, emb.shape[1], generator=g) * emb.std()])
    out["head.weight"] = torch.cat([weight, weight.new_zeros(extra, weight.shape[1])])
    out["head.bias"] = torch.cat([bias, bias.new_full((extra,), float(bias.min()))])
    return out


def apply(model: torch.nn.Module, init: InitWeights) -> None:
    """Load the starting weights into a freshly built SMTModel; a mismatch is one line."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        got = init.state.get(key)
        if got is None or got.shape != tensor.shape:
            found = "is missing" if got is None else f"has shape {list(got.shape)}"
            raise UserError(f"--init-from {init.checkpoint}: {key!r} {found}, the model needs "
                            f"{list(tensor.shape)}")
    extra = sorted(set(init.state) - set(expected))
    if extra:
        raise UserError(f"--init-from {init.checkpoint}: {extra[0]!r} is not a parameter of this model")
    model.load_state_dict(init.state)
