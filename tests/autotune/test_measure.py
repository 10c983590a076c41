"""Process-tree RSS, the sampler, the watchdog and the one OOM classifier."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import torch

from autotune.measure import (ProgressWatchdog, RssSampler, free_memory, is_oom_error,
                              tree_rss_bytes)

MIB = 1024 ** 2


def test_tree_rss_counts_children() -> None:
    alone = tree_rss_bytes()
    # A child that holds ~80 MiB: the tree must grow by roughly that much.
    code = "import time; b = bytearray(80 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); " \
           "print('ready', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with_child = tree_rss_bytes()
        assert with_child - alone > 60 * MIB
        assert tree_rss_bytes(child.pid) > 60 * MIB
    finally:
        child.kill()
        child.wait()


def test_tree_rss_of_missing_process_is_zero() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert tree_rss_bytes(proc.pid) == 0


@pytest.mark.timeout(20)
def test_sampler_sees_a_transient_peak() -> None:
    with RssSampler(interval_ms=10) as sampler:
        time.sleep(0.05)
        block = bytearray(120 * MIB)
        block[::4096] = b"x" * len(block[::4096])   # touch pages so they count in RSS
        time.sleep(0.15)
        del block
        time.sleep(0.05)
    assert sampler.base_rss_bytes is not None and sampler.peak_rss_bytes is not None
    assert sampler.growth_bytes is not None and sampler.growth_bytes > 90 * MIB
    assert len(sampler.samples) >= 5
    times = [t for t, _ in sampler.samples]
    assert times == sorted(times)


@pytest.mark.timeout(20)
def test_sampler_limit_callback_fires_once() -> None:
    hits: list[int] = []
    base = tree_rss_bytes()
    with RssSampler(interval_ms=10, limit_bytes=base + 50 * MIB, on_limit=hits.append) as s:
        block = bytearray(100 * MIB)
        block[::4096] = b"x" * len(block[::4096])
        time.sleep(0.2)
        del block
    assert s.limit_hit and len(hits) == 1 and hits[0] >= base + 50 * MIB


def test_sampler_rejects_bad_interval() -> None:
    with pytest.raises(ValueError, match="interval_ms"):
        RssSampler(interval_ms=0)


@pytest.mark.timeout(60)
def test_watchdog_detects_a_stalled_function_within_its_timeout() -> None:
    stalled_at: list[float] = []
    release = threading.Event()
    HANG_S = 20.0                       # far beyond the watchdog's 0.5 s, so no bound is tight

    def work(dog: ProgressWatchdog) -> None:
        for _ in range(5):              # makes progress for a while ...
            time.sleep(0.05)
            dog.beat()
        release.wait(HANG_S)            # ... then hangs like the map at 9%

    dog = ProgressWatchdog(timeout_s=0.5, on_stall=lambda idle: (stalled_at.append(idle),
                                                                  release.set()))
    start = time.monotonic()
    with dog:
        work(dog)
    elapsed = time.monotonic() - start
    assert dog.stalled and dog.beats == 5
    # Never before its timeout; after it, within slack a loaded box's thread wake-ups need.
    assert len(stalled_at) == 1 and 0.5 <= stalled_at[0] <= 0.5 + dog.poll_s + 3.0
    # Detection ends the hang: the function would have waited HANG_S.
    assert elapsed < HANG_S / 2


@pytest.mark.timeout(10)
def test_watchdog_stays_quiet_while_progress_continues() -> None:
    with ProgressWatchdog(timeout_s=0.3) as dog:
        for _ in range(12):
            time.sleep(0.05)
            dog.beat()
    assert not dog.stalled and dog.beats == 12


def _chained() -> BaseException:
    try:
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except RuntimeError as inner:
            raise ValueError("batch failed") from inner
    except ValueError as outer:
        return outer


@pytest.mark.parametrize("exc, expected", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),
    (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously"), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't "
                  "allocate memory: you tried to allocate 1099511627776 bytes."), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"),
     True),
    (MemoryError(), True),
    (_chained(), True),
    (RuntimeError("CUDA error: device-side assert triggered"), False),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"), False),
    (ValueError("out of memory"), False),      # only runtime allocation failures count
    (KeyboardInterrupt(), False),
    (None, False),
])
def test_is_oom_error_table(exc: BaseException | None, expected: bool) -> None:
    assert is_oom_error(exc) is expected


def test_a_real_cpu_allocation_failure_is_an_oom() -> None:
    with pytest.raises(RuntimeError) as info:
        torch.empty(1 << 50, dtype=torch.uint8)     # 1 PiB
    assert is_oom_error(info.value)


def test_free_memory_collects_cycles() -> None:
    import gc
    import weakref

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a
    ref = weakref.ref(a)
    gc.disable()
    try:
        del a, b
        assert ref() is not None
        free_memory()
        assert ref() is None
    finally:
        gc.enable()
