"""Engrave **kern that may be malformed (a model's prediction) without risking this process.

verovio (through `smt.data.render`, the one place that drives it) does not only refuse bad
kern: on some malformed input, e.g. a record with fewer fields than spines, its C++ code
throws `std::length_error` and the runtime aborts the whole Python process. A half-trained
model writes such kern all the time, and the process asking for a picture may be a training
run that has just finished. So each engraving runs in one long-lived child process: a crash
kills the child only, is reported as the reason the kern did not engrave, and the next
engraving starts a fresh child. verovio's own messages (which it prints to stderr, not to its
log) go to a file per child; the first error among them is the reason a user reads.

Cost: one spawned child per `Engraver` (~1-2 s to import numpy, PIL and verovio and load its
font), then ~0.05-1 s per engraving as in-process, plus a pickle of the image array.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

# A single system engraves in well under a second and a 2100 px page in about one on this
# class of machine; a minute means verovio is stuck, and the picture falls back to text.
TIMEOUT_S = 60.0
_REASON_CHARS = 200          # a reason is one caption line


@dataclass(frozen=True)
class Engraved:
    """An engraving: the grayscale image (0 ink, 255 paper), or None and why not."""
    image: np.ndarray | None
    reason: str | None = None


def _engrave_here(kern: str, kind: str) -> np.ndarray:
    """kern -> grayscale image, margins trimmed; RenderError when verovio refuses or draws
    nothing. It crosses the pipe as the array itself (no PNG to encode and decode again)."""
    from smt.data.render import RenderError, crop_margins, kern_to_svg, svg_to_gray
    img = crop_margins(svg_to_gray(kern_to_svg(kern, kind)))
    if not (img < 128).any():
        raise RenderError("verovio engraved an empty page")
    return img


def _serve(conn: Any, log_path: str) -> None:
    """The child: engrave each (kern, kind) received, answer ("ok", image) or ("error", why).
    Its stdout and stderr go to `log_path`, emptied before each engraving."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    while True:
        try:
            kern, kind = conn.recv()
        except EOFError:                 # the parent closed the pipe: done
            return
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            conn.send(("ok", _engrave_here(kern, kind)))
        except Exception as exc:          # any refusal is an answer, not the child's end
            conn.send(("error", str(exc) or type(exc).__name__))


def _first_error(log: str) -> str:
    """The most telling line(s) of verovio's messages: its first "Error ..." line with the
    line after it (humdrum names the line, then the problem), else the last line."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if re.search(r"error|what\(\)", ln, re.IGNORECASE):
            return " ".join(lines[i:i + 2])
    return lines[-1] if lines else ""


def _has_header(kern: str) -> bool:
    """Whether the first line that is not a global comment (`!!...`) starts a spine (`**`)."""
    first = next((ln for ln in kern.lstrip("\n").split("\n") if not ln.startswith("!!")), "")
    return first.startswith("**")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _REASON_CHARS else text[:_REASON_CHARS - 3] + "..."


class Engraver:
    """kern -> `Engraved`, each engraving in a child process (see the module docstring).
    Use as a context manager, or call `close()`."""

    def __init__(self, timeout_s: float = TIMEOUT_S) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.timeout_s = timeout_s
        # spawn, not fork: the caller may be a training process with CUDA, threads and locks
        # held, none of which a forked child could use safely.
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Any = None
        self._log = Path(tempfile.mkstemp(prefix="smt-engrave-", suffix=".log")[1])

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_serve, args=(child, str(self._log)), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def _stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            self._proc.join(timeout=5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        self._proc = self._conn = None

    def engrave(self, kern: str, kind: str = "system") -> Engraved:
        """The engraving of `kern` as a `kind` ("system" or "page", `smt.data.render.KINDS`),
        or the reason there is none: verovio's refusal, its crash, or the timeout."""
        if not kern.strip():
            return Engraved(None, "the kern is empty" if not kern else
                            "the kern is only blank space (an untrained model's line breaks)")
        if not _has_header(kern):
            # verovio would guess another format (MEI, ABC, ...) and refuse it obscurely.
            return Engraved(None, "no **kern header on its first line")
        if self._proc is None or not self._proc.is_alive():
            self._start()
        self._conn.send((kern, kind))
        if not self._conn.poll(self.timeout_s):
            self._proc.kill()
            self._stop()
            return Engraved(None, f"verovio did not finish within {self.timeout_s:.0f} s")
        try:
            status, payload = self._conn.recv()
        except (EOFError, ConnectionError):        # the child died: verovio aborted
            self._proc.join(timeout=5)
            code = self._proc.exitcode
            detail = _first_error(self._log.read_text(errors="replace"))
            self._stop()
            return Engraved(None, _short(f"verovio crashed (exit {code}): {detail}"))
        if status != "ok":
            detail = _first_error(self._log.read_text(errors="replace"))
            reason = payload if not detail or detail in payload else f"{payload} {detail}"
            return Engraved(None, _short(reason))
        return Engraved(payload)

    def close(self) -> None:
        self._stop()
        self._log.unlink(missing_ok=True)

    def __enter__(self) -> "Engraver":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
