"""`--out` never destroys what was there (issue 13 item 1, and item 8's `--out` cases), through
the real CLIs: an output that is, contains or lies inside an input is refused; an existing
folder is replaced only if an earlier run of the same command wrote it, or with --overwrite;
a file or an unwritable place is one line; nothing half-written is left behind."""
from __future__ import annotations

from pathlib import Path

import pytest

from autotune.errors import run_cli
from autotune.outdir import OUT_MARKER
from smt.data.__main__ import main


def _image_folder(raw_dir: Path, dest: Path, n: int) -> None:
    import datasets
    dest.mkdir(parents=True, exist_ok=True)
    train = datasets.load_from_disk(str(raw_dir))["train"]
    for i in range(n):
        train[i]["image"].save(dest / f"r{i}.png")
        (dest / f"r{i}.krn").write_text(train[i]["transcription"])


def _cli(argv: list[str]) -> int:
    return run_cli(main, argv, prog="python -m smt.data")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> str:
    capsys.readouterr()
    code = _cli(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def _no_leftovers(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.endswith((".tmp", ".old", ".probe"))]


@pytest.fixture
def image_dir(synth_raw_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "mine"
    _image_folder(synth_raw_dir, folder, n=6)
    return folder


@pytest.mark.parametrize("where", ["same", "inside"])
def test_prepare_out_overlapping_the_data_is_refused_and_the_data_kept(
        image_dir: Path, where: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(image_dir)
    out = image_dir if where == "same" else image_dir / "prepared"
    _refused(capsys, ["prepare", "--data", str(image_dir), "--out", str(out)], "--out",
             str(image_dir))
    assert _snapshot(image_dir) == before


def test_prepare_out_parent_of_the_working_folder_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    (home / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(home / "work")
    # Refused on the folder alone, before the default dataset is even built.
    _refused(capsys, ["prepare", "--out", ".."], "--overwrite")
    assert (home / "thesis.tex").read_text() == "years of work"


def test_synth_out_over_the_kern_dir_is_refused(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    kern = tmp_path / "kern"
    kern.mkdir()
    for i in range(3):
        (kern / f"p{i}.krn").write_text("**kern\n4c\n*-\n")
    before = _snapshot(kern)
    for out in (kern, kern / "rendered", tmp_path):
        _refused(capsys, ["synth", "--kern-dir", str(kern), "--out", str(out)], "--out")
    assert _snapshot(kern) == before


def test_a_foreign_folder_needs_overwrite_and_our_own_is_replaced(
        image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _refused(capsys, ["prepare", "--data", str(image_dir), "--out", str(out)], "--overwrite",
             str(out))
    assert (out / "notes.txt").read_text() == "mine"
    assert _cli(["prepare", "--data", str(image_dir), "--out", str(out), "--overwrite"]) == 0
    assert (out / "dataset_dict.json").is_file() and not (out / "notes.txt").exists()
    assert (out / OUT_MARKER).is_file()
    # Our own earlier output is replaced without --overwrite; another command's is not.
    assert _cli(["prepare", "--data", str(image_dir), "--out", str(out), "--format", "ekern"]) == 0
    _refused(capsys, ["synth", "--count", "3", "--out", str(out)], "smt.data synth", "--overwrite")
    assert (out / "dataset_dict.json").is_file()
    _no_leftovers(tmp_path)


def test_synth_twice_into_the_same_folder_replaces_it(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    assert _cli(["synth", "--count", "3", "--out", str(out)]) == 0
    assert _cli(["synth", "--count", "4", "--out", str(out), "--seed", "1"]) == 0
    import datasets
    assert sum(len(s) for s in datasets.load_from_disk(str(out)).values()) == 4
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("cmd", ["prepare", "synth"])
def test_out_that_is_a_file_is_one_line_and_the_file_kept(
        cmd: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "results.csv"
    target.write_text("a,b\n")
    argv = ["prepare", "--out", str(target)] if cmd == "prepare" else \
        ["synth", "--count", "3", "--out", str(target)]
    _refused(capsys, argv, "--out", "is an existing file")
    assert target.read_text() == "a,b\n"
    _no_leftovers(tmp_path)




@pytest.mark.parametrize("cmd", ["prepare", "synth"])
def test_out_in_a_read_only_folder_is_one_line(cmd: str, read_only_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = read_only_dir / "out"
    argv = ["prepare", "--out", str(out)] if cmd == "prepare" else \
        ["synth", "--count", "3", "--out", str(out)]
    _refused(capsys, argv, "--out", "cannot write")


def test_predict_out_over_its_images_is_refused_before_loading_anything(
        image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from smt.predict import main as predict_main
    before = _snapshot(image_dir)
    img = image_dir / "r0.png"
    for out in (image_dir, tmp_path):           # writing r0.krn there would replace the truth
        capsys.readouterr()
        code = run_cli(predict_main, ["--checkpoint", str(tmp_path / "none.ckpt"), str(img),
                                      "--out", str(out)], prog="smt.predict")
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "--out" in err, err
    assert _snapshot(image_dir) == before
