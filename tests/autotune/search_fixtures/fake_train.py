"""A stand-in for `python -m smt.train` in search tests: same flags, no torch, instant.

It writes what the real trainer writes for the search (OUT/summary.json, OUT/progress.jsonl)
from a deterministic formula of its flags, so tests can predict the best trial.
Behaviour switches (environment):
  FAKE_TRAIN_CALLS=PATH       append one JSON line per launch (its settings) to PATH
  FAKE_TRAIN_SLEEP=SECONDS    sleep this long before finishing
  FAKE_TRAIN_HANG_ONCE=PATH   if PATH does not exist: create it, start a sleeping child
                              process, write its pid to PATH, and hang forever
  FAKE_TRAIN_FAIL_BATCH=N     exit 1 with a traceback-like message when --batch-size is N
  FAKE_TRAIN_PROGRESS_S=SEC   write a validation record every SEC seconds (for the pruner)
  FAKE_TRAIN_OOM_BATCH=N      with --batch-size N, report an OOM the trainer survived
  FAKE_TRAIN_HANG_SETUP=N     with --batch-size N, hang before run.json (stuck in set-up)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--reduce-ratio", type=float, default=1.0)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-steps", type=int, default=10)
    p.add_argument("--out", required=True)
    args, _ = p.parse_known_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"batch_size": args.batch_size, "accumulate_grad_batches": args.accumulate,
                "reduce_ratio": args.reduce_ratio, "num_workers": args.num_workers,
                "lr": args.lr, "max_steps": args.max_steps}
    if os.environ.get("FAKE_TRAIN_HANG_SETUP") == str(args.batch_size):
        print("fake trainer: stuck preparing data", flush=True)
        while True:
            time.sleep(1)
    # Like smt.train: run.json once the data is ready and training starts.
    (out / "run.json").write_text(json.dumps({"settings": settings}))
    calls = os.environ.get("FAKE_TRAIN_CALLS")
    if calls:
        with open(calls, "a") as fh:
            fh.write(json.dumps(settings) + "\n")
    hang = os.environ.get("FAKE_TRAIN_HANG_ONCE")
    if hang and not os.path.exists(hang):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        Path(hang).write_text(str(child.pid))
        print("fake trainer: hanging on purpose", flush=True)
        while True:
            time.sleep(1)
    if os.environ.get("FAKE_TRAIN_FAIL_BATCH") == str(args.batch_size):
        print("RuntimeError: fake trainer failure", flush=True)
        return 1
    # Throughput rises with batch and workers, saturating; image area costs.
    sps = (100 * args.batch_size / (args.batch_size + 4)) * (1 + min(args.num_workers, 2) * 0.5) \
        / max(args.reduce_ratio, 0.1) ** 2
    # Quality best at lr 3e-4 and full resolution.
    val_loss = 1.0 + abs(math.log10(args.lr / 3e-4)) + (1.0 - args.reduce_ratio)
    every = float(os.environ.get("FAKE_TRAIN_PROGRESS_S", "0") or 0)
    if every > 0:
        with open(out / "progress.jsonl", "a") as fh:
            for i in range(1, 6):
                time.sleep(every)
                fh.write(json.dumps({"step": i, "val_loss": val_loss + 1.0 / i}) + "\n")
                fh.flush()
    time.sleep(float(os.environ.get("FAKE_TRAIN_SLEEP", "0") or 0))
    summary = {"steps": args.max_steps, "samples": args.max_steps * args.batch_size,
               "samples_per_s": sps, "peak_memory_bytes": 1000, "val_loss": val_loss,
               "val_ser": 100.0 * val_loss / 3, "train_loss": val_loss,
               "settings": settings, "elapsed_s": 0.1, "oom_events": [],
               "micro_batch_size": None}
    if os.environ.get("FAKE_TRAIN_OOM_BATCH") == str(args.batch_size):
        summary["oom_events"] = [{"step": 1, "micro_batch_from": args.batch_size,
                                  "micro_batch_to": args.batch_size // 2}]
        summary["micro_batch_size"] = args.batch_size // 2
    (out / "summary.json").write_text(json.dumps(summary))
    print("fake trainer: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
