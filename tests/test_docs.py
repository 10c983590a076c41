"""README.md and docs/*.md stay true to the code: every flag a command line in them shows
exists in that command's parser, every `make` target exists, every `file.py[:name]`,
`smt.x.y` and repository path they name is in the repository, every relative link and anchor
resolves. Each checker is also shown to catch a planted mistake in a copy of a document."""
from __future__ import annotations

import argparse
import functools
import importlib
import re
import shutil
from pathlib import Path

import pytest

import docs_reader as dr

# How each CLI builds its parser, imported rather than run (`--help` in a subprocess would
# cost seconds per command and read flags back out of formatted text). smt.data has no public
# builder: `_parser` is the one its `main` calls.
PARSERS = {
    "smt.train": ("smt.train.cli", "build_parser"),
    "smt.predict": ("smt.predict", "build_parser"),
    "smt.data": ("smt.data.__main__", "_parser"),
    "smt.convert": ("smt.convert.__main__", "build_parser"),
    "autotune": ("autotune.cli", "build_parser"),
}
# `python -m autotune.search` is `python -m autotune search` (autotune/search/__main__.py).
ALIASES = {"autotune.search": ("autotune", "search")}

DOCS = dr.doc_files()
DOC_IDS = [d.relative_to(dr.REPO).as_posix() for d in DOCS]


@functools.cache
def _parser(module: str) -> argparse.ArgumentParser:
    module_name, builder = PARSERS[module]
    return getattr(importlib.import_module(module_name), builder)()


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def allowed_flags(module: str, subcommands: tuple[str, ...]) -> tuple[set[str], str]:
    """The flags `python -m module [sub]` takes (the top-level ones included, which argparse
    accepts before the subcommand), or an empty set and why there are none."""
    if module in ALIASES:
        module, sub = ALIASES[module]
        subcommands = (sub,)
    if module not in PARSERS:
        return set(), f"`python -m {module}` is not one of the CLIs ({', '.join(PARSERS)})"
    parser = _parser(module)
    subs = _subparsers(parser)
    if not subs or not subcommands:
        return _flags(parser), ""
    unknown = [s for s in subcommands if s not in subs]
    if unknown:
        return set(), f"`python -m {module}` has no subcommand {unknown[0]!r} ({', '.join(subs)})"
    return _flags(parser) | {f for s in subcommands for f in _flags(subs[s])}, ""


def flag_problems(doc: Path) -> list[str]:
    problems = []
    for cmd in dr.commands(doc):
        allowed, why = allowed_flags(cmd.module, cmd.subcommands)
        shown = " ".join((cmd.module, "|".join(cmd.subcommands))).strip()
        if why:
            problems.append(f"{cmd.line.where()}: {why}")
            continue
        for line, flag in cmd.flags:
            if flag not in allowed:
                problems.append(f"{line.where()}: `{flag}` is not a flag of `python -m {shown}`"
                                f"  | {line.text.strip()}")
    return problems


# Flags of other programs that prose mentions in a span of their own.
FOREIGN_FLAGS = {"--config": "lint-imports (import-linter)"}


@functools.cache
def every_flag() -> frozenset[str]:
    flags = set()
    for module in PARSERS:
        parser = _parser(module)
        flags |= _flags(parser) | {f for sub in _subparsers(parser).values() for f in _flags(sub)}
    return frozenset(flags)


def prose_flag_problems(doc: Path) -> list[str]:
    """A `--flag` named in prose without its command must at least be a flag of one of ours."""
    known = every_flag() | set(FOREIGN_FLAGS)
    return [f"{line.where()}: `{flag}` is not a flag of any command"
            for line, flag in dr.prose_flags(dr.read_lines(doc)) if flag not in known]


def make_problems(doc: Path) -> list[str]:
    makefile = (dr.REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+)\s*:", makefile, flags=re.M))
    return [f"{line.where()}: `make {t}`: the Makefile has no target {t!r}"
            for line, t in dr.make_targets(doc) if t not in targets]


def reference_problems(doc: Path, root: Path = dr.REPO) -> list[str]:
    problems = []
    for line, path, name in dr.references(doc):
        files = dr.find_files(path, root)
        if not files:
            problems.append(f"{line.where()}: `{path}` does not exist")
        elif name and not any(dr.defines(f, name) for f in files):
            where = ", ".join(f.relative_to(root).as_posix() for f in files)
            problems.append(f"{line.where()}: `{path}:{name}`: {where} defines no {name!r}")
    for line, path in dr.path_spans(doc, root):
        if not (root / path).exists():
            problems.append(f"{line.where()}: `{path}` does not exist")
    for line, dotted in dr.dotted_references(doc):
        if not dr.resolve_dotted(dotted, root):
            problems.append(f"{line.where()}: `{dotted}` is not a module or name of ours")
    return problems


