"""Measure one plain-torch training step of the SMT (forward + loss + backward + Adam step):
time and peak RSS growth. The bench and the memory-estimate test use it; run it in a fresh
process (`measure_in_subprocess`) so earlier allocations do not blur the peak.

Peak RSS comes from the kernel's high-water mark (VmHWM), reset through /proc/self/clear_refs
before the measured step: exact, no sampling thread. Where that is unavailable (not Linux) the
peak is None rather than a guess.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import torch

from smt.config import SMTConfig

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


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


def current_rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark of this process; False where not supported."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    try:
        match = re.search(r"VmHWM:\s+(\d+)\s+kB", _STATUS.read_text())
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def synthetic_batch(config: SMTConfig, batch_size: int, height: int, width: int, seq_len: int,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """A worst-case batch: every image full size, every sequence seq_len tokens, no padding."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, config.in_channels, height, width, generator=gen)
    tokens = torch.randint(3, config.vocab_size, (batch_size, seq_len + 1), generator=gen)
    tokens[:, 0] = config.bos_id
    tokens[:, -1] = config.eos_id
    sizes = torch.tensor([[height, width]] * batch_size)
    return {"images": images, "image_sizes": sizes, "input_ids": tokens[:, :-1].contiguous(),
            "target_ids": tokens[:, 1:].contiguous()}


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  batch: dict[str, torch.Tensor]) -> float:
    logits = model(batch["images"], batch["input_ids"], batch["image_sizes"])
    loss = model.loss(logits, batch["target_ids"])
    del logits
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def _warm_up_process() -> None:
    """One step of the debug model through the same operators: the first use of an operator
    maps library code and per-thread scratch into RSS (~200 MB in torch's CPU build), which is
    the process's cost, not the model's, and would otherwise be counted as growth."""
    from smt.model import SMTModel

    config = SMTConfig.preset("debug")
    model = SMTModel(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for _ in range(2):
        training_step(model, optimizer, synthetic_batch(config, 2, 64, 256, 32))
    del model, optimizer
    gc.collect()


def measure_training_step(preset: str, batch_size: int, height: int, width: int, seq_len: int,
                          warmup_steps: int = 1, seed: int = 0) -> StepMeasurement:
    """Warm the process up, build the model, run `warmup_steps` steps (Adam state now exists, as in real training),
    then measure one more. Growth counts weights, Adam state, gradients and activations."""
    from smt.model import SMTModel

    config = SMTConfig.preset(preset, max_seq_len=max(seq_len + 1, SMTConfig.preset(preset).max_seq_len),
                              max_height=max(height, SMTConfig.preset(preset).max_height),
                              max_width=max(width, SMTConfig.preset(preset).max_width))
    _warm_up_process()
    batch = synthetic_batch(config, batch_size, height, width, seq_len, seed)
    torch.manual_seed(seed)
    gc.collect()
    base = current_rss_bytes()
    model = SMTModel(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for _ in range(warmup_steps):
        training_step(model, optimizer, batch)
    gc.collect()
    can_reset = reset_peak_rss()
    start = time.perf_counter()
    training_step(model, optimizer, batch)
    step_s = time.perf_counter() - start
    peak = peak_rss_bytes() if can_reset else None
    estimate = model.estimate_memory(batch_size, height, width, seq_len, "32")
    return StepMeasurement(preset, batch_size, height, width, seq_len, model.num_params(), step_s,
                           batch_size / step_s, None if peak is None else peak - base,
                           estimate.total_bytes)


def measure_in_subprocess(preset: str, batch_size: int, height: int, width: int, seq_len: int,
                          warmup_steps: int = 1, threads: int | None = None,
                          timeout_s: float = 600) -> StepMeasurement:
    """`measure_training_step` in a fresh Python process (clean allocator, clean peak)."""
    cmd = [sys.executable, "-m", "smt.model.measure", "--preset", preset, "--batch-size", str(batch_size),
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
    parser = argparse.ArgumentParser(prog="python -m smt.model.measure",
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
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
