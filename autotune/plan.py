"""Decide settings for a machine you do not have yet.

`python -m autotune plan --hardware SPEC.json [--from PROFILE]` reads a description of the
target machine (CPUs, RAM, GPUs), takes the workload's measurements from a profile measured
elsewhere (map cost per row and per worker, loader and model memory lines) and the model's own
memory estimate, and runs the same rules as the probe. Everything that was not measured on the
target is marked `predicted` in the profile's `sources`; its `kind` is `plan`.

What transfers between machines and what does not:
- map RAM per buffered row and per worker, cache bytes per row, and the model's memory per
  sample are properties of the data and the model: they transfer;
- speeds do not (another CPU, another GPU): map speed is scaled by core count no better than
  measured here, and the loader/model balance on an unseen GPU is left as a bound by cores.

A spec (JSON; sizes as bytes or strings like "30GB", "15.8GiB"):

    {"name": "kaggle-t4x2", "cpu_count": 4, "ram": "31GiB", "shm": "15GiB",
     "disk_free": "57GiB", "gpus": [{"name": "Tesla T4", "memory": "15GiB",
     "capability": [7, 5]}], "gpu_count": 2}

`gpu_count` repeats a single listed GPU; `usable_cpus` defaults to `cpu_count`,
`ram_available` to `ram` (the RAM budget takes its usual 85% of it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from autotune.decide import Budgets, EstimateFn, decide, estimate_from_table
from autotune.errors import UserError
from autotune.hardware import fingerprint
from autotune.probes.estimates import estimate_table
from autotune.profile import Profile, ProfileError, parse_json_file
from autotune.records import GpuInfo, HardwareInfo, Measurements
from autotune.units import parse_size

_SPEC_KEYS = {"name", "cpu_count", "usable_cpus", "ram", "ram_bytes", "ram_available",
              "ram_available_bytes", "shm", "shm_bytes", "disk_free", "disk_free_bytes", "gpus",
              "gpu", "gpu_count", "description"}


def _size(spec: dict[str, Any], where: str, *keys: str, required: bool = False) -> int | None:
    for key in keys:
        if key in spec and spec[key] is not None:
            try:
                return parse_size(spec[key], key)
            except ValueError as exc:
                raise UserError(f"{where}: key {key!r}: {exc}") from None
    if required:
        raise UserError(f"{where}: missing key {keys[0]!r} (e.g. \"{keys[0]}\": \"30GB\")")
    return None


def hardware_from_spec(spec: Any, where: str = "<spec>") -> HardwareInfo:
    """A HardwareInfo from a spec dict; errors name the file and the key."""
    if not isinstance(spec, dict):
        raise UserError(f"{where}: a hardware spec must be a JSON object")
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known: "
                        f"{', '.join(sorted(_SPEC_KEYS))}")
    cpus = spec.get("cpu_count")
    if isinstance(cpus, bool) or not isinstance(cpus, int) or not 1 <= cpus <= 4096:
        raise UserError(f"{where}: key 'cpu_count' must be an integer in [1, 4096], got {cpus!r}")
    usable = spec.get("usable_cpus", cpus)
    if isinstance(usable, bool) or not isinstance(usable, (int, float)) or not 0 < usable <= cpus:
        raise UserError(f"{where}: key 'usable_cpus' must be in (0, cpu_count], got {usable!r}")
    ram = _size(spec, where, "ram", "ram_bytes", required=True)
    available = _size(spec, where, "ram_available", "ram_available_bytes") or ram
    gpus_raw = spec.get("gpus", [spec["gpu"]] if "gpu" in spec else [])
    if not isinstance(gpus_raw, list):
        raise UserError(f"{where}: key 'gpus' must be a list of objects")
    count = spec.get("gpu_count")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise UserError(f"{where}: key 'gpu_count' must be a non-negative integer")
        if len(gpus_raw) != 1 and count:
            raise UserError(f"{where}: key 'gpu_count' needs exactly one entry in 'gpus'")
        gpus_raw = gpus_raw * count
    gpus: list[GpuInfo] = []
    for i, g in enumerate(gpus_raw):
        at = f"{where}: gpus[{i}]"
        if not isinstance(g, dict) or "name" not in g:
            raise UserError(f"{at}: missing key 'name'")
        memory = _size(g, at, "memory", "memory_bytes", required=True)
        cap = g.get("capability")
        if not (isinstance(cap, (list, tuple)) and len(cap) == 2
                and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cap)):
            raise UserError(f"{at}: key 'capability' must be [major, minor], e.g. [7, 5], "
                            f"got {cap!r}")
        gpus.append(GpuInfo(name=str(g["name"]), memory_bytes=int(memory),  # type: ignore[arg-type]
                            capability=[int(cap[0]), int(cap[1])], index=i))
    info = HardwareInfo(cpu_count=cpus, usable_cpus=float(usable), ram_bytes=int(ram),  # type: ignore[arg-type]
                        ram_available_bytes=int(min(available, ram)),  # type: ignore[type-var]
                        shm_bytes=_size(spec, where, "shm", "shm_bytes"),
                        disk_free_bytes=_size(spec, where, "disk_free", "disk_free_bytes"),
                        gpus=gpus)
    info.fingerprint = fingerprint(info)
    return info


def load_spec(path: str | os.PathLike[str]) -> tuple[HardwareInfo, str | None]:
    """(hardware, name from the spec) from a spec file."""
    try:
        data = parse_json_file(path, what="hardware spec")
    except ProfileError as exc:
        raise UserError(str(exc)) from None
    name = data.get("name") if isinstance(data, dict) else None
    return hardware_from_spec(data, str(path)), name


def plan_profile(hardware: HardwareInfo, *, source: Profile | None = None,
                 workload: Any = None, budgets: Budgets | None = None,
                 name: str | None = None) -> Profile:
    """Decide for `hardware` from `source`'s measurements and/or `workload`'s estimates.

    At least one of them must say how much memory the model needs. The returned profile is
    not saved; its sources mark what was predicted.
    """
    measurements = Measurements.from_dict(source.measurements.to_dict()) if source else \
        Measurements()
    if workload is not None and not measurements.estimates:
        measurements.estimates = estimate_table(workload)
        if measurements.num_params is None:
            try:
                measurements.num_params = int(workload.num_params())
            except Exception:  # noqa: BLE001 - a count we cannot get is None
                measurements.num_params = None
        if measurements.dataset_rows is None:
            try:
                measurements.dataset_rows = int(workload.dataset_rows())
            except Exception:  # noqa: BLE001
                measurements.dataset_rows = None
    estimate: EstimateFn | None = estimate_from_table(measurements.estimates)
    if estimate is None and not measurements.model_trials:
        raise UserError("nothing to plan from: give --from PROFILE (a probe's measurements) or "
                        "make the workload importable so its memory estimate can be used")
    # The measuring machine's trials keep their device label; plan marks the result predicted.
    decision = decide(hardware, measurements, budgets or Budgets(), estimate=estimate,
                      predicted=True)
    if source is not None:
        wl = dict(source.workload)
    elif workload is not None:
        wl = dict(workload.describe())
    else:
        wl = {"fingerprint": "", "dataset": "?", "model": "?"}
    origin = f"profile {source.name} (hardware {source.hardware_fingerprint})" if source \
        else "the workload's memory estimate"
    details = {**decision.details, "planned_from": origin}
    sources = {k: ("predicted" if v == "measured" else v) for k, v in decision.sources.items()}
    return Profile(name=name or f"plan-{hardware.fingerprint[:8]}", hardware=hardware,
                   workload=wl, settings=decision.settings, reasons=decision.reasons,
                   measurements=measurements, sources=sources, kind="plan", details=details)


def run_plan(args: Any) -> int:
    """Entry for `python -m autotune plan`: returns the exit code."""
    from rich.console import Console

    from autotune.profile import load_profile, profiles_dir, resolve_profile_path, save_profile
    from autotune.show import render_profile

    hardware, spec_name = load_spec(args.hardware)
    source = load_profile(resolve_profile_path(args.source)) if args.source else None
    workload = None
    if source is None or not source.measurements.estimates:
        from autotune.workload import load_workload
        kwargs = {"preset": args.preset} if args.preset else {}
        try:
            workload = load_workload(args.workload, **kwargs)
        except (ImportError, UserError) as exc:
            if source is None:
                raise UserError(f"cannot load workload {args.workload!r} for its memory "
                                f"estimate ({exc}); pass --from PROFILE") from None
    budgets = Budgets(
        ram_budget_bytes=parse_size(args.ram_budget, "--ram-budget") if args.ram_budget else None,
        vram_budget_bytes=parse_size(args.vram_budget, "--vram-budget")
        if args.vram_budget else None,
        effective_batch_size=args.effective_batch, devices=args.devices)
    name = args.name or spec_name or Path(args.hardware).stem
    profile = plan_profile(hardware, source=source, workload=workload, budgets=budgets,
                           name=name)
    out = Path(args.out) if args.out else profiles_dir() / f"{name}.json"
    path = save_profile(profile, out)
    console = Console()
    render_profile(profile, console)
    console.print(f"wrote {path} (a plan: figures marked 'predicted' were not measured on "
                  f"this hardware)")
    return 0

