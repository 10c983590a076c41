"""`python -m smt.train` bounded by the machine: counts a flag or a profile gives, a run
folder with one owner, and no training on past a non-finite loss (the real command each time)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from autotune.bounds import COUNTS, OVERSUBSCRIBE
from autotune.hardware import usable_cpus
from autotune.outdir import RUN_LOCK
from tiny_scores import FAST, tiny_dataset_dict, trained_run

REPO = Path(__file__).resolve().parents[2]
FIXTURE_PROFILE = REPO / "tests" / "autotune" / "fixtures" / "profile-synthetic-cpu.json"
# More CPU ranks than the bound lets this machine start (whatever its cores).
TOO_MANY = int(OVERSUBSCRIBE * usable_cpus()) + 1


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "SMT_AUTOTUNE_CACHE": str(tmp_path / "cache"),
            **extra}


def _train(argv: list[str], tmp_path: Path, timeout: float = 300, **env: str
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smt.train", *argv], cwd=REPO,
                          env=_env(tmp_path, **env), capture_output=True, text=True,
                          timeout=timeout)


def _error_lines(proc: subprocess.CompletedProcess[str] | str) -> list[str]:
    text = proc if isinstance(proc, str) else proc.stderr
    return [ln for ln in text.splitlines() if "error:" in ln or "Traceback" in ln]


def _refused_in_planning(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """`python -m smt.train ARGV`'s entry point in this process (planning fails before torch
    or Lightning start anything): exit 2 and its one error line."""
    from autotune.errors import run_cli
    from smt.say import PROG
    from smt.train.cli import main
    code = run_cli(main, argv, prog=PROG)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    errors = _error_lines(err)
    assert len(errors) == 1, err[-2000:]
    return errors[0]


def _profile(tmp_path: Path, **settings: Any) -> Path:
    data = json.loads(FIXTURE_PROFILE.read_text())
    data["settings"].update(settings)
    path = tmp_path / "edited-profile.json"
    path.write_text(json.dumps(data))
    return path


def strict_json(path: Path) -> Any:
    """`json.loads` that refuses NaN and Infinity, as strict readers (browsers, jq) do."""
    def refuse(name: str) -> None:
        raise ValueError(f"{path}: non-standard JSON constant {name}")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


# -- one bound per count ------------------------------------------------------------------------

def test_devices_above_the_cores_start_no_process(tmp_path: Path) -> None:
    """The real command: refused in planning, so not one rank starts (the missing --data
    would be the error if planning let the run through)."""
    out = tmp_path / "run"
    proc = _train(["--preset", "debug", "--max-steps", "1", "--devices", "1000",
                   "--data", str(tmp_path / "missing"), "--out", str(out)], tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = _error_lines(proc)
    assert len(errors) == 1 and "--devices 1000" in errors[0] and "at most" in errors[0], errors
    assert not out.exists()


@pytest.mark.parametrize("extra, names", [
    (["--devices", str(TOO_MANY)], "--devices"),
    (["--devices", "2", "--num-threads", str(TOO_MANY)], "--num-threads"),
    ("profile-devices", 'profile {profile} "devices"'),
    ("profile-accumulate", "accumulate_grad_batches"),
], ids=["devices-above-cores", "threads-per-rank", "profile-devices", "profile-accumulate"])
def test_counts_above_what_the_machine_holds_are_one_line_before_any_work(
        tmp_path: Path, extra: Any, names: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Refused in planning: no run folder, the flag or profile key named."""
    profile = None
    if extra == "profile-devices":
        profile = _profile(tmp_path, devices=1000, effective_batch_size=16000)
    elif extra == "profile-accumulate":
        profile = _profile(tmp_path, accumulate_grad_batches=10**9)
    argv = ["--profile", str(profile)] if profile else list(extra)
    out = tmp_path / "run"
    error = _refused_in_planning(["--preset", "debug", "--max-steps", "1", "--data",
                                  str(tmp_path / "missing"), "--out", str(out), *argv], capsys)
    assert names.format(profile=profile) in error and "at most" in error, error
    assert not out.exists()


