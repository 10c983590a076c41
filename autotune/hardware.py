"""What machine are we on: CPUs, RAM, /dev/shm, disk and GPUs, as a container sees them.

A container on Kaggle or Colab reports the host's cores and RAM through `os.cpu_count()` and
`/proc/meminfo`, while the cgroup lets it use far less; settings picked from the host figures
get the run throttled or OOM-killed. So usable CPUs take the affinity mask and the cgroup CPU
quota, and RAM takes the cgroup memory limit, whichever is lower. The cgroup and proc roots are
parameters so tests can point them at fixture folders.

The fingerprint names the machine's *shape* (cores, RAM size, GPU models), not its state
(free memory or disk), so that a profile measured once matches every later session on the
same kind of machine.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from autotune.disk import disk_free_bytes
from autotune.records import GpuInfo, HardwareInfo
from autotune.units import GIB
from autotune.workload import DEFAULT_WORKLOAD, default_cache_root

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_ROOT = "/proc"
SHM_PATH = "/dev/shm"
# cgroup v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX pages); anything above 1 EiB
# is no limit in practice.
_NO_LIMIT = 1 << 60


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_dirs(cgroup_root: Path, proc_root: Path, controller: str | None) -> list[Path]:
    """Folders that may hold this process's limits, innermost first, the root last.

    `/proc/self/cgroup` names the process's cgroup path (v2: `0::/path`; v1: `N:cpu,cpuacct:/path`).
    Inside a container that path is usually `/` and the limits sit at the mount root; on a
    host they sit in the named sub-folder, and limits of parent folders apply too.
    """
    base = cgroup_root if controller is None else cgroup_root / controller
    rel = "/"
    text = _read(proc_root / "self" / "cgroup") or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controller is None and controllers == "":
            rel = path
        elif controller is not None and set(controller.split(",")) & set(controllers.split(",")):
            rel = path
    dirs: list[Path] = []
    current = base / rel.strip("/") if rel.strip("/") else base
    while True:
        if current.is_dir():
            dirs.append(current)
        if current == base or base not in current.parents:
            break
        current = current.parent
    if base.is_dir() and base not in dirs:
        dirs.append(base)
    return dirs


def _v1_dir(cgroup_root: Path, names: Sequence[str]) -> str | None:
    for name in names:
        if (cgroup_root / name).is_dir():
            return name
    return None


def cgroup_cpu_limit(cgroup_root: str | os.PathLike[str] = CGROUP_ROOT,
                     proc_root: str | os.PathLike[str] = PROC_ROOT) -> float | None:
    """CPUs the cgroup quota allows (quota / period), None when there is no quota.

    v2: `cpu.max` holds "<quota> <period>" or "max <period>". v1: `cpu.cfs_quota_us` (-1 for
    none) and `cpu.cfs_period_us` in the cpu controller folder. The tightest level wins.
    """
    root, proc = Path(cgroup_root), Path(proc_root)
    limits: list[float] = []
    if (root / "cgroup.controllers").exists() or (root / "cpu.max").exists():
        for folder in _cgroup_dirs(root, proc, None):
            text = _read(folder / "cpu.max")
            if not text:
                continue
            parts = text.split()
            if parts and parts[0] != "max" and len(parts) >= 2:
                try:
                    quota, period = float(parts[0]), float(parts[1])
                except ValueError:
                    continue
                if quota > 0 and period > 0:
                    limits.append(quota / period)
    else:
        name = _v1_dir(root, ("cpu,cpuacct", "cpu", "cpuacct,cpu"))
        if name is not None:
            for folder in _cgroup_dirs(root, proc, name):
                quota_s, period_s = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
                try:
                    quota, period = float(quota_s or "-1"), float(period_s or "0")
                except ValueError:
                    continue
                if quota > 0 and period > 0:
                    limits.append(quota / period)
    return min(limits) if limits else None


def cgroup_memory(cgroup_root: str | os.PathLike[str] = CGROUP_ROOT,
                  proc_root: str | os.PathLike[str] = PROC_ROOT) -> tuple[int | None, int | None]:
    """(limit_bytes, reclaimable-adjusted usage_bytes) of the cgroup; (None, None) without a limit.

    Usage leaves out inactive file cache, which the kernel drops before it OOM-kills, so
    that a warm page cache does not look like a full machine.
    """
    root, proc = Path(cgroup_root), Path(proc_root)
    v2 = (root / "cgroup.controllers").exists() or (root / "memory.max").exists()
    if v2:
        folders = _cgroup_dirs(root, proc, None)
        limit_file, usage_file, inactive_key = "memory.max", "memory.current", "inactive_file"
    else:
        name = _v1_dir(root, ("memory",))
        if name is None:
            return None, None
        folders = _cgroup_dirs(root, proc, name)
        limit_file, usage_file = "memory.limit_in_bytes", "memory.usage_in_bytes"
        inactive_key = "total_inactive_file"
    best: tuple[int, int | None] | None = None
    for folder in folders:
        text = _read(folder / limit_file)
        if not text or text == "max":
            continue
        try:
            limit = int(text)
        except ValueError:
            continue
        if limit <= 0 or limit >= _NO_LIMIT:
            continue
        usage: int | None = None
        used_text = _read(folder / usage_file)
        if used_text and used_text.isdigit():
            usage = int(used_text)
            stat = _read(folder / "memory.stat") or ""
            for line in stat.splitlines():
                key, _, value = line.partition(" ")
                if key == inactive_key and value.strip().isdigit():
                    usage = max(0, usage - int(value))
        if best is None or limit < best[0]:
            best = (limit, usage)
    if best is None:
        return None, None
    return best


def usable_cpus(cgroup_root: str | os.PathLike[str] = CGROUP_ROOT,
                proc_root: str | os.PathLike[str] = PROC_ROOT,
                affinity: int | None = None) -> float:
    """min(CPUs in the affinity mask, cgroup quota), at least 1."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = os.cpu_count() or 1
    quota = cgroup_cpu_limit(cgroup_root, proc_root)
    value = float(affinity) if quota is None else min(float(affinity), quota)
    return max(1.0, round(value, 2))


