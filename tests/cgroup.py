"""Run a command inside a memory cgroup the test makes itself (Linux, root): the container a
new user trains in, whose limit the kernel's OOM killer enforces with a SIGKILL.

cgroup v2 (a child of this process's own cgroup, with the memory controller delegated to it)
or v1 (a child of the memory hierarchy's root); the command joins it through a shell that
writes its own pid into `cgroup.procs` and then execs it.
"""
from __future__ import annotations

import functools
import shlex
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _v2_parent() -> Path | None:
    """This process's own v2 cgroup folder, where a child may use the memory controller."""
    if not (ROOT / "cgroup.controllers").is_file():
        return None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            parent = ROOT / line[3:].lstrip("/")
            return parent if "memory" in (parent / "cgroup.subtree_control").read_text() \
                else None
    return None


def _parent_and_limit_file() -> tuple[Path, str]:
    v2 = _v2_parent()
    if v2 is not None:
        return v2, "memory.max"
    if (ROOT / "memory" / "memory.limit_in_bytes").is_file():
        return ROOT / "memory", "memory.limit_in_bytes"
    raise OSError("no cgroup v2 folder with the memory controller delegated, no v1 memory "
                  "hierarchy")


@functools.cache
def unavailable() -> str | None:
    """Why a memory cgroup with a limit cannot be made here, or None."""
    try:
        with memory_cgroup(256 * 2**20):
            pass
    except OSError as exc:
        return f"cannot make a memory cgroup here: {exc}"
    return None


@contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[Path]:
    """A fresh cgroup limited to `limit_bytes`, removed after (its processes must be gone)."""
    parent, limit_file = _parent_and_limit_file()
    path = parent / f"smt-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        (path / limit_file).write_text(str(int(limit_bytes)))
        if limit_file == "memory.max":
            (path / "memory.swap.max").write_text("0")        # no swap to hide behind
        elif (path / "memory.memsw.limit_in_bytes").is_file():
            (path / "memory.memsw.limit_in_bytes").write_text(str(int(limit_bytes)))
        yield path
    finally:
        try:
            path.rmdir()
        except OSError:
            pass


def inside(path: Path, argv: Sequence[str]) -> list[str]:
    """`argv` as a command that runs inside the cgroup at `path`."""
    script = f"echo $$ > {shlex.quote(str(path / 'cgroup.procs'))} && exec {shlex.join(argv)}"
    return ["sh", "-c", script]


def oom_kills(path: Path) -> int:
    """How many processes the OOM killer ended in the cgroup (v2: memory.events; v1: the
    oom_kill line of memory.oom_control where the kernel writes one)."""
    for name in ("memory.events", "memory.oom_control"):
        f = path / name
        if f.is_file():
            for line in f.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return 0


__all__ = ["inside", "memory_cgroup", "oom_kills", "unavailable"]
