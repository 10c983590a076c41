"""Reference checkpoint folder -> our run-folder layout: config.json, vocab.json, model.ckpt
and reference.json (where it came from, its image conventions and kern flavour)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autotune.atomic import atomic_write_json
from autotune.outdir import check_out_dir, replace_dir
from autotune.errors import UserError
from smt.convert.conventions import DATASETS, ImageConvention, ReferenceDataset, dataset_of
from smt.convert.keys import check_complete, decoder_layers, detect_layout, encoder_shape, map_keys, strip_prefix
from smt.checkpoint import nonfinite_keys
from smt.convert.source import ReferenceConfig, load_weights, read_config, resolve

CHECKPOINT_NAME = "model.ckpt"
CONVERT_COMMAND = "smt.convert"             # the --out marker's command (autotune.outdir)
REFERENCE_NAME = "reference.json"
SMTPP_HEADS = 4          # SMT-plusplus builds every attention with 4 heads, whatever its config says
SHOWN_KEYS = 5           # non-finite keys named in a message; the rest are counted


@dataclass(frozen=True)
class Conversion:
    out_dir: Path
    checkpoint: Path
    layout: str
    dataset: str
    parameters: int
    dropped_keys: list[str]
    nonfinite_keys: list[str]          # kept as they are (--allow-nonfinite), else refused


def pick_dataset(src: str, dataset: str | None) -> ReferenceDataset:
    if dataset is not None:
        if dataset not in DATASETS:
            raise UserError(f"unknown --dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        return DATASETS[dataset]
    found = dataset_of(src)
    if found is None:
        raise UserError(f"cannot tell from the name {src!r} which dataset it was trained on (its "
                        f"image scaling and kern flavour); pass --dataset one of {', '.join(DATASETS)}")
    return found


def our_config(ref: ReferenceConfig, layout: str, state: dict[str, torch.Tensor], where: str,
               positional: str) -> Any:
    from smt.config import SMTConfig

    in_channels, widths, depths = encoder_shape(state, where)
    layers = decoder_layers(state)
    if layers != ref.num_dec_layers:
        raise UserError(f"{where}: {layers} decoder layers, but config.json says num_dec_layers="
                        f"{ref.num_dec_layers}")
    if len(ref.tokens) != ref.out_categories:
        raise UserError(f"{where}: w2i has {len(ref.tokens)} tokens but out_categories="
                        f"{ref.out_categories}")
    ids = {t: ref.tokens.index(t) for t in ("<pad>", "<bos>", "<eos>") if t in ref.tokens}
    if len(ids) < 3:
        raise UserError(f"{where}: w2i lacks {sorted({'<pad>', '<bos>', '<eos>'} - set(ids))}")
    # SMT sizes its 2D table maxh/16 x maxw/16 (so maxh/maxw are pixel limits); SMT++ makes it
    # maxh x maxw feature cells, i.e. 16x as many pixels.
    scale = 16 if layout == "smt++" else 1
    fields = dict(
        vocab_size=ref.out_categories, max_height=ref.maxh * scale, max_width=ref.maxw * scale,
        max_seq_len=ref.maxlen, in_channels=in_channels, encoder_widths=tuple(widths),
        encoder_depths=tuple(depths), d_model=ref.d_model, ff_dim=ref.dim_ff, n_layers=layers,
        n_heads=SMTPP_HEADS if layout == "smt++" else (ref.num_heads or 4), dropout=0.1,
        pad_id=ids["<pad>"], bos_id=ids["<bos>"], eos_id=ids["<eos>"], positional=positional,
        grid_rounding="floor", attention_scale=1.0 if layout == "smt++" else None,
        head_relu=layout == "smt++")
    try:
        config = SMTConfig(**fields)
    except ValueError as exc:
        raise UserError(f"{where}: the checkpoint does not fit our model: {exc}") from None
    check_fits_ram(config, where)
    return config


def check_fits_ram(config: Any, where: str) -> None:
    """Refuse a model whose building would not fit the RAM budget (the share of the available
    RAM autotune budgets with), before any tensor of it exists. The conversion holds it twice:
    the source's weights and ours."""
    from autotune.decide.context import Budgets
    from autotune.hardware import ram_now
    from autotune.units import format_bytes
    from smt.model.estimate import build_bytes

    need = 2 * build_bytes(config)
    budget = int(Budgets().ram_fraction * ram_now()[1])
    if need > budget:
        raise UserError(f"{where}: building this model needs about {format_bytes(need)} of RAM (its "
                        f"weights and positional tables, twice), above the {format_bytes(budget)} "
                        f"RAM budget here; check the sizes in its config.json")


