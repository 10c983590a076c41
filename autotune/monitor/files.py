"""The monitor's files: resources.json (summary, hints, samples), resources.csv (one flat row
per sample) and resources.png (autotune.monitor.plot), each written atomically."""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autotune.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from autotune.monitor.plot import plot_resources
from autotune.monitor.samples import Event, Hint, ResourceSample


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


def load_samples(path: str | os.PathLike[str]) -> list[ResourceSample]:
    """Read back `resources.json` (for re-plotting or comparing runs)."""
    data = json.loads(Path(path).read_text())
    return [ResourceSample.from_dict(s) for s in data["samples"]]
