"""Show a profile: a table of setting / value / source / reason, and PNG plots of its curves.

Plots (one PNG each, written only when the profile holds the data):
- `map.png`: rows/s and peak RSS against num_proc, one line per writer_batch_size;
- `model.png`: peak memory and step time against batch size, one line per reduce ratio,
  with the memory budget;
- `loader.png`: samples/s against num_workers, with the rate the model consumes.
The chosen setting is marked with a star on each.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from autotune.hardware import describe
from autotune.profile import Profile
from autotune.settings import accumulation_for
from autotune.units import GIB, format_bytes

_STYLE = {"measured": "green", "predicted": "yellow", "rule": "cyan", "flag": "magenta",
          "default": "red", "synthetic": "dim"}


def profile_table(profile: Profile) -> Any:
    from rich.table import Table
    kind = {"probe": "measured on this hardware",
            "synthetic": "synthetic: made up for tests, nothing in it was measured"}.get(
        profile.kind, "planned: decided from measurements taken elsewhere")
    table = Table(title=f"profile {profile.name} ({kind})", expand=False)
    table.add_column("setting", style="bold")
    table.add_column("value", justify="right")
    table.add_column("source")
    table.add_column("reason", overflow="fold")
    for key, value in profile.settings.to_dict().items():
        src = profile.sources.get(key, "")
        table.add_row(key, str(value), f"[{_STYLE.get(src, 'white')}]{src}[/]",
                      profile.reasons.get(key, ""))
    return table


def across_nodes(profile: Profile, nodes: int = 2) -> str:
    """How the profile's settings carry to `nodes` machines like this one.

    A profile describes one node: batch and workers are per rank, `devices` the ranks on the
    node. Each node runs the same per-rank settings; only the effective batch grows with the
    node count, and accumulation can shrink by as much to keep it.
    """
    s = profile.settings
    ranks = max(1, s.devices)
    cpus = float(profile.hardware.usable_cpus)
    effective = s.batch_size * s.accumulate_grad_batches * ranks
    text = (f"on {nodes} such nodes: per node {ranks} rank(s) of batch {s.batch_size}, "
            f"{s.num_workers} loader workers per rank ({cpus:g} usable CPUs / {ranks} local "
            f"rank(s) = {cpus / ranks:g} each); effective batch {effective} x {nodes} nodes = "
            f"{effective * nodes}")
    if s.accumulate_grad_batches > 1:
        keep = accumulation_for(effective, s.batch_size, ranks * nodes)
        text += (f" (--accumulate {keep} keeps it near {effective}: "
                 f"{s.batch_size * keep * ranks * nodes})")
    return (text + f"; launch: torchrun --nnodes {nodes} --nproc-per-node {ranks} -m smt.train "
            f"--num-nodes {nodes} --devices {ranks} ... (README: several machines)")


def render_profile(profile: Profile, console: Any = None) -> None:
    from rich.console import Console
    console = console or Console()
    console.print(profile_table(profile))
    hw = profile.hardware
    wl = profile.workload
    console.print(f"hardware: {describe(hw)} [dim](fingerprint {hw.fingerprint})[/]")
    console.print(f"workload: {wl.get('dataset', '?')} / {wl.get('model', '?')} "
                  f"[dim](fingerprint {wl.get('fingerprint', '')})[/]")
    console.print(across_nodes(profile))
    extra = []
    d = profile.details
    if "ram_budget_bytes" in d:
        extra.append(f"RAM budget {format_bytes(d['ram_budget_bytes'])}")
    if "map_predicted_peak_bytes" in d:
        extra.append(f"map peak {format_bytes(d['map_predicted_peak_bytes'])}")
    if "model_predicted_peak_bytes" in d:
        extra.append(f"step peak {format_bytes(d['model_predicted_peak_bytes'])}")
    if "cache_predicted_bytes" in d:
        extra.append(f"cache {format_bytes(d['cache_predicted_bytes'])}")
    if extra:
        console.print("predicted: " + ", ".join(extra))
    prov = profile.provenance
    if prov.get("synthetic"):
        console.print(f"synthetic, made by {prov.get('generator', '?')}: {prov.get('what', '')}")
    elif prov.get("command"):
        console.print(f"recorded {prov.get('recorded_at', '?')} by `{prov['command']}` on "
                      f"{prov.get('machine', '?')}")
    console.print(f"created {profile.created}; sources: measured = on this hardware, "
                  "predicted = from other measurements or the model's estimate, "
                  "rule = follows from the hardware or arithmetic")


def write_plots(profile: Profile, folder: str | os.PathLike[str]) -> list[Path]:
    """Write the PNGs the profile has data for; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")           # files only: works on a headless box
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fn in (("map.png", _map_plot), ("model.png", _model_plot),
                     ("loader.png", _loader_plot)):
        fig = fn(profile)
        if fig is None:
            continue
        path = out / name
        tmp = out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
        import matplotlib.pyplot as plt
        plt.close(fig)
        written.append(path)
    return written


def _star(ax: Any, x: float, y: float, label: str) -> None:
    ax.plot([x], [y], marker="*", markersize=16, color="crimson", zorder=5, linestyle="none",
            label=label)


