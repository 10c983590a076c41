"""Checkpoints that survive a kill mid-write and load without running anyone's code.

- Writes go through `autotune.atomic.atomic_write_bytes`: the checkpoint is serialised in
  memory, then written to a temporary file and renamed over the target, so a SIGKILL during a
  save leaves the previous `last.ckpt` intact. The cost is one checkpoint's size in RAM.
- Reads use `torch.load(weights_only=True)`: a checkpoint from elsewhere cannot execute code.
  What we need beyond tensors (model config, vocabulary, run settings) is JSON beside it.
"""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from autotune.atomic import atomic_write_bytes
from autotune.errors import STOPPED_EXIT_CODE, UserError

CONFIG_NAME = "config.json"
VOCAB_NAME = "vocab.json"
RUN_NAME = "run.json"
SUMMARY_NAME = "summary.json"
LAST_NAME = "last.ckpt"
BEST_NAME = "best.ckpt"


class NonFiniteWeights(UserError):
    """Weights with a NaN or infinity about to be saved: the save is refused, so the
    checkpoint on disk stays the last good one. Exit 3, as `smt.module.NonFiniteLoss`."""

    exit_code = STOPPED_EXIT_CODE


def nonfinite_keys(state: dict[str, Any]) -> list[str]:
    """Keys whose floating-point tensor holds a NaN or an infinity (such a model computes NaN
    everywhere). One pass over the weights: nothing next to serialising them."""
    return [k for k, v in state.items() if isinstance(v, torch.Tensor)
            and v.is_floating_point() and not bool(torch.isfinite(v).all())]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with atomic writes and weights-only reads; weights that
    are not finite are never written (`NonFiniteWeights`) unless `allow_nonfinite` (the
    converter's `--allow-nonfinite`, which names them itself)."""

    def __init__(self, allow_nonfinite: bool = False) -> None:
        super().__init__()
        self.allow_nonfinite = allow_nonfinite

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike[str],
                        storage_options: Any | None = None) -> None:
        bad = [] if self.allow_nonfinite else nonfinite_keys(checkpoint.get("state_dict") or {})
        if bad:
            raise NonFiniteWeights(
                f"the weights are not finite at step {checkpoint.get('global_step')} ({bad[0]}); "
                f"{path} was not overwritten. Try a lower --lr, --precision 32-true, or check "
                "the --init-from weights")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def load_checkpoint(self, path: str | os.PathLike[str], map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location or "cpu")


def load_weights_only(path: Path, map_location: Any, failure: str) -> Any:
    """`torch.load(path, weights_only=True)`; a refusal is one UserError line, `failure: why`.

    torch's own message starts by advising `weights_only=False` (running the file's code) and
    names what it refused only further down (a global, or an opcode it does not read): that
    part is what the user needs, so it is all we say. torch's warning about the file's pickle
    protocol is noise before that line and is silenced."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any load failure is the file's fault
        raise UserError(f"{failure}: {_refusal(exc)}") from exc


def _refusal(exc: BaseException) -> str:
    text = str(exc)
    # "Unsupported global: GLOBAL x.y" or "Trying to load unsupported GLOBAL x.y whose module
    # x is blocked", depending on torch's version and why it refused.
    refused = re.search(r"\bGLOBAL (\S+)", text)
    if refused:
        return f"it needs the global {refused.group(1)}, which a weights-only load refuses"
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if detail:
        return f"a weights-only load refuses it ({detail.group(1).strip()[:200]})"
    reason = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return reason[:300]


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """`torch.load(weights_only=True)` with one-line errors naming the file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p}")
    ckpt = load_weights_only(p, map_location, f"cannot load checkpoint {p} (weights-only)")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{p} is not a Lightning checkpoint (no state_dict)")
    return ckpt


def run_dir_of(ckpt_path: str | os.PathLike[str]) -> Path:
    """A run's layout is OUT/checkpoints/*.ckpt with config.json and vocab.json in OUT."""
    p = Path(ckpt_path).resolve()
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def find_metadata(ckpt_path: str | os.PathLike[str], name: str) -> Path:
    """`name` beside the checkpoint, or in the run folder above `checkpoints/`."""
    p = Path(ckpt_path).resolve()
    for folder in (p.parent, run_dir_of(p)):
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"{name} not found beside checkpoint {ckpt_path} "
                    f"(looked in {p.parent} and {run_dir_of(p)})")


def check_matches_run(ckpt: dict[str, Any], ckpt_path: Path) -> None:
    """A checkpoint resumed with its run folder's config.json and vocab.json must be of that
    model: checked on the parameter shapes (a model built on the meta device, no memory)
    before any data work, instead of failing inside the fit."""
    from smt.config import SMTConfig
    from smt.model import SMTModel
    from smt.tokenizer import Vocab
    config_path = find_metadata(ckpt_path, CONFIG_NAME)
    vocab_path = find_metadata(ckpt_path, VOCAB_NAME)
    try:
        config = SMTConfig.load(config_path)
        vocab = Vocab.load(vocab_path)
    except (ValueError, KeyError, OSError) as exc:
        raise UserError(f"cannot rebuild the resumed model: {exc}") from None
    if len(vocab) != config.vocab_size:
        raise UserError(f"{vocab_path} has {len(vocab)} tokens but {config_path} says "
                        f"vocab_size {config.vocab_size}: they are from different runs")
    with torch.device("meta"):
        expected = {f"model.{k}": tuple(v.shape) for k, v in SMTModel(config).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    for key, shape in expected.items():
        if got.get(key) != shape:
            found = "is missing" if key not in got else f"has shape {list(got[key])}"
            raise UserError(f"{ckpt_path} is not a checkpoint of the model in {config_path}: "
                            f"{key} {found}, expected {list(shape)}")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


def last_checkpoint(run_dir: Path) -> Path | None:
    candidate = run_dir / "checkpoints" / LAST_NAME
    return candidate if candidate.is_file() else None


def run_marks(run_dir: Path) -> list[str]:
    """What in `run_dir` shows that a run wrote there (its checkpoint, run files, logs), in
    that order; [] for a folder no run has started in."""
    names = [f"checkpoints/{LAST_NAME}", RUN_NAME, CONFIG_NAME, SUMMARY_NAME, "logs"]
    return [name for name in names if (run_dir / name).exists()]


def find_latest_run(root: Path) -> Path | None:
    """The run under `root` (or `root` itself) whose last.ckpt was written most recently."""
    if last_checkpoint(root):
        return root
    if not root.is_dir():
        return None
    runs = [d for d in root.iterdir() if d.is_dir() and last_checkpoint(d)]
    if not runs:
        return None
    return max(runs, key=lambda d: last_checkpoint(d).stat().st_mtime)  # type: ignore[union-attr]


def resolve_resume(spec: str, out_root: Path) -> tuple[Path, Path]:
    """`--resume auto|RUN_DIR|CKPT` -> (run dir, checkpoint path), or a UserError."""
    if spec == "auto":
        run = find_latest_run(out_root)
        if run is None:
            raise UserError(f"--resume auto: no run with checkpoints/{LAST_NAME} under {out_root}")
        return run, last_checkpoint(run)  # type: ignore[return-value]
    p = Path(spec).expanduser()
    if p.is_dir():
        ckpt = last_checkpoint(p)
        if ckpt is None:
            raise UserError(f"--resume: no checkpoints/{LAST_NAME} in {p}")
        return p, ckpt
    if p.is_file():
        return run_dir_of(p), p
    raise UserError(f"--resume: {p} does not exist")
