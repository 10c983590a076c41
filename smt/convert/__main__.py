"""CLI of smt.convert (see the package docstring)."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from autotune.errors import UserErrorParser, float_in, run_cli

PROG = "smt.convert"


def build_parser() -> UserErrorParser:
    from smt.convert.conventions import DATASETS
    from smt.tokenizer import ALL_FORMATS

    p = UserErrorParser(prog=PROG, description="Convert a published SMT checkpoint (hub id or "
                        "folder with config.json + model.safetensors/pytorch_model.bin) into ours.")
    p.add_argument("src", metavar="SRC", help="hub model id (owner/name) or local folder")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the converted model to")
    p.add_argument("--dataset", choices=sorted(DATASETS), default=None,
                   help="what SRC was trained on (default: read from its name); sets the image "
                        "scaling and tokenization recorded with the model")
    p.add_argument("--reduce-ratio", type=float_in(0.05, 4.0), default=None,
                   help="override the dataset's image scale")
    p.add_argument("--fmt", choices=ALL_FORMATS, default=None,
                   help="override the dataset's tokenization (ref-system, ref-bekern, ...)")
    p.add_argument("--revision", default=None, help="hub branch, tag or commit (default: main)")
    p.add_argument("--positional", choices=("reference", "ours"), default="reference",
                   help="positional tables to build the model with (default: the reference's, "
                        "which its weights need)")
    p.add_argument("--force", "--overwrite", dest="force", action="store_true",
                   help="replace DIR (an earlier conversion, or a folder smt.convert did not write)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="convert weights holding NaN or infinite values (reported) instead of "
                        "refusing them")
    p.add_argument("--debug", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from smt.convert.build import convert

    result = convert(args.src, args.out, dataset=args.dataset, reduce_ratio=args.reduce_ratio,
                     fmt=args.fmt, revision=args.revision, positional=args.positional, force=args.force,
                     allow_nonfinite=args.allow_nonfinite)
    dropped = f"; unused by the model: {', '.join(result.dropped_keys)}" if result.dropped_keys else ""
    print(f"{args.src} ({result.layout} layout, {result.dataset}) -> {result.checkpoint}: "
          f"{result.parameters:,} parameters mapped{dropped}")
    if result.nonfinite_keys:
        print(f"warning: non-finite (NaN or infinite) weights kept in "
              f"{', '.join(result.nonfinite_keys)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
