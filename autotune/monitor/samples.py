"""What the resource monitor records: one sample of the machine, GPUs in it, and a hint."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class ResourceHint(UserWarning):
    """A warning from the resource monitor: something wastes or risks the run, and the fix."""


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


@dataclass
class Event:
    """Something the run changed because of what the monitor saw (e.g. its loader workers)."""
    kind: str                           # "workers", or "stop" (RAM at its limit)
    message: str                        # what changed and the numbers that caused it
    t_s: float                          # seconds since the monitor started
    step: int                           # trainer.global_step when it was decided


def vram_peaks(samples: list[ResourceSample]) -> dict[int, tuple[int, int]]:
    """Per GPU index: (peak used bytes, total bytes) over the samples."""
    peaks: dict[int, tuple[int, int]] = {}
    for s in samples:
        for g in s.gpus:
            if g.mem_used_bytes is None or not g.mem_total_bytes:
                continue
            old = peaks.get(g.index, (0, g.mem_total_bytes))[0]
            peaks[g.index] = (max(old, g.mem_used_bytes), g.mem_total_bytes)
    return peaks
