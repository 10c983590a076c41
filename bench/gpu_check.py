"""GPU check, one script for a lent GPU machine (about 5-8 minutes on one H200).

    python bench/gpu_check.py [--budget-s 420] [--preset paper] [--skip-tests]

Without CUDA it stops at once with exit status 2 and one line saying so. With it, in order:
1. NVML inventory, read for real (`autotune.hardware.gpu_inventory`), beside torch's view.
2. The probe on the `--preset` model on CUDA (`autotune probe` as a user runs it): the settings
   table and what it measured, and its loop stage's cells (the real DataLoader feeding the
   CUDA step: loader workers x batch, samples/s and the share of time waiting for data;
   goal: the loop was timed and decided the workers).
3. Memory: the workload's estimate against `torch.cuda.max_memory_allocated` for the real
   training step at the largest image, per batch and precision (goal: within 10%).
4. Speed: samples/s of `16-mixed`, `bf16-mixed` (capability >= 8.0) and `32-true` (TF32 on)
   at typical images, warm medians.
5. A real CUDA OOM: `smt.train` in a child capped with
   `torch.cuda.set_per_process_memory_fraction` at a batch that cannot fit, and the back-off
   (micro-batch halved, accumulation doubled) keeping the effective batch.
6. Decoding: ms/token of greedy decoding (`bench/bench_decode.py`'s cells) on CUDA at batch
   1/16/64, eager and `torch.compile`d, tokens asserted identical to the eager step's.
7. The `gpu`-marked tests.
Each section is bounded by what is left of `--budget-s`; a section that would not fit says so.
Exit status 0 when every goal held, 1 when one did not (the tables say which).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))         # bench_decode's cells and table

MEMORY_TOLERANCE = 0.10
PRECISIONS = ("16-mixed", "bf16-mixed", "32-true")


def _require_cuda() -> Any:
    try:
        import torch
    except ImportError:
        print("gpu_check: torch is not installed", file=sys.stderr)
        sys.exit(2)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); run this "
              "on a GPU machine", file=sys.stderr)
        sys.exit(2)
    return torch


def inventory_section(torch: Any) -> dict[str, Any]:
    from autotune.hardware import gpu_inventory
    gpus = gpu_inventory()
    torch_view = [(torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i),
                   torch.cuda.get_device_properties(i).total_memory)
                  for i in range(torch.cuda.device_count())]
    print("== 1. inventory (NVML) ==")
    for g in gpus:
        print(f"  NVML: {g.name}, {g.memory_bytes / 2**30:.1f} GiB, capability "
              f"{g.capability[0]}.{g.capability[1]}")
    for name, cap, mem in torch_view:
        print(f"  torch: {name}, {mem / 2**30:.1f} GiB, capability {cap[0]}.{cap[1]}")
    ok = len(gpus) == len(torch_view) and all(
        abs(g.memory_bytes - m) / m < 0.05 for g, (_, _, m) in zip(gpus, torch_view))
    print(f"  NVML agrees with torch: {'yes' if ok else 'NO'}")
    return {"nvml_gpus": [g.name for g in gpus], "agree": ok}


def probe_section(preset: str, time_budget_s: float) -> Any:
    from autotune.probe import ProbeOptions, run_probe_stages
    from autotune.show import profile_table
    from rich.console import Console
    print(f"== 2. probe ({preset}, CUDA, {time_budget_s:.0f} s budget) ==")
    outcome = run_probe_stages(ProbeOptions(preset=preset, time_budget_s=time_budget_s),
                               report=lambda m: print("  " + m, flush=True))
    Console(width=160).print(profile_table(outcome.profile))
    for t in outcome.profile.measurements.loop_trials:
        wait = "-" if t.data_wait_frac is None else f"{t.data_wait_frac:.0%}"
        print(f"  loop workers={t.num_workers} batch={t.batch_size} {t.precision} on {t.device}: "
              f"{t.samples_per_s or t.error} samples/s, waiting for data {wait} of the time")
    print(f"  probe took {outcome.seconds:.1f} s")
    return outcome


def loop_timed_on_cuda(profile: Any) -> bool:
    """The probe's loop stage ran on the GPU and its cells decided the loader workers."""
    trials = [t for t in profile.measurements.loop_trials
              if t.device.startswith("cuda") and t.samples_per_s]
    return bool(trials) and profile.sources.get("num_workers") == "measured"


