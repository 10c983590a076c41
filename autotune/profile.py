"""Profiles: what was measured on a machine for a workload, what was decided, and why.

Schema 1 with three additions that older readers ignore: `kind` ("probe": measured here;
"plan": decided for a machine described by a spec; "synthetic": made up by a generator, for
tests), `sources`, which says for each setting whether the figure behind it was measured on
that hardware, predicted (from another machine's measurements or the model's estimate),
follows from a rule (precision from the GPU generation, accumulation from arithmetic), or is
synthetic, and `provenance`: when, on what, and by which command the profile was made.

Profiles are plain JSON, validated on load, never pickles; they are written atomically so
that a run reading one never sees half a file.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autotune.atomic import atomic_write_json
from autotune.errors import UserError
from autotune.records import HardwareInfo, Measurements
from autotune.settings import OPTIONAL_KEYS, Settings

log = logging.getLogger(__name__)

SCHEMA = 1
KINDS = ("probe", "plan", "synthetic")
SOURCES = ("measured", "predicted", "rule", "flag", "default", "synthetic")
ENV_PROFILES = "SMT_AUTOTUNE_PROFILES"

_REQUIRED_TOP = ("schema", "name", "hardware", "workload", "settings")
_REQUIRED_HW = ("fingerprint", "cpu_count", "ram_bytes", "gpus")
_REQUIRED_GPU = ("name", "memory_bytes", "capability")


class ProfileError(UserError):
    """A profile file that cannot be used: names the file and what is wrong with it."""


@dataclass
class Profile:
    name: str
    hardware: HardwareInfo
    workload: dict[str, Any]
    settings: Settings
    reasons: dict[str, str] = field(default_factory=dict)
    measurements: Measurements = field(default_factory=Measurements)
    sources: dict[str, str] = field(default_factory=dict)
    kind: str = "probe"
    created: str = ""
    details: dict[str, Any] = field(default_factory=dict)   # predicted peaks, budgets used
    # When, on what and by which command it was made ({"synthetic": true, ...} for a fixture).
    provenance: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None                                 # where it was read from

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.created:
            self.created = datetime.now(timezone.utc).isoformat(timespec="seconds")

    @property
    def hardware_fingerprint(self) -> str:
        return self.hardware.fingerprint

    @property
    def workload_fingerprint(self) -> str:
        return str(self.workload.get("fingerprint", ""))

    def measured(self, key: str) -> bool:
        """True when the figure behind setting `key` was measured on this profile's hardware."""
        return self.sources.get(key) == "measured"

    def to_dict(self) -> dict[str, Any]:
        hw = self.hardware.to_dict()
        hw["gpus"] = [{**g, "capability": list(g["capability"])} for g in hw["gpus"]]
        out = {"schema": SCHEMA, "name": self.name, "created": self.created, "kind": self.kind,
               "hardware": hw, "workload": dict(self.workload),
               "settings": self.settings.to_dict(), "reasons": dict(self.reasons),
               "sources": dict(self.sources), "details": dict(self.details),
               "measurements": self.measurements.to_dict()}
        if self.provenance:
            out["provenance"] = dict(self.provenance)
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str | os.PathLike[str] = "<profile>") -> "Profile":
        """Validate and build; every problem raises ProfileError naming `source` and the key."""
        where = str(source)
        _check_shape(data, where)
        hw = data["hardware"]
        try:
            settings = Settings.from_dict(data["settings"])
        except (TypeError, ValueError) as exc:
            raise ProfileError(f"{where}: bad 'settings': {exc}") from exc
        hw_full = {"usable_cpus": float(hw["cpu_count"]), "ram_available_bytes": None,
                   "shm_bytes": None, "disk_free_bytes": None, **hw}
        try:
            hardware = HardwareInfo.from_dict(hw_full)
            measurements = Measurements.from_dict(data.get("measurements"))
            return cls(name=data["name"], hardware=hardware, workload=dict(data["workload"]),
                       settings=settings, reasons=dict(data.get("reasons", {})),
                       measurements=measurements, sources=dict(data.get("sources", {})),
                       kind=data.get("kind", "probe"), created=str(data.get("created", "")),
                       details=dict(data.get("details", {})),
                       provenance=dict(data.get("provenance", {})))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ProfileError(f"{where}: malformed profile: {exc}") from exc


