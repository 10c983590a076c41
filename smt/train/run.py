"""`train(plan)`: prepare the data, build the model, fit, validate once more, summarise."""
from __future__ import annotations

import datetime as dt
import sys
import time
from contextlib import ExitStack
from typing import Any

import lightning.pytorch as pl

from autotune.atomic import atomic_write_json
from smt import checkpoint as ck
from smt.builder import configure_torch
from smt.distributed import pinned_sockets
from smt.module import NonFiniteLoss, SMTModule, TrainHParams
from smt.say import is_rank_zero, say
from smt.train import assembly, stop, summary
from smt.train.data import RunData, load_curriculum, load_data
from smt.train.planner import describe, ranks_read_plan
from smt.train.quiet import quiet_lightning
from smt.runconfig import TrainConfig


def _write_run_files(plan: TrainConfig, config: Any, data: RunData) -> None:
    """config.json, vocab.json and run.json (rank 0); run.json is also the plan the DDP ranks
    Lightning starts read (`ranks_read_plan`)."""
    plan.out.mkdir(parents=True, exist_ok=True)
    config.save(plan.out / ck.CONFIG_NAME)
    data.vocab.save(plan.out / ck.VOCAB_NAME)
    record = plan.to_json()
    record.update(started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  command=[sys.executable, *sys.argv])
    atomic_write_json(plan.out / ck.RUN_NAME, record)


def _module(plan: TrainConfig, config: Any, data: RunData) -> SMTModule:
    s = plan.settings
    hp = TrainHParams(lr=plan.lr, warmup_steps=plan.warmup_steps, grad_clip=plan.grad_clip,
                      accumulate=s.accumulate_grad_batches, val_decode_batches=plan.val_batches,
                      reduce_ratio=s.reduce_ratio)
    return SMTModule(config, data.vocab, plan.fmt, hp)


def _weights_only(trainer: Any) -> dict[str, bool]:
    """`weights_only=True` where `Trainer.fit` takes it (Lightning 2.6+). Older releases load
    the checkpoint their own way; plan_run has already read it with torch.load(weights_only=
    True), so a checkpoint that would run code is refused before either load."""
    import inspect
    return {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}


def train(plan: TrainConfig, wandb: bool = False) -> dict[str, Any]:
    """Run (or continue) a training run; returns the summary written to OUT/summary.json."""
    configure_torch(plan.settings.num_threads)
    pl.seed_everything(plan.seed, workers=True, verbose=False)
    rank0 = is_rank_zero()
    if rank0:
        print(describe(plan), flush=True)
    vocab_path = plan.out / ck.VOCAB_NAME if plan.resume_ckpt else None
    curriculum_source = None
    if plan.curriculum:
        data, curriculum_source = load_curriculum(plan, vocab_path)
    else:
        data = load_data(plan, vocab_path)
    init = assembly.start_from(plan, data)
    config = init.config if init is not None else \
        assembly.resumed_or_new_config(plan, data, plan.out / ck.CONFIG_NAME)
    if rank0:
        _write_run_files(plan, config, data)
    train_loader, val_loader = assembly.make_loaders(plan, data)
    for loader in (train_loader, val_loader):
        stop.protect_workers(loader)
    module = _module(plan, config, data)
    if init is not None:
        from smt.convert.finetune import apply
        apply(module.model, init)
        say(f"starting from {init.checkpoint} ({module.model.num_params():,} parameters, "
            "fresh optimizer)")
    request = stop.StopRequest()
    callbacks, throughput = assembly.make_callbacks(plan, on_ram_stop=request.for_memory)
    callbacks.append(stop.SaveAndStop(plan.out / "checkpoints", request, plan.ckpt_every_min))
    tuner = None
    if curriculum_source is not None:
        from smt.curriculum import CurriculumStep
        from smt.stages import stage_tuner
        tuner = stage_tuner(plan, config, curriculum_source, plan.out / ck.RUN_NAME, say=say)
        callbacks += [CurriculumStep(curriculum_source), tuner]
    with ExitStack() as scope:
        # For the Trainer's life: DDP's socket variables, the command line the ranks that
        # Lightning starts re-run, Lightning's messages a user can do nothing about.
        scope.enter_context(pinned_sockets(plan.num_nodes, plan.ddp_interface))
        if rank0:
            scope.enter_context(ranks_read_plan(plan.out / ck.RUN_NAME))
        scope.enter_context(quiet_lightning())
        trainer = assembly.make_trainer(plan, callbacks, assembly.make_loggers(plan, wandb))
        baseline = _baseline(trainer, module, val_loader) if init is not None else None
        t0 = time.perf_counter()
        _fit(trainer, module, train_loader, val_loader, plan, request)
        if module.last_val.get("step") != trainer.global_step and trainer.global_step > 0 \
                and not trainer.interrupted:
            # The run stopped between validations (max_time, max_steps): one last look, which
            # competes for best.ckpt like any other validation.
            trainer.validate(module, dataloaders=val_loader, verbose=False)
            summary.keep_if_best(trainer, module, plan.out / "checkpoints" / ck.BEST_NAME)
    result = summary.summary(plan, trainer, module, throughput, time.perf_counter() - t0,
                             baseline)
    if tuner is not None:       # each curriculum stage's micro-batch, why, and samples/s
        result["stages"] = tuner.summary()
    if is_rank_zero():
        atomic_write_json(plan.out / ck.SUMMARY_NAME, result)
        print(summary.one_line(result), flush=True)
        if plan.pictures:
            _pictures(plan, module, data)
    return result


