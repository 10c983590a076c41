"""The LightningModule: SMT training with OOM recovery, and batched validation decoding.

Optimisation is manual (Lightning's `automatic_optimization = False`) for one reason: an OOM
must be survivable on every rank at once. Under DDP, gradients are normally all-reduced from
hooks inside `backward`; if one rank runs out of memory mid-backward the others block in that
all-reduce forever. So every forward/backward here runs under `no_sync()`, then all ranks
all-reduce one OOM flag, and only when no rank failed are the gradients all-reduced as one flat
buffer. The cost is the lost overlap of gradient communication with backward compute, which
for an 11 M-parameter model is a few tens of MB per optimizer step (once per accumulation
window), small next to the ConvNeXt encoder's compute.

After an OOM every rank halves its micro-batch (each loader batch is split into chunks and
their gradients accumulate, so the effective batch is unchanged) and retries the same batch at
the same optimizer step. Below micro-batch 1 there is nothing left to halve: training stops with
`OutOfMemoryAtBatchOne`, a user error that names the next reduce ratio to try.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F

from autotune.errors import STOPPED_EXIT_CODE, UserError
from autotune.measure import free_memory, is_oom_error
from autotune.settings import Settings
from smt import faults
from smt.say import say
from smt.runconfig import DEFAULTS, check_recipe


class OutOfMemoryAtBatchOne(UserError):
    """Even one sample per micro-batch does not fit: only smaller images can help."""


class NonFiniteLoss(UserError):
    """A loss that is NaN or infinite on some rank: the optimizer step is not taken (its
    gradients would make every weight NaN), training stops. Exit 3, not 2: the command line
    was fine, the run diverged, and a script (the search) can tell the two apart."""

    exit_code = STOPPED_EXIT_CODE

    def __init__(self, step: int, kept: str = "") -> None:
        self.step = step
        super().__init__(
            f"the training loss is not finite (NaN or infinite) at step {step}; stopped before "
            f"that step changed the weights{kept}. Try a lower --lr, --precision 32-true, or "
            "check the --init-from weights")


@dataclass
class TrainHParams:
    """What the module needs of a run's settings. The defaults are the run's own
    (`smt.runconfig.TrainConfig` and `autotune.settings.Settings`, with their reasons)."""
    lr: float = DEFAULTS.lr
    warmup_steps: int = DEFAULTS.warmup_steps
    grad_clip: float | None = DEFAULTS.grad_clip
    # Loader batches per optimizer step (the profile's accumulate_grad_batches).
    accumulate: int = Settings.accumulate_grad_batches
    # Validation decodes at most this many batches (None = all); greedy decoding dominates the
    # cost of validation on a CPU.
    val_decode_batches: int | None = DEFAULTS.val_batches
    # Reduce ratio the data was prepared with; only used to word the batch-1 OOM message.
    reduce_ratio: float = Settings.reduce_ratio

    def __post_init__(self) -> None:
        check_recipe(self.lr, self.warmup_steps, self.grad_clip)
        if self.accumulate < 1:
            raise ValueError(f"accumulate must be >= 1, got {self.accumulate!r}")
        if self.val_decode_batches is not None and self.val_decode_batches < 0:
            raise ValueError(f"val_decode_batches must be >= 0, got {self.val_decode_batches!r}")


def token_loss(model: Any, batch: dict[str, Any], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy over the non-<pad> targets, their count) of `model` on `batch`:
    the training loss before its division by the tokens of the whole loader batch."""
    logits = model(batch["images"], batch["input_ids"], batch.get("image_sizes"))
    targets = batch["target_ids"]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=pad_id, reduction="sum")
    return loss, (targets != pad_id).sum()


