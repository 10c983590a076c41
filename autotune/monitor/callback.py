"""The Lightning callback: starts the sampler on rank 0, times the loop, hands new samples to
the loggers and the progress bar, checks the hints, and writes the files at the end.

The training loop itself only records two timestamps per batch, from which the callback
derives the share of wall time spent outside the training step, i.e. mostly waiting for the
next batch. Only global rank 0 samples: NVML sees every GPU of the node and the rank-0
process tree holds the other local ranks that Lightning launches as its children.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from lightning.pytorch.callbacks import Callback

from autotune.hardware import usable_cpus
from autotune.monitor.adapt import (AdaptConfig, Limits, Reading, SetWorkers, WorkerAdapter,
                                    decide_stop)
from autotune.monitor.files import LIVE_NAME, append_live, write_outputs
from autotune.monitor.hints import ram_hint, shm_hint, starved_hint, tensor_bytes, vram_headroom_hint
from autotune.monitor.samples import Event, Hint, ResourceHint, ResourceSample, vram_peaks
from autotune.monitor.sampling import GpuReader, ResourceSampler, shm_usage, worker_rss_bytes
from autotune.units import GIB

log = logging.getLogger(__name__)

# Fewer steps than this say nothing about the loader (worker start-up, one slow file).
STARVED_MIN_STEPS = 10


@dataclass
class MonitorConfig:
    # A few seconds: fine enough to see a stall or a leak, cheap enough to be free.
    interval_s: float = 2.0
    # Where resources.png/.csv/.json go; None = the trainer's default_root_dir.
    out_dir: str | os.PathLike[str] | None = None
    # NVML indices to watch; None = the GPUs the trainer trains on (none on CPU).
    gpu_indices: Sequence[int] | None = None
    # The RAM the run may use; None = the machine's total (the probe's budget is better).
    ram_budget_bytes: int | None = None
    # Where the OOM killer acts, for the stop (`on_ram_stop`); None = the machine's RAM as the
    # cgroup sees it, the limit itself.
    ram_limit_bytes: int | None = None
    # Above 30% of loop time outside the step, more workers usually pay for themselves.
    starved_frac: float = 0.3
    # Samples the starved rule averages over: a single slow batch is not a starved loader.
    starved_window: int = 5
    # Peak VRAM below half the device after this long means the batch could double.
    vram_headroom_frac: float = 0.5
    vram_after_s: float = 60.0
    # Show a few compact figures in the progress bar.
    prog_bar: bool = True

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s!r}")
        if not 0 < self.starved_frac < 1:
            raise ValueError(f"starved_frac must be in (0, 1), got {self.starved_frac!r}")
        if self.starved_window < 1:
            raise ValueError(f"starved_window must be >= 1, got {self.starved_window!r}")
        if not 0 < self.vram_headroom_frac < 1:
            raise ValueError(
                f"vram_headroom_frac must be in (0, 1), got {self.vram_headroom_frac!r}")
        for name in ("ram_budget_bytes", "ram_limit_bytes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")


class ResourceMonitor(Callback):
    """Lightning callback: samples resources on a thread, logs them, warns, plots at the end.

    `ResourceMonitor()` is enough; keyword arguments are the fields of `MonitorConfig`.
    With `set_workers`, it also acts (autotune.monitor.adapt): it asks for more loader workers
    when the step keeps waiting for data and fewer when RAM keeps nearing the budget, and
    records each change as an event (resources.json/.csv, a marked line in resources.png).
    With `on_ram_stop`, when the process tree stays at the RAM limit (`adapt.decide_stop`) it
    calls it once with the reason: the run saves and stops rather than be killed.
    """

    def __init__(self, set_workers: SetWorkers | None = None,
                 adapt: AdaptConfig | None = None,
                 on_ram_stop: Callable[[str], None] | None = None, **config: Any) -> None:
        self.config = MonitorConfig(**config)
        self.set_workers = set_workers
        self.on_ram_stop = on_ram_stop
        self.adapt = adapt or AdaptConfig()
        self._reset()

    def _reset(self) -> None:
        """Fresh run state: each `fit` on the same callback gets its own samples and hints."""
        self.samples: list[ResourceSample] = []
        self.hints: list[Hint] = []
        self.events: list[Event] = []
        self._adapter: WorkerAdapter | None = None
        self._since_change: list[Reading] = []   # the stop's readings, after the last change
        self._stopping = False
        self._batch_bytes = 0              # largest loader batch seen (for /dev/shm)
        self._last_t = 0.0                 # time of the previous published sample
        self.files: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._sampler: ResourceSampler | None = None
        self._gpus: GpuReader | None = None
        self._t0 = 0.0
        self._step = 0                     # trainer.global_step, read by the thread
        self._active = False
        self._finished = False
        self._seen = 0                     # samples already handed to loggers
        # loop timing, main thread only
        self._last_end: float | None = None
        self._batch_start = 0.0
        self._wait_s = 0.0
        self._step_s = 0.0
        self._steps = 0
        self._gaps = 0                     # steps with a measured gap before them
        self._windows: list[tuple[float, float, int]] = []  # (wait_s, step_s, steps) per sample
        self._loader: dict[str, int | None] = {"num_workers": None, "prefetch_factor": None}
        self._ranks = 1
        self._out: Path | None = None
        self._hinted: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the callbacks into each rank; a lock, an event or a thread cannot
        # be pickled, and a sampling thread belongs to one process anyway.
        state = self.__dict__.copy()
        for name in ("_lock", "_sampler", "_gpus"):
            state[name] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        if self._finished or self.samples:
            self._reset()
        cfg = self.config
        self._out = Path(cfg.out_dir if cfg.out_dir is not None else trainer.default_root_dir)
        if cfg.gpu_indices is not None:
            self._gpus = GpuReader(cfg.gpu_indices) if cfg.gpu_indices else None
        elif type(trainer.accelerator).__name__ == "CUDAAccelerator":
            self._gpus = GpuReader(cuda_ids=list(trainer.device_ids),
                                   visible=os.environ.get("CUDA_VISIBLE_DEVICES"))
        self._ranks = max(1, int(getattr(trainer, "num_devices", 1) or 1))
        (self._out / LIVE_NAME).unlink(missing_ok=True)   # a killed run's, already reported
        self.start()

    def start(self) -> None:
        """Start the sampling thread (the callback does this at fit start)."""
        if self._sampler is not None:
            return
        self._active = True
        self._sampler = ResourceSampler(self.config.interval_s, self._gpus, lambda: self._step,
                                        self.samples, self._lock, self._write_live)
        self._sampler.start()
        self._t0 = self._sampler._t0

    def _write_live(self, sample: ResourceSample) -> None:
        """The live file's line for `sample` (on the sampling thread; none without a folder)."""
        if self._out is not None:
            append_live(self._out, sample, self.config.ram_limit_bytes)

    def stop(self) -> None:
        """Stop the thread after one last sample, so that short runs still have an end point."""
        if self._sampler is None:
            return
        self._sampler.stop()
        self._sampler = None

    # -- loop timing --------------------------------------------------------------------------

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not self._active:
            return
        loader = _first_dataloader(trainer.train_dataloader)
        if loader is not None:
            self._loader = {"num_workers": int(getattr(loader, "num_workers", 0) or 0),
                            "prefetch_factor": getattr(loader, "prefetch_factor", None)}
        if self.set_workers is not None and self._adapter is None:
            self._adapter = WorkerAdapter(self._change_workers,
                                          self._loader["num_workers"] or 0, self.adapt)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        # Worker start-up before an epoch's first batch is a one-off, not a starved loader.
        self._last_end = None

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._last_end = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        if not self._active:
            return
        now = time.perf_counter()
        if self._adapter is not None:
            self._batch_bytes = max(self._batch_bytes, tensor_bytes(batch))
        if self._last_end is not None:
            self._wait_s += now - self._last_end
            self._gaps += 1
        elif "shm" not in self._hinted and self._loader["num_workers"]:
            self._warn("shm", shm_hint(self._loader["num_workers"],
                                       self._loader["prefetch_factor"], tensor_bytes(batch),
                                       self._ranks, shm_usage()))
        self._batch_start = now

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._active:
            return
        now = time.perf_counter()
        self._step_s += now - self._batch_start
        self._steps += 1
        self._step = int(trainer.global_step)
        if len(self.samples) != self._seen:  # an int compare per step; the rest every few s
            self._publish(trainer, pl_module)
        self._last_end = time.perf_counter()

    # -- publishing ---------------------------------------------------------------------------

    def _publish(self, trainer: Any, pl_module: Any) -> None:
        with self._lock:
            new = self.samples[self._seen:]
            self._seen = len(self.samples)
        if not new:
            return
        loop = self._wait_s + self._step_s
        frac = self._wait_s / loop if self._gaps and loop > 0 else None
        # Keep enough history for a slow model (a few steps per sample) to reach min_steps.
        self._windows = (self._windows + [(self._wait_s, self._step_s, self._steps)])[-200:]
        self._wait_s = self._step_s = 0.0
        self._steps = self._gaps = 0
        latest = new[-1]
        latest.data_wait_frac = None if frac is None else round(frac, 4)

        metrics = {f"resources/{k}": float(v) for k, v in latest.flat().items()
                   if v is not None and k not in ("t_s", "step")}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if self.config.prog_bar:
            for name, value in self._prog_bar_figures(latest).items():
                pl_module.log(name, value, prog_bar=True, logger=False, on_step=True,
                              on_epoch=False, rank_zero_only=True)
        self._check(latest)
        utils = [g.util_pct for g in latest.gpus if g.util_pct is not None]
        reading = Reading(latest.t_s, max(0.0, latest.t_s - self._last_t), frac,
                          latest.rss_bytes, latest.ram_available_bytes,
                          sum(utils) / len(utils) if utils else None)
        self._last_t = latest.t_s
        if self._adapter is not None:
            self._act(latest, reading)
        if self.on_ram_stop is not None:
            self._guard(latest, reading)

    @staticmethod
    def _prog_bar_figures(s: ResourceSample) -> dict[str, float]:
        figures: dict[str, float] = {}
        utils = [g.util_pct for g in s.gpus if g.util_pct is not None]
        if utils:
            figures["gpu%"] = round(sum(utils) / len(utils))
        mems = [g.mem_used_bytes / g.mem_total_bytes for g in s.gpus
                if g.mem_used_bytes is not None and g.mem_total_bytes]
        if mems:
            figures["vram%"] = round(100 * max(mems))
        if s.rss_bytes is not None:
            figures["ram_gb"] = round(s.rss_bytes / GIB, 1)
        if s.data_wait_frac is not None:
            figures["wait%"] = round(100 * s.data_wait_frac)
        return figures

    # -- rules --------------------------------------------------------------------------------

    def _check(self, latest: ResourceSample) -> None:
        cfg = self.config
        # The latest windows, at least `starved_window` samples and `STARVED_MIN_STEPS` steps.
        wait = busy = 0.0
        steps = used = 0
        for w, b, n in reversed(self._windows):
            wait, busy, steps, used = wait + w, busy + b, steps + n, used + 1
            if used >= cfg.starved_window and steps >= STARVED_MIN_STEPS:
                break
        recent = self.samples[-used:]
        utils = [g.util_pct for s in recent for g in s.gpus if g.util_pct is not None]
        self._warn("starved", starved_hint(
            wait / (wait + busy) if wait + busy > 0 else None, steps,
            sum(utils) / len(utils) if utils else None, self._loader["num_workers"],
            psutil.cpu_count(), threshold=cfg.starved_frac, min_steps=STARVED_MIN_STEPS))
        budget = cfg.ram_budget_bytes or latest.ram_total_bytes
        self._warn("ram", ram_hint(latest.rss_bytes, latest.ram_available_bytes, budget))
        if latest.t_s >= cfg.vram_after_s and len(self.samples) >= 3:
            self._warn("vram_headroom",
                       vram_headroom_hint(self.vram_peaks(), cfg.vram_headroom_frac))
        if self._loader["num_workers"] and latest.shm_used_bytes is not None:
            shm = shm_usage()
            if shm is not None:
                self._warn("shm", shm_hint(self._loader["num_workers"], None, None, self._ranks,
                                           (shm[0], latest.shm_used_bytes)))

    # -- acting -------------------------------------------------------------------------------

    def _act(self, latest: ResourceSample, reading: Reading) -> None:
        """Hand this interval to the worker controller (autotune.monitor.adapt)."""
        assert self._adapter is not None
        import torch   # loaded by the training this watches
        workers = self._adapter.workers
        shm = shm_usage()
        prefetch = self._loader["prefetch_factor"] or 2
        limits = Limits(
            cores=int(usable_cpus()), threads=torch.get_num_threads(), ranks=self._ranks,
            ram_budget_bytes=self.config.ram_budget_bytes or latest.ram_total_bytes,
            rss_bytes=latest.rss_bytes, worker_rss_bytes=worker_rss_bytes(workers, self._ranks),
            shm_free_bytes=None if shm is None else shm[0] - shm[1],
            shm_per_worker_bytes=prefetch * self._batch_bytes or None)
        if self._adapter.observe(reading, limits) is not None:
            self._since_change = []     # the stop waits to see what the change did

    def _guard(self, latest: ResourceSample, reading: Reading) -> None:
        """Ask the run to save and stop (once) when the tree stays at the RAM limit."""
        if self._stopping:
            return
        self._since_change = (self._since_change + [reading])[-self.adapt.patience:]
        limit = self.config.ram_limit_bytes or latest.ram_total_bytes
        reason = decide_stop(self._since_change, limit, self.adapt)
        if reason is None:
            return
        self._stopping = True
        t = time.monotonic() - self._t0 if self._t0 else 0.0
        self.events.append(Event("stop", f"stopping before the OOM killer: {reason}",
                                 round(t, 3), self._step))
        log.info("resource monitor: stopping: %s", reason)
        assert self.on_ram_stop is not None
        self.on_ram_stop(reason)

    def _change_workers(self, n: int, reason: str) -> None:
        old = self._loader["num_workers"] or 0
        message = f"loader workers {old} -> {n}: {reason}"
        t = time.monotonic() - self._t0 if self._t0 else 0.0
        self.events.append(Event("workers", message, round(t, 3), self._step))
        self._loader["num_workers"] = n
        log.info("resource monitor: %s", message)
        assert self.set_workers is not None
        self.set_workers(n, reason)

    def _warn(self, kind: str, message: str | None) -> None:
        if message is None or kind in self._hinted:
            return
        self._hinted.add(kind)  # once per run: a hint repeated every sample is noise
        t = time.monotonic() - self._t0 if self._t0 else 0.0
        self.hints.append(Hint(kind, message, round(t, 3)))
        # warn_explicit: the message alone, without a line of our source under it.
        warnings.warn_explicit(message, ResourceHint, filename="resource-monitor", lineno=0,
                               module=__name__)
        log.info("resource hint: %s", message)

    def vram_peaks(self) -> dict[int, tuple[int, int]]:
        return vram_peaks(self.samples)

    # -- end of run ---------------------------------------------------------------------------

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.finish()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.finish()  # the samples up to a crash are exactly what explains it

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.finish()

    def finish(self) -> dict[str, Path]:
        """Stop sampling and write resources.png/.csv/.json once; returns the paths."""
        if not self._active or self._finished:
            return self.files
        self._finished = True
        self.stop()
        self._active = False
        if self._out is None:
            return self.files
        try:
            self.files = write_outputs(self._out, self.samples, self.hints, self.summary(),
                                       self.config.ram_budget_bytes, self.events)
            # resources.json holds every sample now: the live file stays only after a kill
            (self._out / LIVE_NAME).unlink(missing_ok=True)
        except Exception:  # never turn a finished run into a failed one over a plot
            log.warning("could not write the resource plot", exc_info=True)
        return self.files

    def summary(self) -> dict[str, Any]:
        """Headline figures for a run summary; None where nothing was measured."""
        rss = [s.rss_bytes for s in self.samples if s.rss_bytes is not None]
        waits = [s.data_wait_frac for s in self.samples if s.data_wait_frac is not None]
        utils = [g.util_pct for s in self.samples for g in s.gpus if g.util_pct is not None]
        peaks = self.vram_peaks()
        return {
            "samples": len(self.samples),
            "interval_s": self.config.interval_s,
            "peak_rss_bytes": max(rss) if rss else None,
            "mean_data_wait_frac": round(sum(waits) / len(waits), 4) if waits else None,
            "mean_gpu_util_pct": round(sum(utils) / len(utils), 1) if utils else None,
            "peak_gpu_mem_used_bytes": {str(i): p[0] for i, p in peaks.items()} or None,
            "hints": [h.kind for h in self.hints],
            "events": [e.message for e in self.events],
        }


def _first_dataloader(loaders: Any) -> Any:
    if loaders is None:
        return None
    if hasattr(loaders, "num_workers"):
        return loaders
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        for item in loaders:
            found = _first_dataloader(item)
            if found is not None:
                return found
    return None