def test_force_oversubscribe_lets_the_ranks_through(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    error = _refused_in_planning(["--preset", "debug", "--max-steps", "1", "--devices",
                                  str(TOO_MANY), "--force-oversubscribe",
                                  "--data", str(tmp_path / "missing"),
                                  "--out", str(tmp_path / "run")], capsys)
    assert "missing" in error and "at most" not in error, error


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_every_count_has_one_bound_for_its_flag_and_its_setting(name: str) -> None:
    """The flag's argparse bound and a profile's (Settings) bound are the same number."""
    from autotune.errors import UserError
    from autotune.settings import Settings, SettingError
    from smt.runconfig import FLAG_OF
    from smt.train.cli import build_parser
    lo, hi = COUNTS[name]
    flag = FLAG_OF[name]
    parser = build_parser()
    assert getattr(parser.parse_args([flag, str(hi)]), flag[2:].replace("-", "_")) == hi
    with pytest.raises(UserError, match=flag):
        parser.parse_args([flag, str(hi + 1)])
    if name in {f for f in Settings.__dataclass_fields__}:
        with pytest.raises(SettingError) as caught:
            Settings.from_dict({name: hi + 1})
        assert caught.value.field == name


def test_search_points_keep_threads_per_rank_within_the_bound() -> None:
    from autotune.search.space import space_for
    profile = json.loads(FIXTURE_PROFILE.read_text())
    profile["settings"].update(devices=4, effective_batch_size=64)
    space = space_for("throughput", profile)
    cores = profile["hardware"]["cpu_count"]
    assert space.num_threads[1] * 4 <= OVERSUBSCRIBE * cores


# -- a run folder has one owner -----------------------------------------------------------------

@pytest.mark.parametrize("left", ["run.json", "config.json", "logs/csv/metrics.csv",
                                  "checkpoints/last.ckpt"])
def test_a_folder_a_run_wrote_in_needs_resume_or_another_out(
        tmp_path: Path, left: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A finished or crashed run, whatever it got to write, is not written over."""
    out = tmp_path / "run"
    (out / left).parent.mkdir(parents=True, exist_ok=True)
    (out / left).write_text("{}")
    error = _refused_in_planning(["--preset", "debug", "--max-steps", "1", "--out", str(out)],
                                 capsys)
    assert "already holds a run" in error and left.split("/")[0] in error, error
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [left]


def test_a_held_folder_is_one_line_naming_the_holders_pid(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The lock smt.train takes, held by another process: refused before any work."""
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom autotune.outdir import own_run_dir\n"
         "with own_run_dir(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)",
         str(out)], env=_env(tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        error = _refused_in_planning(["--preset", "debug", "--max-steps", "1", "--out", str(out)],
                                     capsys)
        assert f"pid {holder.pid}" in error and "in use" in error, error
    finally:
        holder.kill()
        holder.wait()
    assert [p.name for p in out.iterdir()] == [RUN_LOCK]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_second_training_into_a_running_ones_folder_is_one_line_naming_its_pid(
        tmp_path: Path) -> None:
    """The first run's files and metrics stay its own; the second never starts."""
    data = tiny_dataset_dict(tmp_path / "tiny", n_train=4, n_val=1, n_test=1)
    out = tmp_path / "run"
    argv = ["--data", str(data), *FAST, "--batch-size", "1", "--max-steps", "3", "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-m", "smt.train", *argv], cwd=REPO,
                             env=_env(tmp_path, SMT_LOADER_FAULT="sleep_ms=1500"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / RUN_LOCK).is_file() or not (out / RUN_LOCK).read_text().strip():
            assert first.poll() is None and time.monotonic() < deadline, "the first run ended"
            time.sleep(0.2)
        second = _train([*argv, "--max-steps", "1"], tmp_path)
        assert second.returncode == 2, second.stderr[-2000:]
        errors = _error_lines(second)
        assert len(errors) == 1 and f"pid {first.pid}" in errors[0], errors
        _, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-3000:]
    # Its logs stay (a second run's Lightning used to delete logs/csv under it).
    metrics = (out / "logs" / "csv" / "metrics.csv").read_text().splitlines()
    assert "val_loss" in metrics[0] and len(metrics) > 1, metrics
    assert json.loads((out / "run.json").read_text())["max_steps"] == 3


# -- non-finite guards ------------------------------------------------------------------------

def _weights_finite(ckpt: dict[str, Any]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in ckpt["state_dict"].values()
               if t.is_floating_point())


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("nan_at, kept_step", [(2, 2), (0, None)], ids=["mid-run", "first-step"])
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, nan_at: int, kept_step: int | None) -> None:
    data = tiny_dataset_dict(tmp_path / "tiny", n_train=6, n_val=1, n_test=1)
    out = tmp_path / "run"
    proc = _train(["--data", str(data), *FAST, "--batch-size", "1", "--max-steps", "5",
                   "--ckpt-every", "1", "--out", str(out)], tmp_path, timeout=600,
                  SMT_INJECT_NAN_AT_STEP=str(nan_at))
    assert proc.returncode == 3, proc.stderr[-3000:]
    errors = _error_lines(proc)
    assert len(errors) == 1, proc.stderr[-3000:]
    assert f"not finite (NaN or infinite) at step {nan_at}" in errors[0]
    assert "--lr" in errors[0] and "--init-from" in errors[0]
    last = out / "checkpoints" / "last.ckpt"
    if kept_step is None:
        assert not last.exists() and "no checkpoint had been written" in errors[0]
    else:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == kept_step and _weights_finite(ckpt)
        assert f"(step {kept_step}) is kept" in errors[0]
    for path in out.rglob("*.json"):
        strict_json(path)


def test_checkpoints_never_hold_non_finite_weights(tmp_path: Path) -> None:
    from smt.checkpoint import AtomicCheckpointIO, NonFiniteWeights
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    before = path.read_bytes()
    with pytest.raises(NonFiniteWeights, match=r"step 2 \(model.w\)"):
        io.save_checkpoint({"state_dict": {"model.w": torch.tensor([1.0, math.nan])},
                            "global_step": 2}, path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_json_we_write_is_strict(tmp_path: Path, value: float) -> None:
    """NaN and infinities become null wherever they sit (numpy's included)."""
    import numpy as np

    from autotune.atomic import atomic_write_json
    from autotune.profile import Profile, save_profile
    path = atomic_write_json(tmp_path / "summary.json",
                             {"val_loss": value, "losses": [1.0, value], "np": np.float32(value),
                              "nested": {"x": (value,)}})
    assert strict_json(path) == {"val_loss": None, "losses": [1.0, None], "np": None,
                                 "nested": {"x": [None]}}
    profile = json.loads(FIXTURE_PROFILE.read_text())
    profile["details"] = {"lr": value}
    saved = save_profile(Profile.from_dict(profile), tmp_path / "p.json")
    assert strict_json(Path(saved))["details"]["lr"] is None


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_runs_json_files_parse_strictly() -> None:
    """summary.json, run.json, config.json, vocab.json, resources.json of a real run."""
    run = trained_run()
    found = {p.name for p in run.rglob("*.json")}
    assert {"summary.json", "run.json", "config.json"} <= found, found
    for path in run.rglob("*.json"):
        strict_json(path)
