"""The data a run trains on: prepared splits (cached), the vocabulary reconciled with a
resumed run's, and the largest image and sequence in them (what the model is sized for)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.errors import UserError
from smt.builder import scan_extent
from smt.data import prepare as prep
from smt.tokenizer import Vocab, tokenize
from smt.say import is_rank_zero, say
from smt.runconfig import TrainConfig


@dataclass
class RunData:
    train: Any
    val: Any
    vocab: Any
    max_height: int
    max_width: int
    max_seq_len: int


def _extent(splits: Any, fmt: str) -> tuple[int, int, int]:
    """Largest height, width and token count over all splits (`smt.builder.scan_extent`)."""
    ext = scan_extent(splits, fmt)
    return ext.max_height_px, ext.max_width_px, ext.max_seq_len_tokens


def _prepare(plan: TrainConfig, source: str | None) -> tuple[Any, Any]:
    """(prepared DatasetDict, the preparation's result) of `source` at the plan's settings."""
    s = plan.settings
    config = prep.PrepareConfig(reduce_ratio=s.reduce_ratio, num_proc=s.num_proc,
                                writer_batch_size=s.writer_batch_size, fmt=plan.fmt)
    # Other DDP ranks re-run this after rank 0 prepared: they only read the cache, quietly.
    result = prep.prepare(source, config, quiet=not is_rank_zero())
    if is_rank_zero():
        print(result.summary(), flush=True)
    dataset = result.dataset if result.dataset is not None else prep.load_prepared(result.cache_dir)
    return dataset, result


def _reconcile_vocab(vocab: Vocab, vocab_path: Path | None) -> Vocab:
    """A resumed run keeps its own vocabulary (the model's output layer follows its ids); the
    data may not bring tokens it lacks."""
    if vocab_path is None or not vocab_path.is_file():
        return vocab
    saved = Vocab.load(vocab_path)
    if saved == vocab:
        return vocab
    missing = sorted(set(vocab.tokens) - set(saved.tokens))
    if missing:
        raise UserError(f"the data has tokens the resumed run's {vocab_path} lacks: "
                        f"{', '.join(missing[:10])}")
    return saved


def load_data(plan: TrainConfig, vocab_path: Path | None) -> RunData:
    """Prepared splits (cached), the vocabulary, and the largest image / sequence in them."""
    dataset, result = _prepare(plan, plan.data)
    vocab = _reconcile_vocab(Vocab.load(result.vocab_path), vocab_path)
    for split in ("train", "val"):
        if split not in dataset or len(dataset[split]) == 0:
            raise UserError(f"the prepared data has no '{split}' rows (source {plan.data or 'default'})")
    h, w, t = _extent(dataset, plan.fmt)
    return RunData(dataset["train"], dataset["val"], vocab, h, w, t)


def load_curriculum(plan: TrainConfig, vocab_path: Path | None) -> tuple[RunData, Any]:
    """Systems (the embedded set), the user's real pages (--data, optional), synthetic pages on
    demand, one vocabulary over all three; validation on real pages, else fixed synthetic ones."""
    from smt.curriculum import (VAL_PAGES, CurriculumSchedule, CurriculumSource, SyntheticPage,
                                vocabulary_tokens)
    assert plan.curriculum is not None
    schedule = CurriculumSchedule.of(plan.curriculum)
    systems = _prepare(plan, plan.curriculum.systems)[0]
    pages = _prepare(plan, plan.data)[0] if plan.data else None
    if vocab_path is not None and vocab_path.is_file():
        vocab = Vocab.load(vocab_path)
    else:
        lists = [tokenize(t, plan.fmt) for dd in (systems, pages) if dd is not None
                 for split in dd.values() for t in split["transcription"]]
        vocab = Vocab.build(lists + vocabulary_tokens(schedule, plan.fmt, plan.seed), fmt=plan.fmt)
    maker = SyntheticPage(plan.settings.reduce_ratio, plan.fmt, vocab.tokens)
    if pages is not None and len(pages.get("val", [])):
        val: Any = pages["val"]
    else:
        say(f"curriculum: no real validation pages; rendering {VAL_PAGES} synthetic pages of "
            f"{schedule.max_systems} systems")
        val = [maker(schedule.max_systems, 1_000_003 + i) for i in range(VAL_PAGES)]
    real_train = pages["train"] if pages is not None and "train" in pages else None
    length = len(systems["train"]) + (len(real_train) if real_train is not None else 0)
    # One scan per kind of row: the stage tuner sizes stages by the systems' and the real
    # pages' largest images, the model by the largest of everything.
    extents = {"systems": scan_extent({"systems": systems["train"]}, plan.fmt)}
    if real_train is not None and len(real_train):
        extents["real pages"] = scan_extent({"pages_train": real_train}, plan.fmt)
    others = {"val": val}
    if pages is not None:
        others.update({f"pages_{k}": v for k, v in pages.items() if k != "train"})
    scanned = [*extents.values(), scan_extent(others, plan.fmt)]
    source = CurriculumSource(schedule, systems["train"], real_train, maker, length, plan.seed,
                              extents)
    h, w, t = (max(getattr(e, f) for e in scanned)
               for f in ("max_height_px", "max_width_px", "max_seq_len_tokens"))
    # Synthetic pages may come out taller than any measured one: allow an A4 page's height.
    h = max(h, int(w * 1.414))
    return RunData(source, val, vocab, h, w, t), source
