"""Run work in a child process, watch it, stop it: one home for "map in a child, watch it,
kill it" (the map probe's trials, the preparation's shards).

The child reports progress through something the parent can read cheaply (a shared counter,
a file's size); `supervise` polls it, and stops the child's whole process tree when:

- no progress came for `stall_s` (autotune.measure.ProgressWatchdog), counted from when
  `ready()` first says the child finished its imports, or from the start without `ready`;
- `ready()` did not come within `startup_s`;
- the RSS sampled (autotune.measure.RssSampler, the child's tree or this process's) reached
  `ram_limit_bytes`;
- the wall time passed `timeout_s`.

What the child produced (files, exit code, an error it wrote) is the caller's to read; the
outcome says why the parent stopped it, if it did, and the peak RSS seen.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autotune.measure import ProgressWatchdog, RssSampler, kill_tree
from autotune.units import format_bytes


@dataclass
class ChildOutcome:
    reason: str | None                  # None: the child ended on its own; else why stopped:
    #                                     "stall", "startup", "ram", "timeout"
    detail: str                         # for a message: "no progress for 5 s", ...
    exitcode: int | None                # negative: killed by that signal
    seconds: float
    peak_rss_bytes: int | None          # of what was sampled (see `rss_of_child`)

    @property
    def stopped(self) -> bool:
        return self.reason is not None


@dataclass
class Supervision:
    """How to watch one child. Progress is any value that changes when work advances."""
    progress: Callable[[], Any]
    stall_s: float | None = None
    ready: Callable[[], bool] | None = None
    startup_s: float | None = None
    ram_limit_bytes: int | None = None
    timeout_s: float | None = None
    poll_s: float = 0.25
    rss_interval_ms: float = 200.0
    rss_of_child: bool = True           # False: this process's tree (the child included)
    kill_grace_s: float = 3.0           # 0: SIGKILL at once (a child stuck in C code)
    on_progress: Callable[[Any], None] | None = None


class _Stop:
    """The first reason to stop wins; set from the watchdog and sampler threads too. `wake`
    ends the poll loop's wait at once, for a stop or for the child's exit: a child that ends
    between polls is seen in milliseconds, not up to `poll_s` later (a 1-row shard costs a
    few ms of work; the old wait added 0.125 s on average to each)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.wake = threading.Event()
        self.reason: str | None = None
        self.detail = ""

    def __call__(self, reason: str, detail: str) -> None:
        if not self.event.is_set():
            self.reason, self.detail = reason, detail
            self.event.set()
            self.wake.set()


def supervise(proc: Any, how: Supervision) -> ChildOutcome:
    """Start `proc` (a multiprocessing Process, not yet started), watch it until it ends or
    must be stopped, and join it."""
    stop = _Stop()
    watchdog = ProgressWatchdog(how.stall_s, poll_s=min(how.poll_s, how.stall_s / 10),
                                on_stall=lambda idle: stop("stall", f"no progress for {idle:.0f} s")
                                ) if how.stall_s else None
    t0 = time.monotonic()
    proc.start()
    threading.Thread(target=_wake_on_exit, args=(proc.sentinel, stop.wake), daemon=True).start()
    sampler = RssSampler(interval_ms=how.rss_interval_ms,
                         pid=proc.pid if how.rss_of_child else None,
                         limit_bytes=how.ram_limit_bytes, keep_samples=False,
                         on_limit=lambda rss: stop("ram", f"process tree RSS {format_bytes(rss)}"))
    armed = False
    try:
        with sampler:
            armed = _watch(proc, how, stop, watchdog, t0)
    finally:
        if watchdog is not None and armed:
            watchdog.stop()
        if stop.reason is not None or proc.is_alive():
            kill_tree(proc.pid, grace_s=how.kill_grace_s)
        proc.join(timeout=5)
    return ChildOutcome(stop.reason, stop.detail, proc.exitcode,
                        round(time.monotonic() - t0, 3), sampler.peak_rss_bytes)


def _wake_on_exit(sentinel: int, wake: threading.Event) -> None:
    from multiprocessing.connection import wait
    wait([sentinel])
    wake.set()


def _watch(proc: Any, how: Supervision, stop: _Stop, watchdog: ProgressWatchdog | None,
           t0: float) -> bool:
    """The polling loop; returns whether the stall clock was started."""
    armed = False
    last: Any = None
    while proc.is_alive():
        elapsed = time.monotonic() - t0
        if not armed:
            if how.ready is None or how.ready():
                armed = True
                if watchdog is not None:
                    watchdog.start()
            elif how.startup_s is not None and elapsed > how.startup_s:
                stop("startup", f"the child did not start in {how.startup_s:.0f} s")
        if how.timeout_s is not None and elapsed > how.timeout_s:
            stop("timeout", f"time cap of {how.timeout_s:g} s reached")
        now = how.progress()
        if now != last:
            last = now
            if watchdog is not None and armed:
                watchdog.beat()
            if how.on_progress is not None:
                how.on_progress(now)
        stop.wake.wait(how.poll_s)
        if stop.event.is_set():
            return armed
    if how.on_progress is not None and (now := how.progress()) != last:
        how.on_progress(now)            # what the child did after the last poll
    return armed
