"""Fault injection: the named points where tests and `bench/bench_faults.py` make real faults
happen inside production code, each armed by one environment variable. Never set in real runs;
unset, a point costs one check.

Point (called from)                              Variable and what it does
-----------------------------------------------  ---------------------------------------------
prepare_row (smt.data.rows.prepare_example,       SMT_PREPARE_FAULT="k=v;k=v": per mapped row,
  once per raw row; armed per shard by            `sleep_ms=S` sleeps S ms; `stall_after=N`
  arm_prepare in smt.data.shard)                  hangs (an hour) after N rows; `ram_mb=M` holds
                                                  M MiB of touched memory from the first row on;
                                                  `above_wbs=W` arms the others only while the
                                                  writer batch size is above W (so that the
                                                  preparation's back-off visibly cures it).
oom_fault (smt.module.SMTModule, before each      SMT_INJECT_OOM_ABOVE=N: a micro-batch of more
  micro-batch's forward)                          than N rows raises torch.cuda.OutOfMemoryError;
                                                  SMT_INJECT_OOM_RANKS="0,2" limits it to those
                                                  ranks (default: all).
kill_at_step (smt.callbacks.KillAtStep, added     SMT_INJECT_KILL_AT_STEP=N: SIGKILL the
  by smt.train's trainer assembly)                training process once N optimizer steps are
                                                  done, like a preempted cloud session.
load_item (smt.data.loader.ScoreDataset, once     SMT_LOADER_FAULT="k=v;k=v": `sleep_ms=S`
  per item (training and validation), in the      sleeps S ms per item (a starving loader);
  process that loads it: a worker or the main one)      `ram_mb=M` holds M MiB of touched memory per
                                                  loading process from its first item on;
                                                  `fill_pct=P` holds what brings that process's
                                                  RSS to P% of the RAM limit (a leak that stops
                                                  short of the OOM killer).
nan_loss (smt.module.SMTModule, each           SMT_INJECT_NAN_AT_STEP=N: from optimizer step
  micro-batch's loss, before backward)            N on, every training loss is NaN (a run that
                                                  diverges, or NaN weights from --init-from).
ram_budget (smt.train's trainer assembly, the     SMT_INJECT_RAM_BUDGET_MB=M: the resource
  resource monitor's RAM budget)                  monitor's RAM budget is M MiB instead of the
                                                  machine's RAM (RAM "near the budget" at once).
ram_limit (smt.train's trainer assembly, the      SMT_INJECT_RAM_LIMIT_MB=M: the RAM limit the
  resource monitor's stop)                        monitor's stop holds the run to is M MiB (RAM
                                                  "at the limit" at once: the run saves, stops).

This module imports nothing heavy: the preparation's worker processes load it.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

ENV_PREPARE_FAULT = "SMT_PREPARE_FAULT"
ENV_INJECT_OOM_ABOVE = "SMT_INJECT_OOM_ABOVE"
ENV_INJECT_OOM_RANKS = "SMT_INJECT_OOM_RANKS"
ENV_KILL_AT_STEP = "SMT_INJECT_KILL_AT_STEP"
ENV_LOADER_FAULT = "SMT_LOADER_FAULT"
ENV_RAM_BUDGET_MB = "SMT_INJECT_RAM_BUDGET_MB"
ENV_RAM_LIMIT_MB = "SMT_INJECT_RAM_LIMIT_MB"
ENV_NAN_AT_STEP = "SMT_INJECT_NAN_AT_STEP"

STALL_S = 3600.0

# -- prepare_row ------------------------------------------------------------------------------

_PREPARE: dict[str, Any] = {}    # armed prepare fault in this process (empty: none)


def arm_prepare(writer_batch_size: int, spec: str | None = None) -> None:
    """Arm (or disarm) `prepare_row` in this process from SMT_PREPARE_FAULT (or `spec`)."""
    spec = os.environ.get(ENV_PREPARE_FAULT, "") if spec is None else spec
    _PREPARE.clear()
    if not spec:
        return
    kv = _spec(spec)
    if "above_wbs" in kv and writer_batch_size <= kv["above_wbs"]:
        return
    _PREPARE.update(kv)
    _PREPARE["rows"] = 0


def prepare_row() -> None:
    """Called once per mapped row; does what the armed SMT_PREPARE_FAULT says."""
    if not _PREPARE:
        return
    _PREPARE["rows"] += 1
    if "sleep_ms" in _PREPARE:
        time.sleep(_PREPARE["sleep_ms"] / 1000)
    if "stall_after" in _PREPARE and _PREPARE["rows"] > _PREPARE["stall_after"]:
        time.sleep(STALL_S)
    if "ram_mb" in _PREPARE and "_ballast" not in _PREPARE:
        import numpy as np
        _PREPARE["_ballast"] = np.ones(_PREPARE["ram_mb"] * 2**20, dtype=np.uint8)  # touched: real RSS


def _spec(text: str) -> dict[str, int]:
    """"k=v;k=v" -> {k: int(v)}."""
    return {k: int(v) for k, v in (p.split("=", 1) for p in text.split(";") if "=" in p)}


# -- load_item ----------------------------------------------------------------------------------

_LOAD: dict[str, Any] = {}       # the parsed SMT_LOADER_FAULT of this process, by its text


def load_item() -> None:
    """Called once per training item loaded; does what SMT_LOADER_FAULT says."""
    text = os.environ.get(ENV_LOADER_FAULT, "")
    if not text:
        return
    if _LOAD.get("text") != text:
        _LOAD.clear()
        _LOAD.update(_spec(text), text=text)
    if "sleep_ms" in _LOAD:
        time.sleep(_LOAD["sleep_ms"] / 1000)
    if "ram_mb" in _LOAD and _LOAD.get("_pid") != os.getpid():
        import numpy as np
        _LOAD["_ballast"] = np.ones(_LOAD["ram_mb"] * 2**20, dtype=np.uint8)  # touched: real RSS
        _LOAD["_pid"] = os.getpid()
    if "fill_pct" in _LOAD and _LOAD.get("_filled") != os.getpid():
        import numpy as np
        import psutil

        from autotune.hardware import ram_now
        room = ram_now()[0] * _LOAD["fill_pct"] / 100 - psutil.Process().memory_info().rss
        _LOAD["_fill"] = np.ones(max(0, int(room)), dtype=np.uint8)          # touched: real RSS
        _LOAD["_filled"] = os.getpid()


def ram_budget_bytes() -> int | None:
    """The resource monitor's RAM budget SMT_INJECT_RAM_BUDGET_MB sets, None when unset."""
    return _mib(ENV_RAM_BUDGET_MB)