def _check_shape(data: Any, where: str) -> None:
    """The keys and types every profile needs, before anything is built from them."""
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: a profile must be a JSON object, got "
                           f"{type(data).__name__}")
    missing = [k for k in _REQUIRED_TOP if k not in data]
    if "schema" in missing:
        raise ProfileError(f"{where}: missing key 'schema' (not an smt-autotune profile?)")
    schema = data["schema"]
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
        raise ProfileError(f"{where}: key 'schema' must be a positive integer, got {schema!r}")
    if schema > SCHEMA:
        raise ProfileError(
            f"{where}: key 'schema' is {schema}, written by a newer smt-autotune; this one "
            f"reads schema {SCHEMA}: upgrade, or re-run `python -m autotune probe`")
    if missing:
        raise ProfileError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)}")
    for key, kind in (("hardware", dict), ("workload", dict), ("settings", dict),
                      ("reasons", dict), ("sources", dict), ("measurements", dict),
                      ("details", dict), ("provenance", dict), ("name", str)):
        if key in data and not isinstance(data[key], kind):
            raise ProfileError(f"{where}: key {key!r} must be a JSON "
                               f"{'object' if kind is dict else 'string'}")
    hw = data["hardware"]
    for key in _REQUIRED_HW:
        if key not in hw:
            raise ProfileError(f"{where}: missing key 'hardware.{key}'")
    if not isinstance(hw["gpus"], list):
        raise ProfileError(f"{where}: key 'hardware.gpus' must be a list")
    for i, gpu in enumerate(hw["gpus"]):
        lacking = [k for k in _REQUIRED_GPU if not isinstance(gpu, dict) or k not in gpu]
        if lacking:
            raise ProfileError(f"{where}: missing key 'hardware.gpus[{i}].{lacking[0]}'")
        memory = gpu["memory_bytes"]
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 1:
            raise ProfileError(f"{where}: key 'hardware.gpus[{i}].memory_bytes' must be a "
                               f"positive integer, got {memory!r}")
    for key in ("cpu_count", "ram_bytes"):
        if isinstance(hw[key], bool) or not isinstance(hw[key], int) or hw[key] < 1:
            raise ProfileError(f"{where}: key 'hardware.{key}' must be a positive integer")
    if "fingerprint" not in data["workload"]:
        raise ProfileError(f"{where}: missing key 'workload.fingerprint'")
    known = {f.name for f in fields(Settings)}
    lacking = [k for k in sorted(known - OPTIONAL_KEYS) if k not in data["settings"]]
    if lacking:
        raise ProfileError(f"{where}: missing key 'settings.{lacking[0]}'")


def parse_json_file(path: str | os.PathLike[str], what: str = "profile") -> Any:
    """JSON from a file, with one clear error for a missing, empty, truncated or invalid file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{p}: no such {what} file") from None
    except IsADirectoryError:
        raise ProfileError(f"{p}: is a folder, expected a {what} JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{p}: cannot read {what}: {exc}") from exc
    if not text.strip():
        raise ProfileError(f"{p}: {what} file is empty (0 bytes of JSON)")
    try:
        return json.loads(text)
    except RecursionError:
        raise ProfileError(f"{p}: {what} is nested too deeply to be a {what}") from None
    except json.JSONDecodeError as exc:
        # EOF inside a string or where a value/closer was expected: the file was cut short.
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            raise ProfileError(f"{p}: {what} is truncated: the JSON ends after "
                               f"{len(text)} bytes, mid-document") from None
        raise ProfileError(f"{p}: {what} is not valid JSON: {exc.msg} at line {exc.lineno}, "
                           f"column {exc.colno}") from None


def load_profile(path: str | os.PathLike[str]) -> Profile:
    profile = Profile.from_dict(parse_json_file(path), source=path)
    profile.path = Path(path)
    return profile


def save_profile(profile: Profile, path: str | os.PathLike[str]) -> Path:
    """Write atomically; a reader sees the old profile or the new one, never half of one."""
    target = atomic_write_json(path, profile.to_dict())
    profile.path = target
    return target


def profiles_dir() -> Path:
    """`$SMT_AUTOTUNE_PROFILES`, else the project's `profiles/` beside the package (the
    shipped ones), else `./profiles`."""
    env = os.environ.get(ENV_PROFILES)
    if env:
        return Path(env).expanduser()
    shipped = Path(__file__).resolve().parent.parent / "profiles"
    return shipped if shipped.is_dir() else Path.cwd() / "profiles"


def resolve_profile_path(name_or_path: str | os.PathLike[str],
                         directory: str | os.PathLike[str] | None = None) -> Path:
    """A path as given when it exists or looks like a path, else `<profiles dir>/NAME.json`."""
    text = str(name_or_path)
    p = Path(text)
    if p.exists() or text.endswith(".json") or os.sep in text:
        return p
    return Path(directory or profiles_dir()) / f"{text}.json"


def match_status(profile: Profile, hardware_fingerprint: str | None,
                 workload_fingerprint: str | None) -> str:
    """'match', 'hardware differs', 'workload differs' or 'both differ'. A plan profile never
    matches the hardware it runs on by fingerprint unless the spec described this machine."""
    hw_ok = hardware_fingerprint is None or profile.hardware_fingerprint == hardware_fingerprint
    wl_ok = workload_fingerprint is None or profile.workload_fingerprint == workload_fingerprint
    if hw_ok and wl_ok:
        return "match"
    if not hw_ok and not wl_ok:
        return "both differ"
    return "hardware differs" if not hw_ok else "workload differs"


def iter_profiles(directory: str | os.PathLike[str] | None = None) -> list[Profile]:
    """Every valid profile in the folder; invalid ones are skipped with a warning naming them."""
    folder = Path(directory or profiles_dir())
    out: list[Profile] = []
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            out.append(load_profile(path))
        except ProfileError as exc:
            log.warning("skipping %s", exc)
    return out


def find_profile(hardware_fingerprint: str, workload_fingerprint: str,
                 directory: str | os.PathLike[str] | None = None,
                 kinds: tuple[str, ...] = ("probe",)) -> Profile | None:
    """The newest profile whose hardware and workload fingerprints both match.

    Only measured (`probe`) profiles by default: a plan's figures are predictions for a
    machine, and `--profile auto` should prefer measuring when it can.
    """
    matches = [p for p in iter_profiles(directory)
               if p.kind in kinds and match_status(p, hardware_fingerprint,
                                                   workload_fingerprint) == "match"]
    if not matches:
        return None
    return max(matches, key=lambda p: p.created)
