"""Read README.md and docs/*.md the way tests/test_docs.py checks them: the command lines they
show (code blocks, `python -m ...` spans, table rows), the repository files, functions and
modules they name, and their links. Pure text; nothing here imports the project."""
from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Our packages: only `python -m` commands under these are checked (pip, pytest, torchrun's own
# flags are other programs' business).
OUR_PACKAGES = ("smt", "autotune")

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
# `python -m X`, and torchrun's `-m X` (the launcher runs the module with the flags after it).
MODULE = re.compile(r"(?:(?<![\w-])python3?\s+)?(?<![\w-])-m\s+([A-Za-z_][\w.]*)")
SUBCOMMAND = re.compile(r"[a-z][a-z-]*(?:\|[a-z][a-z-]*)*")
MAKE = re.compile(r"(?<![\w-])make\s+([a-z][\w-]*)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
# `path/file.py` or `path/file.py:name` / `:Class.method`; a line number (`:92`) is not a name.
FILE_REF = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.py)(?::([A-Za-z_][\w.]*))?")
DOTTED = re.compile(rf"(?:{'|'.join(OUR_PACKAGES)})(?:\.[A-Za-z_]\w*)+")


def doc_files(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


@dataclass
class Line:
    """One physical line of a document."""
    doc: Path
    number: int          # 1-based
    text: str
    code: bool           # inside a fenced or indented code block

    def where(self) -> str:
        try:
            name = self.doc.relative_to(REPO)
        except ValueError:
            name = self.doc
        return f"{name}:{self.number}"


def read_lines(doc: Path) -> list[Line]:
    """Every line, marked code when it sits in a ``` fence or in an indented block (four spaces
    after a blank line, as Markdown reads it)."""
    out: list[Line] = []
    fenced = indented = False
    previous_blank = True
    for number, text in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        stripped = text.strip()
        if stripped.startswith("```"):
            fenced = not fenced
            out.append(Line(doc, number, text, False))
            previous_blank = False
            continue
        if not fenced:
            if indented and stripped and not text.startswith("    "):
                indented = False
            elif not indented and previous_blank and text.startswith("    ") and stripped:
                indented = True
        out.append(Line(doc, number, text, fenced or (indented and bool(stripped))))
        previous_blank = not stripped
    return out


@dataclass
class Command:
    """One invocation shown in a document: `python -m MODULE [SUBCOMMAND] ...` and, for each
    physical line it spans, the flags written there."""
    line: Line                         # where `python -m` is written
    module: str
    subcommands: tuple[str, ...]       # `synth|prepare` names two; () when none is named
    flags: list[tuple[Line, str]] = field(default_factory=list)


def _strip_comment(text: str) -> str:
    """Drop a shell comment (` # ...`) so that its words are not read as flags."""
    return re.split(r"(?:^|\s)#(?!!)", text, maxsplit=1)[0]


Piece = tuple[Line, str]       # a stretch of text and the physical line it sits on


def _flags_in(pieces: list[Piece]) -> list[tuple[Line, str]]:
    return [(line, flag) for line, text in pieces for flag in FLAG.findall(text)]


def _cut(pieces: list[Piece], start: int, end: int) -> list[Piece]:
    """The part of `pieces`, read as one string joined by spaces, from `start` to `end`."""
    out, at = [], 0
    for line, text in pieces:
        lo, hi = max(start - at, 0), min(end - at, len(text))
        if lo < hi:
            out.append((line, text[lo:hi]))
        at += len(text) + 1
    return out


def _commands_in(pieces: list[Piece]) -> list[Command]:
    """The invocations of our modules in some text (one line, or a span wrapped over several),
    each with the flags that follow it up to the next invocation."""
    text = " ".join(t for _, t in pieces)
    found = [m for m in MODULE.finditer(text) if m.group(1).split(".")[0] in OUR_PACKAGES]
    commands = []
    for i, match in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        words = text[match.end():end].split()
        sub = words[0] if words and SUBCOMMAND.fullmatch(words[0]) else ""
        where = _cut(pieces, match.start(), match.end())[0][0]
        cmd = Command(where, match.group(1), tuple(sub.split("|")) if sub else ())
        cmd.flags = _flags_in(_cut(pieces, match.end(), end))
        commands.append(cmd)
    return commands


def _continues(previous: str, text: str) -> bool:
    """A code line continues the command above it after a trailing backslash, or when it starts
    with an optional or a flag (a synopsis wrapped over several lines)."""
    return previous.rstrip().endswith("\\") or text.lstrip().startswith(("[--", "--"))


def code_commands(lines: list[Line]) -> Iterator[Command]:
    """Invocations in code blocks, a wrapped command's later lines included."""
    current: Command | None = None
    previous = ""
    for line in lines:
        if not line.code:
            if current is not None:
                yield current
            current, previous = None, ""
            continue
        text = _strip_comment(line.text)
        if current is not None and _continues(previous, text) and not MODULE.search(text):
            current.flags += _flags_in([(line, text)])
        else:
            commands = _commands_in([(line, text)])
            yield from commands[:-1]
            if current is not None:
                yield current
            current = commands[-1] if commands else None
        previous = text
    if current is not None:
        yield current


def prose_spans(lines: list[Line]) -> Iterator[tuple[bool, list[Piece]]]:
    """Every `code span` outside code blocks, as (whether it sits in a table row, its pieces);
    a span may wrap over the lines of a paragraph. Headings and table rows are read alone."""
    paragraph: list[Line] = []

    def spans_of(block: list[Line]) -> Iterator[tuple[bool, list[Piece]]]:
        row = len(block) == 1 and block[0].text.lstrip().startswith("|")
        text = "\n".join(line.text for line in block)
        for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
            yield row, _cut([(line, line.text) for line in block], match.start(1), match.end(1))

    for line in lines:
        if line.code or not line.text.strip() or line.text.lstrip().startswith(("|", "#")):
            yield from spans_of(paragraph)
            paragraph = []
            if not line.code and line.text.lstrip().startswith(("|", "#")):
                yield from spans_of([line])
        else:
            paragraph.append(line)
    yield from spans_of(paragraph)


def prose_commands(lines: list[Line]) -> Iterator[Command]:
    """`python -m ...` spans in prose, and table rows: a row whose first command span is
    `python -m X ...` lends that command to the `--flag` spans in its other cells."""
    row_command: Command | None = None
    row_line: Line | None = None
    for row, pieces in prose_spans(lines):
        if pieces[0][0] is not row_line:
            row_command, row_line = None, pieces[0][0]
        commands = _commands_in(pieces)
        if commands:
            yield from commands
            row_command = row_command or commands[0]
        elif row and row_command is not None and pieces[0][1].startswith("--"):
            cell = Command(row_command.line, row_command.module, row_command.subcommands)
            cell.flags = _flags_in(pieces)
            yield cell


def prose_flags(lines: list[Line]) -> Iterator[tuple[Line, str]]:
    """`--flag`s in prose spans that are not part of a `python -m` span."""
    for _, pieces in prose_spans(lines):
        if not _commands_in(pieces):
            yield from _flags_in(pieces)


def commands(doc: Path) -> list[Command]:
    lines = read_lines(doc)
    return [*code_commands(lines), *prose_commands(lines)]


def make_targets(doc: Path) -> Iterator[tuple[Line, str]]:
    """`make TARGET` in code blocks and in spans."""
    lines = read_lines(doc)
    pieces = [[(line, _strip_comment(line.text))] for line in lines if line.code]
    for piece in [*pieces, *(p for _, p in prose_spans(lines))]:
        for target in MAKE.findall(" ".join(t for _, t in piece)):
            yield piece[0][0], target


# -- references to the repository -------------------------------------------------------------

def references(doc: Path) -> Iterator[tuple[Line, str, str | None]]:
    """(line, path, name or None) for every `path/file.py[:name]` anywhere in the text."""
    for line in read_lines(doc):
        for match in FILE_REF.finditer(line.text):
            yield line, match.group(1), match.group(2)


def dotted_references(doc: Path) -> Iterator[tuple[Line, str]]:
    """Spans that are exactly a dotted name under our packages (`smt.builder.model_config`)."""
    for _, pieces in prose_spans(read_lines(doc)):
        span = " ".join(t for _, t in pieces)
        if DOTTED.fullmatch(span):
            yield pieces[0][0], span


PATH_SPAN = re.compile(r"\.?[\w-]+(?:/[\w.-]*)+|[\w-]+\.(?:toml|md|ipynb)|Makefile")


def path_spans(doc: Path, root: Path = REPO) -> Iterator[tuple[Line, str]]:
    """Spans that are a path in the repository (`profiles/specs/`, `examples/kaggle.ipynb`,
    `.ci/run`): rooted at one of its top-level entries, no placeholder in capitals
    (`profiles/NAME.json`) or angle brackets (`runs/<run>/`)."""
    top = {p.name for p in root.iterdir()}
    for _, pieces in prose_spans(read_lines(doc)):
        span = " ".join(t for _, t in pieces)
        if (PATH_SPAN.fullmatch(span) and not FILE_REF.fullmatch(span)   # .py: `references`
                and span.split("/")[0] in top
                and not any(re.fullmatch(r"[A-Z][A-Z_]*", Path(c).stem) for c in span.split("/"))):
            yield pieces[0][0], span


def find_files(path: str, root: Path = REPO) -> list[Path]:
    """`path` from the root, or, written relative to a package the text names nearby
    (`probes/map.py`, `run.py`), every file whose path ends with it."""
    direct = root / path
    if direct.is_file():
        return [direct]
    if "/" in path and path.split("/")[0] in {p.name for p in root.iterdir() if p.is_dir()}:
        return []        # rooted at a top-level folder: it must exist as written
    skip = {".venv", ".git", "build", "node_modules"}
    return [p for p in root.rglob(Path(path).name)
            if p.is_file() and not skip & set(p.relative_to(root).parts)
            and p.relative_to(root).as_posix().endswith(path)]


def _names(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """Names a module or class body defines: def, class, assignment, import."""
    names: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Name):
                        names[sub.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = node
        elif isinstance(node, (ast.If, ast.Try)):      # `if TYPE_CHECKING:`, `try: import`
            names.update(_names(node.body))
    return names


def defines(file: Path, dotted: str) -> bool:
    """Whether `file` defines `dotted` (`name`, or `Class.attr` inside that class)."""
    body = ast.parse(file.read_text(encoding="utf-8")).body
    for part in dotted.split("."):
        node = _names(body).get(part)
        if node is None:
            return False
        body = node.body if isinstance(node, ast.ClassDef) else []
    return True


def module_file(parts: list[str], root: Path = REPO) -> Path | None:
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def resolve_dotted(dotted: str, root: Path = REPO) -> bool:
    """`smt.builder.model_config`: the longest prefix that is a module of ours, then the rest
    defined in it."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        file = module_file(parts[:cut], root)
        if file is not None:
            return cut == len(parts) or defines(file, ".".join(parts[cut:]))
    return False


# -- links ------------------------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in read_lines(doc):
        match = HEADING.match(line.text)
        if line.code or not match:
            continue
        base = slug(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(doc: Path) -> Iterator[tuple[Line, str]]:
    """Relative links (no scheme, no mailto)."""
    for line in read_lines(doc):
        if line.code:
            continue
        for target in LINK.findall(line.text):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):
                yield line, target
