"""No import cycles in autotune or smt, and the check fails on a new one.

The graph is grimp's (installed with import-linter) over both packages, with every import
the source writes: module level, inside a function, and under `if TYPE_CHECKING:` (a cycle
hidden from the interpreter is still two modules that cannot be read, tested or moved one
without the other). A cycle is a strongly connected component of more than one module; each
is reported with its members and one closed chain through them, with line numbers.

No exemption for packages: grimp, like Python, counts only written imports, so an
`__init__.py` that re-exports its submodules forms a cycle only when a submodule imports the
package name itself, and the tree has none of those; a new one is reported like any other.

There is no exemption: every cycle found fails.

The check runs in a subprocess with the tree under test first on PYTHONPATH, so that the
planted-cycle test can point it at a copy.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("autotune", "smt")



def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        comp.append(member)
                        if member == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def find_cycles() -> list[dict[str, object]]:
    """Every cycle in the packages on sys.path: members and one closed chain with lines."""
    import grimp
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False,
                              exclude_type_checking_imports=False, cache_dir=None)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    found = []
    for comp in strongly_connected(edges):
        members = set(comp)
        start = comp[0]
        nxt = min(m for m in edges[start] if m in members)
        chain = [start, *graph.find_shortest_chain(importer=nxt, imported=start)]
        hops = []
        for a, b in zip(chain, chain[1:]):
            lines = sorted(d["line_number"] for d in
                           graph.get_import_details(importer=a, imported=b))
            hops.append(f"{a} -> {b} (l.{', '.join(map(str, lines))})")
        found.append({"members": comp, "chain": hops})
    return found


def run_check(root: Path) -> list[dict[str, object]]:
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    res = subprocess.run([sys.executable, str(Path(__file__).resolve())], cwd=root,
                         env={**os.environ, "PYTHONPATH": path}, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def report(cycles: list[dict[str, object]]) -> str:
    return "\n".join(f"import cycle among {', '.join(c['members'])}:\n    "  # type: ignore[arg-type]
                     + "\n    ".join(c["chain"]) for c in cycles)  # type: ignore[arg-type]


def test_no_import_cycles() -> None:
    cycles = (run_check(REPO))
    assert not cycles, report(cycles)


@pytest.mark.parametrize("path, planted, members, hop", [
    # A function-level import: the model package reaching up to the training step.
    ("smt/model/estimate.py", "\n\ndef _planted():\n    from smt.step import make_train_step\n"
     "    return make_train_step\n",
     {"smt.model.estimate", "smt.step", "smt.module"}, "smt.model.estimate -> smt.step"),
    # An import only a type checker runs: still a cycle.
    ("autotune/records.py", "\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
     "    from autotune.fits import MapCostModel\n",
     {"autotune.records", "autotune.fits"}, "autotune.records -> autotune.fits"),
])
def test_check_catches_a_planted_cycle(tmp_path: Path, path: str, planted: str,
                                       members: set[str], hop: str) -> None:
    copy = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(REPO / package, copy / package, ignore=ignore)
    with open(copy / path, "a") as f:
        f.write(planted)
    cycles = (run_check(copy))
    text = report(cycles)
    print(text)
    assert any(members <= set(c["members"]) for c in cycles), text  # type: ignore[arg-type]
    assert hop in text


if __name__ == "__main__":
    print(json.dumps(find_cycles()))