def ram_limit_bytes() -> int | None:
    """The RAM limit of the monitor's stop SMT_INJECT_RAM_LIMIT_MB sets, None when unset."""
    return _mib(ENV_RAM_LIMIT_MB)


def _mib(env: str) -> int | None:
    value = os.environ.get(env, "").strip()
    return int(value) * 2**20 if value else None


# -- oom_fault ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class OomFault:
    """An injected CUDA OOM for micro-batches above `above_rows`, on `ranks` (None: all)."""
    above_rows: int
    ranks: frozenset[int] | None = None

    def fire(self, rows: int, rank: int) -> None:
        if rows <= self.above_rows or (self.ranks is not None and rank not in self.ranks):
            return
        import torch
        raise torch.cuda.OutOfMemoryError(
            f"CUDA out of memory (injected: micro-batch {rows} > {self.above_rows})")


def oom_fault() -> OomFault | None:
    """The OOM fault SMT_INJECT_OOM_ABOVE / SMT_INJECT_OOM_RANKS arm, None when unset."""
    above = os.environ.get(ENV_INJECT_OOM_ABOVE, "").strip()
    if not above:
        return None
    ranks = os.environ.get(ENV_INJECT_OOM_RANKS, "").strip()
    return OomFault(int(above),
                    frozenset(int(r) for r in ranks.split(",") if r.strip()) if ranks else None)


# -- nan_loss ------------------------------------------------------------------------------------

def nan_loss_from_step() -> int | None:
    """The optimizer step from which SMT_INJECT_NAN_AT_STEP makes the loss NaN, None when unset."""
    value = os.environ.get(ENV_NAN_AT_STEP, "").strip()
    return int(value) if value else None


# -- kill_at_step ------------------------------------------------------------------------------

def kill_at_step() -> int | None:
    """The optimizer step SMT_INJECT_KILL_AT_STEP asks to be killed at, None when unset."""
    value = os.environ.get(ENV_KILL_AT_STEP, "").strip()
    return int(value) if value else None


def kill_self() -> None:
    """SIGKILL this process (no clean-up runs, as when a cloud session is preempted)."""
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
