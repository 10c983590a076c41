"""The boundary is enforced, not just written down: `lint-imports` (import-linter, configured
in pyproject.toml) must pass on the tree, and must fail when autotune imports smt anywhere,
a function-local import included."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the packages under `root` with `root`'s pyproject.toml. import-linter
    is in the dev extra; where it is missing this fails rather than skips, so the boundary is
    never silently unchecked."""
    # `root` first, so the packages analysed are the ones under it.
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    code = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    # `--config` (not the positional form newer releases prefer) works from the floor up.
    return subprocess.run([sys.executable, "-c", code, "--config", str(root / "pyproject.toml"),
                           "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_autotune_never_imports_smt() -> None:
    res = lint_imports(REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "autotune never imports smt KEPT" in res.stdout


def test_contract_catches_a_function_local_import(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("autotune", "smt"):
        shutil.copytree(REPO / package, copy / package, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    (copy / "autotune" / "planted.py").write_text(
        "def cache_dir():\n    from smt.paths import cache_root\n    return cache_root()\n")
    res = lint_imports(copy)
    assert res.returncode != 0
    assert "autotune never imports smt BROKEN" in res.stdout
    assert "autotune.planted -> smt.paths (l.2)" in res.stdout
