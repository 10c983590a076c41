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
from autotune.monitor.samples import Hint, ResourceSample


def samples_to_csv(samples: Sequence[ResourceSample]) -> str:
    rows = [s.flat() for s in samples]
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
                  ram_budget_bytes: int | None = None) -> dict[str, Path]:
    out = Path(out_dir)
    files = {
        "json": atomic_write_json(out / "resources.json", {
            "summary": summary or {}, "hints": [asdict(h) for h in hints],
            "samples": [asdict(s) for s in samples]}),
        "csv": atomic_write_text(out / "resources.csv", samples_to_csv(samples)),
    }
    files["png"] = atomic_write_bytes(out / "resources.png",
                                      plot_resources(samples, ram_budget_bytes, hints))
    return files


def load_samples(path: str | os.PathLike[str]) -> list[ResourceSample]:
    """Read back `resources.json` (for re-plotting or comparing runs)."""
    data = json.loads(Path(path).read_text())
    return [ResourceSample.from_dict(s) for s in data["samples"]]
