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


def test_a_single_page_stage_starts_at_the_start_share() -> None:
    one = CurriculumSchedule(pretrain_steps=0, stage_steps=5, max_systems=2,
                             synthetic_share_start=0.7, synthetic_share_end=0.1)
    assert one.stage_at(0) == one.stage_at(99)
    assert one.stage_at(0).synthetic_share == pytest.approx(0.7)


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


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_curriculum_run_moves_from_systems_to_synthetic_pages(tmp_path, capsys) -> None:  # noqa: ANN001
    """A real run: 2 steps on systems, then pages of 2 systems rendered on demand."""
    import json

    from smt.train import main
    from tiny_scores import FAST, tiny_dataset_dict

    systems = tiny_dataset_dict(tmp_path / "systems", n_train=4, n_val=1, n_test=1)
    out = tmp_path / "run"
    assert main(["--curriculum", "--systems", str(systems), "--pretrain-steps", "2",
                 "--stage-steps", "2", "--max-systems", "2", *FAST, "--batch-size", "1",
                 "--reduce-ratio", "0.25", "--max-steps", "4", "--val-batches", "1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "curriculum stage 0: single systems" in printed
    assert "curriculum stage 1: pages, 2 system(s) per synthetic page, all synthetic" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["val_ser"] is not None
    assert [s["stage"] for s in summary["stages"]] == [0, 1]
    run = json.loads((out / "run.json").read_text())
    assert run["curriculum"]["stage_steps"] == 2
    # Each stage re-decided its micro-batch from its own images (pages are taller than
    # systems) and said so; the loader batch, so the effective batch, stayed.
    stages = run["stages"]
    assert [s["stage"] for s in stages] == [0, 1]
    assert stages[1]["height_px"] > stages[0]["height_px"]
    assert all(s["loader_batch_size"] == 1 for s in stages)
    assert all(s["samples_per_s"] for s in stages)
    assert "stage 1 (2 system(s) per page): micro-batch 1 of loader batch 1" in printed
