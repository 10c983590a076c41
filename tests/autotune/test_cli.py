"""`python -m autotune` in-process: show, plan, probe dispatch, hooks, one-line errors."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from autotune import cli
from autotune.profile import load_profile

FIX = Path(__file__).parent / "fixtures"
SPECS = Path(__file__).parents[2] / "profiles" / "specs"
# Made up for the rules (says so: kind "synthetic"); and a probe really recorded on a machine
# (its `provenance` says when, where and by which command), for what must be measured.
SYNTHETIC = FIX / "profile-synthetic-cpu.json"
RECORDED = FIX / "profile-recorded-cpu-debug.json"


def test_show_prints_every_setting_with_its_reason(capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert cli.main(["show", str(RECORDED)]) == 0
    out = capsys.readouterr().out
    profile = load_profile(RECORDED)
    for key, value in profile.settings.to_dict().items():
        assert key in out
    assert "rows/s" in out and "measured" in out
    assert profile.hardware.fingerprint in out
    # A probe that ran out of memory at batch 1: the synthetic profile has one.
    assert cli.main(["show", str(SYNTHETIC)]) == 0
    assert "OOM at batch 1" in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_show_plot_writes_the_curves(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["show", str(SYNTHETIC), "--plot", str(tmp_path / "plots")]) == 0
    from autotune.outdir import OUT_MARKER       # the folder's "written by show --plot" mark
    names = sorted(p.name for p in (tmp_path / "plots").iterdir() if p.name != OUT_MARKER)
    assert names == ["loader.png", "map.png", "model.png"]
    for name in names:
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plan_writes_a_predicted_profile(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "t4x2.json"
    rc = cli.main(["plan", "--hardware", str(SPECS / "kaggle-t4x2.json"), "--from",
                   str(SYNTHETIC), "--out", str(out), "--effective-batch", "32"])
    assert rc == 0
    profile = load_profile(out)
    assert profile.kind == "plan" and profile.name == "kaggle-t4x2"
    assert profile.settings.devices == 2 and profile.settings.effective_batch_size >= 32
    assert "predicted" in capsys.readouterr().out


def test_plan_names_the_profile_by_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("SMT_AUTOTUNE_PROFILES", str(tmp_path))
    shutil.copy(SYNTHETIC, tmp_path / "here.json")
    assert cli.main(["plan", "--hardware", str(SPECS / "colab-t4.json"), "--from", "here"]) == 0
    assert load_profile(tmp_path / "colab-t4.json").settings.precision == "16-mixed"


@pytest.mark.parametrize("argv, message", [
    (["show", "no-such-profile"], "no-such-profile.json: no such profile file"),
    (["plan", "--hardware", "missing.json", "--from", str(SYNTHETIC)],
     "missing.json: no such hardware spec file"),
    (["plan", "--hardware", str(SPECS / "cpu-2core.json"), "--from", str(SYNTHETIC),
      # A writable --out (checked first, since issue 13): nothing is written, nothing fits.
      "--ram-budget", "1GB", "--out", str(Path(tempfile.gettempdir()) / "never-written.json")],
     "would fit"),
    (["plan", "--hardware", str(SPECS / "cpu-2core.json"), "--from", str(SYNTHETIC),
      "--ram-budget", "many"], "--ram-budget"),
])
def test_user_errors_are_one_line_exit_2(argv: list[str], message: str,
                                         capsys: pytest.CaptureFixture) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autotune: error:") and message in err and "\n" not in err


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["show", "no-such-profile", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_probe_dispatches_with_its_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    import autotune.probe
    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(autotune.probe, "run_probe", lambda args: seen.append(args) or 0)
    assert cli.main(["probe", "--preset", "debug", "--ram-budget", "4GB", "--devices", "1",
                     "--time-budget", "30", "--name", "x", "--effective-batch", "8"]) == 0
    a = seen[0]
    assert (a.preset, a.ram_budget, a.devices, a.time_budget, a.name, a.effective_batch) == \
        ("debug", "4GB", 1, 30.0, "x", 8)


def test_a_broken_hook_does_not_break_the_others(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(cli._HOOKS, "bogus", "autotune.no_such_module")
    assert cli.main(["show", str(SYNTHETIC)]) == 0
    assert cli.main(["bogus"]) == 2
    assert "`bogus` is unavailable" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["probe", "--devices", "0"], ["plan"],
                                  ["probe", "--time-budget", "-1"]])
def test_bad_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autotune: error: autotune ") and "\n" not in err


@pytest.mark.timeout(60)
def test_module_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "autotune", "show", str(SYNTHETIC)],
                          capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    assert "batch_size" in proc.stdout
    info = json.loads(SYNTHETIC.read_text())
    assert info["schema"] == 1
