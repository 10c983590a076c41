"""How one search trial runs SMT: `python -m smt.train` with flags for a `TrialRequest`, and
the `TrialReport` read back from the summary.json it writes.

This is the SMT side of the trial part of `autotune.workload.Workload` (SMTWorkload's
`trial_*` methods delegate here). The search knows only the records; the flag names, the
summary's keys and the trainer's warm-up live here, beside the trainer that defines them.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from autotune.workload import TrialLaunch, TrialReport, TrialRequest

TRAINER = (sys.executable, "-m", "smt.train")


def launch(request: TrialRequest) -> TrialLaunch:
    """The smt.train command line for `request`."""
    from smt.checkpoint import RUN_NAME
    s = request.settings
    args = ["--batch-size", str(s.batch_size), "--accumulate", str(s.accumulate_grad_batches),
            "--reduce-ratio", f"{s.reduce_ratio:g}", "--num-workers", str(s.num_workers),
            "--num-proc", str(s.num_proc), "--writer-batch-size", str(s.writer_batch_size),
            "--precision", s.precision, "--max-steps", str(request.max_steps),
            "--out", str(request.out_dir)]
    if s.num_threads:
        args += ["--num-threads", str(s.num_threads)]
    if s.devices > 1:
        args += ["--devices", str(s.devices), "--strategy", s.strategy]
    if request.preset:
        args += ["--preset", request.preset]
    if request.data:
        args += ["--data", request.data]
    if request.lr is not None:
        args += ["--lr", f"{request.lr:.6g}"]
    # Early stopping off: a trial runs exactly its steps, so trials are comparable.
    # No pictures: nobody looks at a trial's, and they cost seconds of decoding at its end.
    args += ["--seed", str(request.seed), "--patience", "0", "--pictures", "0"]
    if request.val_every_steps is not None:
        args += ["--val-every", str(request.val_every_steps)]
    elif request.val_batches is not None:
        args += ["--val-batches", str(request.val_batches)]
    return TrialLaunch(command=TRAINER, args=tuple(args), start_marker=RUN_NAME)


def read_report(out_dir: Path) -> TrialReport | None:
    """The trial's summary.json as a TrialReport; None when missing or not a JSON object."""
    from smt.checkpoint import SUMMARY_NAME
    try:
        data = json.loads((Path(out_dir) / SUMMARY_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    events = data.get("oom_events")
    return TrialReport(
        samples_per_s=_number(data, "samples_per_s"),
        steady_samples_per_s=_number(data, "steady_samples_per_s"),
        val_loss=_number(data, "val_loss"), val_ser=_number(data, "val_ser"),
        train_loss=_number(data, "train_loss"),
        peak_memory_bytes=_integer(data, "peak_memory_bytes"),
        oom_events=events if isinstance(events, int) else len(events or ()),
        micro_batch_size=_integer(data, "micro_batch_size"),
        interrupted=bool(data.get("interrupted")))


def warmup_batches() -> int:
    """Loader batches smt.train's steady samples/s leaves out (its Throughput callback)."""
    from smt.callbacks import Throughput
    return int(Throughput.WARMUP_BATCHES)


def _number(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _integer(data: dict[str, Any], key: str) -> int | None:
    value = _number(data, key)
    return None if value is None else int(value)
