"""What the resource monitor costs a training run: steps/s with and without it.

Steps/s is timed over the steady state (after the first 20 steps, up to the last), which is
where a per-step cost would show; the one-off work (thread start, the plot at the end) is
timed separately.

A deliberately tiny model (an MLP on in-memory tensors) makes the per-step hooks as visible as
they can ever be; a real SMT step is 100-1000x longer, so the overhead there is smaller still.
Runs are interleaved (A, B, C, A, B, C, ...); the best run per setting is the figure least
disturbed by other work on a shared machine (the median is shown beside it). Because whole-run
timings on a busy machine are noisy, the callback's own per-step work (two hooks) is also timed
directly, which does not depend on the machine's load.

    python bench/bench_monitor.py [--steps 400] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import timeit
import warnings

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, TensorDataset

from autotune.monitor import GpuReader, ResourceMonitor, sample_resources, write_outputs


class TinyMLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(),
                                       torch.nn.Linear(64, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Clock(pl.Callback):
    """Times steps `skip`..end only: Trainer start-up and the end-of-run plot are not per-step
    costs (the plot is timed on its own below)."""

    def __init__(self, skip: int) -> None:
        self.skip, self.t0, self.t1, self.n = skip, 0.0, 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.n += 1
        if self.n == self.skip:
            self.t0 = time.perf_counter()
        self.t1 = time.perf_counter()


def steps_per_s(steps: int, monitor: pl.Callback | None, skip: int = 20) -> float:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(steps * 16, 32), torch.randn(steps * 16, 1))
    clock = Clock(skip)
    with tempfile.TemporaryDirectory() as out:
        trainer = pl.Trainer(
            max_steps=steps, default_root_dir=out, logger=CSVLogger(out),
            callbacks=[clock] + ([monitor] if monitor else []), enable_checkpointing=False,
            enable_model_summary=False, enable_progress_bar=False, accelerator="cpu",
            devices=1, log_every_n_steps=50)
        trainer.fit(TinyMLP(), DataLoader(data, batch_size=16))
    return (clock.n - skip) / (clock.t1 - clock.t0)


def hooks_per_step_us(n: int = 20000) -> float:
    """on_train_batch_start + on_train_batch_end between samples, on a real Trainer."""
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    monitor = ResourceMonitor(interval_s=3600)
    monitor._active = True  # as during fit, without starting the sampling thread

    def step() -> None:
        monitor.on_train_batch_start(trainer, None, None, 0)
        monitor.on_train_batch_end(trainer, None, None, None, 0)

    step()
    return 1e6 * timeit.timeit(step, number=n) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging
    logging.getLogger("lightning").setLevel(logging.ERROR)
    torch.set_num_threads(1)

    # The empty callback is the control: Lightning's own cost of dispatching ~10 hooks per
    # step to one more callback, which any callback pays whatever it does.
    settings = {"no monitor": lambda: None, "empty Callback (control)": pl.Callback,
                "monitor, every 2 s (default)": lambda: ResourceMonitor(interval_s=2.0),
                "monitor, every 0.1 s (20x)": lambda: ResourceMonitor(interval_s=0.1)}
    rates: dict[str, list[float]] = {name: [] for name in settings}
    steps_per_s(50, None)  # warm-up: imports, allocator, first Trainer
    for _ in range(args.rounds):
        for name, make in settings.items():
            rates[name].append(steps_per_s(args.steps, make()))

    monitor = ResourceMonitor(interval_s=0.1)
    steps_per_s(100, monitor)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        write_outputs(out, monitor.samples, monitor.hints, monitor.summary())
        write_s = time.perf_counter() - start
    gpus = GpuReader()
    sample_ms = 1e3 * timeit.timeit(lambda: sample_resources(0.0, 0, gpus), number=50) / 50
    base = max(rates["no monitor"])
    hook_us = hooks_per_step_us()
    table = Table(title=f"Resource monitor overhead: tiny MLP, {args.steps} steps, "
                        f"{args.rounds} interleaved runs per setting")
    for col in ("setting", "best steps/s", "median", "runs", "best vs no monitor"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for name, values in rates.items():
        table.add_row(name, f"{max(values):.0f}", f"{statistics.median(values):.0f}",
                      " ".join(f"{v:.0f}" for v in values), f"{max(values) / base:.3f}")
    console = Console(width=110)
    console.print(table)
    console.print(f"one sample (tree RSS, RAM, CPU, /dev/shm, cgroup"
                  f"{', NVML' if gpus.available else ''}): {sample_ms:.2f} ms "
                  f"= {sample_ms / 20:.3f}% of one core at the default 2 s interval")
    console.print(f"the callback's own work per training step (both hooks, timed directly): "
                  f"{hook_us:.2f} us = {100 * hook_us * 1e-6 * base:.3f}% of this tiny MLP's "
                  f"step at {base:.0f} steps/s")
    console.print(f"end of run, once: resources.png/.csv/.json for {len(monitor.samples)} "
                  f"samples in {write_s:.2f} s")


if __name__ == "__main__":
    main()
