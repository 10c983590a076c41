"""`python listen_watch.py SPEC REPORT`: run the commands in SPEC together, record every
listening address while they run.

Meant to run inside a network namespace of its own (tests/netns.py), where every socket seen
in /proc/net belongs to these commands. SPEC (JSON): {"commands": [{"argv": [...], "env":
{...}, "log": PATH}, ...]}; each command's stdout and stderr go to its log. Writes REPORT
(JSON) and exits 0 when every command did, else with the first non-zero code.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import psutil


def main() -> int:
    spec_path, report = sys.argv[1:3]
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    seen: set[str] = set()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                seen.update(c.laddr.ip for c in psutil.net_connections(kind="inet")
                            if c.status == psutil.CONN_LISTEN)
            except psutil.Error:
                pass
            time.sleep(0.05)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    procs = []
    try:
        for c in spec["commands"]:
            log = open(c["log"], "ab")
            procs.append(subprocess.Popen(c["argv"], env={**os.environ, **c.get("env", {})},
                                          stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL))
        codes = [p.wait() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        stop.set()
        watcher.join()
    try:
        resolved = socket.gethostbyname(socket.gethostname())
    except OSError:
        resolved = None
    with open(report, "w", encoding="utf-8") as fh:
        json.dump({"listening": sorted(seen), "hostname": socket.gethostname(),
                   "hostname_address": resolved, "returncodes": codes}, fh)
    return next((rc for rc in codes if rc != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