class NvmlDevice(NamedTuple):
    index: int                          # NVML's index: every GPU of the machine, in bus order
    uuid: str | None
    handle: Any


def nvml_open(nvml: Any = None) -> tuple[Any, str | None]:
    """(pynvml, initialised) or (None, why not). No driver (`NVMLError_LibraryNotFound`) or
    no nvidia-ml-py is normal on a CPU box: callers read no GPU, never crash."""
    if nvml is None:
        try:
            import pynvml as nvml  # type: ignore[no-redef]
        except ImportError:
            return None, "nvidia-ml-py is not installed"
    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound and friends
        return None, f"NVML unavailable ({exc})"
    return nvml, None


def nvml_close(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - shutting down a half-working driver is best effort
        pass


def nvml_devices(nvml: Any, indices: Sequence[int] | None = None) -> list[NvmlDevice]:
    """Every GPU NVML enumerates (or those of `indices` it has), with its UUID when the
    driver gives one; `nvml` must be open."""
    count = int(nvml.nvmlDeviceGetCount())
    wanted = range(count) if indices is None else [i for i in indices if 0 <= i < count]
    out = []
    for i in wanted:
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        try:
            uuid = nvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        except Exception:  # noqa: BLE001 - old drivers, fakes: the index still works
            uuid = None
        out.append(NvmlDevice(i, uuid, handle))
    return out


def visible_order(devices: Sequence[tuple[Any, ...]], visible: str | None) -> list[int]:
    """NVML indices of the GPUs CUDA shows, in CUDA's order (CUDA ordinal i is entry i).

    `CUDA_VISIBLE_DEVICES` holds indices or UUID prefixes ("GPU-4f3a..."); like CUDA, the
    list stops at the first entry that names no device (a negative index, an unknown UUID),
    and an empty value hides every GPU. Unset: every device, in NVML's order.
    """
    known = [(int(d[0]), d[1]) for d in devices]       # (index, uuid), e.g. NvmlDevice
    if visible is None:
        return [index for index, _ in known]
    chosen: list[int] = []
    for token in (t.strip() for t in visible.split(",")):
        if not token:
            continue
        if token.lstrip("-").isdigit():
            match = next((i for i, _ in known if i == int(token)), None)
        else:
            match = next((i for i, u in known if u and u.startswith(token)), None)
        if match is None:
            break
        chosen.append(match)
    return chosen


def gpu_inventory(nvml: Any = None) -> list[GpuInfo]:
    """GPUs through NVML: name, total memory, compute capability, in CUDA's visible order.

    Any NVML failure means no GPUs, never a crash: a CPU box is a normal machine here.
    `CUDA_VISIBLE_DEVICES` is honoured (indices or UUIDs, `visible_order`), because that is
    what a training run will see.
    """
    nvml, _why = nvml_open(nvml)
    if nvml is None:
        return []
    try:
        devices = nvml_devices(nvml)
        gpus = {d.index: _gpu_info(nvml, d) for d in devices}
    except Exception:  # noqa: BLE001 - a half-working driver is treated as no GPU
        return []
    finally:
        nvml_close(nvml)
    return [gpus[i] for i in visible_order(devices, os.environ.get("CUDA_VISIBLE_DEVICES"))]


def _gpu_info(nvml: Any, device: NvmlDevice) -> GpuInfo:
    name = nvml.nvmlDeviceGetName(device.handle)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    memory = int(nvml.nvmlDeviceGetMemoryInfo(device.handle).total)
    try:
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(device.handle)
        capability = [int(major), int(minor)]
    except Exception:  # noqa: BLE001 - very old drivers lack the call
        capability = [0, 0]
    return GpuInfo(name=str(name), memory_bytes=memory, capability=capability,
                   index=device.index)


def _disk_free(cache_dir: str | os.PathLike[str] | None,
               workload: str = DEFAULT_WORKLOAD) -> int | None:
    """Free disk where prepared data goes: `cache_dir`, else `workload`'s cache root (asked
    through the workload interface; None when that workload is not installed)."""
    root = cache_dir if cache_dir is not None else default_cache_root(workload)
    return None if root is None else disk_free_bytes(root)


def shm_usage(path: str = SHM_PATH) -> tuple[int, int] | None:
    """(total_bytes, used_bytes) of the shared-memory mount, None where there is none: the
    inventory records its size, the resource monitor watches it fill."""
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    return int(usage.total), int(usage.used)


def fingerprint(info: HardwareInfo) -> str:
    """Stable id of the machine's shape: CPUs, usable CPUs, RAM (to the GiB), GPUs.

    Free RAM and disk are left out: they change between sessions on the same machine.
    RAM is rounded to whole GiB because the kernel's total moves by a few MiB between boots.
    """
    key = {
        "cpu_count": int(info.cpu_count),
        "usable_cpus": round(float(info.usable_cpus), 1),
        "ram_gib": int(round(info.ram_bytes / GIB)),
        "gpus": sorted([g.name, int(round(g.memory_bytes / 2 ** 28)),  # 256 MiB steps
                        [int(c) for c in g.capability]] for g in info.gpus),
        "gpu_count": len(info.gpus),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def ram_now(cgroup_root: str | os.PathLike[str] = CGROUP_ROOT,
            proc_root: str | os.PathLike[str] = PROC_ROOT) -> tuple[int, int]:
    """(total, available) RAM as this process's cgroup sees it: in a container (Kaggle,
    Docker) the cgroup limit, not the host's RAM, is what OOM-kills."""
    vm = psutil.virtual_memory()
    ram_total, ram_avail = int(vm.total), int(vm.available)
    limit, usage = cgroup_memory(cgroup_root, proc_root)
    if limit is not None and limit < ram_total:
        ram_total = limit
        ram_avail = min(ram_avail, max(0, limit - usage) if usage is not None else limit)
    return ram_total, ram_avail


def inventory(cgroup_root: str | os.PathLike[str] = CGROUP_ROOT,
              proc_root: str | os.PathLike[str] = PROC_ROOT,
              cache_dir: str | os.PathLike[str] | None = None,
              shm_path: str = SHM_PATH, nvml: Any = None,
              workload: str = DEFAULT_WORKLOAD) -> HardwareInfo:
    """Inventory this machine; every figure that cannot be read is None (GPUs: empty list).
    Free disk is read where `cache_dir`, else `workload`'s cache, puts prepared data."""
    ram_total, ram_avail = ram_now(cgroup_root, proc_root)
    shm = shm_usage(shm_path)
    info = HardwareInfo(
        cpu_count=os.cpu_count() or 1,
        usable_cpus=usable_cpus(cgroup_root, proc_root),
        ram_bytes=ram_total,
        ram_available_bytes=ram_avail,
        shm_bytes=shm[0] if shm else None,
        disk_free_bytes=_disk_free(cache_dir, workload),
        gpus=gpu_inventory(nvml),
    )
    info.fingerprint = fingerprint(info)
    return info


def describe(info: HardwareInfo) -> str:
    """One line for logs: '4 CPUs (2.0 usable), 31.4 GiB RAM, 2x Tesla T4 15.0 GiB'."""
    from autotune.units import format_bytes
    gpus = "no GPU"
    if info.gpus:
        names = sorted({g.name for g in info.gpus})
        gpus = ", ".join(f"{sum(g.name == n for g in info.gpus)}x {n} "
                         f"{format_bytes(min(g.memory_bytes for g in info.gpus if g.name == n))}"
                         for n in names)
    return (f"{info.cpu_count} CPUs ({info.usable_cpus:g} usable), "
            f"{format_bytes(info.ram_bytes)} RAM, {gpus}")
