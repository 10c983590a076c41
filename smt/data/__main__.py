"""`python -m smt.data synth|prepare ...`: render a synthetic dataset, or prepare one for training."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from autotune.bounds import count_arg
from autotune.errors import UserError, UserErrorParser, float_in, int_in, run_cli
from autotune.units import size_arg
from smt.data.prepconfig import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_TOKENS
from smt.tokenizer import ALL_FORMATS

DEFAULT_FORMAT = "bekern"        # PrepareConfig's: the SMT papers' format, smallest vocabulary

# Upper bounds for "absurd" values: far above any real machine (a million rows buffered per
# write), low enough that a typo is caught before it starts. --num-proc's is
# autotune.bounds.COUNTS', the same as smt.train's and a profile's.
MAX_ROWS = 1_000_000
MAX_PIXELS = 10**10              # 100k x 100k px: no scanner makes more


def _parser() -> argparse.ArgumentParser:
    p = UserErrorParser(prog="python -m smt.data", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="render a synthetic (or your own .krn) score dataset")
    s.add_argument("--out", required=True, help="output folder (a save_to_disk DatasetDict)")
    s.add_argument("--count", type=int, default=100, help="rows in all splits (default 100)")
    s.add_argument("--kind", choices=("system", "page"), default="system")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num-proc", type=count_arg("num_proc"), default=1, help="render processes")
    s.add_argument("--kern-dir", default=None, help="render these .krn files instead of generated music")
    s.add_argument("--val", type=int_in(0, 10_000_000), default=None, help="validation rows (default 10%%)")
    s.add_argument("--test", type=int_in(0, 10_000_000), default=None, help="test rows (default 10%%)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out folder that an earlier synth did not write")
    s.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    q = sub.add_parser("prepare", help="load, resize and tokenise a dataset; cache the result")
    q.add_argument("--data", default=None,
                   help="hub id, save_to_disk folder, or folder of images + .krn/.txt "
                        "(default: the embedded synthetic dataset)")
    q.add_argument("--reduce-ratio", type=float_in(0.0, 1.0), default=0.5)
    q.add_argument("--num-proc", type=count_arg("num_proc"), default=1)
    q.add_argument("--writer-batch-size", type=int_in(1, MAX_ROWS), default=100)
    q.add_argument("--format", dest="fmt", choices=ALL_FORMATS, default=None,
                   help=f"tokenization (default: --model's, else {DEFAULT_FORMAT}; ref-*: the "
                        "reference SMT's own, which converted models read)")
    q.add_argument("--model", default=None, metavar="DIR|CKPT",
                   help="tokenize as this model does (a folder from smt.convert, a run folder or "
                        "a .ckpt): the format it records")
    q.add_argument("--max-tokens", type=int_in(1, MAX_ROWS), default=DEFAULT_MAX_TOKENS,
                   help="skip rows whose transcription is longer, in tokens with <bos>/<eos> "
                        f"(default {DEFAULT_MAX_TOKENS}: see smt.data.limits)")
    q.add_argument("--max-image-area", type=int_in(1, MAX_PIXELS), default=DEFAULT_MAX_IMAGE_PIXELS,
                   metavar="PIXELS", help="skip rows whose image is larger, height x width after "
                   f"--reduce-ratio (default {DEFAULT_MAX_IMAGE_PIXELS}: an A4 page at 300 dpi)")
    q.add_argument("--out", default=None, help="also save the prepared DatasetDict here")
    q.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out folder that an earlier prepare did not write")
    q.add_argument("--shard-rows", type=int_in(1, MAX_ROWS), default=None,
                   help="rows per resumable shard (default: chosen from the split size)")
    q.add_argument("--stall-timeout", type=float_in(0.0, 7 * 86400.0), default=None,
                   help="seconds without progress before the watchdog steps in")
    q.add_argument("--ram-budget", type=size_arg, default=None, metavar="SIZE",
                   help="stop and retry lighter when the process tree nears this RSS, e.g. "
                        "24GB or 12GiB (default: the RAM available at the start)")
    # The old spelling (GiB as a number): still works, with a warning (autotune's is SIZE).
    q.add_argument("--ram-budget-gb", type=float_in(0.0, 2.0**20), default=None,
                   help=argparse.SUPPRESS)
    q.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return p


def _format(given: str | None, model: str | None) -> str:
    """--format, else the format --model records, else the default; a conflict is one line."""
    if model is None:
        return given or DEFAULT_FORMAT
    from smt.convert.finetune import recorded_format
    recorded = recorded_format(model)
    if given and recorded and given != recorded:
        raise UserError(f"--format {given}, but the model in {model} reads {recorded} tokens; "
                        "drop --format to use the model's")
    return given or recorded or DEFAULT_FORMAT


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "synth":
        from smt.data.synth import build
        r = build(args.out, count=args.count, kind=args.kind, seed=args.seed,
                  num_proc=args.num_proc, kern_dir=args.kern_dir, val=args.val, test=args.test,
                  overwrite=args.overwrite)
        rows = ", ".join(f"{k} {v}" for k, v in r.rows.items())
        print(f"wrote {args.out}: {rows} in {r.seconds:.1f} s ({r.rows_per_s:.1f} {args.kind}s/s)")
        if r.failed:
            print("failed: " + ", ".join(f"{k}: {v}" for k, v in sorted(r.failed.items())))
        return 0
    from smt.data.prepare import PrepareConfig, prepare
    ram_budget = args.ram_budget
    if args.ram_budget_gb is not None:
        print(f"python -m smt.data: warning: --ram-budget-gb is deprecated; use --ram-budget "
              f"{args.ram_budget_gb:g}GiB", file=sys.stderr)
        if ram_budget is None:
            ram_budget = int(args.ram_budget_gb * 2**30)
    fmt = _format(args.fmt, args.model)
    try:
        cfg = PrepareConfig(reduce_ratio=args.reduce_ratio, num_proc=args.num_proc,
                            writer_batch_size=args.writer_batch_size, fmt=fmt,
                            max_tokens=args.max_tokens, max_image_pixels=args.max_image_area,
                            shard_rows=args.shard_rows,
                            stall_timeout_s=args.stall_timeout,
                            ram_budget_bytes=ram_budget)
    except ValueError as exc:        # the flags above already bound each value; this is the net
        raise UserError(str(exc)) from None
    result = prepare(args.data, cfg, out=args.out, overwrite=args.overwrite)
    empty = result.nothing_kept()
    if empty:                      # exit 0 would let a script go on to train on nothing
        raise UserError(empty)
    print(result.summary())
    if args.model:
        print(_unknown_to_model(result, args.model, fmt))
    return 0


def _unknown_to_model(result: Any, model: str, fmt: str) -> str:
    """One line: the prepared data's tokens that --model's vocabulary lacks, with counts."""
    from smt import checkpoint as ck
    from smt.convert.finetune import shown_tokens, checkpoint_of, token_counts
    from smt.data.prepare import load_prepared
    from smt.tokenizer import Vocab

    known = set(Vocab.load(ck.find_metadata(checkpoint_of(model), ck.VOCAB_NAME)).tokens)
    if set(Vocab.load(result.vocab_path).tokens) <= known:
        return f"every token of the data is in the vocabulary of {model}"
    dataset = result.dataset if result.dataset is not None else load_prepared(result.cache_dir)
    counts = token_counts(dataset.values(), fmt)
    unknown = sorted(set(counts) - known)
    return (f"{len(unknown)} token(s) of the data are not in the vocabulary of {model}: "
            f"{shown_tokens(unknown, counts)} (smt.train --extend-vocab adds them)")


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m smt.data"))
