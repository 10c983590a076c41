"""Run a command in a private network namespace the test makes itself (Linux, root).

Inside: loopback, plus optionally a veth pair holding a private "LAN" address that the
namespace's own hostname resolves to (through a bind-mounted /etc/hosts), the usual container
setup where gloo would bind its sockets to that address. Nothing inside can reach the host's
network, and nothing outside can reach in. The command runs under `listen_watch.py`, which
records every listening address in the namespace while it runs.
"""
from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import requires

WATCH = Path(__file__).resolve().parent / "listen_watch.py"
LAN_ADDRESS = "10.231.0.2"       # only ever inside the namespace
LAN_HOSTNAME = "smt-node-a"

_SETUP = r"""
set -e
ip link set lo up
if [ -n "$NETNS_LAN" ]; then
    ip link add smt0 type veth peer name smt1
    ip addr add "$NETNS_LAN/24" dev smt0
    ip link set smt0 up
    ip link set smt1 up
    hostname "$NETNS_HOST"
    { echo "$NETNS_LAN $NETNS_HOST"; echo "127.0.0.1 localhost"; } > "$NETNS_HOSTS"
    mount --bind "$NETNS_HOSTS" /etc/hosts
fi
exec "$@"
"""


@functools.cache
def unavailable() -> str | None:
    """Why a namespace cannot be made here, or None."""
    try:
        res = subprocess.run(["unshare", "--net", "--uts", "--mount", "sh", "-c",
                              "ip link set lo up && ip link add t0 type veth peer name t1"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run unshare/ip: {exc}"
    if res.returncode != 0:
        return f"cannot make a network namespace here: {res.stderr.strip()[:200]}"
    return None


@functools.cache
def uts_unavailable() -> str | None:
    """Why a UTS namespace alone (another hostname: "another machine") cannot be made here."""
    try:
        res = subprocess.run(["unshare", "--uts", "true"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run unshare: {exc}"
    if res.returncode != 0:
        return (f"unshare --uts not permitted here (needs root or user namespaces): "
                f"{res.stderr.strip()[:200]}")
    return None


def require(kind: str = "net") -> None:
    """Return when the namespace (`net`: network + UTS + mount with veth, `uts`: hostname
    only) can be made; else skip, or fail where SMT_REQUIRE_NAMESPACES=1 (`.ci/run`)."""
    reason = {"net": unavailable, "uts": uts_unavailable}[kind]()
    if reason:
        requires.skip_or_fail(reason, requires.NAMESPACES)


def run(commands: list[dict], workdir: Path, lan: bool = False, timeout_s: float = 500,
        env: dict[str, str] | None = None) -> dict:
    """Run the commands ({"argv", "env", "log"}) together in a fresh namespace; the report:
    {"listening": [addresses], "hostname_address": what the hostname resolved to inside,
    "returncodes": [...]}. Raises AssertionError with the logs' tails when one failed."""
    spec, report = workdir / "netns-spec.json", workdir / "netns-report.json"
    spec.write_text(json.dumps({"commands": commands}))
    extra = {"NETNS_LAN": LAN_ADDRESS if lan else "", "NETNS_HOST": LAN_HOSTNAME,
             "NETNS_HOSTS": str(workdir / "netns-hosts")}
    argv = ["unshare", "--net", "--uts", "--mount", "sh", "-c", _SETUP, "sh",
            sys.executable, str(WATCH), str(spec), str(report)]
    res = subprocess.run(argv, env={**(env or {}), **extra}, cwd=workdir, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
    if res.returncode != 0 or not report.exists():
        tails = "\n".join(f"--- {c['log']}\n" + Path(c["log"]).read_text(errors="replace")[-3000:]
                          for c in commands if Path(c["log"]).exists())
        raise AssertionError(f"netns run failed ({res.returncode}): {res.stdout[-1000:]}\n{tails}")
    return json.loads(report.read_text())
