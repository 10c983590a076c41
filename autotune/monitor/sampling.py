"""Reading the machine for the monitor: GPUs through NVML (opened, enumerated and mapped to
CUDA's ordinals by autotune.hardware), RAM as the cgroup sees it, CPU, /dev/shm and the
process tree's RSS; and the background thread that takes a sample every few seconds.

Why a thread and not per-step sampling: one NVML query plus a process-tree walk costs about a
millisecond, which would be a real tax on a small model doing hundreds of steps a second; on
a thread every few seconds it costs nothing measurable (bench/bench_monitor.py).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psutil

from autotune.hardware import (nvml_close, nvml_devices, nvml_open, ram_now, shm_usage,
                               visible_order)
from autotune.measure import tree_rss_bytes
from autotune.polling import PollingThread
from autotune.monitor.samples import GpuSample, ResourceSample

log = logging.getLogger(__name__)


class GpuReader:
    """Utilisation and memory per GPU through NVML; inert where NVML is missing.

    `indices`: NVML indices to read (None: all). `cuda_ids` instead: CUDA ordinals, mapped
    through `CUDA_VISIBLE_DEVICES` (indices or UUIDs) with the device list NVML gives.
    """

    def __init__(self, indices: Sequence[int] | None = None, *,
                 cuda_ids: Sequence[int] | None = None, visible: str | None = None) -> None:
        self.available = False
        self.handles: dict[int, Any] = {}
        self._nvml, self.reason = nvml_open()
        if self._nvml is None:
            return
        try:
            if cuda_ids is not None:
                order = visible_order(nvml_devices(self._nvml), visible)
                indices = [order[i] for i in cuda_ids if 0 <= i < len(order)]
            self.handles = {d.index: d.handle for d in nvml_devices(self._nvml, indices)}
        except Exception as exc:  # noqa: BLE001 - a half-working driver reads as no GPU
            self.reason = f"NVML unavailable ({exc})"
            nvml_close(self._nvml)
            return
        self.available = bool(self.handles)

    def read(self) -> list[GpuSample]:
        out = []
        nvml = self._nvml
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
            nvml_close(self._nvml)
            self.available = False


def nvml_indices_for(device_ids: Iterable[int], visible: str | None) -> list[int] | None:
    """CUDA ordinals -> NVML indices through CUDA_VISIBLE_DEVICES, without asking NVML.

    Indices map by position (autotune.hardware.visible_order); UUIDs need NVML's device list,
    so they give None (= every GPU): `GpuReader(cuda_ids=...)` resolves them exactly.
    """
    ids = list(device_ids)
    if visible is None:
        return ids
    tokens = [t.strip() for t in visible.split(",") if t.strip()]
    if not all(t.lstrip("-").isdigit() for t in tokens):
        return None
    order = visible_order([(int(t), None) for t in tokens if int(t) >= 0], visible)
    return [order[i] for i in ids if i < len(order)]


def sample_resources(t_s: float, step: int, gpus: GpuReader | None,
                     cpu: bool = True) -> ResourceSample:
    """One sample of the machine; every field that cannot be read is None.

    `cpu=False` for the first sample: psutil's CPU share covers the time since its previous
    call, which at start-up is a few microseconds and reads as a meaningless 0%.
    """
    try:
        total, avail = ram_now()
    except (psutil.Error, OSError):
        total = avail = None
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


def worker_rss_bytes(workers: int, ranks: int) -> int | None:
    """What one more DataLoader worker adds to the process tree's RSS: the mean RSS of this
    process's children where they are all workers (one rank with workers), else this
    process's own RSS (a forked worker maps its parent's resident pages, and RSS counts them
    in both, as the tree figure the RAM rule reads does). None where psutil cannot tell."""
    try:
        me = psutil.Process()
        if workers > 0 and ranks == 1:
            rss = []
            for child in me.children():
                try:
                    rss.append(child.memory_info().rss)
                except (psutil.NoSuchProcess, psutil.ZombieProcess):
                    continue
            if rss:
                return int(sum(rss) / len(rss))
        return int(me.memory_info().rss)
    except psutil.Error:
        return None


class ResourceSampler(PollingThread):
    """Takes a sample at start, every `interval_s`, and once more at stop, into `samples`.

    `step()` says which training step a sample belongs to (read on the thread: an int);
    `on_sample` gets each sample on the thread, even while the main one is inside a long step
    (the monitor's live file: what a run killed mid-step leaves behind).
    """

    _thread_name = "resource-monitor"

    def __init__(self, interval_s: float, gpus: GpuReader | None,
                 step: Callable[[], int], samples: list[ResourceSample],
                 lock: threading.Lock,
                 on_sample: Callable[[ResourceSample], None] | None = None) -> None:
        self._period_s = interval_s
        self.gpus, self.step, self.samples, self.lock = gpus, step, samples, lock
        self.on_sample = on_sample
        self._t0 = 0.0
        self._init_thread()

    def _on_start(self) -> None:
        psutil.cpu_percent(interval=None)  # the first call only sets the reference point
        self._t0 = time.monotonic()
        self._tick()

    def _on_stop(self) -> None:
        self._tick()            # short runs still get an end point
        if self.gpus is not None:
            self.gpus.close()

    def _tick(self) -> bool:
        try:
            sample = sample_resources(time.monotonic() - self._t0, self.step(), self.gpus,
                                      cpu=bool(self.samples))
        except Exception:  # a monitor must never end the run it watches
            log.debug("resource sample failed", exc_info=True)
            return True
        with self.lock:
            self.samples.append(sample)
        if self.on_sample is not None:
            try:
                self.on_sample(sample)
            except Exception:  # a monitor must never end the run it watches
                log.debug("resource sample hook failed", exc_info=True)
        return True
