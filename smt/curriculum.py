"""SMT++ curriculum for full pages: systems first, then pages that grow, real pages mixed in.

Stage 0 (`pretrain_steps`) trains on single systems, which teaches the notation cheaply. Then
each page stage lasts `stage_steps` optimizer steps: synthetic pages hold 2, 3, ... up to
`max_systems` systems, and the share of synthetic pages falls linearly from
`synthetic_share_start` to `synthetic_share_end` across those stages, the rest being real pages.
After the last stage the mix stays where it ended. Without real pages every sample is
synthetic whatever the share says: the schedule never asks for data that does not exist.

The sampler reads the optimizer step from a shared integer that a callback updates, so
DataLoader workers (separate processes) follow the schedule without rebuilding the loader.
"""
from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from lightning.pytorch.callbacks import Callback

from smt.say import say
from smt.runconfig import CurriculumConfig

_DEFAULT = CurriculumConfig()
# The share of synthetic pages in the last stage: mostly real pages, the target domain.
SHARE_END = 0.2


@dataclass(frozen=True)
class Stage:
    index: int                 # 0 = systems pre-training, 1.. = page stages
    kind: str                  # "systems" or "pages"
    systems: int               # systems per synthetic page (1 in pre-training)
    synthetic_share: float     # probability that a page sample is synthetic


