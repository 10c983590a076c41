"""Measure one SMT training step (the training's own step, `smt.step.TrainStep`: forward,
loss, backward, clipping, Adam): time and peak RSS growth. The bench and the memory-estimate
test use it; run it in a fresh process (`measure_in_subprocess`) so earlier allocations do not
blur the peak.

Peak RSS is autotune's `PeakRssMeter`: the kernel's high-water mark where it can be reset
(exact, no sampling thread), a sampling thread elsewhere.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from autotune.atomic import json_text
from autotune.measure import PeakRssMeter, current_rss_bytes
from smt.builder import synthetic_batch
from smt.config import SMTConfig


@dataclass(frozen=True)
class StepMeasurement:
    preset: str
    batch_size: int
    height: int
    width: int
    seq_len: int
    num_params: int
    step_s: float                           # wall time of the measured (steady-state) step
    samples_per_s: float
    peak_rss_growth_bytes: int | None       # peak during the step minus RSS before the model existed
    estimated_total_bytes: int              # SMTModel.estimate_memory(...).total_bytes, float32

    def to_dict(self) -> dict:
        return asdict(self)


def _step(config: SMTConfig, batch_size: int, height: int, width: int, seq_len: int,
          precision: str, seed: int = 0) -> Any:
    """Training's step of a fresh model on a worst-case batch whose decoder reads `seq_len`
    tokens (so the target, <bos> and <eos> counted, is seq_len + 1)."""
    from smt.step import make_train_step
    from smt.tokenizer import Vocab
    vocab = Vocab.build([], fmt="bekern")          # the module decodes with it; unused here
    batch = synthetic_batch(batch_size, height, width, seq_len + 1, config.vocab_size, seed)
    return make_train_step(config, vocab, "bekern", batch, precision)


def _warm_up_process() -> None:
    """Two steps of the debug model through the same operators: the first use of an operator
    maps library code and per-thread scratch into RSS (~200 MB in torch's CPU build), which is
    the process's cost, not the model's, and would otherwise be counted as growth."""
    config = SMTConfig.preset("debug")
    with _step(config, 2, 64, 256, 32, "32-true") as step:
        for _ in range(2):
            step()
    gc.collect()


def measure_training_step(preset: str, batch_size: int, height: int, width: int, seq_len: int,
                          warmup_steps: int = 1, seed: int = 0,
                          precision: str = "32-true") -> StepMeasurement:
    """Warm the process up, build the model, run `warmup_steps` steps (Adam state now exists,
    as in real training), then measure one more. Growth counts weights, Adam state, gradients
    and activations."""
    base_cfg = SMTConfig.preset(preset)
    config = SMTConfig.preset(preset, max_seq_len=max(seq_len + 1, base_cfg.max_seq_len),
                              max_height=max(height, base_cfg.max_height),
                              max_width=max(width, base_cfg.max_width))
    _warm_up_process()
    torch.manual_seed(seed)
    gc.collect()
    base = current_rss_bytes()
    meter = PeakRssMeter()
    with _step(config, batch_size, height, width, seq_len, precision, seed) as step:
        for _ in range(warmup_steps):
            step()
        gc.collect()
        with meter.measure():
            start = time.perf_counter()
            step()
            step_s = time.perf_counter() - start
        num_params = step.module.model.num_params()
        estimate = step.module.model.estimate_memory(batch_size, height, width, seq_len, "32")
    peak = meter.peak_bytes
    return StepMeasurement(preset, batch_size, height, width, seq_len, num_params, step_s,
                           batch_size / step_s, None if peak is None else peak - base,
                           estimate.total_bytes)


def measure_in_subprocess(preset: str, batch_size: int, height: int, width: int, seq_len: int,
                          warmup_steps: int = 1, threads: int | None = None,
                          timeout_s: float = 600) -> StepMeasurement:
    """`measure_training_step` in a fresh Python process (clean allocator, clean peak)."""
    cmd = [sys.executable, "-m", "smt.measure_step", "--preset", preset, "--batch-size", str(batch_size),
           "--height", str(height), "--width", str(width), "--seq-len", str(seq_len),
           "--warmup-steps", str(warmup_steps)]
    if threads:
        cmd += ["--threads", str(threads)]
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {preset} b{batch_size} {height}x{width} failed:\n{proc.stderr[-2000:]}")
    return StepMeasurement(**json.loads(proc.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smt.measure_step",
                                     description="Time and peak RSS of one SMT training step (JSON on stdout)")
    parser.add_argument("--preset", default="debug")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure_training_step(args.preset, args.batch_size, args.height, args.width,
                                   args.seq_len, args.warmup_steps)
    print(json_text(result.to_dict(), indent=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
