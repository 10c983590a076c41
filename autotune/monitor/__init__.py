"""See what a training run is doing: a Lightning callback that samples the machine.

Every `interval_s` seconds a background thread samples GPU utilisation and memory per device
(NVML), the RSS of the whole process tree (DataLoader workers and DDP ranks included), system
available RAM, CPU use and /dev/shm use. New samples are handed to the run's loggers and the
progress bar from the main thread, checked against a few rules that each name a fix, and
written at the end of the run as `resources.png`, `resources.csv` and `resources.json`.

Layout: `samples` (samples, hints, events), `sampling` (reading the machine, the sampling
thread), `hints` (the rules), `adapt` (acting on them: the loader-worker controller),
`callback` (ResourceMonitor), `files` and `plot` (the outputs).
"""
from __future__ import annotations

from autotune.monitor.adapt import (AdaptConfig, Change, Limits, Reading, SetWorkers,
                                    WorkerAdapter, decide_workers, worker_cap)
from autotune.monitor.callback import STARVED_MIN_STEPS, MonitorConfig, ResourceMonitor
from autotune.monitor.files import load_samples, samples_to_csv, write_outputs
from autotune.monitor.hints import (ram_hint, shm_hint, starved_hint, tensor_bytes,
                                    vram_headroom_hint)
from autotune.monitor.plot import plot_resources
from autotune.monitor.samples import Event, GpuSample, Hint, ResourceHint, ResourceSample, vram_peaks
from autotune.monitor.sampling import (GpuReader, ResourceSampler, nvml_indices_for,
                                       sample_resources, shm_usage)
from autotune.hardware import SHM_PATH

__all__ = ["AdaptConfig", "Change", "Event", "GpuReader", "GpuSample", "Hint", "Limits",
           "MonitorConfig", "Reading", "ResourceHint", "ResourceMonitor", "ResourceSample", "ResourceSampler", "SHM_PATH", "STARVED_MIN_STEPS", "load_samples",
           "nvml_indices_for", "plot_resources", "ram_hint", "samples_to_csv",
           "sample_resources", "shm_hint", "shm_usage", "starved_hint", "tensor_bytes",
           "vram_headroom_hint", "vram_peaks", "write_outputs", "SetWorkers", "WorkerAdapter",
           "decide_workers", "worker_cap"]
