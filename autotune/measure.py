"""Measuring tools shared by the probes, the preparation and the training: process-tree RSS,
a background RSS sampler, a progress watchdog, the one definition of an OOM, stopping a
process tree, this process's peak RSS during a block (`PeakRssMeter`), waiting for a device to
finish its queued work (`sync_device`) and a failed trial's one-line reason (`error_line`).

Why a process tree: `datasets.map(num_proc=N)` and DataLoader workers run in child processes;
the parent's RSS alone misses most of the memory that gets a run OOM-killed. Forked children
share pages with the parent, so the sum over-states the true footprint a little; that errs on
the safe side for a budget.
"""
from __future__ import annotations

import contextlib
import gc
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil

from autotune.polling import PollingThread

# Messages that mean "an allocation failed", not "the program is wrong". The list mirrors what
# torch raises on CUDA (caching allocator, cuBLAS handles) and on CPU (DefaultCPUAllocator).
_OOM_MESSAGES = (
    "out of memory",                       # "CUDA out of memory", "CUDA error: out of memory"
    "can't allocate memory",               # DefaultCPUAllocator: can't allocate memory: ...
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "failed to allocate memory",
)
# What else a child's log ends with when it died of an allocation failure: the exception's
# name in the traceback (a bare MemoryError has no message), C++'s and libc's wording.
_OOM_LOG_TEXT = re.compile(r"\b(?:OutOfMemoryError|MemoryError)\b|std::bad_alloc|"
                           r"cannot allocate memory", re.IGNORECASE)


def tree_rss_bytes(pid: int | None = None) -> int:
    """RSS of a process (default: this one) plus all its descendants, in bytes.

    Children that exit while the tree is being walked are skipped. A process that does not
    exist (any more) counts 0 rather than raising, so a sampler never dies mid-run.
    """
    try:
        proc = psutil.Process(os.getpid() if pid is None else pid)
        total = proc.memory_info().rss
        children = proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return 0
    for child in children:
        try:
            total += child.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return int(total)


class RssSampler(PollingThread):
    """Sample the process tree's RSS every `interval_ms` on a background thread.

    Use as a context manager around the work to measure::

        with RssSampler(interval_ms=50) as s:
            dataset.map(...)
        s.peak_rss_bytes, s.base_rss_bytes, s.samples

    Sampling the tree costs about a millisecond (a /proc walk), so 50 ms is ~2% of one core;
    a shorter interval catches shorter spikes at a higher cost. Spikes shorter than the
    interval can be missed: peak figures are lower bounds, which is why decisions keep a margin.

    `limit_bytes` with `on_limit(rss_bytes)`: the callback runs once, on the sampler thread,
    the first time the tree's RSS reaches the limit (used to stop a preparation before the
    OOM killer does).
    """

    def __init__(self, interval_ms: float = 50.0, pid: int | None = None,
                 limit_bytes: int | None = None,
                 on_limit: Callable[[int], None] | None = None,
                 keep_samples: bool = True) -> None:
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be positive, got {interval_ms!r}")
        self.interval_s = interval_ms / 1000.0
        self.pid = pid
        self.limit_bytes = limit_bytes
        self.on_limit = on_limit
        self.keep_samples = keep_samples
        self.samples: list[tuple[float, int]] = []     # (seconds since start, tree RSS bytes)
        self.base_rss_bytes: int | None = None
        self.peak_rss_bytes: int | None = None
        self.limit_hit = False
        self._t0 = 0.0
        self._lock = threading.Lock()
        self._period_s = self.interval_s
        self._init_thread()

    # -- lifecycle --------------------------------------------------------------------------
    _thread_name = "rss-sampler"

    def _on_start(self) -> None:
        self._t0 = time.perf_counter()
        first = tree_rss_bytes(self.pid)
        self.base_rss_bytes = first
        self._record(first)

    def _on_stop(self) -> None:
        self._record(tree_rss_bytes(self.pid))      # the state at the end counts too

    # -- figures ----------------------------------------------------------------------------
    @property
    def growth_bytes(self) -> int | None:
        """Peak minus base: what the measured work added to the tree."""
        if self.peak_rss_bytes is None or self.base_rss_bytes is None:
            return None
        return max(0, self.peak_rss_bytes - self.base_rss_bytes)

    @property
    def current_rss_bytes(self) -> int | None:
        with self._lock:
            return self.samples[-1][1] if self.samples else None

    def _record(self, rss: int) -> None:
        fire = False
        with self._lock:
            if self.keep_samples or not self.samples:
                self.samples.append((round(time.perf_counter() - self._t0, 4), rss))
            else:
                self.samples[-1] = (round(time.perf_counter() - self._t0, 4), rss)
            if self.peak_rss_bytes is None or rss > self.peak_rss_bytes:
                self.peak_rss_bytes = rss
            if self.limit_bytes is not None and rss >= self.limit_bytes and not self.limit_hit:
                self.limit_hit = True
                fire = True
        if fire and self.on_limit is not None:
            self.on_limit(rss)

    def _tick(self) -> bool:
        self._record(tree_rss_bytes(self.pid))
        return True


