"""The LightningModule on its own: it learns, and an OOM costs nothing but speed."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from smt.config import SMTConfig
from smt.data.loader import ScoreDataset, collate
from smt.faults import ENV_INJECT_OOM_ABOVE
from smt.module import OutOfMemoryAtBatchOne, SMTModule, TrainHParams, _split_batch
from smt.tokenizer import Vocab, detokenize, tokenize
from tiny_scores import tiny_rows


@pytest.fixture(scope="module")
def tiny() -> tuple[object, Vocab]:
    import datasets
    rows = tiny_rows(4)
    ds = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    vocab = Vocab.build([tokenize(r["transcription"], "bekern") for r in rows], fmt="bekern")
    return ds, vocab


def _fit(ds: object, vocab: Vocab, steps: int, lr: float = 3e-3, batch: int = 4,
         accumulate: int = 1, precision: str = "32-true") -> SMTModule:
    torch.manual_seed(0)
    module = SMTModule(SMTConfig.preset("debug", vocab_size=len(vocab)), vocab, "bekern",
                       TrainHParams(lr=lr, accumulate=accumulate))
    loader = DataLoader(ScoreDataset(ds, vocab, "bekern"), batch_size=batch, shuffle=False,
                        collate_fn=collate)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, precision=precision,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    losses: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
            losses.append(pl_module.last_train_loss)

    trainer.callbacks.append(Record())
    trainer.fit(module, loader)
    module.losses = losses  # type: ignore[attr-defined]
    return module


@pytest.mark.timeout(180)
def test_debug_model_overfits_a_handful_of_systems(tiny: tuple[object, Vocab]) -> None:
    ds, vocab = tiny
    module = _fit(ds, vocab, steps=150)
    losses = module.losses  # type: ignore[attr-defined]
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
    items = [ScoreDataset(ds, vocab, "bekern")[i] for i in range(len(ds))]
    batch = collate(items)
    out = module.model.generate(batch["images"], max_len=200, image_sizes=batch["image_sizes"])
    got = [detokenize(vocab.decode(ids), "bekern") for ids in out]
    want = [detokenize(tokenize(t, "bekern"), "bekern") for t in ds["transcription"]]
    assert got == want


def test_split_batch_keeps_rows_together() -> None:
    batch = {"images": torch.arange(5).view(5, 1, 1, 1), "input_ids": torch.arange(10).view(5, 2),
             "transcriptions": list("abcde"), "note": "kept"}
    chunks = _split_batch(batch, 2)
    assert [c["images"].shape[0] for c in chunks] == [2, 2, 1]
    assert [c["transcriptions"] for c in chunks] == [["a", "b"], ["c", "d"], ["e"]]
    assert torch.equal(torch.cat([c["input_ids"] for c in chunks]), batch["input_ids"])
    assert all(c["note"] == "kept" for c in chunks)


@pytest.mark.timeout(120)
def test_oom_halves_the_micro_batch_and_keeps_the_effective_batch(
        tiny: tuple[object, Vocab], monkeypatch: pytest.MonkeyPatch) -> None:
    ds, vocab = tiny
    clean = _fit(ds, vocab, steps=6, accumulate=2, batch=2)
    monkeypatch.setenv(ENV_INJECT_OOM_ABOVE, "1")
    recovered = _fit(ds, vocab, steps=6, accumulate=2, batch=2)
    # One OOM at the first step, then micro-batches of 1 for the rest of the run.
    assert recovered.micro_batch_size == 1
    assert [(e["step"], e["micro_batch_from"], e["micro_batch_to"]) for e in recovered.oom_events] \
        == [(0, 2, 1)]
    assert recovered.global_step == clean.global_step == 6
    # Same samples per optimizer step, same loss normalisation: the same training.
    assert recovered.losses == pytest.approx(clean.losses, rel=1e-5)  # type: ignore[attr-defined]
    for (name, a), b in zip(clean.named_parameters(), recovered.parameters()):
        if name.endswith("k_proj.bias"):
            # Softmax ignores a constant added to every key: this gradient is float noise,
            # which Adam normalises into full-size steps. Nothing to compare.
            continue
        assert torch.allclose(a, b, atol=2e-5, rtol=1e-4), name


@pytest.mark.timeout(60)
def test_oom_at_batch_one_stops_with_the_reduce_ratio_to_try(
        tiny: tuple[object, Vocab], monkeypatch: pytest.MonkeyPatch) -> None:
    ds, vocab = tiny
    monkeypatch.setenv(ENV_INJECT_OOM_ABOVE, "0")
    with pytest.raises(OutOfMemoryAtBatchOne, match=r"--reduce-ratio 0\.75"):
        _fit(ds, vocab, steps=2, batch=2)


@pytest.mark.timeout(120)
def test_fp16_clipping_bounds_the_unscaled_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the fp16 grad scaler (loss scale 2^16) the clip sees the true gradient norm, not
    the scaled one: clipping scaled gradients would shrink every fp16 step by the scale."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    import smt.step as step_mod
    from smt.builder import synthetic_batch

    def fp16_on_cpu(precision: str, device: str) -> pl.Trainer:
        # Lightning turns "16-mixed" into bf16 on a CPU; the plugin itself runs here as on a GPU.
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
        return pl.Trainer(accelerator="cpu", devices=1, logger=False,
                          plugins=[MixedPrecision("16-mixed", "cpu", scaler)],
                          enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False)

    monkeypatch.setattr(step_mod, "_shell_trainer", fp16_on_cpu)
    vocab = Vocab.build([], fmt="bekern")
    config = SMTConfig.preset("debug")
    module = SMTModule(config, vocab, "bekern", TrainHParams(grad_clip=1.0))
    seen: list[float] = []
    clip = module.clip_gradients

    def recording_clip(optimizer, **kwargs):  # noqa: ANN001, ANN003
        grads = [p.grad.norm() for p in module.parameters() if p.grad is not None]
        seen.append(float(torch.stack(grads).norm()))
        return clip(optimizer, **kwargs)

    module.clip_gradients = recording_clip  # type: ignore[method-assign]
    batch = synthetic_batch(2, 64, 256, 33, config.vocab_size)
    with step_mod.TrainStep(module, batch, "16-mixed") as step:
        assert step.trainer.precision_plugin.scaler is not None
        losses = [step() for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert len(seen) == 2 and all(0 < n < 2.0 ** 8 for n in seen), seen
