"""What a finished run reports: OUT/summary.json and the last line it prints."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from autotune.units import format_bytes
from smt import checkpoint as ck
from smt.say import line
from smt.runconfig import TrainConfig


def best_callback(trainer: Any) -> ModelCheckpoint | None:
    return next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)


def keep_if_best(trainer: Any, module: Any, path: Path) -> None:
    """Write best.ckpt (`path`) when the last validation beat the best so far (it competes
    like any other validation)."""
    best_cb = best_callback(trainer)
    ser = module.last_val.get("ser")
    if best_cb is None or ser is None:
        return
    best = best_cb.best_model_score
    if best is None or ser < float(best):
        trainer.save_checkpoint(path, weights_only=False)   # all ranks: it is a collective
        best_cb.best_model_score = torch.tensor(ser)
        best_cb.best_model_path = str(path)


def summary(plan: TrainConfig, trainer: Any, module: Any, throughput: Any,
            elapsed_s: float, baseline: dict[str, float] | None = None) -> dict[str, Any]:
    """The run's numbers; `baseline`: the --init-from model's val scores before training."""
    best_cb = best_callback(trainer)
    best_score = getattr(best_cb, "best_model_score", None)
    ckpt_dir = plan.out / "checkpoints"
    best_path = ckpt_dir / ck.BEST_NAME
    last = module.last_val
    return {
        "steps": int(trainer.global_step),
        "samples": int(throughput.samples),
        "samples_per_s": throughput.samples_per_s,
        "steady_samples_per_s": throughput.steady_samples_per_s,
        "samples_total": int(module.samples_seen),
        "peak_memory_bytes": throughput.peak_memory_bytes,
        "best_val_ser": float(best_score) if best_score is not None else last.get("ser"),
        "val_ser": last.get("ser"),
        "val_cer": last.get("cer"),
        "val_ler": last.get("ler"),
        "val_loss": last.get("loss"),
        # The starting model's scores on the same validation data (--init-from), else None.
        "baseline_val_ser": (baseline or {}).get("ser"),
        "baseline_val_cer": (baseline or {}).get("cer"),
        "baseline_val_ler": (baseline or {}).get("ler"),
        "train_loss": module.last_train_loss,
        "checkpoint_last": str(ckpt_dir / ck.LAST_NAME),
        "checkpoint_best": str(best_path) if best_path.is_file() else None,
        "settings": plan.settings.to_dict(),
        # Every rank's samples: batch x accumulate x devices x nodes.
        "world_size": int(trainer.world_size),
        "effective_batch_size": plan.settings.batch_size * plan.settings.accumulate_grad_batches
        * int(trainer.world_size),
        "micro_batch_size": module.micro_batch_size,
        "oom_events": module.oom_events,
        "elapsed_s": elapsed_s,
        "preset": plan.preset,
        "interrupted": bool(trainer.interrupted),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def one_line(summary: dict[str, Any]) -> str:
    sps = summary["samples_per_s"]
    ser = summary["best_val_ser"]
    rate = f"{sps:.2f} samples/s, " if sps is not None else ""
    base = summary.get("baseline_val_ser")
    start = f"baseline val SER {base:.1f} -> " if base is not None else ""
    return line(f"done: {summary['steps']} steps, {rate}"
            f"peak memory {format_bytes(summary['peak_memory_bytes'])}, {start}best val SER "
            f"{'n/a' if ser is None else f'{ser:.1f}'}, last {summary['checkpoint_last']}, "
            f"best {summary['checkpoint_best'] or 'n/a'}")
