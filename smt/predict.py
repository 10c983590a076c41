"""`python -m smt.predict --checkpoint CKPT IMAGE... [--out DIR] [--render DIR]`: score images
-> **kern, and with --render a picture per image of what the model read (`smt.pictures`).

The model is rebuilt from `config.json` and `vocab.json` beside the checkpoint (or in the run
folder above `checkpoints/`), and the checkpoint is read with `weights_only=True`, so a
checkpoint from elsewhere cannot run code. Images are turned grayscale and scaled by the run's
reduce ratio (from `run.json`, or `--reduce-ratio`) exactly as the training data was, then
decoded in batches of similar size with the cached greedy decoder, on the GPU when present.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.atomic import atomic_write_text
from autotune.errors import UserError, UserErrorParser, float_in, int_in, run_cli
from autotune.outdir import check_out_dir, overlap, replace_dir

PROG = "smt.predict"
PREDICT_COMMAND = "smt.predict"            # the --out marker's command (autotune.outdir)
RENDER_COMMAND = "smt.predict --render"    # the --render folder's marker: not an --out folder


# Bounds of the numeric flags: far above any real use, low enough to catch a typo.
_positive_int = int_in(1, 4096)
_ratio = float_in(0.05, 1.0, lo_open=False)


def build_parser() -> argparse.ArgumentParser:
    p = UserErrorParser(prog=PROG, description="Transcribe score images to **kern with a trained SMT.")
    p.add_argument("--checkpoint", required=True,
                   help="a .ckpt written by smt.train, or a folder written by smt.convert")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write IMAGE_STEM.krn files here instead of printing")
    p.add_argument("--render", default=None, metavar="DIR",
                   help="also write DIR/IMAGE_STEM.png: the image above its prediction engraved "
                        "back, and the truth (IMAGE_STEM.krn beside the image) with the SER")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out or --render folder that an earlier predict "
                        "did not write")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--reduce-ratio", type=_ratio, default=None,
                   help="image scale used in training (default: from run.json, else 1.0)")
    p.add_argument("--max-len", type=_positive_int, default=None,
                   help="longest token sequence to decode (default: the model's maximum)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--debug", action="store_true")
    return p


def as_input(gray: Any) -> Any:
    """A grayscale uint8 image [H, W] as the model's input tensor [1, H, W] in 0..1."""
    import torch
    return torch.from_numpy(gray.copy()).float().div_(255.0)[None]


@dataclass
class Predictor:
    model: Any
    vocab: Any
    fmt: str
    reduce_ratio: float
    device: Any
    # How images are scaled (smt.convert.ImageConvention); None: ours, by reduce_ratio.
    convention: Any = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None,
                        reduce_ratio: float | None = None) -> "Predictor":
        from smt import checkpoint as ck
        from smt.config import SMTConfig
        from smt.convert import CHECKPOINT_NAME, read_image_convention
        from smt.model import SMTModel
        from smt.tokenizer import Vocab

        if Path(path).is_dir():
            path = _checkpoint_in(Path(path), CHECKPOINT_NAME)
        dev = resolve_device(device)                   # a bad --device: before loading anything
        ckpt = ck.load_checkpoint(path)
        config_path = ck.find_metadata(path, ck.CONFIG_NAME)
        vocab_path = ck.find_metadata(path, ck.VOCAB_NAME)
        try:
            config = SMTConfig.load(config_path)
            vocab = Vocab.load(vocab_path)
        except (ValueError, KeyError, OSError) as exc:
            raise UserError(f"cannot rebuild the model: {exc}") from None
        fmt = vocab.fmt or "bekern"
        ratio = reduce_ratio
        run_json = ck.run_dir_of(path) / ck.RUN_NAME
        if run_json.is_file():
            run = ck.read_json(run_json)
            fmt = run.get("fmt", fmt)
            if ratio is None:
                ratio = _run_ratio(run, run_json)
        # A converted model scales images the way the reference did (recorded by smt.convert).
        convention = None
        recorded = read_image_convention(config_path.parent)
        if recorded is not None:
            convention, fmt = recorded[0], recorded[1] or fmt
            if ratio is not None:
                convention = dataclasses.replace(convention, reduce_ratio=ratio)
            ratio = convention.reduce_ratio
        model = SMTModel(config)
        state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise UserError(f"{path} does not match {config_path}: "
                            f"{str(exc).splitlines()[0]}") from None
        model.to(dev).eval()
        return cls(model, vocab, fmt, ratio if ratio is not None else 1.0, dev, convention)

    def load_image(self, path: str | Path) -> Any:
        """Grayscale, scaled as in training (the run's reduce ratio, or a converted model's
        recorded convention), as float [1, H, W] in [0, 1]."""
        from PIL import Image, UnidentifiedImageError

        from smt.convert import ImageConvention

        convention = self.convention or ImageConvention(self.reduce_ratio)
        try:
            with Image.open(path) as im:
                arr = convention.apply(im)
        except FileNotFoundError:
            raise UserError(f"image not found: {path}") from None
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise UserError(f"cannot read image {path}: {exc}") from None
        cfg = self.model.config
        h, w = arr.shape
        if h > cfg.max_height or w > cfg.max_width:
            raise UserError(
                f"{path}: {w}x{h} px after reduce ratio {self.reduce_ratio} is larger than the "
                f"model's maximum {cfg.max_width}x{cfg.max_height}; pass a smaller --reduce-ratio")
        return as_input(arr)

    def predict(self, images: Sequence[Any], batch_size: int = 8,
                max_len: int | None = None) -> list[str]:
        """Kern text for each image tensor [1, H, W], in the order given."""
        import torch

        from smt.tokenizer import detokenize

        order = sorted(range(len(images)), key=lambda i: tuple(images[i].shape[-2:]))
        out: list[str] = [""] * len(images)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported()
                                   else torch.float16)
                    if self.device.type == "cuda" else torch.autocast("cpu", enabled=False))
        with torch.inference_mode(), autocast:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                hmax = max(images[i].shape[-2] for i in idx)
                wmax = max(images[i].shape[-1] for i in idx)
                batch = torch.ones((len(idx), 1, hmax, wmax))
                sizes = torch.tensor([list(images[i].shape[-2:]) for i in idx], dtype=torch.long)
                for j, i in enumerate(idx):
                    h, w = images[i].shape[-2:]
                    batch[j, :, :h, :w] = images[i]
                ids = self.model.generate(batch.to(self.device), max_len=max_len,
                                          image_sizes=sizes.to(self.device))
                for j, i in enumerate(idx):
                    out[i] = detokenize(self.vocab.decode(ids[j]), self.fmt)
        return out