def memory_section(work: Any, ratio: float, batches: list[int], deadline: float,
                   capability: tuple[int, int]) -> list[dict[str, Any]]:
    from autotune.probes.step import precision_candidates, time_cell
    shape = work.largest_shape(ratio)
    print(f"== 3. estimate vs torch.cuda.max_memory_allocated, largest image "
          f"{shape.height}x{shape.width} px, {shape.seq_len} tokens ==")
    print(f"  {'precision':<11} {'batch':>5} {'measured':>10} {'estimate':>10} {'est/meas':>8}")
    rows = []
    for precision in precision_candidates("cuda:0", capability):
        for b in batches:
            if time.monotonic() > deadline:
                print("  (time budget spent)")
                return rows
            t = time_cell(work, precision=precision, batch_size=b, shape=shape,
                          device="cuda:0", warmup_steps=1, timed_steps=1)
            est = work.estimate_memory(b, shape, precision)
            meas = t.peak_memory_bytes
            r = (est / meas) if est and meas else None
            rows.append({"precision": precision, "batch": b, "measured": meas, "estimate": est,
                         "ratio": r, "oom": t.oom})
            print(f"  {precision:<11} {b:>5} "
                  f"{'OOM' if t.oom else f'{(meas or 0) / 2**30:.2f} GiB':>10} "
                  f"{(est or 0) / 2**30:>6.2f} GiB {'' if r is None else f'{r:.2f}':>8}",
                  flush=True)
            if t.oom:
                break
    return rows


def _real_rows_batch(work: Any, batch: int, ratio: float, seed: int = 0) -> dict[str, Any]:
    """`batch` prepared training rows drawn at random (seeded) from 64, collated as the
    training loader collates them (smt.builder): a typical batch of real rows."""
    import random

    from smt.builder import collate_rows
    from smt.runconfig import DEFAULT_TEACHER_NOISE
    rows = work.prepared_sample(ratio, 64)
    rng = random.Random(seed)
    picked = [rng.randrange(len(rows)) for _ in range(batch)]
    return collate_rows(rows, picked, work.vocab, work.fmt, teacher_noise=DEFAULT_TEACHER_NOISE)


def speed_section(work: Any, ratio: float, batch: int, deadline: float,
                  capability: tuple[int, int]) -> list[dict[str, Any]]:
    from autotune.probes.step import precision_candidates, time_cell
    shape = work.largest_shape(ratio)
    typical = _real_rows_batch(work, batch, ratio)
    print(f"== 4. samples/s on {batch} typical rows (model sized for "
          f"{shape.height}x{shape.width} px), 1 warm-up + 5 timed, median ==")
    rows = []
    for precision in precision_candidates("cuda:0", capability):
        if time.monotonic() > deadline:
            print("  (time budget spent)")
            break
        t = time_cell(work, precision=precision, batch_size=batch, shape=shape,
                      device="cuda:0", batch=typical, warmup_steps=1, timed_steps=5)
        rows.append({"precision": precision, "samples_per_s": t.samples_per_s, "oom": t.oom})
        print(f"  {precision:<11} "
              f"{'OOM' if t.oom else f'{t.samples_per_s:.1f} samples/s, {t.step_s * 1000:.0f} ms/step'}",
              flush=True)
    return rows


DECODE_BATCHES = (1, 16, 64)
DECODE_LENGTH = 200


