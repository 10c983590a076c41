"""smt.convert on hostile or broken inputs, through the real command (a subprocess): every size
of a config is bounded before any tensor is built, vocabularies and over-deep JSON are one
line, non-finite weights are refused naming the key (or reported with --allow-nonfinite), a
refused pickle names its global, `--out .` is refused, and what it writes respects the umask."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reference_fixture import write_reference_folder
from smt.config import MAX_SIZES

REPO = Path(__file__).resolve().parents[2]


def convert(argv: list[str], cwd: Path | None = None, umask: int | None = None,
            ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "smt.convert", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def one_line(proc: subprocess.CompletedProcess[str], *says: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in says:
        assert text in err, err
    return err


def reference(tmp_path: Path, **config_changes: object) -> Path:
    folder = tmp_path / "ref"
    write_reference_folder(folder, "smt", "safetensors")
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config_changes}))
    return folder


ARGS = ["--dataset", "grandstaff"]
# Each case is a process that imports torch (several seconds on a busy 2-core box): one row per
# guarantee runs by default, the other rows with the slow tests.


# Sizes of 1e9 would each allocate tens of GB (or fail after minutes) if the model were built.
@pytest.mark.parametrize(("key", "field"), [
    ("maxlen", "max_seq_len"),
    pytest.param("dim_ff", "ff_dim", marks=pytest.mark.slow),
    pytest.param("out_categories", "vocab_size", marks=pytest.mark.slow),
    pytest.param("d_model", "d_model", marks=pytest.mark.slow),
    pytest.param("num_dec_layers", "n_layers", marks=pytest.mark.slow),
    pytest.param("maxh", "max_height", marks=pytest.mark.slow),
])
def test_a_size_above_the_family_bound_is_one_line_naming_key_and_bound(tmp_path: Path, key: str,
                                                                        field: str) -> None:
    src = reference(tmp_path, **{key: 10**9})
    one_line(convert([str(src), "--out", str(tmp_path / "out"), *ARGS]), key, str(MAX_SIZES[field]))
    assert not (tmp_path / "out").exists()


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(("config_text", "says"), [
    # "²".isdigit() is True in Python, but int("²") raises: a traceback before the fix.
    (lambda c: json.dumps({**c, "i2w": {**c["i2w"], "²": "<pad>"}}), "i2w key '²'"),
    (lambda c: _deep(100_000), "nested too deeply"),
])
def test_bad_vocabularies_and_deep_json_are_one_line(tmp_path: Path, config_text, says: str) -> None:
    src = reference(tmp_path)
    path = src / "config.json"
    path.write_text(config_text(json.loads(path.read_text())))
    one_line(convert([str(src), "--out", str(tmp_path / "out"), *ARGS]), says)


@pytest.mark.parametrize(("value", "allow", "code"), [
    (float("nan"), False, 2),
    pytest.param(float("inf"), False, 2, marks=pytest.mark.slow),
    (float("nan"), True, 0),
])
def test_non_finite_weights_are_refused_naming_the_key_or_reported(tmp_path: Path, value: float,
                                                                   allow: bool, code: int) -> None:
    from safetensors.torch import load_file, save_file

    src = reference(tmp_path)
    state = load_file(str(src / "model.safetensors"))
    key = "decoder.decoder.layers.1.ffn.0.weight"
    state[key][3, 5] = value
    save_file(state, str(src / "model.safetensors"))
    proc = convert([str(src), "--out", str(tmp_path / "out"), *ARGS,
                    *(["--allow-nonfinite"] if allow else [])])
    assert proc.returncode == code, proc.stderr
    if allow:
        assert key in proc.stderr and (tmp_path / "out" / "model.ckpt").is_file()
    else:
        one_line(proc, key, "--allow-nonfinite")
        assert not (tmp_path / "out").exists()


class _RunsCode:
    def __reduce__(self):  # a pickle that would call a function when loaded
        return (os.system, ("true",))


# Protocol 2 reaches the global (named); protocol 4's framing is refused before it (the opcode).
@pytest.mark.parametrize(("protocol", "says"), [(2, "global posix.system"),
                                                pytest.param(4, "Unsupported operand",
                                                             marks=pytest.mark.slow)])
def test_a_refused_pickle_says_what_was_refused_and_never_advises_running_it(
        tmp_path: Path, protocol: int, says: str) -> None:
    src = tmp_path / "hostile"
    write_reference_folder(src, "smt", "bin")
    (src / "pytorch_model.bin").write_bytes(pickle.dumps({"x": _RunsCode()}, protocol=protocol))
    err = one_line(convert([str(src), "--out", str(tmp_path / "out"), *ARGS]), says)
    assert "weights_only" not in err


@pytest.mark.parametrize("out", [".", pytest.param("..", marks=pytest.mark.slow)])
def test_out_that_is_or_holds_the_current_folder_is_refused(tmp_path: Path, out: str) -> None:
    src = reference(tmp_path)
    here = tmp_path / "work" / "here"
    here.mkdir(parents=True)
    (here / "keep.txt").write_text("mine")
    one_line(convert([str(src), "--out", out, "--force", *ARGS], cwd=here), "current folder")
    assert (here / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [
    (0o022, 0o644, 0o755),
    pytest.param(0o027, 0o640, 0o750, marks=pytest.mark.slow),
])
def test_outputs_respect_the_umask(tmp_path: Path, umask: int, file_mode: int, dir_mode: int) -> None:
    src = reference(tmp_path)
    out = tmp_path / "out"
    proc = convert([str(src), "--out", str(out), *ARGS], umask=umask)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o777 == dir_mode
    for name in ("model.ckpt", "config.json", "vocab.json", "reference.json"):
        assert (out / name).stat().st_mode & 0o777 == file_mode, name


def test_a_model_above_the_ram_budget_is_refused_before_it_is_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within every size bound, yet more than this (pretended small) machine holds."""
    import autotune.hardware
    from autotune.errors import UserError
    from smt.convert import convert as convert_api

    monkeypatch.setattr(autotune.hardware, "ram_now", lambda *a, **k: (2**30, 64 * 2**20))
    src = reference(tmp_path, maxh=MAX_SIZES["max_height"], maxw=MAX_SIZES["max_width"])
    with pytest.raises(UserError, match="RAM budget"):
        convert_api(str(src), tmp_path / "out", dataset="grandstaff")
