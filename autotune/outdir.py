"""Outputs that never destroy what was there: one rule for every CLI that writes a folder
(and the up-front check for those that write a file).

A folder given as `--out` is written into a new temporary sibling and renamed into place at
the end, so a killed run leaves the old folder (or nothing) and never half of a new one. An
existing folder is replaced only when it carries our marker from an earlier run of the same
command, or when the user says `--overwrite`; an `--out` that is, contains or lies inside any
input of the command is refused outright (replacing it would delete the input). Every check
runs before any expensive work, and each failure is one `UserError` line naming the flag.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autotune.atomic import atomic_write_json, default_mode
from autotune.errors import UserError

OUT_MARKER = ".smt-autotune-out.json"      # {"creator", "command", "created"} in the folder
RUN_LOCK = ".smt-run.lock"                 # in a run folder: the pid of the run writing it
CREATOR = "smt-autotune"

PathLike = str | os.PathLike[str]


def read_out_marker(folder: Path) -> dict[str, object] | None:
    """The marker an earlier run left in `folder`, or None when it is not ours."""
    import json
    path = folder / OUT_MARKER
    try:
        if path.is_symlink():
            return None
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("creator") != CREATOR:
        return None
    return meta


def overlap(out: Path, item: Path) -> str:
    """How `out` relates to the input `item` ("" when they are apart); both resolved."""
    if out == item:
        return "is"
    if item in out.parents:
        return "lies inside"
    if out in item.parents:
        return "contains"
    return ""


def _first_overlap(target: Path, inputs: Iterable[PathLike | None]) -> tuple[str, PathLike] | None:
    """(how, input) for the first existing input that `target` is, contains or lies inside."""
    resolved = target.resolve()
    for item in inputs:
        if item is None or not Path(item).expanduser().exists():
            continue
        how = overlap(resolved, Path(item).expanduser().resolve())
        if how:
            return how, item
    return None


def _writable_parent(target: Path, flag: str) -> None:
    """Create the parent if needed and prove we can make a folder in it (the real test: as
    root, permission bits say yes on a read-only mount)."""
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".probe", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        blocker = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise UserError(f"{flag} {target}: {blocker} is a file, not a folder") from None
        raise UserError(f"{flag} {target}: cannot write in {parent} "
                        f"({exc.strerror or type(exc).__name__})") from None


def check_out_dir(out: PathLike, command: str, inputs: Iterable[PathLike | None] = (),
                  overwrite: bool = False, flag: str = "--out") -> Path:
    """The output folder `out` of `command`, checked (see the module docstring); raises a
    one-line UserError naming `flag` when it may not be written. Creates nothing but the
    parent folder."""
    target = Path(out).expanduser()
    if target.is_symlink():
        raise UserError(f"{flag} {out}: is a symbolic link; pass a real folder")
    if target.exists() and not target.is_dir():
        raise UserError(f"{flag} {out}: is an existing file; pass a folder")
    clash = _first_overlap(target, inputs)
    if clash:
        raise UserError(f"{flag} {out} {clash[0]} the input {clash[1]}; writing there would "
                        f"replace it: choose a folder outside the input")
    if target.is_dir() and any(target.iterdir()):
        marker = read_out_marker(target)
        if not overwrite and (marker is None or marker.get("command") != command):
            raise UserError(f"{flag} {out} already exists and was not written by `{command}`; "
                            f"pass --overwrite to replace it, or choose another folder")
    # Past that check (--overwrite): the folder is replaced by a rename, which the OS refuses
    # (EBUSY) for the current folder and which would pull a folder holding it from under the
    # shell.
    try:
        here = overlap(target.resolve(), Path.cwd().resolve())
    except OSError:                       # the current folder was deleted: nothing to protect
        here = ""
    if here in ("is", "contains"):
        raise UserError(f"{flag} {out} {'is' if here == 'is' else 'holds'} the current folder, "
                        f"which cannot be replaced: choose another folder (e.g. {flag} ./out)")
    _writable_parent(target, flag)
    return target


def check_run_dir(out: PathLike, inputs: Iterable[PathLike | None] = (),
                  flag: str = "--out") -> Path:
    """A folder a command writes into over time and resumes (a training run): not a file, not
    overlapping an input (checkpoints and plots inside an image folder would be read back
    as data), and creatable. Nothing is replaced, so no marker is needed."""
    target = Path(out).expanduser()
    if target.exists() and not target.is_dir():
        raise UserError(f"{flag} {out}: is an existing file; pass a folder")
    clash = _first_overlap(target, inputs)
    if clash:
        raise UserError(f"{flag} {out} {clash[0]} the input {clash[1]}: choose a folder outside it")
    _writable_parent(target, flag)
    return target


def _holder(fd: int, fcntl: Any) -> str | None:
    """Lock `fd`'s file, or say who holds it: its pid ("?" before the holder wrote it)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return text if text.isdigit() else "?"
    return None