def decode_section(preset: str, deadline: float) -> bool:
    """Greedy decoding on CUDA, eager and compiled, <eos> unreachable so every row runs
    DECODE_LENGTH tokens; True when the compiled step gave the eager step's tokens."""
    import torch
    from bench_decode import decode_table, differing, rows_of, time_cells

    from smt.config import SMTConfig
    from smt.model import SMTModel
    print(f"== 6. decoding ({preset}, 256x1536 images, {DECODE_LENGTH} tokens) ==")
    torch.manual_seed(0)
    model = SMTModel(SMTConfig.preset(preset)).to("cuda:0").eval()
    with torch.no_grad():
        model.head.bias[model.config.eos_id] = -1e4
    with torch.inference_mode():
        memory = model.encode(torch.rand(max(DECODE_BATCHES), 1, 256, 1536, device="cuda:0"))
        # Warm-up and the compiles, not timed: dynamo specialises sizes 0 and 1 (position 0
        # and 1, batch 1), so every batch is run past position 1 once.
        for batch in DECODE_BATCHES:
            model.greedy_cached(rows_of(memory, batch), 4)
            model.greedy_cached(rows_of(memory, batch), 4, compile=True)
    best: dict = {}
    tokens: dict = {}
    for batch in DECODE_BATCHES:
        if time.monotonic() > deadline:
            print("  (time budget spent)")
            break
        cells = {"ours": [DECODE_LENGTH], "ours compiled": [DECODE_LENGTH]}
        if batch == 1:
            cells["uncached"] = [DECODE_LENGTH]
        b, t = time_cells(model, memory, [batch], [DECODE_LENGTH], cells, repeats=2)
        best.update(b)
        tokens.update(t)
    from rich.console import Console
    done = sorted({b for _, b, _ in best})
    if done:
        Console(width=160).print(decode_table(best, done, [DECODE_LENGTH], "CUDA greedy decoding"))
    from smt.model import greedy
    print(f"  compiled step fell back to eager: {'YES' if greedy.COMPILED_STEP.failed else 'no'}")
    bad = differing(tokens)
    print(f"  tokens identical across cells: {'yes' if not bad else f'NO: {bad}'}")
    return bool(done) and not bad and not greedy.COMPILED_STEP.failed


OOM_CHILD = """
import sys, torch
torch.cuda.set_per_process_memory_fraction(float(sys.argv[1]), 0)
from smt.train import main
sys.exit(main(sys.argv[2:]))
"""


def oom_fraction(mem_rows: list[dict[str, Any]], total_bytes: int, default: float) -> float:
    """A memory cap 3x what batch 1 measured in bf16 (else fp16): batch 1 fits, a large
    batch cannot."""
    one = [r["measured"] for r in mem_rows if r["batch"] == 1 and r["measured"]
           and r["precision"] in ("bf16-mixed", "16-mixed")]
    return round(min(0.5, 3 * one[0] / total_bytes), 4) if one else default


def oom_section(fraction: float, batch: int, ratio: float, precision: str, preset: str,
                timeout_s: float) -> dict[str, Any]:
    print(f"== 5. forced CUDA OOM: memory fraction {fraction}, batch {batch}, accumulate 1, "
          f"{precision}, reduce ratio {ratio} ==")
    with tempfile.TemporaryDirectory(prefix="gpu-check-oom-") as out:
        cmd = [sys.executable, "-c", OOM_CHILD, str(fraction), "--preset", preset,
               "--batch-size", str(batch), "--accumulate", "1", "--max-steps", "6",
               "--precision", precision, "--reduce-ratio", str(ratio), "--val-batches", "1",
               "--out", out]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                  env=env, cwd=ROOT)
        except subprocess.TimeoutExpired:
            print(f"  child passed {timeout_s:.0f} s: killed")
            return {"ok": False}
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "out of memory" in ln]
        for ln in lines[:4]:
            print("  " + ln.strip()[:200])
        summary_path = Path(out) / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    events = summary.get("oom_events") or []
    settings = summary.get("settings") or {}
    micro = summary.get("micro_batch_size")
    eff = settings.get("effective_batch_size")
    kept = bool(events) and micro is not None and eff == batch
    print(f"  exit {proc.returncode}; OOM events {len(events)}; micro-batch {batch} -> {micro}; "
          f"effective batch {eff} (wanted {batch}): {'kept' if kept else 'NOT kept'}")
    if proc.returncode != 0 and not lines:
        print("  child output tail:\n" + "\n".join((proc.stdout + proc.stderr).splitlines()[-15:]))
    return {"ok": kept, "events": len(events), "micro": micro, "effective": eff}


