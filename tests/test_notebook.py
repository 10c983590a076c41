"""examples/kaggle.ipynb runs headless: its setup cells quickly, the whole notebook on CPU."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "kaggle.ipynb"


def _execute(nb: nbformat.NotebookNode, cwd: Path, monkeypatch: pytest.MonkeyPatch,
             **params: str) -> nbformat.NotebookNode:
    # The kernel and the commands it starts inherit this environment. PYTHONPATH stands in
    # for the notebook's own `pip install`, which the test skips (INSTALL=0).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH", "")])))
    for name, value in params.items():
        monkeypatch.setenv(f"SMT_NB_{name}", value)
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}})
    try:
        return client.execute()
    finally:  # the executed copy, outputs and all, is what to read when this test fails
        nbformat.write(nb, cwd / "executed.ipynb")


def _text(nb: nbformat.NotebookNode) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") + json.dumps(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


def test_notebook_is_clean_and_valid() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit it cleared"
    source = "\n".join(c.source for c in code)
    for command in ("-m\", \"autotune\", \"probe\"", "\"smt.train\", \"--profile\", \"auto\"",
                    "\"autotune\", \"show\"", "resources.png"):
        assert command in source


@pytest.mark.timeout(120)
def test_setup_cells_read_parameters_from_environment(tmp_path, monkeypatch) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    nb.cells = code[:2]  # parameters + install (skipped): no probe, no training
    out = tmp_path / "run"
    done = _execute(nb, tmp_path, monkeypatch, INSTALL="0", PRESET="debug", OUT=str(out),
                    DATA="some/grandstaff")
    text = _text(done)
    assert f"data: some/grandstaff | preset: debug | output: {out}" in text
    assert "install skipped" in text


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_notebook_end_to_end_on_cpu(tmp_path, monkeypatch) -> None:
    """Probe, train a few steps of the debug preset on the embedded data, show, plot."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    out = tmp_path / "run"
    # The probe's profile goes to a tmp folder, not the repository's shipped profiles/.
    monkeypatch.setenv("SMT_AUTOTUNE_PROFILES", str(tmp_path / "profiles"))
    # A short probe and a short validation keep this to a couple of minutes on a small CPU.
    done = _execute(nb, tmp_path, monkeypatch, INSTALL="0", PRESET="debug", MAX_STEPS="5",
                    OUT=str(out), PROFILE="nbtest", PROBE_ARGS="--time-budget 30",
                    TRAIN_ARGS="--val-batches 2")
    assert (out / "resources.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "summary.json").exists()
    last = [c for c in done.cells if c.cell_type == "code"][-1]
    assert any("image/png" in o.get("data", {}) for o in last.outputs)
    text = _text(done)
    assert "nbtest" in text and "batch_size" in text  # the profile table was shown
    assert (tmp_path / "profiles" / "nbtest.json").exists()