def _map_plot(profile: Profile) -> Any:
    import matplotlib.pyplot as plt
    trials = [t for t in profile.measurements.map_trials if t.rows_per_s and not t.stalled]
    if not trials:
        return None
    s = profile.settings
    fig, (ax_rate, ax_ram) = plt.subplots(1, 2, figsize=(11, 4))
    for wbs in sorted({t.writer_batch_size for t in trials}):
        pts = sorted((t.num_proc, t.rows_per_s, t.peak_rss_bytes) for t in trials
                     if t.writer_batch_size == wbs)
        ax_rate.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                     label=f"writer_batch_size {wbs}")
        ram = [(p[0], p[2] / GIB) for p in pts if p[2]]
        if ram:
            ax_ram.plot([r[0] for r in ram], [r[1] for r in ram], marker="o",
                        label=f"writer_batch_size {wbs}")
    stalled = [t for t in profile.measurements.map_trials if t.stalled]
    for t in stalled:
        ax_rate.plot([t.num_proc], [0], marker="x", color="black", markersize=10,
                     linestyle="none", label=f"stalled {t.num_proc}x{t.writer_batch_size}")
    chosen = [t for t in trials if t.num_proc == s.num_proc
              and t.writer_batch_size == s.writer_batch_size]
    label = f"chosen {s.num_proc} x {s.writer_batch_size}"
    if chosen:
        _star(ax_rate, s.num_proc, chosen[0].rows_per_s, label)
    peak = profile.details.get("map_predicted_peak_bytes")
    if peak:
        _star(ax_ram, s.num_proc, peak / GIB, label + " (predicted)")
    budget = profile.details.get("ram_budget_bytes")
    if budget:
        ax_ram.axhline(budget / GIB, color="gray", linestyle="--", label="RAM budget")
    ax_rate.set(xlabel="num_proc", ylabel="rows/s", title="map throughput")
    ax_ram.set(xlabel="num_proc", ylabel="peak RSS of the process tree (GiB)",
               title="map peak RAM")
    for ax in (ax_rate, ax_ram):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _model_plot(profile: Profile) -> Any:
    import matplotlib.pyplot as plt
    m = profile.measurements
    s = profile.settings
    trials = [t for t in m.model_trials if not t.oom and t.peak_memory_bytes]
    fit = profile.details.get("memory_fit")
    if not trials and not fit:
        return None
    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(11, 4))
    for ratio in sorted({t.reduce_ratio for t in trials}, reverse=True):
        pts = sorted((t.batch_size, t.peak_memory_bytes / GIB, t.step_s) for t in trials
                     if math.isclose(t.reduce_ratio, ratio))
        ax_mem.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    label=f"measured, reduce_ratio {ratio:g}")
        timed = [p for p in pts if p[2]]
        if timed:
            ax_time.plot([p[0] for p in timed], [p[2] for p in timed], marker="o",
                         label=f"reduce_ratio {ratio:g}")
    for t in m.model_trials:
        if t.oom:
            ax_mem.plot([t.batch_size], [0], marker="x", color="black", markersize=10,
                        linestyle="none", label=f"OOM at {t.batch_size} ({t.reduce_ratio:g})")
    if fit:
        xs = list(range(1, max(s.batch_size * 2, 2) + 1))
        ax_mem.plot(xs, [(fit["fixed_bytes"] + fit["per_sample_bytes"] * x) / GIB for x in xs],
                    linestyle=":", color="gray",
                    label=f"fit ({fit['source']}), reduce_ratio {fit['reduce_ratio']:g}")
    budget = profile.details.get("model_memory_budget_bytes")
    if budget:
        ax_mem.axhline(budget / GIB, color="gray", linestyle="--", label="memory budget")
    peak = profile.details.get("model_predicted_peak_bytes")
    if peak:
        _star(ax_mem, s.batch_size, peak / GIB,
              f"chosen batch {s.batch_size} at {s.reduce_ratio:g}")
    chosen = [t for t in trials if t.batch_size == s.batch_size
              and math.isclose(t.reduce_ratio, s.reduce_ratio) and t.step_s]
    if chosen:
        _star(ax_time, s.batch_size, chosen[0].step_s, f"chosen batch {s.batch_size}")
    ax_mem.set(xlabel="batch size", ylabel="peak memory (GiB)", title="step memory")
    ax_time.set(xlabel="batch size", ylabel="seconds per step", title="step time")
    for ax in (ax_mem, ax_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _loader_plot(profile: Profile) -> Any:
    import matplotlib.pyplot as plt
    trials = sorted((t for t in profile.measurements.loader_trials if t.samples_per_s),
                    key=lambda t: t.num_workers)
    if not trials:
        return None
    s = profile.settings
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([t.num_workers for t in trials], [t.samples_per_s for t in trials], marker="o",
            label="loader samples/s")
    model = [t.samples_per_s for t in profile.measurements.model_trials
             if t.samples_per_s and t.batch_size == s.batch_size
             and math.isclose(t.reduce_ratio, s.reduce_ratio)]
    if model:
        ax.axhline(model[0], color="gray", linestyle="--", label="model consumes (samples/s)")
    chosen = [t for t in trials if t.num_workers == s.num_workers]
    if chosen:
        _star(ax, s.num_workers, chosen[0].samples_per_s, f"chosen {s.num_workers} workers")
    ax.set(xlabel="num_workers", ylabel="samples/s", title="data loader")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