class ProgressWatchdog(PollingThread):
    """Notice when work stops making progress.

    The work calls `.beat()` whenever it advances (a row mapped, a batch loaded). A thread
    checks every `poll_s`; once no beat came for `timeout_s`, `.stalled` becomes True and
    `on_stall(seconds_since_last_beat)` runs once, on the watchdog thread. The callback should
    only signal (set a flag, terminate a child process): it cannot interrupt Python code
    running in another thread.

    A stall is detected between `timeout_s` and `timeout_s + poll_s` after the last beat; the
    default poll (a tenth of the timeout, at most one second) keeps that bound tight for cheap.
    """

    def __init__(self, timeout_s: float, on_stall: Callable[[float], None] | None = None,
                 poll_s: float | None = None) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.poll_s = float(poll_s) if poll_s else min(1.0, self.timeout_s / 10.0)
        self.on_stall = on_stall
        self.beats = 0
        self.stalled = False
        self.stalled_after_s: float | None = None   # seconds since the last beat when detected
        self._last = time.monotonic()
        self._period_s = self.poll_s
        self._init_thread()

    def beat(self, n: int = 1) -> None:
        self.beats += n
        self._last = time.monotonic()

    @property
    def seconds_since_beat(self) -> float:
        return time.monotonic() - self._last

    _thread_name = "progress-watchdog"

    def _on_start(self) -> None:
        self._last = time.monotonic()

    def _tick(self) -> bool:
        idle = self.seconds_since_beat
        if idle < self.timeout_s:
            return True
        self.stalled = True
        self.stalled_after_s = round(idle, 3)
        if self.on_stall is not None:
            self.on_stall(idle)
        return False


def is_oom_error(exc: BaseException | None) -> bool:
    """True when `exc` (or an exception it was raised from) means an allocation failed.

    Covers `torch.cuda.OutOfMemoryError`, `MemoryError`, and RuntimeErrors whose message says
    out of memory (CUDA, cuBLAS/cuDNN allocation, CPU DefaultCPUAllocator). Other errors,
    including other CUDA errors, are bugs to surface, not reasons to shrink a batch.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError):
            return True
        oom_type = _torch_oom_type()
        if oom_type is not None and isinstance(exc, oom_type):
            return True
        if isinstance(exc, RuntimeError):
            text = str(exc).lower()
            if any(m in text for m in _OOM_MESSAGES):
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def error_line(exc: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message` cut to `limit` characters: how a trial that failed
    records why, one line in a profile or a table (a torch error's later lines are a C++
    stack nobody reading the profile needs)."""
    text = str(exc).strip()
    first = text.splitlines()[0][:limit] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def sync_device(device: Any) -> None:
    """Wait until `device` (a name such as "cuda:0", or a torch.device) has run the work
    queued on it; a no-op on CPU. CUDA launches are asynchronous: a clock or a peak read
    without this measures the launch, not the step."""
    if str(device).startswith("cuda"):
        import torch
        torch.cuda.synchronize(device)


def is_oom_text(text: str) -> bool:
    """True when a message or a process's log tail says an allocation failed: the messages
    `is_oom_error` counts, or the name of an OOM exception (a child process's traceback)."""
    low = text.lower()
    return any(m in low for m in _OOM_MESSAGES) or bool(_OOM_LOG_TEXT.search(text))


