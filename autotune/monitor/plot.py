"""resources.png: utilisation, host memory and GPU memory over time, one panel each.

Uses the Agg canvas directly, not pyplot, so that it neither needs a display nor changes the
backend of a notebook that called it.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from autotune.monitor.samples import Event, Hint, ResourceSample
from autotune.units import GIB

_LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": "small"}


def _series(samples: Sequence[ResourceSample], values: list[float | None]
            ) -> tuple[list[float], list[float]]:
    pairs = [(s.t_s, v) for s, v in zip(samples, values) if v is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _gpu_ids(samples: Sequence[ResourceSample]) -> list[int]:
    return sorted({g.index for s in samples for g in s.gpus})


def _utilisation(ax: Any, samples: Sequence[ResourceSample]) -> None:
    for i in _gpu_ids(samples):
        ax.plot(*_series(samples, [next((g.util_pct for g in s.gpus if g.index == i), None)
                                   for s in samples]), label=f"GPU {i} util")
    ax.plot(*_series(samples, [s.cpu_pct for s in samples]), label="CPU (all cores)",
            color="gray", alpha=0.7)
    ax.plot(*_series(samples, [None if s.data_wait_frac is None else 100 * s.data_wait_frac
                               for s in samples]),
            label="waiting for data", color="tab:red", marker=".", linestyle="--")
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title("Utilisation")
    ax.legend(**_LEGEND)


def _host_memory(ax: Any, samples: Sequence[ResourceSample], ram_budget_bytes: int | None) -> None:
    ax.plot(*_series(samples, [None if s.rss_bytes is None else s.rss_bytes / GIB
                               for s in samples]), label="run (process tree RSS)")
    ax.plot(*_series(samples, [None if s.ram_total_bytes is None or s.ram_available_bytes is None
                               else (s.ram_total_bytes - s.ram_available_bytes) / GIB
                               for s in samples]),
            label="system in use", color="gray", alpha=0.7)
    totals = [s.ram_total_bytes for s in samples if s.ram_total_bytes]
    if totals:
        ax.axhline(totals[-1] / GIB, color="black", linestyle=":", label="total")
    if ram_budget_bytes:
        ax.axhline(ram_budget_bytes / GIB, color="tab:red", linestyle=":", label="budget")
    ax.set_ylabel("GiB")
    ax.set_title("Host memory")
    ax.legend(**_LEGEND)


def _gpu_memory(ax: Any, samples: Sequence[ResourceSample]) -> None:
    gpu_ids = _gpu_ids(samples)
    for i in gpu_ids:
        xs, ys = _series(samples, [next((None if g.mem_used_bytes is None
                                         else g.mem_used_bytes / GIB
                                         for g in s.gpus if g.index == i), None)
                                   for s in samples])
        line = ax.plot(xs, ys, label=f"GPU {i} used")[0]
        total = next((g.mem_total_bytes for s in samples for g in s.gpus
                      if g.index == i and g.mem_total_bytes), None)
        if total:
            ax.axhline(total / GIB, color=line.get_color(), linestyle=":", label=f"GPU {i} total")
    if gpu_ids:
        ax.legend(**_LEGEND)
    else:
        ax.text(0.5, 0.5, "no GPU monitored (CPU run or NVML unavailable)",
                ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_ylabel("GiB")
    ax.set_title("GPU memory")
    ax.set_xlabel("seconds since start of training")


def _events(axes: Sequence[Any], events: Sequence[Event]) -> None:
    """A vertical line through every panel at each change, labelled on the top one."""
    for e in events:
        for ax in axes:
            ax.axvline(e.t_s, color="tab:purple", linestyle="-.", linewidth=1)
        label = e.message.split(":", 1)[0]      # "loader workers 0 -> 1"
        axes[0].annotate(label, (e.t_s, 1.0), xycoords=("data", "axes fraction"),
                         xytext=(2, -2), textcoords="offset points", va="top", fontsize="small",
                         color="tab:purple", rotation=90)


def plot_resources(samples: Sequence[ResourceSample], ram_budget_bytes: int | None = None,
                   hints: Sequence[Hint] = (), events: Sequence[Event] = ()) -> bytes:
    """PNG bytes of the three panels, with the run's changes (`events`) marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8), dpi=100)
    FigureCanvasAgg(fig)
    ax_util, ax_ram, ax_gpu = fig.subplots(3, 1, sharex=True)
    _utilisation(ax_util, samples)
    _host_memory(ax_ram, samples, ram_budget_bytes)
    _gpu_memory(ax_gpu, samples)
    _events((ax_util, ax_ram, ax_gpu), events)
    if hints:
        fig.suptitle("hints: " + ", ".join(h.kind for h in hints), color="tab:red")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
