"""Stopping a run without losing it: Ctrl-C, SIGTERM (Kaggle's session end, SLURM pre-emption,
`kill`), RAM at its limit (the resource monitor's stop: the OOM killer would end the run with a
SIGKILL nothing can catch) and a time interval all end in an atomic `last.ckpt` that
`--resume` continues.

How: while `trainer.fit` runs, SIGINT and SIGTERM only *record* that a stop was asked (a
second one stops at once, the old way). After the optimizer step in progress, `SaveAndStop`
writes `last.ckpt` (every rank calls the save, rank 0 writes it atomically through
`AtomicCheckpointIO`) and asks Lightning to stop. `train` then raises `Stopped`: one line
saying how to resume, exit 128 + the signal's number (`MemoryStopped` after RAM: the peak, the
limit, what to lower, exit 3). DataLoader workers ignore both signals
(a Ctrl-C reaches the whole process group): the main process stops them when the loader
closes, so they never die mid-batch with a traceback.

Every rank must take the same decision (a save is a collective under DDP): the stop is
OR-reduced over the ranks, the time interval is rank 0's clock, broadcast.
"""
from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from autotune.errors import STOPPED_EXIT_CODE, UserError
from smt.checkpoint import LAST_NAME
from smt.say import say

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """The first SIGINT/SIGTERM received while fitting (0: none), or why RAM stops the run."""

    def __init__(self) -> None:
        self.signum = 0
        self.memory = ""

    def for_memory(self, reason: str) -> None:
        """The resource monitor's stop (autotune.monitor: RAM stayed at its limit)."""
        if not self.memory:
            say(f"RAM near its limit: finishing this step, then saving last.ckpt ({reason})",
                start="\n")
        self.memory = reason

    @property
    def asked(self) -> bool:
        return bool(self.signum or self.memory)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


class Stopped(UserError):
    """A run stopped by a signal: one line and exit 128 + signal number."""

    def __init__(self, signum: int, out: Path, step: int) -> None:
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        ckpt = out / "checkpoints" / LAST_NAME
        if ckpt.is_file():
            message = (f"stopped by {name} at step {step}; {ckpt} is saved: resume with "
                       f"python -m smt.train --resume {out}")
        else:       # before the first step ended: there is nothing to continue
            message = f"stopped by {name} before the first training step; nothing was saved"
        super().__init__(message)


MEMORY_EXIT_CODE = STOPPED_EXIT_CODE      # a run that stopped itself for RAM, work saved


class MemoryStopped(UserError):
    """A run stopped before the OOM killer: one line (the peak, the limit, what to lower)."""
    exit_code = MEMORY_EXIT_CODE

    def __init__(self, reason: str, out: Path, step: int) -> None:
        ckpt = out / "checkpoints" / LAST_NAME
        lower = ("lower --batch-size (raise --accumulate to keep the effective batch), "
                 "--num-workers or --reduce-ratio")
        if ckpt.is_file():
            message = (f"stopped at step {step} before the OOM killer: {reason}; {ckpt} is "
                       f"saved: {lower}, then python -m smt.train --resume {out}")
        else:
            message = (f"stopped before the first training step ended, before the OOM "
                       f"killer: {reason}; nothing was saved: {lower}")
        super().__init__(message)


@contextmanager
def on_signals(request: StopRequest) -> Iterator[StopRequest]:
    """Record SIGINT/SIGTERM in `request` for the block (main thread only; elsewhere the
    handlers cannot be set and signals act as before)."""
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def record(signum: int, frame: Any) -> None:
        if request.signum:                      # the second one: stop now, the old way
            signal.signal(signum, previous[signum] if callable(previous[signum])
                          else signal.SIG_DFL)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.raise_signal(signum)
            return
        request.signum = signum
        say(f"{signal.Signals(signum).name}: finishing this step, then saving last.ckpt "
            "(again to stop at once)", every_rank=True, start="\n")

    for s in SIGNALS:
        signal.signal(s, record)
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _worker_init(worker_id: int) -> None:
    """Leave SIGINT/SIGTERM to the main process (see the module doc), then seed the worker
    as Lightning's `seed_everything(workers=True)` would have."""
    from lightning.fabric.utilities.seed import pl_worker_init_function
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    pl_worker_init_function(worker_id)


def protect_workers(loader: Any) -> None:
    """Give `loader`'s workers `_worker_init` (Lightning adds its own only where none is set);
    a resizable loader may start workers later, so it gets it even with none now."""
    from smt.data.resizable import ResizableLoader
    if (getattr(loader, "num_workers", 0) or isinstance(loader, ResizableLoader)) \
            and loader.worker_init_fn is None:
        loader.worker_init_fn = _worker_init


class SaveAndStop(Callback):
    """After each optimizer step: on a recorded signal, save `last.ckpt` and stop; every
    `every_min` minutes (rank 0's clock), save `last.ckpt`."""

    def __init__(self, dirpath: Path, request: StopRequest, every_min: float | None) -> None:
        self.path = Path(dirpath) / LAST_NAME
        self.request = request
        self.every_s = every_min * 60.0 if every_min else None
        self._last_save = time.monotonic()
        self.saved_step = -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A signal during the epoch-end validation: Lightning stops right after this hook.
        self._check(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        # Lightning's own SIGTERM exit (a SystemExit, raised on every rank together) can come
        # before any of our hooks saw the signal: save what the last finished step left.
        if self.request.signum and isinstance(exception, SystemExit) \
                and trainer.global_step not in (0, self.saved_step):
            trainer.save_checkpoint(self.path, weights_only=False)
            self.saved_step = trainer.global_step

    def _check(self, trainer: pl.Trainer) -> None:
        strategy = trainer.strategy
        stop = self.request.asked
        due = self.every_s is not None and time.monotonic() - self._last_save >= self.every_s
        if trainer.world_size > 1:
            stop = strategy.reduce_boolean_decision(stop, all=False)
            due = bool(strategy.broadcast(due, src=0))
        if (stop or due) and trainer.global_step not in (0, self.saved_step):
            trainer.save_checkpoint(self.path, weights_only=False)
            self.saved_step = trainer.global_step
            self._last_save = time.monotonic()
        if stop:
            if not self.request.asked:
                self.request.signum = signal.SIGTERM     # another rank was signalled
            trainer.should_stop = True