def _torch_oom_type() -> type[BaseException] | None:
    torch = _torch_if_loaded()
    if torch is None:
        return None
    return getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)


def _torch_if_loaded() -> Any:
    """torch if some caller imported it already; importing it here would cost seconds for
    callers (the map, the CLI) that never touch it."""
    import sys
    return sys.modules.get("torch")


def free_memory() -> None:
    """Release what a failed or finished trial held: Python garbage, then the CUDA cache.

    Call after dropping references to the trial's model, batch and optimizer; the cache
    release matters because the caching allocator keeps freed blocks reserved, and the next
    trial's peak would otherwise count against memory nobody uses.
    """
    gc.collect()
    torch = _torch_if_loaded()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def cuda_peak_reset(device: Any = None) -> None:
    """Start a fresh CUDA allocator peak for `device` (no-op without CUDA)."""
    torch = _torch_if_loaded()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_bytes(device: Any = None) -> int | None:
    """Peak bytes the CUDA allocator handed out on `device` since the last reset; None
    without CUDA."""
    torch = _torch_if_loaded()
    if torch is None or not torch.cuda.is_available():
        return None
    return int(torch.cuda.max_memory_allocated(device))


def kill_tree(pid: int, grace_s: float = 5.0, *, include_root: bool = True,
              wait: bool = True) -> list[int]:
    """Stop a process and all its descendants (children first, so none is re-parented and
    left running); returns the pids signalled.

    `grace_s` > 0: SIGTERM, then SIGKILL what survives the grace time. `grace_s` = 0: SIGKILL
    at once, for a process stuck in C code that cannot be asked politely (a stalled map).
    `include_root=False` spares `pid` itself (a process stopping its own workers);
    `wait=False` does not reap them, for children whose owner (a DataLoader) joins them.
    """
    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + ([root] if include_root else [])
    except psutil.NoSuchProcess:
        return []
    alive = procs
    if grace_s > 0:
        _signal(procs, psutil.Process.terminate)
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
    _signal(alive, psutil.Process.kill)
    if wait:
        psutil.wait_procs(alive, timeout=max(grace_s, 5.0))
    return [p.pid for p in procs]


def _signal(procs: list[psutil.Process], send: Callable[[psutil.Process], None]) -> None:
    for p in procs:
        try:
            send(p)
        except psutil.NoSuchProcess:
            pass


# -- peak RSS of this process ------------------------------------------------------------------

_STATUS = "/proc/self/status"
_libc: Any = None


def current_rss_bytes() -> int:
    """This process's RSS now (not its tree: see `tree_rss_bytes`)."""
    return int(psutil.Process().memory_info().rss)


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) of this process by writing 5 to
    /proc/self/clear_refs (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return peak_rss_bytes() is not None


def peak_rss_bytes() -> int | None:
    """VmHWM of this process in bytes; None where /proc does not give it."""
    try:
        with open(_STATUS) as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def trim_heap() -> None:
    """Give freed C-heap pages back to the OS (glibc keeps them otherwise, and the next
    measurement's RSS baseline would include memory nobody uses)."""
    global _libc
    if _libc is None:
        import ctypes
        import ctypes.util
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    if _libc and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


class PeakRssMeter:
    """Peak RSS of this process during a block::

        meter = PeakRssMeter()
        with meter.measure():
            step()
        meter.peak_bytes

    Exact and free while the block runs where the kernel's high-water mark can be reset
    (`reset_peak_rss`); elsewhere an RssSampler every 5 ms stands in and may miss a spike
    shorter than that.
    """

    def __init__(self) -> None:
        self.peak_bytes: int | None = None

    @contextlib.contextmanager
    def measure(self) -> Iterator["PeakRssMeter"]:
        if reset_peak_rss():
            try:
                yield self
            finally:
                self.peak_bytes = peak_rss_bytes()
            return
        sampler = RssSampler(interval_ms=5, pid=None, keep_samples=False)
        with sampler:
            yield self
        self.peak_bytes = sampler.peak_rss_bytes
