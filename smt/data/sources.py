"""Where raw rows come from: a hub id, a `save_to_disk` folder, a folder of images with
same-named transcriptions, or (no source given) the embedded synthetic dataset.

Every source ends as a `DatasetDict` with splits `train`, `val`, `test` and columns `image`
(`datasets.Image(decode=False)`: the map decodes, so a corrupt image is a skipped row instead
of a crash inside datasets) and `transcription` (str, or None where a file is missing).
Hub datasets load without remote code: datasets 5 no longer runs dataset scripts at all, so
there is no `trust_remote_code` to set and nothing from the hub executes here.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
TEXT_SUFFIXES = (".krn", ".bekrn", ".ekrn", ".kern", ".txt")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "dev": "val", "test": "test", "testing": "test"}
REQUIRED = ("image", "transcription")
CARVE_FRACTION = 0.1        # val and test cut from train when a source has only train


@dataclass
class Source:
    spec: str                # what the user passed ("default" when nothing)
    kind: str                # "default", "disk", "folder", "hub"
    fingerprint: str         # equal fingerprints = same raw rows (for the cache key)
    dataset: Any             # DatasetDict(train, val, test)
    orphans: tuple[str, ...] = ()   # transcription files without a same-stem image (folders)


def load_source(spec: str | os.PathLike[str] | None = None) -> Any:
    """Raw rows of a source as a `DatasetDict` (see module docstring)."""
    return open_source(spec).dataset


def open_source(spec: str | os.PathLike[str] | None = None) -> Source:
    import datasets
    if spec is None or str(spec) in ("", "default"):
        from smt.data.default import VERSION, ensure_default_dataset
        path = ensure_default_dataset()
        dd = datasets.load_from_disk(str(path))
        return Source("default", "default", f"default-{VERSION}", _normalize(dd, "default"))
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            raise UserError(f"{spec}: is a file; pass a dataset folder, an image folder or a hub id")
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            try:
                dd = datasets.load_from_disk(str(path))
            except Exception as exc:  # noqa: BLE001 - a damaged folder is the user's input
                raise UserError(f"{spec}: cannot read the saved dataset ({exc})") from exc
            if isinstance(dd, datasets.Dataset):
                dd = datasets.DatasetDict({"train": dd})
            fp = "|".join(f"{k}:{v._fingerprint}" for k, v in sorted(dd.items()))
            return Source(spec, "disk", "disk-" + _sha(fp), _normalize(dd, spec))
        dd, fp, orphans = _image_folder(path, spec)
        return Source(spec, "folder", fp, _normalize(dd, spec), orphans)
    if _looks_like_path(spec):
        raise UserError(f"{spec}: no such file or folder")
    return _hub(spec)


def _looks_like_path(spec: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else that does not exist is a bad path."""
    return (spec.startswith((".", "/", "~")) or spec.endswith("/") or "\\" in spec
            or spec.count("/") > 1)


def _hub(spec: str) -> Source:
    import datasets
    try:
        dd = datasets.load_dataset(spec)
    except ConnectionError as exc:
        raise UserError(f"{spec}: no such local folder, and cannot reach the hub; "
                            "pass a local path") from exc
    except Exception as exc:  # noqa: BLE001
        name = type(exc).__name__
        if "Offline" in name or "Connection" in name or "LocalEntryNotFound" in name:
            raise UserError(f"{spec}: no such local folder, and cannot reach the hub; "
                            "pass a local path") from exc
        if "NotFound" in name or isinstance(exc, FileNotFoundError):
            raise UserError(f"{spec}: no such dataset on the hub or on disk") from exc
        raise
    if isinstance(dd, datasets.Dataset):
        dd = datasets.DatasetDict({"train": dd})
    fp = "|".join(f"{k}:{v._fingerprint}" for k, v in sorted(dd.items()))
    return Source(spec, "hub", "hub-" + _sha(spec + fp), _normalize(dd, spec))


def _image_folder(path: Path, spec: str) -> tuple[Any, str, tuple[str, ...]]:
    """Images with same-stem transcriptions; `train/`, `val/`, `test/` subfolders as splits
    when present, otherwise one pool that `_normalize` cuts into splits."""
    import datasets
    sub = {SPLIT_ALIASES[p.name.lower()]: p for p in path.iterdir()
           if p.is_dir() and p.name.lower() in SPLIT_ALIASES}
    groups = dict(sub)
    if "train" not in groups:
        groups["train"] = path         # loose images beside val/ and test/ folders are train
    h = hashlib.sha256()
    splits = {}
    orphans: list[str] = []
    for name, folder in sorted(groups.items()):
        # The root holds only its own files when split folders sit inside it.
        found = list(folder.iterdir() if (folder == path and sub) else folder.rglob("*"))
        images = sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        stems = {p.with_suffix("") for p in images}
        orphans.extend(str(p.relative_to(path)) for p in sorted(found)
                       if p.suffix.lower() in TEXT_SUFFIXES and p.with_suffix("") not in stems
                       and p.is_file())
        texts, paths = [], []
        for img in images:
            st = img.stat()
            h.update(f"{img.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
            text = None
            for suffix in TEXT_SUFFIXES:
                cand = img.with_suffix(suffix)
                if cand.is_file():
                    st2 = cand.stat()
                    h.update(f"{cand.name}:{st2.st_size}:{st2.st_mtime_ns}".encode())
                    try:
                        text = cand.read_text(encoding="utf-8")
                    except (UnicodeDecodeError, OSError):
                        text = None       # counted as "transcription missing or unreadable"
                    break
            paths.append(str(img))
            texts.append(text)
        splits[name] = datasets.Dataset.from_dict(
            {"image": [{"path": p, "bytes": None} for p in paths], "transcription": texts},
            features=datasets.Features({"image": datasets.Image(decode=False),
                                        "transcription": datasets.Value("string")}))
    if not any(len(s) for s in splits.values()):
        raise UserError(f"{spec}: no images ({', '.join(IMAGE_SUFFIXES)}) and no saved dataset here")
    return datasets.DatasetDict(splits), "folder-" + h.hexdigest()[:16], tuple(orphans)


def _normalize(dd: Any, spec: str) -> Any:
    """Split names to train/val/test, required columns checked, image left undecoded."""
    import datasets
    renamed = {}
    for name, ds in dd.items():
        key = SPLIT_ALIASES.get(name.lower())
        if key and key not in renamed:
            renamed[key] = ds
    if "train" not in renamed:
        raise UserError(f"{spec}: no train split (splits: {', '.join(dd.keys()) or 'none'})")
    for name, ds in renamed.items():
        missing = [c for c in REQUIRED if c not in ds.column_names]
        if missing:
            raise UserError(f"{spec}: split {name!r} lacks column(s) {', '.join(missing)}; "
                            f"it has: {', '.join(ds.column_names) or 'none'}")
        if isinstance(ds.features["image"], datasets.Image):
            renamed[name] = ds.cast_column("image", datasets.Image(decode=False))
    missing = [s for s in ("val", "test") if s not in renamed]
    if missing:
        train = renamed["train"]
        n = len(train)
        cut = max(1, int(n * CARVE_FRACTION)) if n >= 10 else 0
        idx = list(range(n))
        import random
        random.Random(0).shuffle(idx)
        taken = 0
        for s in missing:
            renamed[s] = train.select(sorted(idx[taken:taken + cut]))
            taken += cut
        renamed["train"] = train.select(sorted(idx[taken:]))
    return datasets.DatasetDict({k: renamed[k] for k in ("train", "val", "test")})


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
