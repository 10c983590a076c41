"""`autotune search` paths a user can get wrong, through the real command: a journal storage
or a run folder that cannot be one is a single line (exit 2) before the search starts, and an
existing file that is not a journal is left as it was."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOT_A_JOURNAL = "my notes, not a journal\n"


def search(tmp_path: Path, storage: str, run_dir: str) -> subprocess.CompletedProcess[str]:
    # The trainer is never started: every case here must stop before the first trial.
    argv = ["--trainer", "false", "--workload", "none", "--trials", "1", "--storage", storage,
            "--run-dir", run_dir]
    return subprocess.run([sys.executable, "-m", "autotune.search", *argv], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=300)


def _layout(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "notes.txt").write_text(NOT_A_JOURNAL)


# (storage, run dir, what the line says); "RO" stands for a folder nothing can be created in.
CASES = [
    ("journal:folder", "run", "is a folder"),
    ("journal:a-file/search.log", "run", "a-file is a file"),
    ("journal:notes.txt", "run", "not an Optuna journal"),
    ("journal:RO/search.log", "run", "cannot write in"),
    ("journal:j.log", "a-file", "--run-dir a-file: is an existing file"),
    ("journal:j.log", "RO/run", "--run-dir"),
]


@pytest.mark.parametrize(("storage", "run_dir", "says"), CASES)
def test_a_bad_storage_or_run_folder_is_one_line(tmp_path: Path, read_only_dir: Path, storage: str,
                                                 run_dir: str, says: str) -> None:
    _layout(tmp_path)
    storage, run_dir = (s.replace("RO", str(read_only_dir)) for s in (storage, run_dir))
    proc = search(tmp_path, storage, run_dir)
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert says in err, err
    assert (tmp_path / "notes.txt").read_text() == NOT_A_JOURNAL
    assert not (tmp_path / "run").exists()
