"""Changing the training loader's workers while the run goes on (`--no-adapt-workers` turns it
off): the resource monitor decides (autotune.monitor.adapt), `WorkerSwitch` applies.

The monitor runs on global rank 0 only and calls `WorkerSwitch.set_workers`. The switch
applies the request after an optimizer step, on every rank: under DDP, rank 0's request is
broadcast every `SYNC_EVERY_STEPS` optimizer steps (a collective all ranks reach at the same
step), so all ranks load with the same worker count. The loader (smt.data.resizable) swaps its
workers before it draws the next batch: the batches, hence the effective batch, stay the same.
"""
from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback

from smt.data.resizable import ResizableLoader
from smt.say import line

# A broadcast of a few bytes costs well under a millisecond, a step tens of milliseconds or
# more; every 10 steps keeps the cost invisible and the delay after a decision short.
SYNC_EVERY_STEPS = 10


def find_resizable(loaders: Any) -> ResizableLoader | None:
    """The ResizableLoader in what `trainer.train_dataloader` holds (a loader, list or dict)."""
    if isinstance(loaders, ResizableLoader):
        return loaders
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        for item in loaders:
            found = find_resizable(item)
            if found is not None:
                return found
    return None


class WorkerSwitch(Callback):
    """Applies a requested loader worker count after the next optimizer step, on every rank."""

    def __init__(self) -> None:
        self._pending: tuple[int, str] | None = None
        self._step = -1
        self.changes: list[dict[str, Any]] = []

    def set_workers(self, n: int, reason: str) -> None:
        """Ask for `n` workers (rank 0's monitor calls this; `reason` is logged with it)."""
        self._pending = (int(n), reason)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._step:          # inside an accumulation window: not a safe point
            return
        self._step = step
        pending = self._pending
        if trainer.world_size > 1:
            if step % SYNC_EVERY_STEPS:
                return
            pending = trainer.strategy.broadcast(pending, src=0)
        if pending is None:
            return
        self._pending = None
        loader = find_resizable(trainer.train_dataloader)
        if loader is None:
            return
        n, reason = pending
        old = loader.num_workers
        loader.request_workers(n)
        self.changes.append({"step": step, "from": old, "to": n, "reason": reason})
        if trainer.is_global_zero:
            print(line(f"loader workers {old} -> {n}: {reason}"), flush=True)
