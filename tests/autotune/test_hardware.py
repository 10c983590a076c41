"""Hardware inventory: cgroup limits from fixture folders, a fake NVML, the fingerprint."""
from __future__ import annotations

import sys
import types
from dataclasses import replace
from pathlib import Path

import pynvml
import pytest

from autotune import hardware
from autotune.hardware import (cgroup_cpu_limit, cgroup_memory, fingerprint, gpu_inventory,
                               inventory, usable_cpus)

FIX = Path(__file__).parent / "fixtures"
GIB = 1024 ** 3


@pytest.mark.parametrize("cgroup, proc, cpus, mem_limit, mem_usage", [
    ("cgroup_v2", "proc_root", 1.5, 8 * GIB, 2 * GIB),           # usage minus inactive file
    ("cgroup_v2_nolimit", "proc_root", None, None, None),
    ("cgroup_v1", "proc_root", 2.0, 4 * GIB, GIB - GIB // 4),
    ("cgroup_v1_nolimit", "proc_root", None, None, None),         # -1 quota, 2^63 limit
    ("cgroup_v2_nested", "proc_nested", 2.5, 16 * GIB, None),     # tightest level wins
    ("does_not_exist", "proc_root", None, None, None),
])
def test_cgroup_limits(cgroup: str, proc: str, cpus: float | None, mem_limit: int | None,
                       mem_usage: int | None) -> None:
    assert cgroup_cpu_limit(FIX / cgroup, FIX / proc) == cpus
    assert cgroup_memory(FIX / cgroup, FIX / proc) == (mem_limit, mem_usage)


@pytest.mark.parametrize("affinity, cgroup, expected", [
    (8, "cgroup_v2", 1.5),          # quota below the mask
    (1, "cgroup_v1", 1.0),          # mask below the quota
    (4, "cgroup_v2_nolimit", 4.0),
])
def test_usable_cpus(affinity: int, cgroup: str, expected: float) -> None:
    assert usable_cpus(FIX / cgroup, FIX / "proc_root", affinity=affinity) == expected


class FakeNvml:
    """Two T4s, shaped like pynvml's module API."""
    NVMLError = pynvml.NVMLError

    def __init__(self, gpus: list[tuple[str, int, tuple[int, int]]]) -> None:
        self.gpus = gpus
        self.shutdown_calls = 0

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return self.gpus[h][0].encode()       # older pynvml returns bytes

    def nvmlDeviceGetMemoryInfo(self, h: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(total=self.gpus[h][1], used=0, free=self.gpus[h][1])

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:
        return self.gpus[h][2]

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{h:08d}-aaaa"


T4 = ("Tesla T4", 15_843_721_216, (7, 5))


def test_fake_nvml_two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake = FakeNvml([T4, T4])
    for name in ("nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
                 "nvmlDeviceGetName", "nvmlDeviceGetMemoryInfo",
                 "nvmlDeviceGetCudaComputeCapability", "nvmlDeviceGetUUID"):
        monkeypatch.setattr(pynvml, name, getattr(fake, name))
    gpus = gpu_inventory()                     # goes through the (patched) pynvml module
    assert [(g.name, g.memory_bytes, list(g.capability), g.index) for g in gpus] == [
        ("Tesla T4", T4[1], [7, 5], 0), ("Tesla T4", T4[1], [7, 5], 1)]
    assert fake.shutdown_calls == 1
    info = inventory(FIX / "cgroup_v2", FIX / "proc_root")
    assert len(info.gpus) == 2 and info.ram_bytes <= 8 * GIB and info.usable_cpus <= 1.5


@pytest.mark.parametrize("visible, indices", [
    (None, [0, 1]), ("1", [1]), ("1,0", [1, 0]), ("", []), ("-1", []), ("0,7,1", [0]),
    ("GPU-00000001", [1]),
])
def test_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch, visible: str | None,
                              indices: list[int]) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert [g.index for g in gpu_inventory(FakeNvml([T4, T4]))] == indices


def _no_driver() -> None:
    raise pynvml.NVMLError_LibraryNotFound()


def _half_working_driver() -> int:
    raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)


@pytest.mark.parametrize("fault", ["no driver", "no nvidia-ml-py", "half-working driver"])
def test_no_nvml_library_means_no_gpu_not_a_crash(monkeypatch: pytest.MonkeyPatch,
                                                  fault: str) -> None:
    # The absence is faked, not read from this machine: the same test holds on a GPU box.
    if fault == "no driver":                  # what the real pynvml raises without a driver
        monkeypatch.setattr(pynvml, "nvmlInit", _no_driver)
    elif fault == "no nvidia-ml-py":          # `import pynvml` fails
        monkeypatch.setitem(sys.modules, "pynvml", None)
    else:                                      # init works, enumeration does not
        monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
        monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", _half_working_driver)
    assert gpu_inventory() == []
    assert inventory(FIX / "cgroup_v2", FIX / "proc_root").gpus == []

    class Broken(FakeNvml):
        def nvmlInit(self) -> None:
            raise pynvml.NVMLError_LibraryNotFound()
    assert gpu_inventory(Broken([T4])) == []


def test_inventory_of_this_machine(tmp_path: Path) -> None:
    info = inventory(cache_dir=tmp_path / "not" / "yet")
    assert info.cpu_count >= 1 and 1 <= info.usable_cpus <= info.cpu_count
    assert info.ram_bytes > 0 and 0 < info.ram_available_bytes <= info.ram_bytes
    assert info.disk_free_bytes and info.disk_free_bytes > 0   # nearest existing parent
    assert info.fingerprint == fingerprint(info) and len(info.fingerprint) == 16


def test_fingerprint_ignores_state_and_sees_shape() -> None:
    base = hardware.HardwareInfo(cpu_count=4, usable_cpus=4.0, ram_bytes=31 * GIB,
                                 ram_available_bytes=20 * GIB, shm_bytes=GIB,
                                 disk_free_bytes=50 * GIB,
                                 gpus=[hardware.GpuInfo("Tesla T4", T4[1], [7, 5], 0)])
    fp = fingerprint(base)
    same = [replace(base, ram_available_bytes=3 * GIB, disk_free_bytes=GIB, shm_bytes=2 * GIB),
            replace(base, ram_bytes=31 * GIB + 5 * 1024 ** 2)]
    different = [replace(base, cpu_count=8), replace(base, usable_cpus=2.0),
                 replace(base, ram_bytes=16 * GIB), replace(base, gpus=base.gpus * 2),
                 replace(base, gpus=[hardware.GpuInfo("Tesla P100-PCIE-16GB", 17_071_734_784,
                                                      [6, 0], 0)]),
                 replace(base, gpus=[])]
    assert all(fingerprint(s) == fp for s in same)
    assert len({fingerprint(d) for d in different} | {fp}) == len(different) + 1
