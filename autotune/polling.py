"""A daemon thread that does one small thing every few milliseconds or seconds, with a
start/stop and context-manager lifecycle: the RSS sampler and the progress watchdog
(autotune.measure) and the resource monitor's sampler are all one of these."""
from __future__ import annotations

import threading
from types import TracebackType
from typing import TypeVar

_P = TypeVar("_P", bound="PollingThread")


class PollingThread:
    """A daemon thread that calls `_tick()` every `_period_s` until stopped; the start/stop
    and context-manager lifecycle shared by the sampler and the watchdog. Subclasses set
    `_period_s` and may hook `_on_start` (before the thread starts) and `_on_stop` (after it
    joined)."""

    _thread_name = "polling-thread"
    _period_s: float

    def _init_thread(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _on_start(self) -> None:
        pass

    def _on_stop(self) -> None:
        pass

    def _tick(self) -> bool:
        """One poll; return False to end the loop."""
        raise NotImplementedError

    def start(self: _P) -> _P:
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._stop.clear()
        self._on_start()
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._on_stop()

    def __enter__(self: _P) -> _P:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            if not self._tick():
                return