def tests_section(timeout_s: float) -> bool:
    print("== 7. gpu-marked tests ==")
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p",
                               "no:cacheprovider"], cwd=ROOT, timeout=timeout_s,
                              capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        print(f"  passed {timeout_s:.0f} s: killed")
        return False
    print("  " + "\n  ".join((proc.stdout + proc.stderr).strip().splitlines()[-8:]))
    return proc.returncode in (0, 5)        # 5: none collected


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--probe-budget-s", type=float, default=90.0)
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--oom-fraction", type=float, default=None,
                    help="default: 3x the batch-1 peak measured in section 3")
    ap.add_argument("--oom-batch", type=int, default=64)
    ap.add_argument("--skip-tests", action="store_true")
    args = ap.parse_args()
    torch = _require_cuda()
    start = time.monotonic()
    end = start + args.budget_s
    goals: dict[str, bool] = {}

    goals["NVML inventory matches torch"] = inventory_section(torch)["agree"]
    outcome = probe_section(args.preset, min(args.probe_budget_s, (end - time.monotonic()) / 3))
    s = outcome.profile.settings
    goals["probe measured precision"] = outcome.profile.sources.get("precision") == "measured"
    goals["probe timed the loop (loader + CUDA step)"] = loop_timed_on_cuda(outcome.profile)

    from autotune.workload import load_workload
    work = load_workload("smt", preset=args.preset)
    cap = tuple(torch.cuda.get_device_capability(0))
    batches = [int(b) for b in args.batches.split(",")]
    mem = memory_section(work, s.reduce_ratio, batches,
                         time.monotonic() + 0.35 * (end - time.monotonic()), cap)
    within = [r for r in mem if r["ratio"] is not None]
    goals[f"estimate within {MEMORY_TOLERANCE:.0%} of measured"] = bool(within) and all(
        abs(r["ratio"] - 1) <= MEMORY_TOLERANCE for r in within)
    speed_section(work, s.reduce_ratio, max(s.batch_size, 8),
                  time.monotonic() + 0.3 * (end - time.monotonic()), cap)
    left = end - time.monotonic()
    if left > 60:
        total = torch.cuda.get_device_properties(0).total_memory
        fraction = args.oom_fraction or oom_fraction(mem, total, 0.02)
        oom_precision = "bf16-mixed" if cap >= (8, 0) else "16-mixed"
        goals["OOM back-off keeps the effective batch"] = oom_section(
            fraction, args.oom_batch, s.reduce_ratio, oom_precision, args.preset,
            min(240.0, left - 30))["ok"]
    else:
        print("== 5. forced CUDA OOM: skipped, time budget spent ==")
    if end - time.monotonic() > 60:
        goals["compiled decoding gives eager's tokens"] = decode_section(
            args.preset, time.monotonic() + 0.5 * (end - time.monotonic()))
    else:
        print("== 6. decoding: skipped, time budget spent ==")
    if not args.skip_tests:
        goals["gpu tests pass"] = tests_section(max(30.0, end - time.monotonic()))
    print("== goals ==")
    for name, ok in goals.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    print(f"gpu_check took {time.monotonic() - start:.0f} s")
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