def _checkpoint_in(folder: Path, converted_name: str) -> Path:
    """The checkpoint a folder given as --checkpoint stands for: a converted model's, else a
    run folder's checkpoints/last.ckpt; else say what is expected."""
    from smt import checkpoint as ck
    for candidate in (folder / converted_name, folder / "checkpoints" / ck.LAST_NAME):
        if candidate.is_file():
            return candidate
    raise UserError(f"--checkpoint {folder}: a folder without checkpoints/{ck.LAST_NAME} or "
                    f"{converted_name}; pass a .ckpt file, a run folder or a folder written by "
                    "smt.convert")


def _run_ratio(run: dict[str, Any], run_json: Path) -> float:
    value = (run.get("settings") or {}).get("reduce_ratio", 1.0)
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        ratio = math.nan
    if not (math.isfinite(ratio) and 0 < ratio <= 1):
        raise UserError(f"{run_json}: settings.reduce_ratio must be a number in (0, 1], got "
                        f"{value!r}; pass --reduce-ratio")
    return ratio


def resolve_device(spec: str | None) -> Any:
    """`--device` as a torch device, or one line saying why it cannot be used here."""
    import torch
    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {spec}: unknown device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {spec}: CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise UserError(f"--device {spec}: this machine has {count} CUDA device(s)")
    elif dev.type != "cpu":
        raise UserError(f"--device {spec}: only cpu and cuda are supported")
    return dev


def _check_outputs(args: argparse.Namespace, inputs: list[str]) -> None:
    """--out and --render checked before loading anything: one line, exit 2."""
    if args.out and args.render:
        if overlap(Path(args.out).resolve(), Path(args.render).resolve()):
            raise UserError(f"--render {args.render} and --out {args.out} overlap; one would "
                            "replace the other: choose two separate folders")
    if args.out:
        check_out_dir(args.out, PREDICT_COMMAND, inputs, args.overwrite)
    if args.render:
        check_out_dir(args.render, RENDER_COMMAND, inputs, args.overwrite, flag="--render")


def _truth_beside(image: str | Path) -> str | None:
    """The transcription IMAGE_STEM.krn beside an image, if there is a readable one."""
    path = Path(image).with_suffix(".krn")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def render_pictures(out: str | Path, images: Sequence[str], tensors: Sequence[Any],
                    texts: Sequence[str], fmt: str, inputs: Sequence[str],
                    overwrite: bool) -> list[Any]:
    """--render: one picture per image (`smt.pictures`), the folder replaced as a whole."""
    from smt.pictures import Sample, write_pictures
    samples = [Sample(Path(path).stem, (tensor[0].clamp(0, 1) * 255).round().byte().cpu().numpy(),
                      text, _truth_beside(path))
               for path, tensor, text in zip(images, tensors, texts)]
    with replace_dir(out, RENDER_COMMAND, inputs, overwrite, flag="--render") as tmp:
        pictures = write_pictures(tmp, samples, fmt)
    return pictures


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    inputs = [args.checkpoint, *args.images]
    _check_outputs(args, inputs)
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device,
                                          reduce_ratio=args.reduce_ratio)
    tensors = [predictor.load_image(p) for p in args.images]
    texts = predictor.predict(tensors, batch_size=args.batch_size, max_len=args.max_len)
    if args.render:
        render_pictures(args.render, args.images, tensors, texts, predictor.fmt, inputs,
                        args.overwrite)
        # Where the pictures are: with the --out lines, else on stderr (stdout is the kern).
        stream = sys.stdout if args.out else sys.stderr
        for path in args.images:
            print(f"{path} -> {Path(args.render) / (Path(path).stem + '.png')}", file=stream)
    if args.out:
        out = Path(args.out)
        with replace_dir(out, PREDICT_COMMAND, inputs, args.overwrite) as tmp:
            for path, text in zip(args.images, texts):
                atomic_write_text(tmp / (Path(path).stem + ".krn"), text + "\n")
        for path in args.images:
            print(f"{path} -> {out / (Path(path).stem + '.krn')}")
        return 0
    for path, text in zip(args.images, texts):
        if len(args.images) > 1:
            print(f"==> {path} <==")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
