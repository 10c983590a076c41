"""Training throughput and memory on this CPU: samples/s and peak RSS growth of the training's
own step (`smt.step.TrainStep`: forward + loss + backward + clipping + Adam step, fp32) for the
debug, small and paper presets at a system-sized image, batch 1 and 4, each in a fresh process,
next to the analytic estimate.

    python bench/bench_train.py [--height 256] [--width 1024] [--seq-len 256] [--threads 1]

Each cell: one warm-up step (Adam state exists afterwards, as in training), then one timed
step. "peak RSS" is the kernel high-water mark during that step minus the RSS before the model
was built (after warming up torch's code paths with the debug model).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smt.measure_step import measure_in_subprocess  # noqa: E402

MIB = 2 ** 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="debug,small,paper")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    console = Console(width=120)
    rows = []
    for preset in args.presets.split(","):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            console.print(f"[dim]measuring {preset} batch {batch} ...[/dim]")
            rows.append(measure_in_subprocess(preset, batch, args.height, args.width, args.seq_len,
                                              threads=args.threads))
    table = Table(title=f"SMT training step on CPU, image {args.height}x{args.width}, "
                        f"{args.seq_len} tokens, fp32, Adam"
                        + (f", {args.threads} thread(s)" if args.threads else ""))
    for col in ("preset", "params", "batch", "step s", "samples/s", "peak RSS MiB",
                "estimate MiB", "estimate / peak"):
        table.add_column(col, justify="left" if col == "preset" else "right")
    for r in rows:
        peak = r.peak_rss_growth_bytes
        table.add_row(r.preset, f"{r.num_params / 1e6:.2f} M", str(r.batch_size), f"{r.step_s:.2f}",
                      f"{r.samples_per_s:.2f}", "n/a" if peak is None else f"{peak / MIB:.0f}",
                      f"{r.estimated_total_bytes / MIB:.0f}",
                      "n/a" if not peak else f"{r.estimated_total_bytes / peak:.2f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
