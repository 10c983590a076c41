"""`python -m smt.predict`: kern for rendered images, and nothing runs from a checkpoint."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from autotune.errors import run_cli
from smt.predict import main
from smt.tokenizer import detokenize, tokenize
from tiny_scores import trained_paths, trained_run


def _train_images(tmp_path: Path) -> list[tuple[Path, str]]:
    """The training systems of the trained run, saved as PNG files like a user's scans."""
    import datasets
    ds = datasets.load_from_disk(str(trained_paths()["data"]))["train"]
    out = []
    for i, row in enumerate(ds):
        path = tmp_path / f"system{i}.png"
        row["image"].save(path)
        out.append((path, detokenize(tokenize(row["transcription"], "bekern"), "bekern")))
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_predict_prints_the_kern_of_rendered_images(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    images = _train_images(tmp_path)
    ckpt = trained_run() / "checkpoints" / "last.ckpt"
    capsys.readouterr()                                  # drop the training run's output
    assert run_cli(main, ["--checkpoint", str(ckpt), *[str(p) for p, _ in images],
                          "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    blocks = [b for b in out.split("==> ") if b.strip()]
    assert len(blocks) == len(images)
    for block, (path, kern) in zip(blocks, images):
        header, _, text = block.partition(" <==\n")
        assert header == str(path)
        assert text.strip("\n") == kern          # the memorised systems come back exactly


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_predict_writes_krn_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = _train_images(tmp_path)
    ckpt = trained_run() / "checkpoints" / "best.ckpt"
    capsys.readouterr()                                  # drop the training run's output
    # The known prediction: what the same checkpoint prints for the same images.
    assert run_cli(main, ["--checkpoint", str(ckpt), *[str(p) for p, _ in images]]) == 0
    printed = {h: t.strip("\n") for h, _, t in (b.partition(" <==\n") for b in
               capsys.readouterr().out.split("==> ") if b.strip())}
    assert run_cli(main, ["--checkpoint", str(ckpt), *[str(p) for p, _ in images],
                          "--out", str(tmp_path / "out")]) == 0
    for path, _kern in images:
        written = (tmp_path / "out" / f"{path.stem}.krn").read_text()
        assert written == printed[str(path)] + "\n"      # the file is the prediction, whole
        # A **kern file our tokenizer reads back unchanged: one **kern header per spine, and
        # every record has as many spines as the header (the systems split no spine).
        assert detokenize(tokenize(written, "bekern"), "bekern") == written.rstrip("\n")
        lines = written.rstrip("\n").split("\n")
        header = lines[0].split("\t")
        assert header and set(header) == {"**kern"}, lines[0]
        assert all(len(line.split("\t")) == len(header) for line in lines
                   if not line.startswith("!!")), written


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _blank(path: Path, size: tuple[int, int]) -> Path:
    from PIL import Image
    Image.new("L", size, 255).save(path)
    return path


class _Payload:
    """Unpickling this would run a command: a weights-only load must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_checkpoint_that_runs_code_is_refused(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    run = trained_run()
    evil_dir = tmp_path / "evil" / "checkpoints"
    evil_dir.mkdir(parents=True)
    for name in ("config.json", "vocab.json", "run.json"):
        (tmp_path / "evil" / name).write_bytes((run / name).read_bytes())
    marker = tmp_path / "pwned"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["extra"] = _Payload(marker)
    torch.save(ckpt, evil_dir / "last.ckpt")
    image = tmp_path / "x.png"
    from PIL import Image
    Image.new("L", (64, 32), 255).save(image)
    capsys.readouterr()

    assert run_cli(main, ["--checkpoint", str(evil_dir / "last.ckpt"), str(image)],
                   prog="smt.predict") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "weights-only" in err
    assert not marker.exists()

    from smt.train import main as train_main
    assert run_cli(train_main, ["--resume", str(tmp_path / "evil"), "--max-steps", "200"],
                   prog="smt.train") == 2
    assert "weights-only" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.png", "image not found"),
    (lambda d: _write(d / "empty.png", b""), "cannot read image"),
    (lambda d: _write(d / "text.png", b"not an image"), "cannot read image"),
    (lambda d: _blank(d / "wide.png", (5000, 100)), "larger than the model's maximum"),
])
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bad_images_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        make, message: str) -> None:  # noqa: ANN001
    ckpt = trained_run() / "checkpoints" / "last.ckpt"
    image = make(tmp_path)
    capsys.readouterr()
    assert run_cli(main, ["--checkpoint", str(ckpt), str(image)], prog="smt.predict") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(image) in err


def test_missing_checkpoint_is_a_one_line_error(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(main, ["--checkpoint", str(tmp_path / "none.ckpt"), "x.png"],
                   prog="smt.predict") == 2
    assert "checkpoint not found" in capsys.readouterr().err
