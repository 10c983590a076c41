"""Decoding speed: our greedy decoding (`SMTModel.greedy_cached`: smt.model.greedy) against the
uncached loop (`greedy_uncached`: the whole decoder re-run over the whole prefix for every
token, as the reference's `predict` does), at several batch sizes and lengths, from one
interleaved run. Same weights, same images; every cell's tokens are asserted identical to the
uncached loop's (or, where that is skipped, to ours at batch 1) before anything is printed.

    python bench/bench_decode.py [--preset paper] [--batches 1,4,16] [--lengths 200,1000]
                                 [--uncached-lengths 200] [--repeats 2] [--threads 1]

<eos> is made unreachable (its bias at -1e4), so every row decodes exactly `length` tokens and
ms/token is comparable across cells. Images are encoded once, up front (not in the times).
ms/token is decoding time / length (one token for every row of the batch); "per sample" divides
that by the batch. Goals on the 2-core CPU: <= 2 ms/token at batch 1, per-sample time at batch
16 <= 0.3x batch 1. The uncached loop is quadratic in length (a 1,000-token row at batch 16 takes
minutes), so by default it runs at 200 tokens only; --uncached-lengths 200,1000 adds the rest.
The machine's load average is printed beside the table: on a shared machine, numbers taken
under load are not comparable.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smt.config import SMTConfig  # noqa: E402
from smt.model import Memory, SMTModel  # noqa: E402

GOAL_MS_BATCH_1 = 2.0
GOAL_BATCH_RATIO = 0.3


def rows_of(memory: Memory, stop: int) -> Memory:
    mask = None if memory.mask is None else memory.mask[:stop]
    return Memory(memory.keys[:stop], memory.values[:stop], mask)


def timed(decode: Callable[..., list[list[int]]], memory: Memory, length: int, **kw: Any
          ) -> tuple[list[list[int]], float]:
    """One decoding, timed to its last token (the ids come back to the host, so a CUDA
    decoding is finished when the clock stops)."""
    start = time.perf_counter()
    with torch.inference_mode():
        out = decode(memory, length, **kw)
    return out, time.perf_counter() - start


Cell = tuple[str, int, int]                      # (method, batch, length)
METHODS = ("ours", "ours compiled", "uncached")


def time_cells(model: SMTModel, memory: Memory, batches: list[int], lengths: list[int],
               methods: dict[str, list[int]], repeats: int
               ) -> tuple[dict[Cell, float], dict[Cell, list[list[int]]]]:
    """Best-of-`repeats` seconds and the tokens of every (method, batch, length) cell, with
    `methods` = {method: the lengths it runs at}, interleaved: every repeat visits every cell
    once, so a load that comes and goes touches all of them alike. The first rows of `memory`
    are the batch."""
    decoders = {"ours": (model.greedy_cached, {}),
                "ours compiled": (model.greedy_cached, {"compile": True}),
                "uncached": (model.greedy_uncached, {})}
    best: dict[Cell, float] = {}
    tokens: dict[Cell, list[list[int]]] = {}
    for _ in range(repeats):
        for length in lengths:
            for batch in batches:
                for method, at in methods.items():
                    if length not in at:
                        continue
                    decode, kw = decoders[method]
                    out, seconds = timed(decode, rows_of(memory, batch), length, **kw)
                    key = (method, batch, length)
                    best[key] = min(seconds, best.get(key, float("inf")))
                    tokens[key] = out
    return best, tokens


def differing(tokens: dict[Cell, list[list[int]]]) -> list[Cell]:
    """The cells whose tokens differ from the uncached loop's at the same batch and length
    (from ours at that batch where the uncached loop did not run, or ours at the smallest
    batch on the rows they share)."""
    bad = []
    for (method, batch, length), out in tokens.items():
        reference = tokens.get(("uncached", batch, length), tokens[("ours", batch, length)])
        smallest = min(b for (m, b, n) in tokens if m == "ours" and n == length)
        first = tokens[("ours", smallest, length)]
        if out != reference or out[: len(first)] != first[: len(out)]:
            bad.append((method, batch, length))
    return bad


def decode_table(best: dict[Cell, float], batches: list[int], lengths: list[int], title: str) -> Table:
    """ms per token (one token for every row of the batch) and per sample-token, against batch
    1 and against the uncached loop; a compiled column where it was timed."""
    table = Table(title=title)
    compiled = any(m == "ours compiled" for m, _, _ in best)
    columns = ["length", "batch", "ours ms/token", "ours ms/sample-token", "vs batch 1",
               "uncached ms/token", "speed-up"] + (["compiled ms/token"] if compiled else [])
    for col in columns:
        table.add_column(col, justify="right")

    def ms(method: str, batch: int, length: int) -> str:
        seconds = best.get((method, batch, length))
        return "-" if seconds is None else f"{seconds / length * 1e3:.2f}"
    for length in lengths:
        first = min(batches)
        base = best[("ours", first, length)] / first
        for batch in batches:
            ours = best[("ours", batch, length)]
            unc = best.get(("uncached", batch, length))
            row = [str(length), str(batch), ms("ours", batch, length),
                   f"{ours / batch / length * 1e3:.2f}", f"{ours / batch / base:.2f}x",
                   ms("uncached", batch, length), "-" if unc is None else f"{unc / ours:.1f}x"]
            table.add_row(*row, *([ms("ours compiled", batch, length)] if compiled else []))
    return table


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--lengths", default="200,1000")
    parser.add_argument("--uncached-lengths", default="200",
                        help="lengths at which the uncached loop runs too (quadratic: slow)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=1536)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per cell")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default 0: torch's own, every core, as a user runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compiled", action="store_true",
                        help="also time the torch.compile'd step (it compiles in the first repeat, "
                             "so keep --repeats >= 2; "
                             "off by default, on a CPU it is slower at these lengths)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches, lengths = parse_ints(args.batches), parse_ints(args.lengths)
    uncached_at = set(parse_ints(args.uncached_lengths))
    torch.manual_seed(args.seed)
    model = SMTModel(SMTConfig.preset(args.preset)).eval()
    with torch.no_grad():
        model.head.bias[model.config.eos_id] = -1e4        # every row runs to `length`
    images = torch.rand(max(batches), 1, args.height, args.width)
    with torch.inference_mode():
        model.generate(images[:1, :, :64, :64], 2)        # first-call warm-up, not timed
        start = time.perf_counter()
        memory = model.encode(images)
        encode_s = time.perf_counter() - start
    methods = {"ours": lengths, "uncached": sorted(uncached_at)}
    if args.compiled:
        methods["ours compiled"] = lengths
    best, tokens = time_cells(model, memory, batches, lengths, methods, args.repeats)
    bad = differing(tokens)
    assert not bad, f"tokens differ from the uncached loop's in {bad}"
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    table = decode_table(best, batches, lengths, f"SMT greedy decoding, preset {args.preset} ({model.num_params() / 1e6:.1f} M "
                        f"params), images {args.height}x{args.width}, {torch.get_num_threads()} "
                        f"thread(s); tokens identical; encoding (not in the times) {encode_s:.2f} s; "
                        f"load average (1/5/15 min) {load}")
    Console(width=160).print(table)
    print(f"goals: <= {GOAL_MS_BATCH_1} ms/token at batch 1; per-sample time at batch "
          f"{max(batches)} <= {GOAL_BATCH_RATIO}x batch 1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