def check_finite(state: dict[str, torch.Tensor], where: str, allow: bool) -> list[str]:
    """Keys holding NaN or infinite values: refused naming them, or (allow) returned to report."""
    bad = nonfinite_keys(state)
    if bad and not allow:
        more = f" and {len(bad) - SHOWN_KEYS} more" if len(bad) > SHOWN_KEYS else ""
        raise UserError(f"{where}: non-finite (NaN or infinite) weights in {', '.join(bad[:SHOWN_KEYS])}"
                        f"{more}; a model with them computes NaN. Pass --allow-nonfinite to "
                        f"convert it anyway")
    return bad


def convert(src: str, out: str | Path, *, dataset: str | None = None, reduce_ratio: float | None = None,
            fmt: str | None = None, revision: str | None = None, positional: str = "reference",
            force: bool = False, allow_nonfinite: bool = False) -> Conversion:
    """Convert `src` (folder or hub id) into `out`; every parameter is mapped or refused, and so
    is a non-finite weight unless `allow_nonfinite` (then its key is in the result)."""
    from smt import checkpoint as ck
    from smt.model import SMTModel
    from smt.tokenizer import ALL_FORMATS, Vocab

    out_dir = Path(out).expanduser()
    target = out_dir / CHECKPOINT_NAME
    if target.exists() and not force:
        raise UserError(f"{target} exists; pass --force to overwrite it")
    # The output never overlaps a local source (its config.json would be replaced by ours) and
    # is written through a temporary sibling (autotune.outdir): checked now, before any work.
    inputs = [src] if Path(src).expanduser().exists() else []
    check_out_dir(out_dir, CONVERT_COMMAND, inputs, overwrite=force)
    if fmt is not None and fmt not in ALL_FORMATS:
        raise UserError(f"unknown --fmt {fmt!r}; choose one of {', '.join(ALL_FORMATS)}")
    ds = pick_dataset(src, dataset)
    folder, commit = resolve(src, revision)
    ref = read_config(folder)
    state, weights_path = load_weights(folder)
    where = str(weights_path)
    state = strip_prefix(state)
    nonfinite = check_finite(state, where, allow_nonfinite)
    layout = detect_layout(list(state), where)
    config = our_config(ref, layout, state, where, positional)
    model = SMTModel(config)
    mapped = map_keys(state, layout, where)
    check_complete(mapped, model.state_dict(), where)
    model.load_state_dict(mapped.state, strict=True)
    vocab = Vocab(ref.tokens, fmt=fmt or ds.fmt, given_ids=True)
    convention = ds.convention(reduce_ratio)

    with replace_dir(out_dir, CONVERT_COMMAND, inputs, overwrite=True) as tmp:
        config.save(tmp / ck.CONFIG_NAME)
        vocab.save(tmp / ck.VOCAB_NAME)
        ck.AtomicCheckpointIO(allow_nonfinite=allow_nonfinite).save_checkpoint(
            {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
             "global_step": 0}, tmp / CHECKPOINT_NAME)
        write_reference(tmp, src=src, commit=commit, layout=layout, ds=ds, fmt=vocab.fmt,
                        convention=convention, ref=ref, dropped=mapped.dropped)
    return Conversion(out_dir, target, layout, ds.name, model.num_params(), mapped.dropped, nonfinite)


def write_reference(out_dir: Path, *, src: str, commit: str | None, layout: str, ds: ReferenceDataset,
                    fmt: str | None, convention: ImageConvention, ref: ReferenceConfig,
                    dropped: list[str]) -> Path:
    return atomic_write_json(out_dir / REFERENCE_NAME, {
        "source": src, "revision": commit, "layout": layout, "dataset": ds.name, "level": ds.level,
        "fmt": fmt, "image": convention.to_dict(), "dropped_keys": dropped,
        "reference_config": {"maxh": ref.maxh, "maxw": ref.maxw, "maxlen": ref.maxlen,
                             "out_categories": ref.out_categories, "d_model": ref.d_model,
                             "dim_ff": ref.dim_ff, "num_dec_layers": ref.num_dec_layers,
                             "num_heads": ref.num_heads},
    }, indent=1)


def read_image_convention(folder: Path) -> tuple[ImageConvention, str | None] | None:
    """(image convention, kern flavour) recorded by a conversion in `folder`, or None."""
    import json

    path = folder / REFERENCE_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ImageConvention.from_dict(data["image"]), data.get("fmt")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
