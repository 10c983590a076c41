"""`--resume`: a run continues from last.ckpt, also after a SIGKILL, losing at most one
checkpoint interval."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autotune.errors import UserError
from smt.train import main
from tiny_scores import FAST, tiny_dataset_dict, trained_run

REPO = Path(__file__).resolve().parents[2]


def _step(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_resume_continues_from_the_saved_step(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run(), run)
    before = json.loads((run / "summary.json").read_text())
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)

    assert main(["--resume", str(run), "--max-steps", str(saved["global_step"] + 6)]) == 0

    after = json.loads((run / "summary.json").read_text())
    assert after["steps"] == saved["global_step"] + 6
    # Only the 6 new steps ran (2 samples each); the totals carry on from the checkpoint.
    assert after["samples"] == 6 * 2
    assert after["samples_total"] == before["samples_total"] + 12
    resumed = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    opt_before = saved["optimizer_states"][0]["state"][0]["step"]
    assert resumed["optimizer_states"][0]["state"][0]["step"] == opt_before + 6   # Adam state kept
    assert resumed["lr_schedulers"][0]["last_epoch"] == saved["lr_schedulers"][0]["last_epoch"] + 6


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_then_resume_auto_loses_at_most_one_interval(tmp_path: Path) -> None:
    data = tiny_dataset_dict(tmp_path / "tiny", n_train=2, n_val=1, n_test=1)
    root = tmp_path / "runs"
    kill_at, every, total = 8, 3, 12
    argv = ["--data", str(data), *FAST, "--batch-size", "2", "--max-steps", str(total),
            "--ckpt-every", str(every), "--out", str(root / "first")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "SMT_INJECT_KILL_AT_STEP": str(kill_at)}
    proc = subprocess.run([sys.executable, "-m", "smt.train", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=500)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpt = root / "first" / "checkpoints" / "last.ckpt"
    saved = _step(ckpt)
    assert saved == (kill_at // every) * every          # the last periodic save before the kill
    assert kill_at - saved <= every
    assert not (root / "first" / "summary.json").exists()

    # `--resume auto` finds the run under the output root and finishes it with its own settings.
    assert main(["--resume", "auto", "--out", str(root)]) == 0
    summary = json.loads((root / "first" / "summary.json").read_text())
    assert summary["steps"] == total
    assert summary["samples"] == (total - saved) * 2     # resumed at the saved step, not at 0
    assert _step(ckpt) == total


def test_resume_auto_without_a_run_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"no run with checkpoints/last.ckpt under {tmp_path}"):
        main(["--resume", "auto", "--out", str(tmp_path)])


def test_resume_of_a_missing_path_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        main(["--resume", str(tmp_path / "nope")])
