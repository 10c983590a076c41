"""The supervised child: a stalled one is stopped with its tree, a finished one is left to
end, a slow one hits its cap, and progress reaches the caller."""
from __future__ import annotations

import multiprocessing as mp
import time

import psutil
import pytest

from autotune.supervise import Supervision, supervise

CTX = mp.get_context("fork")


def _tick(counter, n: int, pause_s: float, then_hang_s: float = 0.0) -> None:
    for _ in range(n):
        time.sleep(pause_s)
        with counter.get_lock():
            counter.value += 1
    time.sleep(then_hang_s)


def _hang_with_a_grandchild() -> None:
    CTX.Process(target=time.sleep, args=(60,)).start()
    time.sleep(60)


@pytest.mark.timeout(30)
def test_a_finished_child_is_left_alone_and_progress_is_reported() -> None:
    counter = CTX.Value("i", 0)
    seen: list[int] = []
    out = supervise(CTX.Process(target=_tick, args=(counter, 5, 0.02)),
                    Supervision(progress=lambda: counter.value, stall_s=5, poll_s=0.01,
                                on_progress=seen.append))
    assert not out.stopped and out.exitcode == 0
    assert seen[-1] == 5 and seen == sorted(seen)
    assert out.peak_rss_bytes and out.peak_rss_bytes > 0


@pytest.mark.timeout(30)
def test_a_stalled_child_is_stopped_with_its_whole_tree() -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    out = supervise(CTX.Process(target=_hang_with_a_grandchild),
                    Supervision(progress=lambda: 0, stall_s=0.5, poll_s=0.05, kill_grace_s=0))
    assert out.reason == "stall" and "no progress" in out.detail
    assert out.seconds < 5
    time.sleep(0.2)
    left = {p.pid for p in psutil.Process().children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE} - before
    assert not left


@pytest.mark.timeout(30)
def test_progress_that_never_ends_hits_the_time_cap() -> None:
    counter = CTX.Value("i", 0)
    out = supervise(CTX.Process(target=_tick, args=(counter, 1000, 0.02)),
                    Supervision(progress=lambda: counter.value, stall_s=5, timeout_s=0.5,
                                poll_s=0.05))
    assert out.reason == "timeout" and out.exitcode != 0


@pytest.mark.timeout(30)
def test_a_child_that_never_gets_ready_is_a_startup_failure() -> None:
    out = supervise(CTX.Process(target=time.sleep, args=(30,)),
                    Supervision(progress=lambda: 0, stall_s=5, ready=lambda: False,
                                startup_s=0.3, poll_s=0.05))
    assert out.reason == "startup"
