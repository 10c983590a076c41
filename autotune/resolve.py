"""`--profile` for training: which settings a run starts from, and where they came from.

    None       -> `Settings()` (safe defaults for a small machine; no file involved)
    NAME       -> profiles/NAME.json
    PATH       -> that file
    auto       -> the newest measured profile in profiles/ whose hardware AND workload
                  fingerprints match this machine and this data/preset; else probe now (and
                  say so), save the profile, use it.

A profile measured on other hardware is never reused by `auto`: its batch size may not fit
here and its worker counts may starve or swamp these cores. Under `auto` that is a warning and
a fresh probe; a profile named explicitly is used as asked, with the same warning.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.errors import UserError
from autotune.profile import (Profile, find_profile, iter_profiles, load_profile, match_status,
                              profiles_dir as default_profiles_dir, resolve_profile_path,
                              save_profile)
from autotune.settings import Settings
from autotune.workload import DEFAULT_WORKLOAD


@dataclass
class ResolvedProfile:
    settings: Settings
    path: Path | None                   # the profile file used (None: defaults)
    profile: dict[str, Any] | None      # its JSON, for run.json
    probed: bool                        # True when this call measured the machine
    note: str = ""                      # one line saying what was chosen and why


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_profile(spec: str | None, *, data: str | None, preset: str,
                    devices: int | None = None, profiles_dir: str | Path | None = None,
                    probe: Callable[..., Profile] | None = None,
                    say: Callable[[str], None] = _say,
                    workload_kwargs: dict[str, Any] | None = None,
                    workload: str = DEFAULT_WORKLOAD) -> ResolvedProfile:
    """Turn `--profile SPEC` into settings for the workload named `workload`.
    `probe(data=, preset=, devices=, name=, workload=, hardware=)` is the measuring function
    (default: `autotune.probe.probe_profile`); tests pass a fake."""
    if spec is None or spec == "":
        return ResolvedProfile(Settings(), None, None, False, "no profile: default settings")
    folder = Path(profiles_dir) if profiles_dir is not None else default_profiles_dir()
    if spec != "auto":
        path = resolve_profile_path(spec, folder)
        if not path.exists():
            available = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
            hint = f" (in {folder}: {', '.join(available)})" if available else ""
            raise UserError(f"profile {spec!r}: no such file {path}{hint}")
        profile = load_profile(path)
        _warn_if_foreign(profile, data=data, preset=preset, say=say,
                         workload_kwargs=workload_kwargs, workload=workload)
        return ResolvedProfile(profile.settings, path, profile.to_dict(), False,
                               f"profile {profile.name} from {path}")

    from autotune.hardware import inventory
    from autotune.workload import load_workload

    hardware = inventory(workload=workload)
    work = load_workload(workload, data=data, preset=preset, **(workload_kwargs or {}))
    wl_fp = work.fingerprint()
    found = find_profile(hardware.fingerprint, wl_fp, folder)
    if found is not None and (devices is None or found.settings.devices == devices):
        _show(found)
        return ResolvedProfile(found.settings, found.path, found.to_dict(), False,
                               f"profile auto: reusing {found.path} (same hardware and workload)")
    if found is not None:
        reason = (f"{found.path} was probed for {found.settings.devices} device(s), "
                  f"{devices} asked")
    else:
        same_workload = [p for p in iter_profiles(folder) if p.kind == "probe"
                         and match_status(p, None, wl_fp) == "match"]
        if same_workload:
            other = max(same_workload, key=lambda p: p.created)
            say(f"warning: {other.path} was measured on other hardware "
                f"({other.hardware_fingerprint}, this machine is {hardware.fingerprint}); "
                "its settings may not fit here: probing this machine")
            reason = "only profiles from other hardware"
        else:
            reason = "no profile for this hardware and workload"
    say(f"profile auto: {reason} in {folder}; probing (about a minute)...")
    from autotune.probe import profile_name
    if probe is None:
        from autotune.probe import probe_profile as probe
    profile = probe(data=data, preset=preset, devices=devices,
                    name=profile_name(preset, hardware), workload=work,
                    hardware=hardware)
    path = save_profile(profile, folder / f"{profile.name}.json")
    say(f"profile auto: saved {path}")
    _show(profile)
    return ResolvedProfile(profile.settings, path, profile.to_dict(), True,
                           f"profile auto: probed and saved {path}")


def _show(profile: Profile) -> None:
    """The settings a run is about to use, with the reason and source of each, before any
    training starts: what the user would otherwise only find in the profile file."""
    from rich.console import Console

    from autotune.show import profile_table
    Console().print(profile_table(profile))


def _warn_if_foreign(profile: Profile, *, data: str | None, preset: str,
                     say: Callable[[str], None],
                     workload_kwargs: dict[str, Any] | None,
                     workload: str = DEFAULT_WORKLOAD) -> None:
    """A named profile is used as asked, but a mismatch is said out loud."""
    from autotune.hardware import inventory
    hw_fp = inventory(workload=workload).fingerprint
    if profile.kind == "plan":
        return  # a plan describes another machine by design
    if profile.hardware_fingerprint != hw_fp:
        say(f"warning: profile {profile.name} was measured on other hardware "
            f"({profile.hardware_fingerprint}, this machine is {hw_fp}); "
            "`--profile auto` would probe this one")
    try:
        from autotune.workload import load_workload
        wl_fp = load_workload(workload, data=data, preset=preset,
                              **(workload_kwargs or {})).fingerprint()
    except UserError:
        return
    if profile.workload_fingerprint and profile.workload_fingerprint != wl_fp:
        say(f"warning: profile {profile.name} was measured for another workload "
            f"({profile.workload.get('dataset')}, {profile.workload.get('model')})")
