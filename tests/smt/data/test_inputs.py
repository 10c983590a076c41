"""`python -m smt.data` on inputs a user's editor or typing produces, through the real command:
a byte-order mark (and CRLF) in a .krn changes no token, a preparation that keeps no row is a
non-zero exit with its skip counts, and `--out .` is refused with nothing lost."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from smt.data.rows import R_NOT_KERN
from smt.tokenizer import Vocab, normalize_kern, tokenize

REPO = Path(__file__).resolve().parents[3]
ROWS = 4


def smt_data(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smt.data", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})


def image_folder(raw_dir: Path, dest: Path, text_of=lambda kern: kern) -> list[str]:
    """ROWS images of the raw fixture with their transcriptions as `text_of` writes them
    (bytes, so that no newline is translated); returns the plain transcriptions."""
    dest.mkdir(parents=True)
    train = datasets.load_from_disk(str(raw_dir))["train"]
    plain = []
    for i in range(ROWS):
        row = train[i]
        row["image"].save(dest / f"r{i}.png")
        (dest / f"r{i}.krn").write_bytes(text_of(row["transcription"]).encode("utf-8"))
        plain.append(row["transcription"])
    return plain


@pytest.mark.parametrize(("name", "text_of"), [
    ("bom", lambda kern: "\ufeff" + kern),
    ("bom-crlf", lambda kern: "\ufeff" + kern.replace("\n", "\r\n")),
])
def test_a_byte_order_mark_changes_no_token(synth_raw_dir: Path, tmp_path: Path, name: str,
                                            text_of) -> None:
    plain = image_folder(synth_raw_dir, tmp_path / name, text_of)
    proc = smt_data(["prepare", "--data", str(tmp_path / name), "--out", str(tmp_path / "out")])
    assert proc.returncode == 0, proc.stderr
    tokens = Vocab.load(tmp_path / "out" / "vocab.json").tokens
    expected = Vocab.build(tokenize(normalize_kern(t)) for t in plain).tokens
    assert not [t for t in tokens if "\ufeff" in t]
    assert tokens == expected


def test_a_preparation_that_keeps_no_row_fails_with_its_skip_counts(synth_raw_dir: Path,
                                                                    tmp_path: Path) -> None:
    image_folder(synth_raw_dir, tmp_path / "prose", lambda _: "a letter, not a score\n")
    proc = smt_data(["prepare", "--data", str(tmp_path / "prose")])
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "kept 0 of" in err[-1] and f"{R_NOT_KERN}: {ROWS}" in err[-1], err


@pytest.mark.parametrize(("out", "flag"), [(".", "--overwrite"), ("..", "--overwrite")])
def test_out_that_is_or_holds_the_current_folder_is_refused(tmp_path: Path, out: str,
                                                            flag: str) -> None:
    here = tmp_path / "work" / "here"
    here.mkdir(parents=True)
    (here / "keep.txt").write_text("mine")
    proc = smt_data(["synth", "--out", out, flag, "--count", "2"], cwd=here)
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert len(err.splitlines()) == 1 and "current folder" in err, err
    assert (here / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["here", "keep.txt", "work"]
