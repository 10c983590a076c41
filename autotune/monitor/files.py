"""The monitor's files: resources.json (summary, hints, samples), resources.csv (one flat row
per sample) and resources.png (autotune.monitor.plot), each written atomically at the end;
and while the run goes on, resources.live.jsonl, one line per sample as it is taken, removed
once the others are written: a run killed outright (the OOM killer's SIGKILL) leaves it, and
its last line says how much RAM the run held against the limit."""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil

from autotune.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, json_text
from autotune.monitor.adapt import AdaptConfig
from autotune.monitor.hints import ram_near
from autotune.monitor.plot import plot_resources
from autotune.monitor.samples import Event, Hint, ResourceSample
from autotune.units import format_bytes as fb


def samples_to_csv(samples: Sequence[ResourceSample], events: Sequence[Event] = ()) -> str:
    """One row per sample; an `event` column names what the run changed, on the first sample
    taken at or after the change (the last sample when none was)."""
    rows: list[dict[str, Any]] = [s.flat() for s in samples]
    for e in events:
        if not rows:
            break
        at = next((i for i, s in enumerate(samples) if s.t_s >= e.t_s), len(rows) - 1)
        rows[at]["event"] = "; ".join(filter(None, [rows[at].get("event"), e.message]))
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def write_outputs(out_dir: str | os.PathLike[str], samples: Sequence[ResourceSample],
                  hints: Sequence[Hint] = (), summary: dict[str, Any] | None = None,
                  ram_budget_bytes: int | None = None,
                  events: Sequence[Event] = ()) -> dict[str, Path]:
    out = Path(out_dir)
    files = {
        "json": atomic_write_json(out / "resources.json", {
            "summary": summary or {}, "hints": [asdict(h) for h in hints],
            "events": [asdict(e) for e in events], "samples": [asdict(s) for s in samples]}),
        "csv": atomic_write_text(out / "resources.csv", samples_to_csv(samples, events)),
    }
    files["png"] = atomic_write_bytes(out / "resources.png",
                                      plot_resources(samples, ram_budget_bytes, hints, events))
    return files


LIVE_NAME = "resources.live.jsonl"


def append_live(out_dir: str | os.PathLike[str], sample: ResourceSample,
                limit_bytes: int | None) -> None:
    """One line for `sample`: this process's id, the step, RAM figures and the RAM limit.
    Appended and closed each time (no fsync: the page cache outlives a killed process)."""
    record = {"pid": os.getpid(), "t_s": sample.t_s, "step": sample.step,
              "rss_bytes": sample.rss_bytes, "ram_available_bytes": sample.ram_available_bytes,
              "ram_limit_bytes": limit_bytes or sample.ram_total_bytes}
    with open(Path(out_dir) / LIVE_NAME, "a", encoding="utf-8") as f:
        f.write(json_text(record, indent=None) + "\n")


def last_live(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The last whole line of a run's live file; None without one (a line cut by the kill
    is skipped)."""
    try:
        lines = (Path(out_dir) / LIVE_NAME).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for text in reversed(lines):
        try:
            record = json.loads(text)
        except ValueError:
            continue
        if isinstance(record, dict):
            return record
    return None


def killed_note(out_dir: str | os.PathLike[str],
                alive: Callable[[int], bool] = psutil.pid_exists) -> str | None:
    """What the live file a run left says about how it ended, None when it left none or its
    process is still there: the last RSS against the limit, "likely killed for memory" when it
    was near it (`ram_near` at the worker loop's threshold)."""
    last = last_live(out_dir)
    if last is None or not isinstance(last.get("pid"), int) or alive(last["pid"]):
        return None
    rss, limit = last.get("rss_bytes"), last.get("ram_limit_bytes")
    if not isinstance(rss, int):
        return f"its process ({last['pid']}) ended without a word at step {last.get('step')}"
    figure = f"{fb(rss)} of RSS" + (f" against the {fb(limit)} RAM limit"
                                    if isinstance(limit, int) else "")
    near = ram_near(rss, last.get("ram_available_bytes"), limit if isinstance(limit, int)
                    else None, AdaptConfig().ram_near_frac)
    verdict = "likely killed for memory" if near else "not near the RAM limit: not memory, by that"
    return (f"its process ({last['pid']}) ended without a word at step {last.get('step')}; "
            f"the monitor last saw {figure}: {verdict}")


def load_samples(path: str | os.PathLike[str]) -> list[ResourceSample]:
    """Read back `resources.json` (for re-plotting or comparing runs)."""
    data = json.loads(Path(path).read_text())
    return [ResourceSample.from_dict(s) for s in data["samples"]]
