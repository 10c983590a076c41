"""docs/finetune.md's recipe, run as written (plus CPU-sized limits) on a folder of
reference-format scores rendered here, from a model converted from the reference's key layout:
the data reads with the model's own tokens, only truly new ones need --extend-vocab, and the
run reports the converted model's SER on the data before and after fine-tuning."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import docs_reader as dr
from autotune.errors import run_cli
from reference_fixture import write_reference_folder

HUB_ID = "antoniorv6/smt-grandstaff"
# Reference-format system transcriptions (bar numbers kept, as GrandStaff's files have them)
# made of tokens the fixture's published vocabulary holds...
KNOWN = [
    "**kern\t**kern\n*clefF4\t*clefG2\n4c\t4cc\n4e\t8g\n.\t8g\n=1\t=1\n2r\t4cc\n.\t4e\n=2\t=2\n*-\t*-\n",
    "**kern\t**kern\n*clefF4\t*clefG2\n2r\t4e\n.\t8g\n.\t8g\n=1\t=1\n4c\t4cc\n4e\t16dd#\n*-\t*-\n",
]
# ...and one score with a token it lacks (`4d`, twice).
NEW = "**kern\t**kern\n*clefF4\t*clefG2\n4d\t4cc\n4d\t4e\n=1\t=1\n*-\t*-\n"
# What a CPU test adds to the recipe's commands (the last value of a flag wins).
CPU_LIMITS = {
    "smt.predict": ["--max-len", "8", "--device", "cpu"],
    "smt.train": ["--max-steps", "2", "--num-workers", "0", "--batch-size", "2", "--val-batches", "1",
                  "--precision", "32-true", "--patience", "0"],
}


def _recipe() -> list[str]:
    lines = dr.read_lines(dr.REPO / "docs" / "finetune.md")
    start = next(i for i, ln in enumerate(lines) if ln.text.startswith("## The recipe"))
    return [ln.text.strip() for ln in lines[start:] if ln.code and ln.text.strip().startswith("python")]


def _scores(root: Path) -> None:
    from smt.data.render import render

    texts = {"val/score1": KNOWN[0], "val/score2": KNOWN[1], "train/score3": NEW}
    texts.update({f"train/score{i}": KNOWN[i % 2] for i in range(4, 9)})
    for i, (stem, kern) in enumerate(sorted(texts.items())):
        (root / stem).parent.mkdir(parents=True, exist_ok=True)
        (root / f"{stem}.png").write_bytes(render(kern, "system", seed=i))
        (root / f"{stem}.krn").write_text(kern, encoding="utf-8")


def _main(module: str):
    if module == "smt.convert":
        from smt.convert.__main__ import main
    elif module == "smt.predict":
        from smt.predict import main
    elif module == "smt.data":
        from smt.data.__main__ import main
    else:
        from smt.train import main
    return main


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_recipe_fine_tunes_a_converted_model_on_reference_format_scores(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SMT_AUTOTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    write_reference_folder(tmp_path / "hub" / "smt-grandstaff")   # its name says the dataset
    _scores(tmp_path / "my_scores")
    recipe = _recipe()
    assert [shlex.split(c)[:3] for c in recipe[:4]] == [
        ["python", "-m", "smt.convert"], ["python", "-m", "smt.predict"],
        ["python", "-m", "smt.data"], ["python", "-m", "smt.train"]]
    out: dict[str, str] = {}
    for command in recipe[:4]:
        argv = shlex.split(command.replace(HUB_ID, str(tmp_path / "hub" / "smt-grandstaff")))
        module = argv[2]
        args = argv[3:] + CPU_LIMITS.get(module, [])
        if module == "smt.train":       # the data has a token the model lacks: refused, named
            assert run_cli(_main(module), args, prog=module) == 2
            err = capsys.readouterr().err
            assert "1 token(s) the model's vocabulary lacks: '4d' (2x)" in err
            args.append("--extend-vocab")
        assert run_cli(_main(module), args, prog=module) == 0, capsys.readouterr().err
        out[module] = capsys.readouterr().out

    # The predict step drew what the converted model reads, the truth beside it (score1.krn).
    assert (tmp_path / "pictures" / "before" / "score1.png").is_file()
    model = tmp_path / "models" / "grandstaff"
    assert json.loads((model / "reference.json").read_text())["fmt"] == "ref-system"
    assert "1 token(s) of the data are not in the vocabulary" in out["smt.data"]
    assert "'4d' (2x)" in out["smt.data"]
    # Every other token reads as one the model knows: only `4d` gets a fresh row.
    train = out["smt.train"]
    assert "format ref-system" in train
    assert "--extend-vocab: 1 new token(s) get fresh output rows: '4d' (2x)" in train
    assert "baseline (the --init-from model, before training): SER" in train
    run = tmp_path / "runs" / "mine"
    model_tokens = json.loads((model / "vocab.json").read_text())["tokens"]
    assert json.loads((run / "vocab.json").read_text())["tokens"] == [*model_tokens, "4d"]
    summary = json.loads((run / "summary.json").read_text())
    assert sorted(p.name for p in (run / "pictures").glob("*.png"))
    assert isinstance(summary["baseline_val_ser"], float) and summary["best_val_ser"] is not None
    assert f"baseline val SER {summary['baseline_val_ser']:.1f} -> best val SER" in train

    compare = shlex.split(recipe[4])
    assert compare[:2] == ["python", "-c"]
    shown = subprocess.run([sys.executable, "-c", compare[2]], cwd=tmp_path, text=True,
                           capture_output=True, check=True).stdout
    assert shown.split() == ["SER", str(summary["baseline_val_ser"]), "->", str(summary["best_val_ser"])]
