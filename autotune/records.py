"""Typed measurement records: what the probes measured, with units in the field names.

`None` means "not measured / unknowable here", never a guess. Every record converts to and from
plain JSON dicts so that a profile's `measurements` section can be read back and re-decided
(`autotune plan --from PROFILE`) without re-measuring.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")


def _from_dict(cls: type[T], data: dict[str, Any]) -> T:
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class GpuInfo:
    name: str
    memory_bytes: int
    capability: tuple[int, int] | list[int]
    index: int = 0


@dataclass
class HardwareInfo:
    cpu_count: int                      # logical CPUs the OS reports
    usable_cpus: float                  # after affinity and cgroup quota
    ram_bytes: int                      # total, or the cgroup limit when lower
    ram_available_bytes: int | None     # at probe time (not part of the fingerprint)
    shm_bytes: int | None               # /dev/shm size; DataLoader workers pass tensors there
    disk_free_bytes: int | None         # at the datasets cache
    gpus: list[GpuInfo] = field(default_factory=list)
    fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HardwareInfo":
        info = _from_dict(cls, data)
        info.gpus = [_from_dict(GpuInfo, g) if isinstance(g, dict) else g for g in info.gpus]
        return info


@dataclass
class MapTrial:
    """One `datasets.map` run over a sample of raw rows."""
    num_proc: int
    writer_batch_size: int
    rows: int
    seconds: float | None
    rows_per_s: float | None
    peak_rss_bytes: int | None          # whole process tree, sampled
    base_rss_bytes: int | None          # tree RSS before the map started
    bytes_per_buffered_row: float | None
    cache_bytes_per_row: float | None
    stalled: bool = False
    error: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MapTrial":
        return _from_dict(cls, data)


@dataclass
class ModelTrial:
    """Forward + backward + optimizer step at one batch size and reduce ratio."""
    reduce_ratio: float
    batch_size: int
    height: int
    width: int
    seq_len: int
    device: str                         # "cpu" or "cuda:0"
    precision: str
    step_s: float | None
    samples_per_s: float | None
    peak_memory_bytes: int | None       # CUDA allocator peak on GPU, RSS growth on CPU
    estimated_memory_bytes: int | None  # the model's own estimate, for comparison
    oom: bool = False
    error: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelTrial":
        return _from_dict(cls, data)


@dataclass
class LoaderTrial:
    num_workers: int
    batch_size: int
    batches_per_s: float | None
    samples_per_s: float | None
    peak_rss_bytes: int | None
    error: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoaderTrial":
        return _from_dict(cls, data)


@dataclass
class MemoryFit:
    """memory = fixed_bytes + per_sample_bytes x batch, fitted on ModelTrials of one ratio."""
    reduce_ratio: float
    fixed_bytes: float
    per_sample_bytes: float
    points: int
    source: str = "measured"            # "measured" or "predicted" (from the model's estimate)

    def predict(self, batch_size: int) -> float:
        return self.fixed_bytes + self.per_sample_bytes * batch_size
