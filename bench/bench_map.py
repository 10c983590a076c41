"""Map throughput and peak RAM: the reference SMT recipe against our preparation, one run.

    python bench/bench_map.py [--rows 20] [--render-proc 2] [--keep DIR]

Data: `--rows` synthetic full pages (2100 px wide, rendered here), reduce ratio 0.5, all but
two rows in `train` so the writer buffer fills as far as the cap allows. Each case runs on the
pages as rendered (grayscale PNG) and on an RGB copy: real scans and the hub's GrandStaff
images are RGB, and the reference recipe pays per channel while we convert to gray first.
Cases, each in a fresh process so one case's peak cannot leak into the next:
- reference: the SMT recipe, a numpy image returned into the existing `Image` column,
  num_proc=1, writer_batch_size=100;
- ours, same settings: `prepare_example` (PNG bytes into the `Image` column);
- ours, full `prepare()` at num_proc=2 (shards in a child process, watchdog, vocab, cache);
- bare, 1 and 2 processes: the floor of the same image work with no pipeline at all: read each
  row's stored PNG bytes, decode to gray, resize (OpenCV INTER_AREA), encode PNG at our level,
  in a plain loop (split in halves over 2 forked processes), writing nothing. "x bare" compares
  each of ours with the bare loop at the same process count: what our pipeline (datasets.map,
  Arrow writes, tokenizing, the shard watchdog, the vocabulary) costs on top of the pixels.
Peak RSS is of the case's whole process tree (psutil, sampled every 50 ms by
`autotune.measure.RssSampler`); "growth" subtracts the tree's RSS just before the map.

Size cap: the reference costs ~40x the raw image per buffered row. A
reduced page is ~1050x1450 gray = 1.5 MB raw, ~60 MB buffered; 100 rows would want ~6 GB
and an RGB source three times that, too much for a 24 GiB machine shared by others. So the
run is capped at `--rows` (default 24) pages, fewer than one writer batch: the reference's
peak here is a LOWER bound of what the full recipe needs on a real dataset.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REDUCE = 0.5


def reference_map(sample: dict[str, Any], reduce_ratio: float) -> dict[str, Any]:
    """The reference SMT preparation, as written there: numpy back into `image`."""
    import cv2
    import numpy as np

    from smt.tokenizer import tokenize
    img = np.array(sample["image"])
    width = int(np.ceil(img.shape[1] * reduce_ratio))
    height = int(np.ceil(img.shape[0] * reduce_ratio))
    sample["image"] = cv2.resize(img, (width, height))
    sample["transcription"] = ["<bos>"] + tokenize(sample["transcription"], "bekern") + ["<eos>"]
    return sample


def _to_rgb(raw_dir: str, out_dir: str) -> None:
    import datasets
    from PIL import Image
    dd = datasets.load_from_disk(raw_dir)

    def rgb(example: dict[str, Any]) -> dict[str, Any]:
        return {"image": example["image"].convert("RGB")}
    datasets.disable_progress_bars()
    with_rgb = dd.map(rgb, features=dd["train"].features)
    with_rgb.save_to_disk(out_dir)
    datasets.enable_progress_bars()


def _bare_rows(raw_dir: str, part: int, parts: int) -> int:
    """The bare loop over one `part` of every split: decode -> gray -> resize -> PNG."""
    import cv2
    import datasets

    from smt.data.images import to_gray8
    from smt.data.render import encode_png
    from smt.data.rows import open_image
    done = 0
    for ds in datasets.load_from_disk(raw_dir).values():
        ds = ds.cast_column("image", datasets.Image(decode=False))
        for i in range(part, len(ds), parts):
            img = to_gray8(open_image(ds[i]["image"]))
            h, w = img.shape
            size = (max(1, round(w * REDUCE)), max(1, round(h * REDUCE)))
            encode_png(cv2.resize(img, size, interpolation=cv2.INTER_AREA))
            done += 1
    return done


def _bare(raw_dir: str, procs: int) -> None:
    if procs == 1:
        _bare_rows(raw_dir, 0, 1)
        return
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(procs, mp_context=mp.get_context("fork")) as pool:
        list(pool.map(_bare_rows, [raw_dir] * procs, range(procs), [procs] * procs))


def _case(name: str, raw_dir: str, work: str, queue: Any) -> None:
    import datasets

    from autotune.measure import RssSampler
    datasets.disable_progress_bars()
    dd = datasets.load_from_disk(raw_dir)
    rows = sum(len(v) for v in dd.values())
    with RssSampler(interval_ms=50) as sampler:
        t0 = time.perf_counter()
        if name.startswith("reference"):
            for split, ds in dd.items():
                ds.map(reference_map, fn_kwargs={"reduce_ratio": REDUCE}, num_proc=None,
                       writer_batch_size=100, load_from_cache_file=False,
                       cache_file_name=f"{work}/{name.replace(' ', '-')}-{split}.arrow")
        elif name.startswith("bare"):
            _bare(raw_dir, int(name.split()[0].split("-")[1]))
        elif name.startswith("ours-map"):
            from smt.data.prepare import map_function, output_features
            from smt.data.sources import load_source
            fn, kw = map_function(REDUCE, "bekern")
            for split, ds in load_source(raw_dir).items():
                ds.map(fn, fn_kwargs=kw, features=output_features(), num_proc=None,
                       writer_batch_size=100, load_from_cache_file=False,
                       cache_file_name=f"{work}/{name.replace(' ', '-')}-{split}.arrow")
        else:
            os.environ["SMT_AUTOTUNE_CACHE"] = f"{work}/cache-{name.replace(' ', '-')}"
            from smt.data.prepare import PrepareConfig, prepare
            prepare(raw_dir, PrepareConfig(reduce_ratio=REDUCE, num_proc=2, writer_batch_size=100),
                    quiet=True)
        seconds = time.perf_counter() - t0
    queue.put({"rows": rows, "seconds": seconds, "peak": sampler.peak_rss_bytes,
               "base": sampler.base_rss_bytes})


def run_case(name: str, raw_dir: str, work: str) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_case, args=(name, raw_dir, work, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    from smt.data.synth import build
    load0 = f"{os.getloadavg()[0]:.1f}"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=24, help="synthetic pages (all splits)")
    p.add_argument("--render-proc", type=int, default=2)
    p.add_argument("--keep", default=None, help="keep the rendered pages here")
    args = p.parse_args()

    console = Console(width=160)
    work = tempfile.mkdtemp(prefix="bench-map-")
    try:
        raw = args.keep or f"{work}/raw"
        if not Path(raw, "dataset_dict.json").is_file():
            console.print(f"rendering {args.rows} synthetic pages ...")
            r = build(raw, count=args.rows, kind="page", seed=11, num_proc=args.render_proc,
                      val=1, test=1)
            console.print(f"rendered in {r.seconds:.1f} s ({r.rows_per_s:.2f} pages/s)")
        rgb = f"{work}/rgb"
        _to_rgb(raw, rgb)
        results = {}
        for source, path in (("gray", raw), ("rgb", rgb)):
            # Bare rows beside the ours they are compared with, so drift hits both alike.
            for case in ("reference", "ours-map", "bare-1", "ours-prepare", "bare-2"):
                name = f"{case} {source}"
                console.print(f"running {name} ...")
                results[name] = run_case(name, path, work)
        ref = results["reference gray"]
        table = Table(title=f"datasets.map on {ref['rows']} synthetic pages, reduce {REDUCE} "
                            f"(capped: see docstring)")
        for col in ("case", "num_proc", "writer_batch", "rows", "s", "rows/s", "peak RSS MiB",
                    "growth MiB", "speed x ref", "x bare", "peak / ref", "growth / ref"):
            table.add_column(col, justify="right" if col != "case" else "left")
        settings = {"reference": (1, 100), "ours-map": (1, 100), "ours-prepare": (2, 100),
                    "bare-1": (1, "-"), "bare-2": (2, "-")}
        bare_of = {"ours-map": "bare-1", "ours-prepare": "bare-2"}
        for name, r in results.items():
            ref = results["reference " + name.split()[-1]]      # same source, gray or RGB
            ref_rate = ref["rows"] / ref["seconds"]
            ref_growth = max(1, ref["peak"] - ref["base"])
            rate = r["rows"] / r["seconds"]
            growth = r["peak"] - r["base"]
            case, source = name.split()
            bare = results.get(f"{bare_of.get(case)} {source}")
            x_bare = f"{rate / (bare['rows'] / bare['seconds']):.2f}" if bare else ""
            table.add_row(name, *map(str, settings[name.split()[0]]), str(r["rows"]), f"{r['seconds']:.1f}",
                          f"{rate:.2f}", f"{r['peak'] / 2**20:.0f}", f"{growth / 2**20:.0f}",
                          f"{rate / ref_rate:.1f}", x_bare, f"{r['peak'] / ref['peak']:.2f}",
                          f"{growth / ref_growth:.3f}")
        console.print(table)
        console.print(f"cpus: {os.cpu_count()}, load average before/after: {load0} / "
                      f"{os.getloadavg()[0]:.1f} (a busy machine makes every row noisier)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