def make_optimizer(params: Any, lr: float) -> torch.optim.Optimizer:
    """The optimizer of the reference recipe (its state is part of a step's memory)."""
    return torch.optim.Adam(params, lr=lr)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _split_batch(batch: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """Chunks of at most `size` rows; tensors are sliced (views), lists are sliced."""
    n = batch["images"].shape[0]
    if size >= n:
        return [batch]
    chunks = []
    for start in range(0, n, size):
        chunk = {}
        for key, value in batch.items():
            if isinstance(value, (torch.Tensor, list, tuple)) and len(value) == n:
                chunk[key] = value[start:start + size]
            else:
                chunk[key] = value
        chunks.append(chunk)
    return chunks


class SMTModule(pl.LightningModule):
    def __init__(self, config: Any, vocab: Any, fmt: str, hparams: TrainHParams | None = None):
        super().__init__()
        from smt.model import SMTModel

        self.automatic_optimization = False
        self.config = config
        self.vocab = vocab
        self.fmt = fmt
        self.hp = hparams or TrainHParams()
        self.model = SMTModel(config)
        # Plain types only: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters({"config": config.to_dict(), "fmt": fmt, "train": asdict(self.hp)})
        self.pad_id = int(vocab.pad_id)
        # None = the whole loader batch; halved on every OOM, kept in the checkpoint.
        self.micro_batch_size: int | None = None
        self.oom_events: list[dict[str, Any]] = []
        self.samples_seen = 0
        self.dropped_samples = 0
        self._window = 0
        # (prediction, reference) texts, and their tokens where SER is counted on them: the
        # reference's full-page tokens do not come back from the text (its header is cut off).
        self._val_pairs: list[tuple[Any, ...]] = []
        from smt.tokenizer import REFERENCE_FORMATS
        self._ser_on_tokens = fmt in REFERENCE_FORMATS
        self.last_val: dict[str, float] = {}
        self.last_train_loss: float | None = None
        self._oom_fault = faults.oom_fault()
        self._nan_from = faults.nan_loss_from_step()

    # ----------------------------------------------------------------------------- loss
    def _loss_sum(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return token_loss(self.model, batch, self.pad_id)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor,
                image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(images, input_ids, image_sizes)

    # ------------------------------------------------------------------------- training
    def _no_sync(self) -> contextlib.AbstractContextManager[Any]:
        wrapped = self.trainer.strategy.model if self._trainer is not None else None
        if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
            return wrapped.no_sync()
        return contextlib.nullcontext()

    def _forward_backward(self, batch: dict[str, Any], micro: int) -> float:
        """Gradients of one loader batch, in chunks of `micro`, scaled for accumulation."""
        tokens = max(int((batch["target_ids"] != self.pad_id).sum()), 1)
        total = 0.0
        for chunk in _split_batch(batch, micro):
            if self._oom_fault is not None:
                self._oom_fault.fire(int(chunk["images"].shape[0]), self.global_rank)
            with self._no_sync():
                loss_sum, _ = self._loss_sum(chunk)
                if self._nan_from is not None and self.global_step >= self._nan_from:
                    loss_sum = loss_sum * float("nan")          # the nan_loss fault point
                self.manual_backward(loss_sum / (tokens * self.hp.accumulate))
            total += float(loss_sum.detach())
            del loss_sum
        return total / tokens

    def _any_rank(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag OR-ed over the ranks (one all-reduce of them all)."""
        if _world() == 1:
            return flags
        t = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return tuple(bool(v > 0) for v in t.tolist())

    def _sync_grads(self) -> None:
        world = _world()
        if world == 1:
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat.div_(world)
        for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(synced)

    def _shrink(self, rows: int) -> int:
        current = self.micro_batch_size or rows
        if current <= 1:
            smaller = max(0.05, round(self.hp.reduce_ratio * 0.75, 3))
            raise OutOfMemoryAtBatchOne(
                f"out of memory at batch size 1 with reduce ratio {self.hp.reduce_ratio}: "
                f"images are too large for this device; rerun with --reduce-ratio {smaller} "
                "(--resume continues from the last checkpoint)")
        new = max(1, current // 2)
        self.oom_events.append({"step": int(self.global_step), "micro_batch_from": current,
                                "micro_batch_to": new, "dropped_samples": self._window * rows})
        factor = math.ceil(rows / new) * self.hp.accumulate
        say(f"out of memory at step {self.global_step} on some rank: micro-batch {current} -> "
            f"{new} ({factor} micro-batches per optimizer step, same effective batch); "
            "retrying the same batch")
        return new

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        rows = int(batch["images"].shape[0])
        while True:
            micro = self.micro_batch_size or rows
            oom = finite = False
            try:
                loss = self._forward_backward(batch, micro)
                finite = math.isfinite(loss)
            except Exception as exc:  # noqa: BLE001 - anything but an OOM is re-raised
                if not is_oom_error(exc):
                    raise
                oom = True
            # One all-reduce for both: every rank must take the same turn.
            oom, diverged = self._any_rank(oom, not (finite or oom))
            if diverged:
                raise NonFiniteLoss(int(self.global_step))
            if not oom:
                break
            # Every rank drops the gradients of this accumulation window and retries smaller.
            opt.zero_grad(set_to_none=True)
            free_memory()
            self.micro_batch_size = self._shrink(rows)
            self.dropped_samples += self._window * rows
            self._window = 0
        self._window += 1
        self.samples_seen += rows * _world()
        if self._window >= self.hp.accumulate or self.trainer.is_last_batch:
            self._sync_grads()
            opt.step()          # clips in on_before_optimizer_step
            opt.zero_grad(set_to_none=True)
            sched = self.lr_schedulers()
            if sched is not None:
                sched.step()
            self._window = 0
        self.last_train_loss = loss
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=rows)
        return torch.tensor(loss)

    # ----------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_pairs = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss_sum, tokens = self._loss_sum(batch)
        rows = int(batch["images"].shape[0])
        self.log("val_loss", loss_sum / tokens.clamp(min=1), on_epoch=True, sync_dist=True,
                 batch_size=rows, prog_bar=True)
        limit = self.hp.val_decode_batches
        if limit is not None and batch_idx >= limit:
            return
        targets = batch["target_ids"]
        longest = int((targets != self.pad_id).sum(dim=1).max())
        # Cap the decode at twice the longest reference: a longer prediction already costs an
        # SER above 100 for its row, and an untrained model would otherwise decode to
        # max_seq_len on every validation, which dominates CPU runs.
        max_len = max(32, 2 * longest)
        cfg_max = getattr(self.config, "max_seq_len", None)
        if cfg_max:
            max_len = min(max_len, int(cfg_max) - 1)
        generated = self.model.generate(batch["images"], max_len=max_len,
                                        image_sizes=batch.get("image_sizes"))
        from smt.tokenizer import detokenize
        for pred, target in zip(generated, targets.tolist()):
            tokens = (self.vocab.decode(list(pred)), self.vocab.decode(list(target)))
            pair = tuple(detokenize(t, self.fmt) for t in tokens)
            if self._ser_on_tokens:
                pair += tokens
            self._val_pairs.append(pair)

    def on_validation_epoch_end(self) -> None:
        pairs = self._val_pairs
        if _world() > 1:
            gathered: list[Any] = [None] * _world()
            dist.all_gather_object(gathered, pairs)
            pairs = [p for part in gathered for p in part]
        self._val_pairs = []
        if not pairs or self.trainer.sanity_checking:
            return
        from smt.metrics import cer, ler, ser
        preds, refs = [p[0] for p in pairs], [p[1] for p in pairs]
        # SER on the texts re-tokenized, or on the decoded tokens where the text cannot be
        # re-tokenized (`_ser_on_tokens`): computed once, on what applies.
        on = ([p[2] for p in pairs], [p[3] for p in pairs]) if self._ser_on_tokens else (preds, refs)
        scores = {"cer": cer(preds, refs), "ser": ser(*on, fmt=self.fmt), "ler": ler(preds, refs)}
        for name in ("cer", "ser", "ler"):
            self.log(f"val_{name}", float(scores[name]), prog_bar=(name == "ser"), sync_dist=True)
        self.last_val = {k: float(scores[k]) for k in ("cer", "ser", "ler")}
        self.last_val["samples"] = len(pairs)
        self.last_val["step"] = int(self.global_step)
        val_loss = self.trainer.callback_metrics.get("val_loss")
        if val_loss is not None:
            self.last_val["loss"] = float(val_loss)
        loss_txt = f"val_loss {self.last_val['loss']:.3f}  " if "loss" in self.last_val else ""
        say(f"step {self.global_step}: {loss_txt}CER {scores['cer']:.1f}  SER {scores['ser']:.1f}  "
            f"LER {scores['ler']:.1f}  ({len(pairs)} samples)")

    # ------------------------------------------------------------------------ optimizer
    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # Lightning calls this inside opt.step(), after the fp16 grad scaler unscaled the
        # gradients: clipping here bounds the true norm (before opt.step() it would clip the
        # scaled gradients, and shrink every fp16 step by the loss scale).
        if self.hp.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.hp.grad_clip,
                                gradient_clip_algorithm="norm")

    def configure_optimizers(self) -> Any:
        opt = make_optimizer(self.parameters(), self.hp.lr)
        warmup = self.hp.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoint state
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["smt"] = {"micro_batch_size": self.micro_batch_size,
                             "oom_events": list(self.oom_events),
                             "samples_seen": int(self.samples_seen),
                             "dropped_samples": int(self.dropped_samples)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("smt") or {}
        self.micro_batch_size = state.get("micro_batch_size")
        self.oom_events = list(state.get("oom_events", []))
        self.samples_seen = int(state.get("samples_seen", 0))
        self.dropped_samples = int(state.get("dropped_samples", 0))