def _in_use(out: PathLike, holder: str, flag: str) -> str:
    who = f"pid {holder}" if holder != "?" else "another process"
    return f"{flag} {out} is in use by another run ({who}); wait for it to end or choose another {flag}"


def check_run_dir_free(out: PathLike, flag: str = "--out") -> None:
    """One UserError line when another process holds `out`'s run lock (`own_run_dir`);
    nothing otherwise, nor where there is no lock file (or no fcntl)."""
    path = Path(out).expanduser() / RUN_LOCK
    try:
        import fcntl
        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        return
    try:
        holder = _holder(fd, fcntl)
    finally:
        os.close(fd)                                    # and the lock it may have taken
    if holder is not None:
        raise UserError(_in_use(out, holder, flag))


@contextmanager
def own_run_dir(out: PathLike, flag: str = "--out") -> Iterator[Path]:
    """Hold `out`'s lock (`RUN_LOCK`, created with the folder) for the block: a second process
    asking for the same folder gets one UserError line naming the holder's pid instead of
    writing over its files. An flock, so the OS releases it when the holder dies (even by
    SIGKILL) and a crashed run never blocks the next; the file stays (removing it would let
    a third process lock a new file while the second still holds the old one). Processes
    forked by the holder (loader workers) share it until they exit. No fcntl (Windows): no
    lock."""
    target = Path(out).expanduser()
    try:
        import fcntl
    except ImportError:                                 # Windows
        yield target
        return
    target.mkdir(parents=True, exist_ok=True)
    fd = os.open(target / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        holder = _holder(fd, fcntl)
        if holder is not None:
            raise UserError(_in_use(out, holder, flag))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield target
    finally:
        os.close(fd)                                    # releases the lock


def check_out_file(out: PathLike, flag: str = "--out") -> Path:
    """An output *file* (a profile): not a folder, and its folder writable, checked before any
    work. The write itself is `autotune.atomic` (a temporary file renamed into place)."""
    target = Path(out).expanduser()
    if target.is_dir():
        raise UserError(f"{flag} {out}: is a folder; pass a file path (e.g. {target / 'name.json'})")
    _writable_parent(target, flag)
    return target


@contextmanager
def replace_dir(out: PathLike, command: str, inputs: Iterable[PathLike | None] = (),
                overwrite: bool = False, flag: str = "--out") -> Iterator[Path]:
    """Yield an empty temporary sibling of `out` to write into; on success mark it and rename
    it into place (replacing the old folder only as `check_out_dir` allows); on any error
    remove it and leave `out` as it was."""
    inputs = list(inputs)
    target = check_out_dir(out, command, inputs, overwrite, flag)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        tmp.chmod(default_mode(folder=True))     # mkdtemp makes it 0700; the output is not private

        yield tmp
        atomic_write_json(tmp / OUT_MARKER, {"creator": CREATOR, "command": command,
                                             "created": datetime.now(timezone.utc).isoformat()})
        check_out_dir(out, command, inputs, overwrite, flag)     # nothing changed meanwhile
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`; an old `target` is moved aside first and removed after, so
    at every moment one complete folder holds the name or is one rename away."""
    if not target.exists():
        os.rename(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rmdir(old)
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
