"""The trainer assembly: the model config and loaders (from `smt.builder`, as the probe builds
them), callbacks, loggers and the Lightning `Trainer` of a run plan."""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from autotune.errors import UserError
from smt import builder, faults
from smt.callbacks import (FreeMemoryAfterValidation, KillAtStep, LastCheckpoint, Throughput,
                           best_checkpoint)
from smt.checkpoint import AtomicCheckpointIO
from smt.config import SMTConfig
from smt.distributed import make_strategy
from smt.train.data import RunData
from smt.say import say
from smt.train.quiet import ParamSummary
from smt.runconfig import TrainConfig


def model_config(plan: TrainConfig, data: RunData) -> Any:
    return builder.model_config(plan.preset, len(data.vocab), data.max_height, data.max_width,
                                data.max_seq_len)


def resumed_or_new_config(plan: TrainConfig, data: RunData, config_path: Path) -> Any:
    """A resumed run keeps its model's config, which must still hold the data's images; a new
    run sizes one for the data."""
    if not (plan.resume_ckpt and config_path.is_file()):
        return model_config(plan, data)
    config = SMTConfig.load(config_path)
    if data.max_height > config.max_height or data.max_width > config.max_width:
        raise UserError(
            f"the data ({plan.data or 'default'}) has images up to {data.max_width}x"
            f"{data.max_height} px (WxH) after reduce ratio {plan.settings.reduce_ratio}, larger "
            f"than the resumed model's maximum {config.max_width}x{config.max_height} "
            f"({config_path}); pass a smaller --reduce-ratio")
    return config


def start_from(plan: TrainConfig, data: RunData) -> Any:
    """`--init-from`: the weights, config and vocabulary to start with (smt.convert.finetune),
    fitted to the data; `data.vocab` becomes the model's. None for a plain or resumed run."""
    if not plan.init_from or plan.resume_ckpt:
        return None
    from smt.convert import finetune

    start = finetune.load_init(plan.init_from)
    tokens: Any = data.vocab.tokens
    if set(tokens) - set(start.vocab.tokens):     # name the model's unknowns with their counts
        tokens = finetune.token_counts((data.train, data.val), plan.fmt)
    init = finetune.fit_to_data(start, tokens, plan.fmt,
                                plan.extend_vocab, data.max_height, data.max_width,
                                data.max_seq_len)
    data.vocab = init.vocab
    _note_image_scale(plan, init.checkpoint.parent)
    return init


def _note_image_scale(plan: TrainConfig, folder: Path) -> None:
    """A converted model saw images at the reference's scale; say so when this run differs."""
    from smt.convert import read_image_convention

    recorded = read_image_convention(folder)
    ratio = plan.settings.reduce_ratio
    if recorded is not None and recorded[0].reduce_ratio != ratio:
        say(f"note: the model was trained on images at reduce ratio {recorded[0].reduce_ratio}; "
            f"this run scales yours by {ratio} (--reduce-ratio)")


def make_loaders(plan: TrainConfig, data: RunData) -> tuple[Any, Any]:
    s = plan.settings
    common = dict(batch_size=s.batch_size, num_workers=s.num_workers)
    train = builder.make_loader(data.train, data.vocab, plan.fmt, shuffle=True,
                                augment=plan.augment, teacher_noise=plan.teacher_noise,
                                seed=plan.seed, resizable=plan.adapt_workers, **common)
    val = builder.make_loader(data.val, data.vocab, plan.fmt, shuffle=False, **common)
    return train, val


def make_trainer(plan: TrainConfig, callbacks: list[Any], loggers: list[Any]) -> pl.Trainer:
    s = plan.settings
    kwargs: dict[str, Any] = {}
    if plan.val_every is not None:
        kwargs.update(val_check_interval=plan.val_every * s.accumulate_grad_batches,
                      check_val_every_n_epoch=None)
    max_epochs = plan.max_epochs
    if max_epochs is None and plan.max_steps == -1 and plan.max_time_s is None:
        max_epochs = 1000  # the full recipe ends on early stopping, this is a backstop
    return pl.Trainer(
        accelerator="auto", devices=s.devices, num_nodes=plan.num_nodes,
        strategy=make_strategy(s.strategy, s.devices, plan.num_nodes, plan.out),
        precision=s.precision, max_steps=plan.max_steps, max_epochs=max_epochs or -1,
        max_time=dt.timedelta(seconds=plan.max_time_s) if plan.max_time_s else None,
        # The CPU demo's validations are bounded (loss too, not only decoding).
        limit_val_batches=plan.val_batches if plan.cpu_demo else None, num_sanity_val_steps=0, callbacks=callbacks, logger=loggers,
        default_root_dir=str(plan.out), plugins=[AtomicCheckpointIO()],
        # The model summary is ParamSummary, one of the callbacks (smt.train.quiet).
        log_every_n_steps=10, enable_model_summary=False, use_distributed_sampler=True,
        **kwargs)


def make_loggers(plan: TrainConfig, wandb: bool) -> list[Any]:
    loggers: list[Any] = [CSVLogger(str(plan.out), name="logs", version="csv"),
                          TensorBoardLogger(str(plan.out), name="logs", version="tensorboard")]
    if wandb:
        try:
            from lightning.pytorch.loggers import WandbLogger
            import wandb as _  # noqa: F401 - an optional extra
        except ImportError:
            raise UserError("--wandb needs the wandb package: pip install 'smt-autotune[wandb]'") from None
        loggers.append(WandbLogger(project="smt-autotune", save_dir=str(plan.out),
                                   name=plan.out.name))
    return loggers


def make_callbacks(plan: TrainConfig) -> tuple[list[Any], Throughput]:
    ckpt_dir = plan.out / "checkpoints"
    throughput = Throughput()
    callbacks: list[Any] = [LastCheckpoint(ckpt_dir, plan.ckpt_every), best_checkpoint(ckpt_dir),
                            FreeMemoryAfterValidation(), throughput, ParamSummary()]
    callbacks.append(RichProgressBar() if sys.stdout.isatty() else TQDMProgressBar(refresh_rate=5))
    if plan.patience > 0:
        callbacks.append(EarlyStopping(monitor="val_ser", mode="min", patience=plan.patience,
                                       check_on_train_epoch_end=False))
    kill_at = faults.kill_at_step()
    if kill_at is not None:
        callbacks.append(KillAtStep(kill_at))
    set_workers = None
    if plan.adapt_workers:      # the monitor decides, the switch resizes the train loader
        from smt.train.workers import WorkerSwitch
        switch = WorkerSwitch()
        callbacks.append(switch)
        set_workers = switch.set_workers
    try:
        from autotune.monitor import ResourceMonitor
        callbacks.append(ResourceMonitor(set_workers=set_workers, out_dir=str(plan.out),
                                         ram_budget_bytes=faults.ram_budget_bytes()))
    except ImportError:
        pass
    return callbacks, throughput
