"""Run one trial as a child process, watch it, and always clean up after it.

A trial is a short real training run in its own process, launched as the workload declares
(`Workload.trial_launch` gives the argv and the files it leaves; for SMT `python -m smt.train
... --max-steps K --out DIR`), so an OOM, a hang or a leak dies with it and cannot poison the
next trial. The runner samples the child's process tree (RSS, for the record), reads its
progress files for the pruner, and kills the whole tree (DataLoader workers included) when
the trial passes its time limit, when the pruner says stop, or when the search itself is
interrupted. Tests swap the launch's command for fake trainers that take the same flags.
"""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.measure import is_oom_text, kill_tree, tree_rss_bytes
from autotune.workload import TrialLaunch

LOG_NAME = "trainer.log"


@dataclass
class TrialResult:
    status: str                            # "complete", "failed", "timeout", "oom", "stopped"
    returncode: int | None
    elapsed_s: float
    log_path: Path
    error: str | None = None
    peak_rss_bytes: int | None = None      # whole child tree, sampled every poll
    progress: list[dict[str, Any]] = field(default_factory=list)


def looks_like_oom(log_tail: str, returncode: int | None) -> bool:
    if is_oom_text(log_tail):
        return True
    # SIGKILL that we did not send: on Linux almost always the kernel's OOM killer.
    return returncode == -signal.SIGKILL


class ProgressReader:
    """Reads the validation records a running trainer leaves in its output folder.

    Two channels, whichever exists: the launch's progress file (`progress.jsonl`: one JSON
    object per line with `step`, optional `samples`, and metric keys) and Lightning's CSV
    logger `metrics.csv` (anywhere under the folder). Both are re-read whole each poll; they
    stay small for short trials.
    """

    def __init__(self, out_dir: Path, metric: str, progress_file: str = "progress.jsonl") -> None:
        self.out_dir = out_dir
        self.metric = metric
        self.progress_file = progress_file
        self.seen: set[tuple[int, float]] = set()

    def _records(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        jl = self.out_dir / self.progress_file
        if jl.exists():
            try:
                text = jl.read_text(encoding="utf-8")
            except OSError:
                text = ""
            for line in text.splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line being written
                if isinstance(rec, dict):
                    rows.append(rec)
        for path in sorted(self.out_dir.rglob("metrics.csv")):
            try:
                rows.extend(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
            except (OSError, csv.Error):
                continue
        return rows

    def poll(self) -> list[dict[str, Any]]:
        """New records carrying the metric: dicts with `step`, `samples` (or None), `value`."""
        new = []
        for rec in self._records():
            raw = rec.get(self.metric)
            try:
                value = float(raw) if raw not in (None, "") else None
                step = int(float(rec.get("step") or 0))
                samples = rec.get("samples")
                samples = int(float(samples)) if samples not in (None, "") else None
            except (TypeError, ValueError):
                continue
            if value is None or (step, value) in self.seen:
                continue
            self.seen.add((step, value))
            new.append({"step": step, "samples": samples, "value": value})
        return new


@dataclass
class _Watch:
    """What one trial's polling loop tracks; `stop(...)` ends the loop with a reason."""
    launch: TrialLaunch
    out_dir: Path
    time_limit_s: float
    setup_limit_s: float
    start: float
    reader: ProgressReader | None = None
    on_progress: Callable[[dict[str, Any]], bool] | None = None
    status: str = "complete"
    error: str | None = None
    peak: int | None = None
    train_start: float | None = None
    progress: list[dict[str, Any]] = field(default_factory=list)

    def stop(self, status: str, error: str) -> bool:
        self.status, self.error = status, error
        return True

    def poll(self, pid: int) -> bool:
        """One look at the child; True when it must be stopped."""
        rss = tree_rss_bytes(pid)                      # 0 once the child is gone
        if rss:
            self.peak = max(self.peak or 0, rss)
        if self.reader is not None and self.on_progress is not None:
            for rec in self.reader.poll():
                self.progress.append(rec)
                if not self.on_progress(rec):
                    return self.stop("stopped", "stopped by the pruner")
        now = time.monotonic()
        if self.train_start is None and (self.out_dir / self.launch.start_marker).exists():
            self.train_start = now
        if self.train_start is not None and now - self.train_start > self.time_limit_s:
            return self.stop("timeout", f"killed after {now - self.start:.0f} s: training ran "
                             f"past the trial time limit of {self.time_limit_s:.0f} s")
        if self.train_start is None and now - self.start > self.setup_limit_s:
            return self.stop("timeout", f"killed after {now - self.start:.0f} s: training had "
                             f"not started within the {self.setup_limit_s:.0f} s time limit "
                             "(data preparation or start-up hung)")
        return False


class TrialRunner:
    """Runs a TrialLaunch, enforces the time limits, returns a TrialResult."""

    def __init__(self, poll_s: float = 0.5, env: dict[str, str] | None = None) -> None:
        self.poll_s = poll_s
        self.env = env

    def run(self, launch: TrialLaunch, out_dir: Path, time_limit_s: float,
            metric: str | None = None,
            on_progress: Callable[[dict[str, Any]], bool] | None = None,
            setup_limit_s: float | None = None) -> TrialResult:
        """Run to the end, the time limit, or until `on_progress` returns False.

        The trainer writes the launch's start marker (SMT: OUT/run.json) once its data is
        ready and training starts; the time limit counts from then. Before it,
        `setup_limit_s` applies: the first trial at a new reduce ratio prepares (resizes and
        caches) the dataset, which can take far longer than the short training that follows
        and must not be mistaken for a hang.
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        log_path = out_dir / LOG_NAME
        cmd = launch.argv
        env = {**(os.environ if self.env is None else self.env), **launch.env}
        env.setdefault("PYTHONUNBUFFERED", "1")      # the log shows a Python child's lines live
        watch = _Watch(launch, out_dir, time_limit_s, setup_limit_s or time_limit_s,
                       time.monotonic(), on_progress=on_progress,
                       reader=(ProgressReader(out_dir, metric, launch.progress_file)
                               if metric and on_progress else None))
        with open(log_path, "ab") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        stdin=subprocess.DEVNULL)
            except OSError as exc:
                return TrialResult("failed", None, 0.0, log_path,
                                   error=f"cannot start trainer {cmd[0]!r}: {exc}")
            try:
                polls = 0
                while proc.poll() is None and not watch.poll(proc.pid):
                    # Short polls first (quick trials end quickly), then every poll_s.
                    time.sleep(min(self.poll_s, 0.02 * 2 ** min(polls, 10)))
                    polls += 1
            finally:
                # Also reached on KeyboardInterrupt: no trainer outlives the search.
                if proc.poll() is None:
                    kill_tree(proc.pid)
                proc.wait()
        rc = proc.returncode
        if watch.status == "complete" and rc != 0:
            tail = _tail(log_path)
            oom = looks_like_oom(tail, rc)
            last = tail.strip().splitlines()[-1] if tail.strip() else ""
            watch.stop("oom" if oom else "failed",
                       f"{'out of memory' if oom else 'trainer failed'} (exit {rc}): {last[:200]}")
        return TrialResult(watch.status, rc, time.monotonic() - watch.start, log_path,
                           error=watch.error, peak_rss_bytes=watch.peak,
                           progress=watch.progress)


def _tail(path: Path, nbytes: int = 8192) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - nbytes))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
