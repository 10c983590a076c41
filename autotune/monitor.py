"""See what a training run is doing: a Lightning callback that samples the machine.

Every `interval_s` seconds a background thread samples GPU utilisation and memory per device
(NVML), the RSS of the whole process tree (DataLoader workers and DDP ranks included), system
available RAM, CPU use and /dev/shm use. The training loop itself only records two timestamps
per batch, from which the callback derives the share of wall time spent outside the training
step, i.e. mostly waiting for the next batch. New samples are handed to the run's loggers and
the progress bar from the main thread, checked against a few rules that each name a fix, and
written at the end of the run as `resources.png`, `resources.csv` and `resources.json`.

Why a thread and not per-step sampling: one NVML query plus a process-tree walk costs about a
millisecond, which would be a real tax on a small model doing hundreds of steps a second; on
a thread every few seconds it costs nothing measurable (bench/bench_monitor.py).

Only global rank 0 samples: NVML sees every GPU of the node and the rank-0 process tree holds
the other local ranks that Lightning launches as its children.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from lightning.pytorch.callbacks import Callback

from autotune.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from autotune.hardware import cgroup_memory
from autotune.measure import tree_rss_bytes

log = logging.getLogger(__name__)

SHM_PATH = "/dev/shm"
GIB = 1024 ** 3
# Fewer steps than this say nothing about the loader (worker start-up, one slow file).
STARVED_MIN_STEPS = 10


class ResourceHint(UserWarning):
    """A warning from the resource monitor: something wastes or risks the run, and the fix."""


# ---------------------------------------------------------------------------------------------
# Records


@dataclass
class GpuSample:
    index: int                          # NVML index of the device
    util_pct: float | None              # share of the last sample period a kernel ran
    mem_used_bytes: int | None          # all processes on the device, as nvidia-smi shows
    mem_total_bytes: int | None


@dataclass
class ResourceSample:
    t_s: float                          # seconds since the monitor started
    step: int                           # trainer.global_step when the sample was taken
    rss_bytes: int | None               # process tree: this process and all its children
    ram_available_bytes: int | None     # system-wide, what the kernel can still hand out
    ram_total_bytes: int | None
    cpu_pct: float | None               # system-wide, 100 = every core busy
    shm_used_bytes: int | None
    data_wait_frac: float | None = None  # share of loop time outside the step; filled later
    gpus: list[GpuSample] = field(default_factory=list)

    def flat(self) -> dict[str, float | int | None]:
        """One flat row: the CSV columns and the logger metrics (GPUs as gpu<i>_...)."""
        row: dict[str, float | int | None] = {
            k: v for k, v in asdict(self).items() if k != "gpus"}
        for g in self.gpus:
            row[f"gpu{g.index}_util_pct"] = g.util_pct
            row[f"gpu{g.index}_mem_used_bytes"] = g.mem_used_bytes
            row[f"gpu{g.index}_mem_total_bytes"] = g.mem_total_bytes
        return row

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ResourceSample":
        gpus = [GpuSample(**g) for g in data.get("gpus", [])]
        return cls(**{**data, "gpus": gpus})


@dataclass
class Hint:
    kind: str                           # "starved", "ram", "vram_headroom", "shm"
    message: str                        # what is wrong, with the numbers, and the fix
    t_s: float


# ---------------------------------------------------------------------------------------------
# Probes used by the sampling thread


def shm_usage(path: str = SHM_PATH) -> tuple[int, int] | None:
    """(total_bytes, used_bytes) of the shared-memory mount, None where there is none."""
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    return int(usage.total), int(usage.used)


class GpuReader:
    """Utilisation and memory per GPU through NVML; inert where NVML is missing.

    `nvmlInit()` raises `NVMLError_LibraryNotFound` on a machine without the driver, which is
    normal here: the monitor then samples no GPU fields rather than failing the run.
    """

    def __init__(self, indices: Sequence[int] | None = None) -> None:
        self.available = False
        self.handles: dict[int, Any] = {}
        self.reason: str | None = None
        try:
            import pynvml
        except ImportError:
            self.reason = "nvidia-ml-py is not installed"
            return
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
            count = int(pynvml.nvmlDeviceGetCount())
            wanted = range(count) if indices is None else [i for i in indices if 0 <= i < count]
            self.handles = {i: pynvml.nvmlDeviceGetHandleByIndex(i) for i in wanted}
        except pynvml.NVMLError as exc:
            self.reason = f"NVML unavailable ({exc})"
            return
        self.available = bool(self.handles)

    def read(self) -> list[GpuSample]:
        out = []
        nvml = getattr(self, "_nvml", None)
        for index, handle in self.handles.items():
            util = used = total = None
            try:
                util = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except nvml.NVMLError:
                pass
            try:
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                used, total = int(mem.used), int(mem.total)
            except nvml.NVMLError:
                pass
            out.append(GpuSample(index, util, used, total))
        return out

    def close(self) -> None:
        if self.available:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self.available = False


def nvml_indices_for(device_ids: Iterable[int], visible: str | None) -> list[int] | None:
    """Map CUDA device ordinals to NVML indices through CUDA_VISIBLE_DEVICES.

    NVML enumerates every GPU of the machine while CUDA renumbers the visible ones from 0.
    Returns None (= all GPUs) when the mapping cannot be known (UUIDs in the variable).
    """
    ids = list(device_ids)
    if visible is None or not visible.strip():
        return ids
    parts = [p.strip() for p in visible.split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        return None
    return [int(parts[i]) for i in ids if i < len(parts)]


def sample_resources(t_s: float, step: int, gpus: GpuReader | None,
                     cpu: bool = True) -> ResourceSample:
    """One sample of the machine; every field that cannot be read is None.

    `cpu=False` for the first sample: psutil's CPU share covers the time since its previous
    call, which at start-up is a few microseconds and reads as a meaningless 0%.
    """
    try:
        vm = psutil.virtual_memory()
        avail, total = int(vm.available), int(vm.total)
    except (psutil.Error, OSError):
        avail = total = None
    # In a container (Kaggle, Docker) the cgroup limit, not the host's RAM, is what OOM-kills.
    limit, usage = cgroup_memory()
    if limit is not None:
        total = limit if total is None else min(total, limit)
        if usage is not None:
            avail = limit - usage if avail is None else min(avail, max(0, limit - usage))
    cpu_pct = None
    if cpu:
        try:
            cpu_pct = float(psutil.cpu_percent(interval=None))
        except (psutil.Error, OSError):
            pass
    shm = shm_usage()
    return ResourceSample(
        t_s=round(t_s, 3), step=step, rss_bytes=tree_rss_bytes() or None, ram_available_bytes=avail,
        ram_total_bytes=total, cpu_pct=cpu_pct, shm_used_bytes=None if shm is None else shm[1],
        gpus=gpus.read() if gpus is not None and gpus.available else [])


# ---------------------------------------------------------------------------------------------
# Rules: each returns a message naming the fix, or None. Pure functions so tables can test them.


def starved_hint(wait_frac: float | None, steps: int, gpu_util_pct: float | None,
                 num_workers: int | None, cpu_count: int | None, threshold: float = 0.3,
                 min_steps: int = 10, busy_gpu_pct: float = 85.0) -> str | None:
    """The step waits for data: more loader workers are the fix.

    A busy GPU is not starved even when the CPU side shows gaps (CUDA runs asynchronously,
    so the host may queue work and then wait in the loader while the GPU is still computing).
    """
    if wait_frac is None or steps < min_steps or wait_frac < threshold:
        return None
    if gpu_util_pct is not None and gpu_util_pct >= busy_gpu_pct:
        return None
    who = "the GPU" if gpu_util_pct is not None else "the model"
    workers = "?" if num_workers is None else str(num_workers)
    cores = cpu_count or 2
    suggest = min(max(2, 2 * (num_workers or 0)), max(1, cores))
    util = "" if gpu_util_pct is None else f", GPU busy {gpu_util_pct:.0f}%"
    fix = (f"raise num_workers (now {workers}; e.g. --num-workers {suggest})"
           if num_workers is None or suggest > num_workers else
           "the loader is CPU bound with every core busy: lower reduce_ratio or image size, "
           "or pre-resize the dataset")
    return (f"data-starved: {who} waits for data {wait_frac:.0%} of each step over {steps} "
            f"steps{util}; {fix}")


def ram_hint(rss_bytes: int | None, available_bytes: int | None, budget_bytes: int | None,
             near_frac: float = 0.9) -> str | None:
    """The process tree is close to the RAM budget, or the machine is close to running out."""
    if rss_bytes is None or budget_bytes is None or budget_bytes <= 0:
        return None
    low_avail = available_bytes is not None and available_bytes < (1 - near_frac) * budget_bytes
    if rss_bytes < near_frac * budget_bytes and not low_avail:
        return None
    avail = "" if available_bytes is None else f", {available_bytes / GIB:.1f} GiB still available"
    return (f"RAM nearing the budget: the run uses {rss_bytes / GIB:.1f} of "
            f"{budget_bytes / GIB:.1f} GiB{avail}; lower num_workers or batch_size, or reduce "
            f"the images more (reduce_ratio), before the OOM killer ends the run")


def vram_headroom_hint(peaks: dict[int, tuple[int, int]], used_below: float = 0.5) -> str | None:
    """Every monitored GPU stayed well under its memory: a bigger batch would fit.

    `peaks` maps a GPU index to (peak used bytes, total bytes) over the run so far.
    """
    if not peaks:
        return None
    fracs = {i: used / total for i, (used, total) in peaks.items() if total}
    if not fracs or max(fracs.values()) >= used_below:
        return None
    worst = max(fracs.values())
    each = ", ".join(f"GPU {i} {peaks[i][0] / GIB:.1f}/{peaks[i][1] / GIB:.1f} GiB"
                     for i in sorted(fracs))
    grow = max(2, int(0.9 / max(worst, 0.05)))
    return (f"VRAM headroom unused: peak use {each} ({worst:.0%} at most); batch_size could "
            f"grow about {grow}x (raise --batch-size and lower --accumulate to keep the "
            f"effective batch, or re-run `python -m autotune probe`)")


def shm_hint(num_workers: int | None, prefetch_factor: int | None, batch_bytes: int | None,
             ranks: int, shm: tuple[int, int] | None, margin: float = 2.0) -> str | None:
    """DataLoader workers hand batches over in /dev/shm; a container's default 64 MB is not
    enough and the run dies with a bus error. Need: ranks x workers x prefetch x batch bytes,
    with a margin for batches in flight; or /dev/shm is already nearly full."""
    if not num_workers or shm is None:
        return None
    total, used = shm
    fix = "give the container more (docker --shm-size=8g) or lower num_workers"
    if total and used > 0.9 * total:
        return (f"/dev/shm too small for the workers: {used / 2**20:.0f} of "
                f"{total / 2**20:.0f} MiB in use with {num_workers} workers per rank; {fix}")
    if not batch_bytes:
        return None
    prefetch = prefetch_factor or 2
    need = ranks * num_workers * prefetch * batch_bytes
    if need * margin <= total - used:
        return None
    return (f"/dev/shm too small for the workers: {ranks} rank(s) x {num_workers} workers x "
            f"{prefetch} prefetched batches of {batch_bytes / 2**20:.1f} MiB need "
            f"~{need / 2**20:.0f} MiB (x{margin:g} margin), /dev/shm has "
            f"{(total - used) / 2**20:.0f} MiB free; {fix}")


def tensor_bytes(batch: Any) -> int:
    """Bytes of every tensor in a (nested) batch; what a worker must put into shared memory."""
    import torch
    if isinstance(batch, torch.Tensor):
        return batch.numel() * batch.element_size()
    if isinstance(batch, dict):
        return sum(tensor_bytes(v) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        return sum(tensor_bytes(v) for v in batch)
    return 0


# ---------------------------------------------------------------------------------------------
# The callback


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
        if self.ram_budget_bytes is not None and self.ram_budget_bytes <= 0:
            raise ValueError(f"ram_budget_bytes must be positive, got {self.ram_budget_bytes!r}")


class ResourceMonitor(Callback):
    """Lightning callback: samples resources on a thread, logs them, warns, plots at the end.

    `ResourceMonitor()` is enough; keyword arguments are the fields of `MonitorConfig`.
    """

    def __init__(self, **config: Any) -> None:
        self.config = MonitorConfig(**config)
        self._reset()

    def _reset(self) -> None:
        """Fresh run state: each `fit` on the same callback gets its own samples and hints."""
        self.samples: list[ResourceSample] = []
        self.hints: list[Hint] = []
        self.files: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
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
        for name in ("_lock", "_stop", "_thread", "_gpus"):
            state[name] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock, self._stop = threading.Lock(), threading.Event()

    # -- lifecycle ----------------------------------------------------------------------------

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        if self._finished or self.samples:
            self._reset()
        cfg = self.config
        self._out = Path(cfg.out_dir if cfg.out_dir is not None else trainer.default_root_dir)
        indices = cfg.gpu_indices
        if indices is None:
            on_cuda = type(trainer.accelerator).__name__ == "CUDAAccelerator"
            indices = (nvml_indices_for(trainer.device_ids, os.environ.get("CUDA_VISIBLE_DEVICES"))
                       if on_cuda else [])
        self._gpus = GpuReader(indices) if indices is None or indices else None
        self._ranks = max(1, int(getattr(trainer, "num_devices", 1) or 1))
        self.start()

    def start(self) -> None:
        """Start the sampling thread (the callback does this at fit start)."""
        if self._thread is not None:
            return
        psutil.cpu_percent(interval=None)  # the first call only sets the reference point
        self._t0 = time.monotonic()
        self._active = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="resource-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after one last sample, so that short runs still have an end point."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=10 * self.config.interval_s + 5)
        self._thread = None
        self._take_sample()
        if self._gpus is not None:
            self._gpus.close()

    def _run(self) -> None:
        self._take_sample()
        while not self._stop.wait(self.config.interval_s):
            self._take_sample()

    def _take_sample(self) -> None:
        try:
            sample = sample_resources(time.monotonic() - self._t0, self._step, self._gpus,
                                      cpu=bool(self.samples))
        except Exception:  # a monitor must never end the run it watches
            log.debug("resource sample failed", exc_info=True)
            return
        with self._lock:
            self.samples.append(sample)

    # -- loop timing --------------------------------------------------------------------------

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not self._active:
            return
        loader = _first_dataloader(trainer.train_dataloader)
        if loader is not None:
            self._loader = {"num_workers": int(getattr(loader, "num_workers", 0) or 0),
                            "prefetch_factor": getattr(loader, "prefetch_factor", None)}

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
        peaks: dict[int, tuple[int, int]] = {}
        for s in self.samples:
            for g in s.gpus:
                if g.mem_used_bytes is None or not g.mem_total_bytes:
                    continue
                old = peaks.get(g.index, (0, g.mem_total_bytes))[0]
                peaks[g.index] = (max(old, g.mem_used_bytes), g.mem_total_bytes)
        return peaks

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
                                       self.config.ram_budget_bytes)
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


# ---------------------------------------------------------------------------------------------
# Files


def samples_to_csv(samples: Sequence[ResourceSample]) -> str:
    rows = [s.flat() for s in samples]
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def write_outputs(out_dir: str | os.PathLike[str], samples: Sequence[ResourceSample],
                  hints: Sequence[Hint] = (), summary: dict[str, Any] | None = None,
                  ram_budget_bytes: int | None = None) -> dict[str, Path]:
    out = Path(out_dir)
    files = {
        "json": atomic_write_json(out / "resources.json", {
            "summary": summary or {}, "hints": [asdict(h) for h in hints],
            "samples": [asdict(s) for s in samples]}),
        "csv": atomic_write_text(out / "resources.csv", samples_to_csv(samples)),
    }
    files["png"] = atomic_write_bytes(out / "resources.png",
                                      plot_resources(samples, ram_budget_bytes, hints))
    return files


def load_samples(path: str | os.PathLike[str]) -> list[ResourceSample]:
    """Read back `resources.json` (for re-plotting or comparing runs)."""
    import json
    data = json.loads(Path(path).read_text())
    return [ResourceSample.from_dict(s) for s in data["samples"]]


def plot_resources(samples: Sequence[ResourceSample], ram_budget_bytes: int | None = None,
                   hints: Sequence[Hint] = ()) -> bytes:
    """PNG bytes: utilisation, host memory and GPU memory over time.

    Uses the Agg canvas directly, not pyplot, so that it neither needs a display nor changes
    the backend of a notebook that called it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8), dpi=100)
    FigureCanvasAgg(fig)
    ax_util, ax_ram, ax_gpu = fig.subplots(3, 1, sharex=True)
    t = [s.t_s for s in samples]

    def series(values: list[float | None]) -> tuple[list[float], list[float]]:
        pairs = [(x, v) for x, v in zip(t, values) if v is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    gpu_ids = sorted({g.index for s in samples for g in s.gpus})
    for i in gpu_ids:
        xs, ys = series([next((g.util_pct for g in s.gpus if g.index == i), None)
                         for s in samples])
        ax_util.plot(xs, ys, label=f"GPU {i} util")
    xs, ys = series([s.cpu_pct for s in samples])
    ax_util.plot(xs, ys, label="CPU (all cores)", color="gray", alpha=0.7)
    xs, ys = series([None if s.data_wait_frac is None else 100 * s.data_wait_frac
                     for s in samples])
    ax_util.plot(xs, ys, label="waiting for data", color="tab:red", marker=".", linestyle="--")
    ax_util.set_ylabel("%")
    ax_util.set_ylim(0, 105)
    ax_util.set_title("Utilisation")
    ax_util.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")

    xs, ys = series([None if s.rss_bytes is None else s.rss_bytes / GIB for s in samples])
    ax_ram.plot(xs, ys, label="run (process tree RSS)")
    xs, ys = series([None if s.ram_total_bytes is None or s.ram_available_bytes is None
                     else (s.ram_total_bytes - s.ram_available_bytes) / GIB for s in samples])
    ax_ram.plot(xs, ys, label="system in use", color="gray", alpha=0.7)
    totals = [s.ram_total_bytes for s in samples if s.ram_total_bytes]
    if totals:
        ax_ram.axhline(totals[-1] / GIB, color="black", linestyle=":", label="total")
    if ram_budget_bytes:
        ax_ram.axhline(ram_budget_bytes / GIB, color="tab:red", linestyle=":", label="budget")
    ax_ram.set_ylabel("GiB")
    ax_ram.set_title("Host memory")
    ax_ram.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")

    if gpu_ids:
        for i in gpu_ids:
            xs, ys = series([next((None if g.mem_used_bytes is None else g.mem_used_bytes / GIB
                                   for g in s.gpus if g.index == i), None) for s in samples])
            line = ax_gpu.plot(xs, ys, label=f"GPU {i} used")[0]
            total = next((g.mem_total_bytes for s in samples for g in s.gpus
                          if g.index == i and g.mem_total_bytes), None)
            if total:
                ax_gpu.axhline(total / GIB, color=line.get_color(), linestyle=":",
                               label=f"GPU {i} total")
        ax_gpu.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    else:
        ax_gpu.text(0.5, 0.5, "no GPU monitored (CPU run or NVML unavailable)",
                    ha="center", va="center", transform=ax_gpu.transAxes, color="gray")
    ax_gpu.set_ylabel("GiB")
    ax_gpu.set_title("GPU memory")
    ax_gpu.set_xlabel("seconds since start of training")
    if hints:
        fig.suptitle("hints: " + ", ".join(h.kind for h in hints), color="tab:red")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
