"""Re-tune the loop at each curriculum stage: the batch one forward/backward takes follows the
images the stage serves, the effective batch does not move.

The probe measured the run at its first stage (single systems). A page stage serves images
several times larger, so the micro-batch the first stage could afford may no longer fit. At
each stage boundary `StageTuner` renders a few of the stage's synthetic pages (the same maker
the loader's workers call), measures their size, and re-decides the micro-batch from the
probe's memory line at that size (`autotune.decide.stage.batch_at_size`; without a probe
profile, from the model's own estimate, said so). The loader batch and the accumulation stay,
so the effective batch is the same in every stage; the module splits each loader batch into
chunks of the new micro-batch (the mechanism its OOM back-off uses). The change is printed,
recorded in run.json's `stages` list, and kept in the checkpoint (a resumed run continues with
the stage's micro-batch). Loader workers react to the stage's loading cost through the
resource monitor's closed loop, which measures the wait for data as it happens.
"""
from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from autotune.decide.stage import StageBatch, StageMemory, batch_at_size

# Pages rendered to size a stage: the largest of a few draws (a page's height varies with
# how verovio breaks its systems); each costs about a second on a CPU.
SIZE_DRAWS = 2


@dataclass
class StageChange:
    stage: int
    step: int
    systems: int
    height_px: int
    width_px: int
    micro_batch_size: int | None       # None: the whole loader batch at once
    loader_batch_size: int
    predicted_peak_bytes: int
    reason: str
    samples_per_s: float | None = None  # filled when the stage ends


def _image_size(image: Any) -> tuple[int, int]:
    """(height, width) of a prepared row's image (PNG bytes dict, bytes or PIL image)."""
    from PIL import Image
    if isinstance(image, dict):
        image = image.get("bytes")
    if isinstance(image, (bytes, bytearray)):
        with Image.open(io.BytesIO(image)) as im:
            return im.height, im.width
    return int(image.height), int(image.width)


class StageTuner(Callback):
    """At each stage boundary: size the stage's images, re-decide the micro-batch, record it."""

    def __init__(self, source: Any, memory: StageMemory, loader_batch_size: int,
                 run_json: Path | None = None, say: Any = print,
                 extent_of: Callable[[str], tuple[int, int] | None] | None = None) -> None:
        self.source = source
        self.memory = memory
        # (height, width) of the largest image among the source's "systems" or "real pages"
        # (None: none, or not known; systems then take the memory line's own size).
        self.extent = extent_of or (lambda _kind: None)
        self.loader_batch_size = int(loader_batch_size)
        self.run_json = run_json
        self.say = say
        self.changes: list[StageChange] = []
        self._stage: int | None = None
        self._t0: float | None = None
        self._samples = 0

    def stage_size(self, stage: Any, step: int) -> tuple[int, int]:
        """The largest image the loader can serve in `stage`: systems in pre-training; in a
        page stage its synthetic pages (a few drawn) and, while part of the mix, the real
        pages, which are often the tallest."""
        if stage.systems <= 1:
            sizes = [self.extent("systems") or (self.memory.height, self.memory.width)]
        else:
            sizes = [_image_size(self.source.make_page(stage.systems,
                                                       7_000_003 + 97 * step + i)["image"])
                     for i in range(SIZE_DRAWS)]
            real = self.extent("real pages") if stage.synthetic_share < 1 else None
            if real is not None:
                sizes.append(real)
        return max(h for h, _ in sizes), max(w for _, w in sizes)

    def retune(self, pl_module: Any, step: int) -> StageChange:
        stage = self.source.schedule.stage_at(step)
        h, w = self.stage_size(stage, step)
        pick: StageBatch = batch_at_size(self.memory, h, w, self.loader_batch_size)
        micro = None if pick.batch >= self.loader_batch_size else pick.batch
        pl_module.micro_batch_size = micro
        change = StageChange(stage.index, step, stage.systems, h, w, micro,
                             self.loader_batch_size, pick.predicted_peak_bytes, pick.reason)
        self.changes.append(change)
        return change

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        step = int(trainer.global_step)
        stage = self.source.schedule.stage_at(step).index
        if stage == self._stage:
            return
        self._close_stage()
        self._stage = stage
        change = self.retune(pl_module, step)
        if trainer.is_global_zero:
            micro = change.micro_batch_size or change.loader_batch_size
            self.say(f"stage {change.stage} ({change.systems} system(s) per page): micro-batch "
                     f"{micro} of loader batch {change.loader_batch_size} (effective batch "
                     f"unchanged): {change.reason}")
            self._record()
        self._t0, self._samples = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        images = batch.get("images") if isinstance(batch, dict) else None
        self._samples += int(images.shape[0]) if hasattr(images, "shape") else 0

    def _close_stage(self) -> None:
        if self.changes and self._t0 is not None and self._samples:
            self.changes[-1].samples_per_s = round(
                self._samples / max(1e-9, time.perf_counter() - self._t0), 4)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._close_stage()
        if trainer.is_global_zero:
            self._record()

    def summary(self) -> list[dict[str, Any]]:
        return [asdict(c) for c in self.changes]

    def _record(self) -> None:
        """run.json's `stages`: what each stage ran at and why (rank 0, atomically)."""
        if self.run_json is None or not self.run_json.is_file():
            return
        import json

        from autotune.atomic import atomic_write_json
        data = json.loads(self.run_json.read_text(encoding="utf-8"))
        data["stages"] = self.summary()
        atomic_write_json(self.run_json, data)


def estimated_memory(config: Any, precision: str, height: int, width: int, seq_len: int,
                     budget_bytes: int) -> StageMemory:
    """A memory line from the model's own estimate at the first stage's largest image, for a
    run without a probe profile (labelled `estimated`)."""
    from smt.model import estimate_memory
    one = estimate_memory(config, 1, height, width, seq_len, precision).total_bytes
    two = estimate_memory(config, 2, height, width, seq_len, precision).total_bytes
    per = max(1, two - one)
    return StageMemory(float(one - per), float(per), height, width, budget_bytes, "estimated")


def stage_tuner(plan: Any, config: Any, source: Any, run_json: Path | None,
                say: Any = None) -> StageTuner:
    """The run's StageTuner: the memory line of its probe profile when it has one, else the
    model's own estimate against this machine's budget (RAM on a CPU, VRAM on a GPU)."""

    def largest(kind: str) -> tuple[int, int] | None:
        ext = source.extents.get(kind)          # scanned once, when the data was loaded
        return None if ext is None or not ext.max_height_px else \
            (ext.max_height_px, ext.max_width_px)
    memory = _profile_memory(plan.profile)
    if memory is None:
        from autotune.feasible import device_budget
        from autotune.hardware import inventory
        budget, _ = device_budget(inventory())
        ext = source.extents["systems"]
        memory = estimated_memory(config, plan.settings.precision, ext.max_height_px,
                                  ext.max_width_px, ext.max_seq_len_tokens, budget)
    if say is None:
        from smt.say import say
    return StageTuner(source, memory, plan.settings.batch_size, run_json, say, extent_of=largest)


def profile_dict(profile: str | None) -> dict[str, Any] | None:
    """A run's profile (its name or path) as a dict; None without one, or when it cannot be
    read (the planner has read it once already, so that is a race, not a user mistake)."""
    if not profile:
        return None
    import json

    from autotune.profile import resolve_profile_path
    try:
        data = json.loads(resolve_profile_path(profile).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _profile_memory(profile: str | None) -> StageMemory | None:
    data = profile_dict(profile)
    return StageMemory.from_profile(data) if data is not None else None