@dataclass(frozen=True)
class CurriculumSchedule:
    """The stages of a `CurriculumConfig` (its defaults are there, with their reasons)."""
    pretrain_steps: int = _DEFAULT.stage_steps        # CurriculumConfig: one stage's worth
    stage_steps: int = _DEFAULT.stage_steps
    max_systems: int = _DEFAULT.max_systems
    synthetic_share_start: float = _DEFAULT.synthetic_share
    synthetic_share_end: float = SHARE_END

    @classmethod
    def of(cls, config: CurriculumConfig) -> "CurriculumSchedule":
        """The schedule of a run's curriculum: the share falls from the configured start to
        SHARE_END (or stays, when it starts lower)."""
        return cls(pretrain_steps=config.stage_steps if config.pretrain_steps is None
                   else config.pretrain_steps,
                   stage_steps=config.stage_steps,
                   max_systems=config.max_systems, synthetic_share_start=config.synthetic_share,
                   synthetic_share_end=min(config.synthetic_share, SHARE_END))

    def __post_init__(self) -> None:
        CurriculumConfig(stage_steps=self.stage_steps, pretrain_steps=self.pretrain_steps,
                         max_systems=self.max_systems)      # the same limits, named the same
        for name in ("synthetic_share_start", "synthetic_share_end"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")

    @property
    def page_stages(self) -> int:
        return self.max_systems - 1      # 2 .. max_systems systems

    def stage_at(self, step: int) -> Stage:
        if step < self.pretrain_steps:
            return Stage(0, "systems", 1, 1.0)
        k = min((step - self.pretrain_steps) // self.stage_steps, self.page_stages - 1)
        frac = k / (self.page_stages - 1) if self.page_stages > 1 else 0.0
        share = self.synthetic_share_start + frac * (self.synthetic_share_end
                                                     - self.synthetic_share_start)
        return Stage(k + 1, "pages", 2 + k, round(share, 6))

    def total_steps(self) -> int:
        """Steps until the last stage begins (training may go on there)."""
        return self.pretrain_steps + (self.page_stages - 1) * self.stage_steps


# A synthetic page maker: (number of systems, seed) -> row dict with `image` and `transcription`.
PageMaker = Callable[[int, int], dict[str, Any]]


class CurriculumSource:
    """A split-like view (`len`, `[i]` -> row dict) that follows the schedule.

    Wrap it in `smt.data.loader.ScoreDataset` like any prepared split. `systems` are the
    pre-training rows, `real_pages` the target rows (may be empty), `make_page` renders a
    synthetic page on demand (in the DataLoader worker that asks for it).
    """

    def __init__(self, schedule: CurriculumSchedule, systems: Any, real_pages: Any | None,
                 make_page: PageMaker, length: int, seed: int = 0,
                 extents: dict[str, Any] | None = None) -> None:
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length!r}")
        self.schedule = schedule
        self.systems = systems
        self.real_pages = real_pages
        # `smt.builder.Extent` of the "systems" and of the "real pages" (absent: none), as the
        # caller scanned them once; the stage tuner sizes its stages from them.
        self.extents = dict(extents or {})
        self.make_page = make_page
        self.length = length
        self.seed = seed
        # Shared with DataLoader workers by inheritance when they start.
        self._step = mp.Value("q", 0, lock=False)

    @property
    def step(self) -> int:
        return int(self._step.value)

    def set_step(self, step: int) -> None:
        self._step.value = int(step)

    def __len__(self) -> int:
        return self.length

    def choose(self, index: int, step: int) -> tuple[str, int]:
        """("system", row) | ("real", row) | ("synthetic", systems) for sample `index` at `step`.

        Deterministic in (seed, step, index) so that runs and resumes draw the same mix.
        """
        stage = self.schedule.stage_at(step)
        rng = np.random.default_rng((self.seed, step, index))
        if stage.kind == "systems":
            return "system", int(rng.integers(len(self.systems)))
        has_real = self.real_pages is not None and len(self.real_pages) > 0
        if not has_real or rng.random() < stage.synthetic_share:
            return "synthetic", stage.systems
        return "real", int(rng.integers(len(self.real_pages)))

    def __getitem__(self, index: int) -> dict[str, Any]:
        step = self.step
        kind, value = self.choose(int(index), step)
        if kind == "system":
            return self.systems[value]
        if kind == "real":
            return self.real_pages[value]
        return self.make_page(value, hash((self.seed, step, int(index))) & 0x7FFFFFFF)


class CurriculumStep(Callback):
    """Hands the optimizer step to the curriculum source before each batch is drawn."""

    def __init__(self, source: CurriculumSource) -> None:
        self.source = source
        self._stage: int | None = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.source.set_step(trainer.global_step)
        stage = self.source.schedule.stage_at(trainer.global_step)
        if stage.index != self._stage:
            if stage.kind == "systems":
                what = "single systems"
            else:
                real = self.source.real_pages is not None and len(self.source.real_pages) > 0
                share = f"{stage.synthetic_share:.0%} synthetic" if real else \
                    "all synthetic (no real pages given)"
                what = f"pages, {stage.systems} system(s) per synthetic page, {share}"
            say(f"curriculum stage {stage.index}: {what}")
        self._stage = stage.index


# ------------------------------------------------------------------------------------------
# The real pieces: synthetic pages rendered on demand, and the training/validation splits.

# Measures per system on a ~2100 px page (a printed page holds 4-6 systems of 3-5 measures);
# verovio breaks the systems itself, so this sets the expected, not the exact, system count.
MEASURES_PER_SYSTEM = 4
# Fixed synthetic validation pages when the user has no real pages: enough to see SER move.
VAL_PAGES = 8
# Draws of generated kern per system count used to cover the vocabulary before training.
VOCAB_DRAWS = 200


def page_kern(systems: int, seed: int) -> str:
    from smt.data.kern_gen import PRESETS, GenConfig, generate
    base = PRESETS["page"]
    n = max(1, systems * MEASURES_PER_SYSTEM)
    cfg = GenConfig(**{**base.__dict__, "measures_min": max(1, n - 1), "measures_max": n + 1})
    return generate(seed, "page", cfg)


class SyntheticPage:
    """Picklable page maker: generate, render, and prepare exactly like the real rows."""

    def __init__(self, reduce_ratio: float, fmt: str, vocab_tokens: list[str] | None = None) -> None:
        self.reduce_ratio = reduce_ratio
        self.fmt = fmt
        self.known = set(vocab_tokens) if vocab_tokens is not None else None

    def __call__(self, systems: int, seed: int) -> dict[str, Any]:
        from smt.data.prepare import prepare_example
        from smt.data.render import RenderError, render
        from smt.tokenizer import tokenize

        last: Exception | None = None
        for attempt in range(8):     # a rare unrenderable or out-of-vocabulary draw: next seed
            s = (seed + attempt * 7919) & 0x7FFFFFFF
            kern = page_kern(systems, s)
            if self.known is not None and not set(tokenize(kern, self.fmt)) <= self.known:
                continue
            try:
                png = render(kern, "page", seed=s)
            except RenderError as exc:
                last = exc
                continue
            row = prepare_example({"image": {"bytes": png, "path": None}, "transcription": kern},
                                  self.reduce_ratio, self.fmt, None)
            if not row["skip"]:
                return {"image": row["image"], "transcription": row["transcription"]}
        raise RuntimeError(f"no usable synthetic page with {systems} systems near seed {seed}: {last}")


def vocabulary_tokens(schedule: CurriculumSchedule, fmt: str, seed: int = 0) -> list[list[str]]:
    """Token lists of generated pages at every system count, so the vocabulary covers them."""
    from smt.tokenizer import tokenize
    return [tokenize(page_kern(n, seed * 100_003 + i), fmt)
            for n in range(2, schedule.max_systems + 1) for i in range(VOCAB_DRAWS // 4)]
