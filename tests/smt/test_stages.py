"""StageTuner: at each curriculum stage the micro-batch follows the stage's image size, the
effective batch stays, and run.json says what changed and why."""
from __future__ import annotations

import io
import json
from types import SimpleNamespace
from typing import Any

from PIL import Image

from autotune.decide.stage import StageMemory
from smt.curriculum import CurriculumSchedule
from smt.stages import StageTuner

MIB = 2**20


class PageSource:
    """A curriculum source whose synthetic page of n systems is n system-heights tall."""

    def __init__(self, schedule: CurriculumSchedule) -> None:
        self.schedule = schedule
        self.pages: list[int] = []

    def make_page(self, systems: int, seed: int) -> dict[str, Any]:
        self.pages.append(systems)
        buf = io.BytesIO()
        Image.new("L", (1000, 200 * systems), 255).save(buf, format="PNG")
        return {"image": {"bytes": buf.getvalue(), "path": None}, "transcription": "*"}


def test_stage_two_images_past_the_line_shrink_the_micro_batch(tmp_path) -> None:
    schedule = CurriculumSchedule(pretrain_steps=2, stage_steps=2, max_systems=4)
    source = PageSource(schedule)
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({"settings": {"batch_size": 4}}))
    # Measured at single systems (200x1000 px): 4 samples fit in 1 GiB, 2-system pages fit 2.
    line = StageMemory(100 * MIB, 200 * MIB, 200, 1000, 1024 * MIB)
    said: list[str] = []
    tuner = StageTuner(source, line, loader_batch_size=4, run_json=run_json, say=said.append)
    module = SimpleNamespace(micro_batch_size=None)
    micro = {}
    for step in range(8):
        trainer = SimpleNamespace(global_step=step, is_global_zero=True)
        tuner.on_train_batch_start(trainer, module, {}, step)
        micro[step] = module.micro_batch_size
        tuner.on_train_batch_end(trainer, module, None, {"images": SimpleNamespace(shape=(4,))}, step)
    # Stage 0 (systems): the whole loader batch; stage 1 (2 systems): 2; stages 2, 3: 1.
    assert micro == {0: None, 1: None, 2: 2, 3: 2, 4: 1, 5: 1, 6: 1, 7: 1}
    assert [c.stage for c in tuner.changes] == [0, 1, 2, 3]
    assert all(c.loader_batch_size == 4 for c in tuner.changes)     # effective batch kept
    assert len(said) == 4 and "effective batch unchanged" in said[1] and "2.00x" in said[1]
    recorded = json.loads(run_json.read_text())["stages"]
    assert [s["micro_batch_size"] for s in recorded] == [None, 2, 1, 1]
    assert recorded[1]["height_px"] == 400 and recorded[0]["samples_per_s"] is not None


def _sizes(tuner: StageTuner, steps: int) -> dict[int, tuple[int, int, int | None]]:
    module = SimpleNamespace(micro_batch_size=None)
    for step in range(steps):
        trainer = SimpleNamespace(global_step=step, is_global_zero=True)
        tuner.on_train_batch_start(trainer, module, {}, step)
        tuner.on_train_batch_end(trainer, module, None, {"images": SimpleNamespace(shape=(4,))}, step)
    return {c.stage: (c.height_px, c.width_px, c.micro_batch_size) for c in tuner.changes}


def test_each_stage_is_sized_by_the_largest_image_its_loader_can_serve() -> None:
    """Stage 0 by the systems (not the size the memory line was measured at); a page stage by
    its synthetic pages and, while they are in the mix, the real pages (taller here: 1,600 px
    against 400 and 600), until the share is all synthetic."""
    schedule = CurriculumSchedule(pretrain_steps=1, stage_steps=1, max_systems=3,
                                  synthetic_share_start=0.9, synthetic_share_end=0.2)
    # Measured on the real pages (1,600 x 1,000): 600 MiB a sample there, so one fits in 1 GiB;
    # at 400 px tall (150 MiB a sample) all four do.
    line = StageMemory(100 * MIB, 600 * MIB, 1600, 1000, 1024 * MIB)
    largest = {"systems": (150, 1000), "real pages": (1600, 1000)}
    tuner = StageTuner(PageSource(schedule), line, loader_batch_size=4, say=lambda _m: None,
                       extent_of=largest.get)
    sizes = _sizes(tuner, 3)
    assert sizes[0][:2] == (150, 1000) and sizes[0][2] is None     # systems: all 4 at once
    assert sizes[1][:2] == (1600, 1000) and sizes[2][:2] == (1600, 1000)
    assert sizes[1][2] == 1                                        # a real page: one at a time
    all_synthetic = CurriculumSchedule(pretrain_steps=1, stage_steps=1, max_systems=3,
                                       synthetic_share_start=1.0, synthetic_share_end=1.0)
    tuner = StageTuner(PageSource(all_synthetic), line, loader_batch_size=4, say=lambda _m: None,
                       extent_of=largest.get)
    assert _sizes(tuner, 3)[1][:2] == (400, 1000)                  # real pages never served
