"""The training step, as smt runs it (autotune/probes/step.py is the probe that times it).

One training step exactly as `smt.train` runs it, callable outside a training run.

`TrainStep` holds an `SMTModule` attached to a Lightning `Trainer` that is set up for fitting
but never fits: each call runs `trainer.strategy.training_step(batch, 0)`, which is what
Lightning's loop calls. So the step runs the module's own `training_step` (its loss, its OOM
recovery, its gradient clipping) under the precision plugin's autocast, and the optimizer and
scheduler from `configure_optimizers` step through the plugin (with the fp16 grad scaler
where the precision asks for one). The probe times this object; it cannot time another step.

Built once, called repeatedly (the first calls are warm-up: kernels, allocator, Adam state).
`close()` (or leaving a `with` block) drops the model, optimizer and batch and frees the
allocator caches, so that the next measurement starts from a clean heap.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from autotune.measure import free_memory, sync_device

# Lightning announces its accelerator and precision choice at INFO when a Trainer is built;
# a probe builds many, and the user already sees the settings in the probe's own output.
_QUIET_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                  "lightning.fabric.utilities.rank_zero")


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _shell_trainer(precision: str, device: str) -> Any:
    """A Trainer for one device with training's precision, without loggers, checkpoints or
    progress bars; `strategy.setup` is run on it by `TrainStep`."""
    import lightning.pytorch as pl
    import torch
    dev = torch.device(device)
    accelerator = "cuda" if dev.type == "cuda" else "cpu"
    devices: Any = [dev.index or 0] if accelerator == "cuda" else 1
    with _quiet_lightning():
        return pl.Trainer(accelerator=accelerator, devices=devices, precision=precision,
                          logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, num_sanity_val_steps=0)


class TrainStep:
    """`step()` (or calling the object) runs one full optimizer step of `module` on `batch`
    and returns the loss (mean cross-entropy per target token, a float)."""

    def __init__(self, module: Any, batch: Mapping[str, Any], precision: str,
                 device: str = "cpu") -> None:
        from lightning.pytorch.trainer.states import RunningStage, TrainerFn

        from smt.builder import batch_to, configure_torch
        if module.hp.accumulate != 1:
            raise ValueError("TrainStep runs one optimizer step per call: accumulate must be 1")
        configure_torch()
        self.precision = precision
        self.device = device
        self.rows = int(batch["images"].shape[0])
        trainer = _shell_trainer(precision, device)
        trainer.state.fn = TrainerFn.FITTING
        strategy = trainer.strategy
        strategy.connect(module)
        module.trainer = trainer
        with _quiet_lightning():
            # Converts the module for the precision, moves it to the device, runs
            # configure_optimizers and connects the precision plugin: as fit() would.
            strategy.setup(trainer)
        trainer.state.stage = RunningStage.TRAINING
        module._current_fx_name = "training_step"
        module.train()
        self.trainer: Any = trainer
        self.module: Any = module
        self.batch: Any = batch_to(batch, strategy.root_device)

    def step(self, batch: Mapping[str, Any] | None = None) -> float:
        """One optimizer step on `batch` (a loader's batch, moved to the device here, as
        Lightning's loop moves it) or, when None, on the batch the step was built with; on a
        GPU it returns once the device finished it, so that the wall time of a call is the
        step's time."""
        if self.trainer is None:
            raise RuntimeError("TrainStep is closed")
        if batch is not None:
            from smt.builder import batch_to
            batch = batch_to(batch, self.trainer.strategy.root_device)
        loss = self.trainer.strategy.training_step(self.batch if batch is None else batch, 0)
        sync_device(self.trainer.strategy.root_device)
        return float(loss)

    __call__ = step

    def close(self) -> None:
        """Drop the model, optimizer, batch and trainer and give their memory back."""
        if self.trainer is None:
            return
        strategy = self.trainer.strategy
        strategy.optimizers = []
        strategy.lr_scheduler_configs = []
        strategy._lightning_module = None
        strategy.model = None
        self.module._trainer = None
        self.trainer = self.module = self.batch = None
        free_memory()

    def __enter__(self) -> "TrainStep":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_train_step(config: Any, vocab: Any, fmt: str, batch: Mapping[str, Any],
                    precision: str, device: str = "cpu", hparams: Any = None) -> TrainStep:
    """A `TrainStep` of a fresh `SMTModule(config, vocab, fmt, hparams)` on `batch`
    (default hyper-parameters: training's defaults, one optimizer step per call)."""
    from smt.module import SMTModule, TrainHParams
    return TrainStep(SMTModule(config, vocab, fmt, hparams or TrainHParams()), batch,
                     precision, device)
