"""Faults injected into real runs: is each one detected, how fast, what it costs, and does the
run end where a clean run ends?

    python bench/bench_faults.py            # ~3-5 min on 2 cores, small sizes
    python bench/bench_faults.py signals "concurrent prepare"    # only those rows

Every row runs the real code path with a real fault: child processes killed with SIGKILL,
the preparation's map stalled or swollen through SMT_PREPARE_FAULT, corrupt files on disk, a
writer killed mid-write, training OOM through SMT_INJECT_OOM_ABOVE and a training SIGKILL
through SMT_INJECT_KILL_AT_STEP, a NaN loss through SMT_INJECT_NAN_AT_STEP, --devices above
the cores and two trainings into one folder; as root, a training run inside a 1.5 GiB memory
cgroup (a batch too large for the container, and a loader that fills it through
SMT_LOADER_FAULT). "Extra s" is the faulty path's wall time (every attempt)
minus a clean run's, both measured here; "identical" compares the final artefact (prepared rows
byte for byte; profile JSON; model weights) with the clean run's.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "smt"))    # tiny_scores: the training tests' tiny data
sys.path.insert(0, str(REPO / "tests"))             # cgroup: the memory tests' container

ENV_CACHE = "SMT_AUTOTUNE_CACHE"


@dataclass
class Row:
    fault: str
    detected: str
    detect_s: str
    lost: str
    identical: str
    note: str = ""


def _cache(path: Path) -> None:
    os.environ[ENV_CACHE] = str(path)


def _same_rows(a: Any, b: Any, splits: tuple[str, ...] = ("train", "val", "test")) -> bool:
    for split in splits:
        if a[split]["transcription"] != b[split]["transcription"]:
            return False
        ia = a[split].with_format("arrow")["image"].to_pylist()
        ib = b[split].with_format("arrow")["image"].to_pylist()
        if [x["bytes"] for x in ia] != [x["bytes"] for x in ib]:
            return False
    return True


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


# ----------------------------------------------------------------------------- preparation
def prepare_clean(raw: Path, work: Path, **cfg: Any) -> tuple[Any, float]:
    from smt.data.prepare import PrepareConfig, prepare
    _cache(work / f"clean-{len(list(work.glob('clean-*')))}")
    t0 = time.perf_counter()
    res = prepare(raw, PrepareConfig(**cfg), quiet=True)
    return res, time.perf_counter() - t0


def fault_prepare_sigkill(raw: Path, work: Path) -> Row:
    clean, clean_s = prepare_clean(raw, work, shard_rows=8)
    cache = work / "killed"
    env = dict(os.environ, **{ENV_CACHE: str(cache), "SMT_PREPARE_FAULT": "sleep_ms=150"})
    cmd = [sys.executable, "-m", "smt.data", "prepare", "--data", str(raw), "--shard-rows", "8",
           "--writer-batch-size", "4"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not list(cache.glob("prepared/*/shards/*/done.json")):
            if proc.poll() is not None or time.perf_counter() - t0 > 300:
                return Row("prepare: SIGKILL mid-run", "NO", "-", "-", "-", "run ended before the kill")
            time.sleep(0.1)
        time.sleep(0.6)                                  # into the next shard
    finally:
        os.killpg(proc.pid, signal.SIGKILL)              # the CLI, its shard child, the workers
        proc.wait()
    killed_s = time.perf_counter() - t0
    shard_dirs = list(cache.glob("prepared/*/shards/*-*"))
    done = [d for d in shard_dirs if (d / "done.json").is_file()]
    partial = [d for d in shard_dirs if d.is_dir() and not (d / "done.json").is_file()]
    from smt.data.prepare import PrepareConfig, prepare
    _cache(cache)
    t1 = time.perf_counter()
    res = prepare(raw, PrepareConfig(shard_rows=8, writer_batch_size=4), quiet=True)
    resume_s = time.perf_counter() - t1
    # Map time of the killed run, minus what its finished shards saved the resume.
    return Row("prepare: SIGKILL mid-run, rerun", _yes(res.shards_reused == len(done) > 0),
               "on rerun", f"≤{8 * len(partial)} rows ({len(partial)} partial shard); "
               f"+{killed_s + resume_s - clean_s:.1f} s",
               _yes(_same_rows(res.dataset, clean.dataset)),
               f"{res.shards_reused} of {res.shards_total} shards reused; 150 ms/row slowdown "
               "in the killed run only")


def _watchdog_row(raw: Path, work: Path, label: str, fault: str, reason: str,
                  cfg: Callable[[], dict[str, Any]], detail: Callable[[Any], str]) -> Row:
    """Prepare with `fault` armed; the row says whether the watchdog acted for `reason`, how
    far into the shard, the time lost against a clean run, and whether the rows came out the
    same after the lighter retry. `cfg` is read after the clean run (a budget follows the RSS
    that run leaves)."""
    from smt.data.prepare import PrepareConfig, prepare
    clean, clean_s = prepare_clean(raw, work)
    _cache(work / reason)
    os.environ["SMT_PREPARE_FAULT"] = fault
    try:
        t0 = time.perf_counter()
        res = prepare(raw, PrepareConfig(writer_batch_size=100, **cfg()), quiet=True)
        took = time.perf_counter() - t0
    finally:
        del os.environ["SMT_PREPARE_FAULT"]
    acted = [a for a in res.actions if a.reason == reason]
    a = acted[0] if acted else None
    return Row(label, _yes(bool(acted)), f"{a.seconds_into_shard:.1f}" if a else "-",
               f"+{took - clean_s:.1f} s", _yes(_same_rows(res.dataset, clean.dataset)),
               (f"{detail(a)}; writer_batch_size {a.writer_batch_size_before}->"
                f"{a.writer_batch_size_after}" if a else ""))


def fault_prepare_stall(raw: Path, work: Path) -> Row:
    return _watchdog_row(raw, work, "prepare: map hangs after 2 rows",
                         "stall_after=2;above_wbs=50", "stall", lambda: {"stall_timeout_s": 3.0},
                         lambda a: "stall timeout 3 s")


def fault_prepare_ram(raw: Path, work: Path) -> Row:
    from autotune.measure import tree_rss_bytes
    return _watchdog_row(raw, work, "prepare: worker takes +1.2 GB (budget +1 GiB)",
                         "ram_mb=1200;sleep_ms=300;above_wbs=50", "ram",
                         lambda: {"ram_budget_bytes": tree_rss_bytes() + 2**30,
                                 "stall_timeout_s": 60},
                         lambda a: a.detail)


def fault_corrupt_rows(raw: Path, work: Path) -> Row:
    import datasets

    from smt.data.prepare import PrepareConfig, prepare
    good, bad = work / "good", work / "bad"
    ds = datasets.load_from_disk(str(raw))
    for root in (good, bad):
        for split in ("train", "val", "test"):
            folder = root / split
            folder.mkdir(parents=True)
            for i, row in enumerate(ds[split]):
                row["image"].save(folder / f"r{i:02d}.png")
                (folder / f"r{i:02d}.krn").write_text(row["transcription"])
    png = (good / "train" / "r00.png").read_bytes()
    injected = {"corrupt.png": (b"\x89PNG\r\n\x1a\n garbage", "**kern\n4c\n*-"),
                "zero.png": (b"", "**kern\n4c\n*-"), "empty.png": (png, " \n"),
                "prose.png": (png, "hello world"), "binary.png": (png, "**kern\n4c\x00\n*-"),
                "notext.png": (png, None)}
    for name, (data, text) in injected.items():
        (bad / "train" / name).write_bytes(data)
        if text is not None:
            (bad / "train" / name).with_suffix(".krn").write_text(text)
    _cache(work / "rows")
    t0 = time.perf_counter()
    ref = prepare(good, PrepareConfig(isolate=False), quiet=True)
    clean_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = prepare(bad, PrepareConfig(isolate=False), quiet=True)
    took = time.perf_counter() - t0
    skipped = sum(res.skipped.values())
    return Row(f"prepare: {len(injected)} bad rows among {res.rows_in}",
               _yes(skipped == len(injected)), "per row",
               f"0 good rows; +{took - clean_s:.1f} s",
               _yes(_same_rows(res.dataset, ref.dataset)),
               "skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(res.skipped.items())))


# ----------------------------------------------------------------------------- profiles
_WRITER = """
import json, sys
from autotune.atomic import atomic_write_json
path, mode = sys.argv[1], sys.argv[2]
data = json.loads(open(sys.argv[3]).read())
i = 0
print("ready", flush=True)
while True:
    i += 1
    data["created"] = str(i)
    if mode == "atomic":
        atomic_write_json(path, data)
    else:
        with open(path, "w") as fh:
            fh.write(json.dumps(data, indent=2))