def _kept(plan: TrainConfig) -> str:
    """What a run that stopped on a non-finite loss leaves to resume from, as a clause."""
    last = plan.out / "checkpoints" / ck.LAST_NAME
    if not last.is_file():
        return "; no checkpoint had been written"
    step = ck.load_checkpoint(last).get("global_step")
    return f"; {last} (step {step}) is kept: --resume {plan.out} continues from it"


def _pictures(plan: TrainConfig, module: SMTModule, data: RunData) -> None:
    """OUT/pictures/ (`smt.train.pictures`) and the line saying where: the run's last line.
    A finished run stays finished: a picture that cannot be made is one line, not an error."""
    from smt.train.pictures import FOLDER, write_end_of_run
    try:
        pictures = write_end_of_run(plan.out, module.model, data.vocab, plan.fmt, data.val,
                                    plan.pictures)
    except Exception as exc:  # noqa: BLE001 - the checkpoints and summary are already written
        say(f"pictures not written: {type(exc).__name__}: {exc}")
        return
    say(f"pictures of what the model reads in {len(pictures)} validation samples (image, "
        f"prediction, truth): {plan.out / FOLDER}/")


def _baseline(trainer: pl.Trainer, module: SMTModule, val_loader: Any) -> dict[str, float]:
    """The starting model's scores on the validation data, before any training step: what a
    fine-tune must beat. Outside fit, so no checkpoint or early-stopping callback counts it
    (Lightning's ModelCheckpoint and EarlyStopping act only while fitting)."""
    trainer.validate(module, dataloaders=val_loader, verbose=False)
    scores = {k: module.last_val[k] for k in ("ser", "cer", "ler") if k in module.last_val}
    module.last_val = {}
    if scores:
        say(f"baseline (the --init-from model, before training): SER {scores['ser']:.1f}  "
            f"CER {scores['cer']:.1f}  LER {scores['ler']:.1f}")
    return scores


def _fit(trainer: pl.Trainer, module: SMTModule, train_loader: Any, val_loader: Any,
         plan: TrainConfig, request: stop.StopRequest) -> None:
    """`trainer.fit`, stopping on SIGINT/SIGTERM or RAM at its limit with last.ckpt saved
    (`smt.train.stop`)."""
    with stop.on_signals(request):
        try:
            trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader,
                        ckpt_path=str(plan.resume_ckpt) if plan.resume_ckpt else None,
                        **_weights_only(trainer))
        except SystemExit:              # Lightning's own SIGTERM exit, after our save
            if not request.signum:
                raise
        except NonFiniteLoss as exc:    # the same line, saying what is kept
            raise NonFiniteLoss(exc.step, _kept(plan)) from None
    if request.memory:
        raise stop.MemoryStopped(request.memory, plan.out, trainer.global_step)
    if request.signum:
        raise stop.Stopped(request.signum, plan.out, trainer.global_step)
