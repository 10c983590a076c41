from __future__ import annotations

import pytest

from smt.curriculum import CurriculumSchedule, CurriculumSource

SCHED = CurriculumSchedule(pretrain_steps=100, stage_steps=50, max_systems=4,
                           synthetic_share_start=0.9, synthetic_share_end=0.3)


@pytest.mark.parametrize("step, kind, systems, share", [
    (0, "systems", 1, 1.0),
    (99, "systems", 1, 1.0),
    (100, "pages", 2, 0.9),      # first page stage: 2 systems, mostly synthetic
    (149, "pages", 2, 0.9),
    (150, "pages", 3, 0.6),      # halfway down the share ramp
    (200, "pages", 4, 0.3),      # last stage reached
    (10_000, "pages", 4, 0.3),   # and kept
])
def test_schedule_stages(step: int, kind: str, systems: int, share: float) -> None:
    stage = SCHED.stage_at(step)
    assert (stage.kind, stage.systems) == (kind, systems)
    assert stage.synthetic_share == pytest.approx(share)


def test_stages_never_go_backwards() -> None:
    stages = [SCHED.stage_at(s) for s in range(0, 400, 7)]
    assert [s.systems for s in stages] == sorted(s.systems for s in stages)
    assert all(a.synthetic_share >= b.synthetic_share
               for a, b in zip(stages[4:], stages[5:]) if a.kind == b.kind == "pages")


@pytest.mark.parametrize("bad", [dict(stage_steps=0), dict(max_systems=1),
                                 dict(synthetic_share_start=1.5), dict(pretrain_steps=-1)])
def test_schedule_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        CurriculumSchedule(**bad)


def _source(real: int) -> CurriculumSource:
    systems = [{"image": None, "transcription": f"sys{i}"} for i in range(5)]
    pages = [{"image": None, "transcription": f"real{i}"} for i in range(real)]
    return CurriculumSource(SCHED, systems, pages,
                            lambda n, seed: {"image": None, "transcription": f"synth{n}"},
                            length=400, seed=1)


def test_source_mixes_as_scheduled() -> None:
    src = _source(real=20)
    src.set_step(0)
    assert {src[i]["transcription"][:3] for i in range(50)} == {"sys"}
    src.set_step(100)
    first = [src[i]["transcription"] for i in range(400)]
    src.set_step(200)
    last = [src[i]["transcription"] for i in range(400)]
    synth_first = sum(t == "synth2" for t in first) / 400
    synth_last = sum(t == "synth4" for t in last) / 400
    assert 0.84 < synth_first < 0.96 and 0.22 < synth_last < 0.38
    assert all(t == "synth2" or t.startswith("real") for t in first)
    # Same step, same index, same draw: a resumed run sees the same mix.
    assert [src[i]["transcription"] for i in range(400)] == last


def test_source_without_real_pages_is_all_synthetic() -> None:
    src = _source(real=0)
    src.set_step(250)
    assert {src[i]["transcription"] for i in range(100)} == {"synth4"}