"""


def fault_profile_write_killed(work: Path, kills: int = 15) -> Row:
    """A probe killed while it saves its profile: atomic vs a plain open('w')."""
    from autotune.profile import ProfileError, load_profile
    base = json.loads((REPO / "tests" / "autotune" / "fixtures" /
                       "profile-synthetic-cpu.json").read_text())
    # ~4 MB of curves, so that a kill often lands inside a write.
    base["measurements"]["bench_padding"] = [random.random() for _ in range(200_000)]
    src = work / "profile-src.json"
    src.write_text(json.dumps(base))
    torn = {"atomic": 0, "plain": 0}
    for mode in torn:
        target = work / f"profile-{mode}.json"
        shutil.copyfile(src, target)
        for _ in range(kills):
            proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), mode, str(src)],
                                    cwd=REPO, stdout=subprocess.PIPE, text=True,
                                    env=dict(os.environ, PYTHONPATH=str(REPO)))
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(random.uniform(0.05, 0.4))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            try:
                load_profile(target)
            except ProfileError:
                torn[mode] += 1
                shutil.copyfile(src, target)
    return Row(f"profile writer SIGKILLed mid-write ({kills}x)", "n/a (never torn)", "-",
               f"{torn['atomic']} of {kills} files torn",
               _yes(torn["atomic"] == 0),
               f"plain open('w') for contrast: {torn['plain']} of {kills} torn")


def fault_truncated_profile(work: Path) -> Row:
    import contextlib
    import io

    from autotune.errors import run_cli
    from smt.train import main
    text = (REPO / "tests" / "autotune" / "fixtures" / "profile-synthetic-cpu.json").read_text()
    path = work / "truncated.json"
    path.write_text(text[: len(text) // 2])
    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err):
        code = run_cli(main, ["--profile", str(path), "--max-steps", "1",
                              "--out", str(work / "never")], prog="smt.train")
    took = time.perf_counter() - t0
    line = err.getvalue().strip()
    ok = code == 2 and len(line.splitlines()) == 1 and str(path) in line
    return Row("smt.train --profile truncated.json", _yes(ok), f"{took:.2f}", "0 (nothing started)",
               "n/a", line.split("error: ", 1)[-1][:70])


# ----------------------------------------------------------------------------- training
FAST = ["--preset", "debug", "--num-workers", "0", "--precision", "32-true", "--teacher-noise",
        "0", "--lr", "3e-3", "--patience", "0"]


def _train(data: Path, out: Path, steps: int, env_extra: dict[str, str], cache: Path,
           extra: list[str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), ENV_CACHE: str(cache), **env_extra}
    argv = extra if extra is not None else [
        "--data", str(data), *FAST, "--batch-size", "2", "--max-steps", str(steps),
        "--ckpt-every", "3", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "smt.train", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    return proc, time.perf_counter() - t0


def _weights(ckpt: Path) -> dict[str, Any]:
    import torch
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def _max_diff(a: Path, b: Path) -> float:
    sa, sb = _weights(a)["state_dict"], _weights(b)["state_dict"]
    # Softmax ignores a constant added to every key, so k_proj.bias gradients are float
    # noise that Adam scales into full steps: not a property of the run (see test_module).
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa
               if not k.endswith("k_proj.bias"))


def fault_training(work: Path) -> list[Row]:
    from tiny_scores import tiny_dataset_dict
    data = tiny_dataset_dict(work / "tiny", n_train=2, n_val=1, n_test=1)
    cache = work / "train-cache"
    rows = []

    clean, clean_s = _train(data, work / "clean6", 6, {}, cache)
    oom, oom_s = _train(data, work / "oom6", 6, {"SMT_INJECT_OOM_ABOVE": "1"}, cache)
    if clean.returncode or oom.returncode:
        rows.append(Row("train: OOM above batch 1", "NO", "-", "-", "-",
                        (oom.stderr or clean.stderr)[-70:]))
    else:
        s = json.loads((work / "oom6" / "summary.json").read_text())
        ev = s.get("oom_events") or []
        diff = _max_diff(work / "clean6" / "checkpoints" / "last.ckpt",
                         work / "oom6" / "checkpoints" / "last.ckpt")
        rows.append(Row("train: CUDA OOM on micro-batch > 1 (batch 2)", _yes(bool(ev)),
                        f"at step {ev[0]['step']}" if ev else "-",
                        f"{sum(e['dropped_samples'] for e in ev)} samples; +{oom_s - clean_s:.1f} s",
                        _yes(diff < 1e-4) + f" (max |dw| {diff:.1e})",
                        f"micro-batch {ev[0]['micro_batch_from']}->{ev[0]['micro_batch_to']}, "
                        f"{s['steps']} steps" if ev else ""))

    total, kill_at = 12, 8
    clean, clean_s = _train(data, work / "clean12", total, {}, cache)
    killed, killed_s = _train(data, work / "runs" / "first", total,
                              {"SMT_INJECT_KILL_AT_STEP": str(kill_at)}, cache)
    ckpt = work / "runs" / "first" / "checkpoints" / "last.ckpt"
    saved = int(_weights(ckpt)["global_step"]) if ckpt.is_file() else None
    resumed, resume_s = _train(data, work / "runs", total, {}, cache,
                               extra=["--resume", "auto", "--out", str(work / "runs")])
    if clean.returncode or killed.returncode != -signal.SIGKILL or resumed.returncode:
        rows.append(Row(f"train: SIGKILL at step {kill_at}, --resume auto", "NO", "-", "-", "-",
                        (resumed.stderr or killed.stderr)[-70:]))
    else:
        s = json.loads((work / "runs" / "first" / "summary.json").read_text())
        diff = _max_diff(work / "clean12" / "checkpoints" / "last.ckpt", ckpt)
        rows.append(Row(f"train: SIGKILL at step {kill_at}, --resume auto",
                        _yes(saved is not None and s["steps"] == total), "on resume",
                        f"{kill_at - saved} steps; +{killed_s + resume_s - clean_s:.1f} s",
                        _yes(diff < 1e-4) + f" (max |dw| {diff:.1e})",
                        f"checkpoint every 3 steps; resumed at step {saved}"))
    return rows


def _stop_by_signal(data: Path, out: Path, sig: int, total: int, cache: Path) -> tuple[int, int, str]:
    """Train `total` steps, send `sig` once the first periodic last.ckpt exists (Ctrl-C goes to
    the whole process group, SIGTERM to the main process); (exit code, step saved, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), ENV_CACHE: str(cache)}
    argv = ["--data", str(data), *FAST, "--batch-size", "2", "--max-steps", str(total),
            "--ckpt-every", "3", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "smt.train", *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    ckpt = out / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600
    while not ckpt.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    saved = int(_weights(ckpt)["global_step"]) if ckpt.is_file() else -1
    return proc.returncode, saved, err


def fault_signals(work: Path) -> list[Row]:
    """SIGINT and SIGTERM mid-run: steps lost, and a bare --resume ends where a clean run does."""
    from tiny_scores import tiny_dataset_dict
    data = tiny_dataset_dict(work / "tiny-sig", n_train=2, n_val=1, n_test=1)
    cache = work / "sig-cache"
    total = 40
    clean, clean_s = _train(data, work / "clean40", total, {}, cache)
    rows = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        name = signal.Signals(sig).name
        out = work / f"run-{name}"
        t0 = time.perf_counter()
        code, saved, err = _stop_by_signal(data, out, sig, total, cache)
        stop_s = time.perf_counter() - t0
        resumed, resume_s = _train(data, out, total, {}, cache,
                                   extra=["--resume", "--out", str(out)])
        ok = code == 128 + sig and saved > 0 and resumed.returncode == 0 and not clean.returncode
        if not ok:
            rows.append(Row(f"train: {name} mid-run, bare --resume", "NO", "-", "-", "-",
                            (err or resumed.stderr)[-70:]))
            continue
        s = json.loads((out / "summary.json").read_text())
        diff = _max_diff(work / "clean40" / "checkpoints" / "last.ckpt",
                         out / "checkpoints" / "last.ckpt")
        line = err.strip().splitlines()[-1]
        import re
        at = re.search(r"at step (\d+)", line)
        lost = f"{int(at.group(1)) - saved} steps" if at else "?"
        rows.append(Row(f"train: {name} mid-run, bare --resume",
                        _yes(s["steps"] == total and "--resume" in line), "at the step's end",
                        f"{lost} (stopped and saved at {saved}); "
                        f"{stop_s + resume_s - clean_s:+.1f} s",
                        _yes(diff < 1e-4) + f" (max |dw| {diff:.1e})",
                        f"exit {code}; one line: {line.split(': error: ')[-1][:48]}..."))
    return rows


CONTAINER = int(1.5 * 2**30)      # the new user's container: a CPU box, a notebook's host side


def fault_container(work: Path) -> list[Row]:
    """smt.train in a 1.5 GiB memory cgroup: the small model at batch 32 (refused before any
    data work, naming a batch that fits), and a run whose loader fills the container to 96%
    (saved and stopped before the OOM killer: steps lost, what was saved)."""
    import re

    import cgroup
    from tiny_scores import tiny_dataset_dict
    why = cgroup.unavailable()
    if why:
        return [Row("train: in a 1.5 GiB container", "n/a", "-", "-", "n/a", why[:70])]
    env = {**os.environ, "PYTHONPATH": str(REPO), ENV_CACHE: str(work / "box-cache")}
    rows = []
    subprocess.run([sys.executable, "-c", "from smt.data.default import ensure_default_dataset;"
                    " ensure_default_dataset(quiet=True)"], cwd=REPO, env=env, check=True,
                   timeout=900)      # the check reads the embedded data's largest image
    with cgroup.memory_cgroup(CONTAINER) as group:
        t0 = time.perf_counter()
        big = subprocess.run(cgroup.inside(group, [
            sys.executable, "-m", "smt.train", "--preset", "small", "--batch-size", "32",
            "--accumulate", "1", "--max-steps", "20", "--num-workers", "0",
            "--out", str(work / "box-big")]), cwd=REPO, env=env, capture_output=True,
            text=True, timeout=900)
        took = time.perf_counter() - t0
        line = (big.stderr.strip().splitlines() or ["?"])[-1]
        fit = re.search(r"(--batch-size \d+ --accumulate \d+) fits", line)
        rows.append(Row("train: batch 32 too large for a 1.5 GiB container",
                        _yes(big.returncode == 2 and bool(fit)), f"{took:.1f}",
                        "0 (nothing started)" if not (work / "box-big").exists() else "?",
                        "n/a", f"exit {big.returncode}, OOM kills {cgroup.oom_kills(group)}; "
                        f"fits: {fit.group(1) if fit else line[-60:]}"))
    data = tiny_dataset_dict(work / "tiny-box", n_train=2, n_val=1, n_test=1)
    out = work / "box-fill"
    with cgroup.memory_cgroup(CONTAINER) as group:
        t0 = time.perf_counter()
        full = subprocess.run(cgroup.inside(group, [
            sys.executable, "-m", "smt.train", "--data", str(data), *FAST, "--batch-size", "2",
            "--max-steps", "100000", "--ckpt-every", "50", "--out", str(out)]), cwd=REPO,
            env={**env, "SMT_LOADER_FAULT": "fill_pct=96"}, capture_output=True, text=True,
            timeout=900)
        took = time.perf_counter() - t0
        line = (full.stderr.strip().splitlines() or ["?"])[-1]
        ckpt = out / "checkpoints" / "last.ckpt"
        saved = int(_weights(ckpt)["global_step"]) if ckpt.is_file() else None
        at = re.search(r"stopped at step (\d+)", line)
        rows.append(Row("train: loader fills the 1.5 GiB container to 96%",
                        _yes(full.returncode == 3 and saved is not None), f"{took:.1f} (run)",
                        f"{int(at.group(1)) - saved} steps (last.ckpt at step {saved})"
                        if at and saved is not None else "?",
                        "n/a", f"exit {full.returncode}, OOM kills {cgroup.oom_kills(group)}; "
                        f"{line.split(': error: ')[-1][:48]}..."))
    return rows


def fault_concurrent_prepare(raw: Path, work: Path) -> Row:
    """Two processes prepare the same data at once: the second waits, then reuses."""
    cache = work / "conc-cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), ENV_CACHE: str(cache),
           "SMT_PREPARE_FAULT": "sleep_ms=150"}
    cmd = [sys.executable, "-m", "smt.data", "prepare", "--data", str(raw), "--shard-rows", "8"]
    t0 = time.perf_counter()
    first = subprocess.Popen(cmd + ["--out", str(work / "conc-a")], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not list(cache.glob("prepared/*/meta.json")) and first.poll() is None:
        time.sleep(0.05)
    t1 = time.perf_counter()
    second = subprocess.run(cmd + ["--out", str(work / "conc-b")], env=env, capture_output=True,
                            text=True, timeout=600)
    wait_s = time.perf_counter() - t1
    first.communicate(timeout=600)
    import datasets
    if first.returncode or second.returncode:
        return Row("prepare: two processes, same data", "NO", "-", "-", "-",
                   (second.stderr or "")[-70:])
    same = _same_rows(datasets.load_from_disk(str(work / "conc-a")),
                      datasets.load_from_disk(str(work / "conc-b")))
    waited = "waiting for another preparation" in second.stderr
    reused = "reusing cached preparation" in second.stdout
    return Row("prepare: two processes, same data", _yes(waited and reused),
               f"{wait_s:.1f} s waited", "0 rows (the second maps none)", _yes(same),
               f"first took {time.perf_counter() - t0:.1f} s; the second printed one line, then reused")


def fault_bounds(work: Path) -> list[Row]:
    """What a count, a second run or a NaN can no longer do: --devices above the cores, two
    trainings into one folder, a loss that turns NaN mid-run."""
    from autotune.hardware import usable_cpus
    from tiny_scores import tiny_dataset_dict
    data = tiny_dataset_dict(work / "tiny-bounds", n_train=2, n_val=1, n_test=1)
    cache = work / "bounds-cache"
    rows = []

    out = work / "devices"
    proc, took = _train(data, out, 1, {}, cache, extra=[
        "--data", str(data), *FAST, "--max-steps", "1", "--devices", "1000", "--out", str(out)])
    line = (proc.stderr.strip().splitlines() or ["?"])[-1]
    rows.append(Row(f"train: --devices 1000 on {usable_cpus():g} usable cores",
                    _yes(proc.returncode == 2 and "--devices 1000" in line), f"{took:.1f} s",
                    "nothing: no rank started" + ("" if not out.exists() else ", but a folder"),
                    "n/a", f"exit {proc.returncode}; one line: {line.split(': error: ')[-1][:60]}..."))

    out = work / "shared"
    env = {**os.environ, "PYTHONPATH": str(REPO), ENV_CACHE: str(cache),
           "SMT_LOADER_FAULT": "sleep_ms=1000"}
    argv = ["--data", str(data), *FAST, "--batch-size", "1", "--max-steps", "4", "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-m", "smt.train", *argv], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = out / ".smt-run.lock"
    deadline = time.monotonic() + 600
    while (not lock.is_file() or not lock.read_text().strip()) and first.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    second, took = _train(data, out, 1, {}, cache, extra=[*argv[:-4], "--max-steps", "1",
                                                          "--out", str(out)])
    _, err = first.communicate(timeout=900)
    line = (second.stderr.strip().splitlines() or ["?"])[-1]
    metrics = out / "logs" / "csv" / "metrics.csv"
    kept = first.returncode == 0 and metrics.is_file() \
        and "val_loss" in metrics.read_text().splitlines()[0] \
        and json.loads((out / "run.json").read_text()).get("max_steps") == 4
    rows.append(Row("train: a second training into a running one's --out",
                    _yes(second.returncode == 2 and f"pid {first.pid}" in line), f"{took:.1f} s",
                    "nothing: the first run finished" if kept else f"first run: {err[-50:]}",
                    _yes(kept) + " (first run's run.json, metrics)",
                    f"exit {second.returncode}; one line: {line.split(': error: ')[-1][:60]}..."))

    total, nan_at = 12, 7
    out = work / "nan"
    proc, took = _train(data, out, total, {"SMT_INJECT_NAN_AT_STEP": str(nan_at)}, cache)
    ckpt = out / "checkpoints" / "last.ckpt"
    line = (proc.stderr.strip().splitlines() or ["?"])[-1]
    if proc.returncode != 3 or not ckpt.is_file():
        rows.append(Row(f"train: NaN loss from step {nan_at}", "NO", "-", "-", "-", line[-70:]))
        return rows
    import torch
    saved = _weights(ckpt)
    finite = all(bool(torch.isfinite(t).all()) for t in saved["state_dict"].values()
                 if t.is_floating_point())
    rows.append(Row(f"train: NaN loss from step {nan_at} ({total} asked)",
                    _yes(f"at step {nan_at}" in line), "at that step, before its update",
                    f"{nan_at - int(saved['global_step'])} steps (last.ckpt at step "
                    f"{saved['global_step']}, checkpoint every 3)",
                    _yes(finite) + " (kept weights finite)",
                    f"exit 3; one line: {line.split(': error: ')[-1][:60]}..."))
    return rows


# ----------------------------------------------------------------------------- main
def main() -> int:
    from rich.console import Console
    from rich.table import Table

    from smt.data.synth import build

    import datasets
    datasets.disable_progress_bars()        # the bench's own fixtures: our lines only
    console = Console(width=200)
    load0 = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    os.environ.pop("SMT_PREPARE_FAULT", None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf")
    t_all = time.perf_counter()
    try:
        raw = work / "raw"
        build(raw, count=24, kind="system", seed=7, num_proc=1, val=4, test=4, quiet=True)
        rows: list[Row] = []
        steps = [("prepare SIGKILL", lambda: [fault_prepare_sigkill(raw, work)]),
                 ("prepare stall", lambda: [fault_prepare_stall(raw, work)]),
                 ("prepare RAM", lambda: [fault_prepare_ram(raw, work)]),
                 ("corrupt rows", lambda: [fault_corrupt_rows(raw, work)]),
                 ("profile write killed", lambda: [fault_profile_write_killed(work)]),
                 ("truncated profile", lambda: [fault_truncated_profile(work)]),
                 ("training", lambda: fault_training(work)),
                 ("concurrent prepare", lambda: [fault_concurrent_prepare(raw, work)]),
                 ("signals", lambda: fault_signals(work)),
                 ("container", lambda: fault_container(work)),
                 ("bounds", lambda: fault_bounds(work))]
        only = set(sys.argv[1:])            # e.g. `signals "concurrent prepare"`: those only
        steps = [(n, f) for n, f in steps if not only or n in only]
        for name, step in steps:
            console.print(f"[dim]running: {name}...[/]")
            t0 = time.perf_counter()
            rows.extend(step())
            console.print(f"[dim]  {name}: {time.perf_counter() - t0:.1f} s[/]")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = Table(title="bench_faults: faults injected into real runs (24 rendered systems; "
                        "debug model on 2 tiny systems)", title_justify="left")
    for col in ("fault injected", "detected", "s to detect", "work lost", "identical to clean",
                "note"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.fault, r.detected, r.detect_s, r.lost, r.identical, r.note)
    console.print(table)
    console.print(f"total {time.perf_counter() - t_all:.0f} s. 's to detect' for the watchdog "
                  "rows counts from the shard attempt's start (worker start-up and the rows "
                  "before the fault included).")
    console.print(f"load average before/after: {load0:.2f} / {os.getloadavg()[0]:.2f} on "
                  f"{os.cpu_count()} cpus (the runs use both cores themselves)")
    return 0 if all(r.detected.startswith(("yes", "n/a")) and r.identical.startswith(("yes", "n/a"))
                    for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
