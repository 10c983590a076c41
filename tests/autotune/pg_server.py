"""A real, throw-away PostgreSQL server for the storage tests, on 127.0.0.1 only.

It uses the distribution's server binaries (Debian's `postgresql` package: `.ci/run` installs
it where it is missing), runs `initdb` into a fresh folder and `postgres` on a free loopback
port, with its Unix socket in that folder too. PostgreSQL refuses to run as root, so under
root (CI) it runs as the `postgres` system user the package creates. Nothing here listens
beyond loopback (`listen_addresses = 127.0.0.1`).

Without the binaries the tests skip with the reason, except where SMT_REQUIRE_POSTGRES=1
(CI sets it): there a missing server is a failure, so a green CI cannot hide skipped tests.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requires

REQUIRE_ENV = requires.POSTGRES
PASSWORD = "s3cret-pw"


def _find_bin_dir() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    # Debian keeps the server's programs out of PATH, one folder per major version.
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user the server runs as when we are root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


def _die_with_parent() -> None:
    """In the server's process: a SIGTERM (smart shutdown) when the test process dies, so a
    killed test run leaves no server behind (Linux; elsewhere the fixture's stop must do)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))   # PR_SET_PDEATHSIG
    except Exception:  # no prctl here: the fixture's stop() is the only cleanup
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unavailable(reason: str) -> None:
    """Skip (or, where CI requires the server, fail) with the reason."""
    requires.skip_or_fail(reason, REQUIRE_ENV)


class PgServer:
    """initdb once; start() / stop() as often as a test needs (the data folder persists)."""

    def __init__(self) -> None:
        bin_dir = _find_bin_dir()
        if bin_dir is None:
            unavailable("no PostgreSQL server binaries (initdb) found; "
                        "apt-get install postgresql")
        self.bin_dir = bin_dir
        self.user = _run_as()
        if os.geteuid() == 0 and self.user is None:
            unavailable("running as root and no unprivileged user to run PostgreSQL as")
        # Not under pytest's tmp folder: that is mode 0700 and root's, unreadable to `postgres`.
        self.root = Path(tempfile.mkdtemp(prefix="smt-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._as_user([str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "smt",
                       "--auth=trust", "-E", "UTF8", "--no-sync"], timeout=120)

    def _as_user(self, cmd: list[str], timeout: float) -> None:
        kw = {"user": self.user.pw_uid, "group": self.user.pw_gid,
              "extra_groups": []} if self.user else {}
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
        if res.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {res.stderr[-2000:]}")

    @property
    def url(self) -> str:
        # Trust authentication ignores the password: it is there to check it is never printed.
        return f"postgresql://smt:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def start(self, timeout_s: float = 60.0) -> None:
        kw = {"user": self.user.pw_uid, "group": self.user.pw_gid,
              "extra_groups": []} if self.user else {}
        cmd = [str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
               "-k", str(self.root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
               "-c", "max_connections=50", "-c", "shared_buffers=16MB"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                     stderr=open(self.root / "server.log", "ab"),
                                     preexec_fn=_die_with_parent, **kw)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited {self.proc.returncode}: "
                                   f"{(self.root / 'server.log').read_text()[-2000:]}")
            if self.ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"postgres not ready after {timeout_s:g} s")

    def ready(self) -> bool:
        import psycopg
        try:
            with psycopg.connect(self.url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open connections are cut, as when a server goes down."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
