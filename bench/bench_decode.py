"""Decoding throughput: cached batched greedy decoding vs the reference's way (re-run the whole
decoder over the whole prefix for every token, one image at a time). Same weights, same images;
every method's output is asserted equal to the reference's before any number is printed.

    python bench/bench_decode.py [--preset paper] [--images 4] [--max-len 64] [--threads 1]

The images are encoded once, up front (timed separately: it is the same for every method);
tokens/s is generated tokens over decoding time alone. A random model rarely emits <eos>, so
rows mostly run to --max-len.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smt.config import SMTConfig  # noqa: E402
from smt.model import Memory, SMTModel  # noqa: E402

Decode = Callable[[Memory, int], list[list[int]]]


def rows_of(memory: Memory, start: int, stop: int) -> Memory:
    mask = None if memory.mask is None else memory.mask[start:stop]
    return Memory(memory.keys[start:stop], memory.values[start:stop], mask)


def run(decode: Decode, memory: Memory, max_len: int, batch: int) -> tuple[list[list[int]], float]:
    out: list[list[int]] = []
    start = time.perf_counter()
    for i in range(0, memory.keys.shape[0], batch):
        out += decode(rows_of(memory, i, i + batch), max_len)
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--images", type=int, default=4, help="images decoded (the batch of the batched rows)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = SMTModel(SMTConfig.preset(args.preset)).eval()
    images = torch.rand(args.images, 1, args.height, args.width)
    b = args.images
    methods: list[tuple[str, Decode, int]] = [
        ("uncached, 1 image at a time (reference)", model.greedy_uncached, 1),
        (f"uncached, batch {b}", model.greedy_uncached, b),
        ("cached, 1 image at a time", model.greedy_cached, 1),
        (f"cached, batch {b}", model.greedy_cached, b),
    ]
    with torch.no_grad():
        model.generate(images[:1, :, :64, :64], 2)        # first-call warm-up, not timed
        start = time.perf_counter()
        memory = model.encode(images)
        encode_s = time.perf_counter() - start
    results = []
    reference: list[list[int]] | None = None
    for name, decode, batch in methods:
        with torch.no_grad():
            out, seconds = run(decode, memory, args.max_len, batch)
        if reference is None:
            reference = out
        assert out == reference, f"{name}: output differs from the reference decoding"
        results.append((name, batch, sum(len(r) for r in out), seconds))
    table = Table(title=f"SMT decoding, preset {args.preset} ({model.num_params() / 1e6:.1f} M params), "
                        f"{args.images} images {args.height}x{args.width}, max_len {args.max_len}, "
                        f"{torch.get_num_threads()} thread(s); outputs identical; "
                        f"encoding (not in the times) {encode_s:.2f} s")
    for col in ("method", "batch", "tokens", "decode s", "tokens/s", "x reference"):
        table.add_column(col, justify="left" if col == "method" else "right")
    base = results[0][2] / results[0][3]
    for name, batch, tokens, seconds in results:
        rate = tokens / seconds
        table.add_row(name, str(batch), str(tokens), f"{seconds:.2f}", f"{rate:.1f}", f"{rate / base:.2f}")
    Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