def link_problems(doc: Path) -> list[str]:
    problems = []
    root = (doc.parent if doc.name == "README.md" else doc.parent.parent).resolve()
    for line, target in dr.links(doc):
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if path and not file.is_relative_to(root):
            problems.append(f"{line.where()}: {target} points outside the repository")
        elif not file.exists():
            problems.append(f"{line.where()}: {target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in dr.anchors(file):
            problems.append(f"{line.where()}: {target}: {file.name} has no heading #{anchor}")
    return problems


# -- the documents as they are ----------------------------------------------------------------

@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_flag_a_command_line_shows_exists(doc: Path) -> None:
    assert flag_problems(doc) == []


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_flag_named_in_prose_exists(doc: Path) -> None:
    assert prose_flag_problems(doc) == []


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_make_target_exists(doc: Path) -> None:
    assert make_problems(doc) == []


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_file_and_function_named_exists(doc: Path) -> None:
    assert reference_problems(doc) == []


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_link_and_anchor_resolves(doc: Path) -> None:
    assert link_problems(doc) == []


def test_readme_is_a_short_first_page_that_names_every_command() -> None:
    readme = dr.REPO / "README.md"
    assert len(readme.read_text(encoding="utf-8")) <= 8000
    shown = {(c.module, c.subcommands) for c in dr.commands(readme)}
    for module in PARSERS:
        subs = _subparsers(_parser(module))
        for sub in subs or [None]:
            assert any(m == module and (sub is None or sub in s) for m, s in shown), \
                f"README's commands table does not show python -m {module} {sub or ''}"
    assert [t for _, t in dr.make_targets(readme)][:2] == ["demo", "test"]


# -- each checker catches a planted mistake ---------------------------------------------------

def _plant(tmp_path: Path, text: str) -> tuple[Path, int]:
    """A copy of docs/ and README.md with `text` appended to README; returns the copy and the
    line number the planted text starts on."""
    shutil.copytree(dr.REPO / "docs", tmp_path / "docs")
    readme = tmp_path / "README.md"
    original = (dr.REPO / "README.md").read_text(encoding="utf-8")
    readme.write_text(original + "\n" + text, encoding="utf-8")
    return readme, len(original.splitlines()) + 2


FLAG_PLANTS = {
    # what: (planted text, line offset of the bad flag, the bad flag)
    "code block": ("Run\n\n    python -m smt.train --profile auto --no-such-flag\n", 2,
                   "--no-such-flag"),
    "wrapped synopsis": ("Run\n\n    python -m autotune probe [--data SRC]\n"
                         "                             [--vram-budget 1GB] [--trials 3]\n", 3,
                         "--trials"),
    "backslash": ("Run\n\n    torchrun --nnodes 2 \\\n        -m smt.train --devices 2 \\\n"
                  "        --num-node 2\n", 4, "--num-node"),
    "span wrapped over two lines": ("Use `python -m smt.train --curriculum\n--stage-step 5`.\n",
                                    1, "--stage-step"),
    "another subcommand's flag": ("See `python -m autotune show PROFILE --trials 4`.\n", 0,
                                  "--trials"),
    "table row": ("| command | what |\n|---|---|\n"
                  "| `python -m smt.predict --checkpoint C IMAGE` | `--beam` widens |\n", 2,
                  "--beam"),
}


@pytest.mark.parametrize("text, offset, flag", FLAG_PLANTS.values(), ids=FLAG_PLANTS.keys())
def test_a_planted_wrong_flag_is_caught(tmp_path: Path, text: str, offset: int,
                                        flag: str) -> None:
    readme, start = _plant(tmp_path, text)
    problems = flag_problems(readme)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{readme}:{start + offset}: `{flag}` is not a flag of")


def test_a_planted_wrong_flag_in_prose_is_caught(tmp_path: Path) -> None:
    readme, start = _plant(tmp_path, "The run keeps `--batch-size` and\n`--ckpt-every-hour` too.\n")
    assert prose_flag_problems(readme) == [
        f"{readme}:{start + 1}: `--ckpt-every-hour` is not a flag of any command"]


def test_a_planted_unknown_subcommand_and_make_target_are_caught(tmp_path: Path) -> None:
    readme, start = _plant(tmp_path, "    python -m autotune probes --data X\n    make demos\n")
    assert flag_problems(readme) == [
        f"{readme}:{start}: `python -m autotune` has no subcommand 'probes' "
        "(probe, show, plan, search, cache)"]
    assert make_problems(readme) == [
        f"{readme}:{start + 1}: `make demos`: the Makefile has no target 'demos'"]


REFERENCE_PLANTS = [
    ("`smt/train/no_such.py`", "`smt/train/no_such.py` does not exist"),
    ("`smt/runconfig.py:no_such_function`",
     "`smt/runconfig.py:no_such_function`: smt/runconfig.py defines no "
     "'no_such_function'"),
    ("`smt/step.py:TrainStep.no_such_method`",
     "`smt/step.py:TrainStep.no_such_method`: smt/step.py defines no 'TrainStep.no_such_method'"),
    ("`smt.builder.no_such_name`", "`smt.builder.no_such_name` is not a module or name of ours"),
    ("`profiles/no-such-specs/`", "`profiles/no-such-specs/` does not exist"),
]


@pytest.mark.parametrize("text, expected", REFERENCE_PLANTS, ids=[p[0] for p in REFERENCE_PLANTS])
def test_a_planted_wrong_reference_is_caught(tmp_path: Path, text: str, expected: str) -> None:
    readme, start = _plant(tmp_path, f"Read {text} first.\n")
    assert reference_problems(readme) == [f"{readme}:{start}: {expected}"]


def test_a_planted_broken_link_is_caught(tmp_path: Path) -> None:
    readme, start = _plant(tmp_path, "[a](docs/training.md#no-such-heading) [b](docs/nope.md) "
                                     "[c](../outside.md)\n")
    problems = link_problems(readme)
    assert [p.split(": ", 1)[0] for p in problems] == [f"{readme}:{start}"] * 3
    assert "has no heading #no-such-heading" in problems[0]
    assert "no such file" in problems[1]
    assert "outside the repository" in problems[2]
