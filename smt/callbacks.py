"""Training callbacks: periodic last.ckpt, best-by-SER, memory clean-up, throughput record."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from autotune.measure import RssSampler, free_memory
from smt import faults
from smt.checkpoint import BEST_NAME, LAST_NAME


class LastCheckpoint(Callback):
    """`last.ckpt` every `every_n_steps` optimizer steps and when training ends.

    A step interval rather than a time interval because every rank must take the same decision
    without talking (saving is a collective under DDP); the interval bounds the work a kill
    can lose. The write is atomic (see smt.checkpoint), so a kill mid-save loses nothing more.
    """

    def __init__(self, dirpath: Path, every_n_steps: int) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps!r}")
        self.path = Path(dirpath) / LAST_NAME
        self.every_n_steps = every_n_steps
        self._saved_step = -1

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.global_step == self._saved_step:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step = trainer.global_step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A resumed run already has this step on disk.
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self._saved_step:
            self._save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validation runs after the batch-end save of the same step: save again so that the
        # checkpoint knows this validation (best score, early-stopping count) on resume.
        if not trainer.sanity_checking and trainer.state.fn == "fit" \
                and trainer.global_step == self._saved_step:
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)


def best_checkpoint(dirpath: Path) -> ModelCheckpoint:
    """`best.ckpt`: lowest validation SER so far, overwritten in place (atomic write)."""
    return ModelCheckpoint(dirpath=str(dirpath), filename=Path(BEST_NAME).stem, monitor="val_ser",
                           mode="min", save_top_k=1, save_last=False,
                           save_on_train_epoch_end=False, enable_version_counter=False,
                           auto_insert_metric_name=False)


class FreeMemoryAfterValidation(Callback):
    """Validation decodes with a KV cache whose blocks the CUDA allocator keeps reserved; give
    them back before training resumes so that the training peak does not stack on them."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        free_memory()


class Throughput(Callback):
    """Training samples per second (all ranks) over the fit, data loading included and
    validation excluded, and the peak memory: CUDA allocator peak on GPU; on CPU the peak RSS
    of this process and its loader workers during the fit (autotune's RSS sampler).

    `steady_samples_per_s` leaves out the first WARMUP_BATCHES (worker start-up, allocator
    warm-up, first-step compilation), which a long run pays once and a short trial overweights.
    """

    WARMUP_BATCHES = 5
    # A /proc walk per sample (~1 ms): a quarter-second period costs well under 1% of a core.
    RSS_INTERVAL_MS = 250.0

    def __init__(self) -> None:
        self.samples = 0
        self.train_s = 0.0
        self.elapsed_s = 0.0
        self.peak_memory_bytes: int | None = None
        self._t_fit = 0.0
        self._t_train: float | None = None
        self._t_val: float | None = None
        self._val_s = 0.0
        self._batches = 0
        self._steady_from: tuple[int, float] | None = None   # (samples, train seconds) then
        self.steady_samples_per_s: float | None = None
        self._rss: RssSampler | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t_fit = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._rss = RssSampler(interval_ms=self.RSS_INTERVAL_MS, keep_samples=False).start()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t_train = time.perf_counter()
        self._val_s = 0.0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t_val = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._t_val is not None and self._t_train is not None:
            self._val_s += time.perf_counter() - self._t_val
        self._t_val = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self.samples += int(batch["images"].shape[0]) * trainer.world_size
        self._batches += 1
        if self._t_train is not None:
            self.train_s = time.perf_counter() - self._t_train - self._val_s
        if self._batches == self.WARMUP_BATCHES:
            self._steady_from = (self.samples, self.train_s)
        elif self._steady_from is not None and self.train_s > self._steady_from[1]:
            self.steady_samples_per_s = ((self.samples - self._steady_from[0])
                                         / (self.train_s - self._steady_from[1]))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.elapsed_s = time.perf_counter() - self._t_fit
        rss = self._stop_rss()
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            self.peak_memory_bytes = int(torch.cuda.max_memory_allocated(pl_module.device))
        else:
            self.peak_memory_bytes = rss

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self._stop_rss()

    def _stop_rss(self) -> int | None:
        if self._rss is None:
            return None
        self._rss.stop()
        peak, self._rss = self._rss.peak_rss_bytes, None
        return peak

    @property
    def samples_per_s(self) -> float | None:
        return self.samples / self.train_s if self.train_s > 0 else None


class KillAtStep(Callback):
    """The `kill_at_step` fault point (see smt.faults): SIGKILL this process once `step`
    optimizer steps are done. smt.train adds it only when SMT_INJECT_KILL_AT_STEP is set."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            faults.kill_self()
