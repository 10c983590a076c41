"""Profile schema: round trip, lookup by fingerprint, and one clear error per bad file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.errors import UserError, run_cli
from autotune.profile import (Profile, ProfileError, find_profile, load_profile, match_status,
                              resolve_profile_path, save_profile)
from autotune.records import (GpuInfo, HardwareInfo, LoaderTrial, MapTrial, Measurements,
                              MemoryEstimate, ModelTrial)
from autotune.settings import Settings

GIB = 1024 ** 3


def make_profile(name: str = "box", hw_fp: str = "hw1", wl_fp: str = "wl1",
                 created: str = "2025-01-01T00:00:00+00:00") -> Profile:
    hw = HardwareInfo(cpu_count=4, usable_cpus=4.0, ram_bytes=30 * GIB,
                      ram_available_bytes=28 * GIB, shm_bytes=8 * GIB, disk_free_bytes=50 * GIB,
                      gpus=[GpuInfo("Tesla T4", 15 * GIB, [7, 5], 0)], fingerprint=hw_fp)
    m = Measurements(
        map_trials=[MapTrial(1, 50, 48, 2.0, 24.0, 900_000_000, 500_000_000, 4e6, 7e4)],
        model_trials=[ModelTrial(1.0, 2, 512, 768, 256, "cuda:0", "16-mixed", 0.2, 10.0,
                                 3 * GIB, 2 * GIB)],
        loader_trials=[LoaderTrial(2, 4, 5.0, 20.0, 800_000_000)],
        estimates=[MemoryEstimate(1.0, 1, 512, 768, 256, "16-mixed", GIB)],
        dataset_rows=1000, num_params=10_900_000, extra={"map": {"startup_s": {"1": 0.4}},
                                                         "probe_version": 3})
    return Profile(name=name, hardware=hw, workload={"fingerprint": wl_fp, "dataset": "d",
                                                     "model": "paper"},
                   settings=Settings(batch_size=2, precision="16-mixed"),
                   reasons={"batch_size": "fits"}, measurements=m,
                   sources={"batch_size": "measured", "precision": "rule"}, created=created)


def test_round_trip(tmp_path: Path) -> None:
    profile = make_profile()
    path = save_profile(profile, tmp_path / "p" / "box.json")
    back = load_profile(path)
    assert back.to_dict() == profile.to_dict()
    assert back.measured("batch_size") and not back.measured("precision")
    assert back.measurements.map_trials[0].bytes_per_buffered_row == 4e6
    assert back.measurements.extra["probe_version"] == 3
    assert not list(path.parent.glob(".*.tmp"))          # atomic write left no temp file


def test_find_by_fingerprints(tmp_path: Path) -> None:
    save_profile(make_profile("old", created="2025-01-01T00:00:00+00:00"), tmp_path / "old.json")
    save_profile(make_profile("new", created="2025-02-01T00:00:00+00:00"), tmp_path / "new.json")
    save_profile(make_profile("other", hw_fp="hw2"), tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")            # skipped, not fatal
    assert find_profile("hw1", "wl1", tmp_path).name == "new"
    assert find_profile("hw2", "wl1", tmp_path).name == "other"
    assert find_profile("hw1", "wl9", tmp_path) is None
    assert find_profile("hw3", "wl1", tmp_path) is None


@pytest.mark.parametrize("hw, wl, status", [
    ("hw1", "wl1", "match"), ("hwX", "wl1", "hardware differs"),
    ("hw1", "wlX", "workload differs"), ("hwX", "wlX", "both differ"), (None, "wl1", "match"),
])
def test_match_status(hw: str | None, wl: str, status: str) -> None:
    assert match_status(make_profile(), hw, wl) == status


def _mutate(d: dict, path: str, value: object) -> dict:
    keys = path.split(".")
    target = d
    for k in keys[:-1]:
        target = target[k]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return d


_DELETE = object()


@pytest.mark.parametrize("path, value, message", [
    ("schema", 2, r"key 'schema' is 2, written by a newer"),
    ("schema", _DELETE, "missing key 'schema'"),
    ("schema", "1", "key 'schema' must be a positive integer"),
    ("settings", _DELETE, "missing key\\(s\\) 'settings'"),
    ("settings.batch_size", _DELETE, "missing key 'settings.batch_size'"),
    ("settings.batch_size", 0, "batch_size must be a positive integer"),
    ("settings.bogus", 1, "unknown settings key\\(s\\): bogus"),
    ("hardware.fingerprint", _DELETE, "missing key 'hardware.fingerprint'"),
    ("hardware.ram_bytes", -5, "'hardware.ram_bytes' must be a positive integer"),
    ("workload.fingerprint", _DELETE, "missing key 'workload.fingerprint'"),
    ("reasons", [], "key 'reasons' must be a JSON object"),
])
def test_invalid_profiles_name_file_and_key(tmp_path: Path, path: str, value: object,
                                            message: str) -> None:
    data = _mutate(make_profile().to_dict(), path, value)
    file = tmp_path / "bad.json"
    file.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(file)
    assert str(file) in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ('{"schema": 1, "name": "x", "hardw', "truncated"),
    ('{"schema": 1,, }', "not valid JSON: .* line 1, column 14"),
    ("[1, 2]", "must be a JSON object"),
])
def test_unreadable_files(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "p.json"
    file.write_text(text)
    with pytest.raises(ProfileError, match=message):
        load_profile(file)


def test_truncated_real_profile_and_missing_file(tmp_path: Path) -> None:
    path = save_profile(make_profile(), tmp_path / "box.json")
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ProfileError, match="truncated"):
        load_profile(path)
    with pytest.raises(ProfileError, match="no such profile file"):
        load_profile(tmp_path / "absent.json")


def test_profile_error_is_one_line_user_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    file = tmp_path / "future.json"
    file.write_text(json.dumps({**make_profile().to_dict(), "schema": 9}))

    def main(argv: object) -> int:
        load_profile(file)
        return 0
    assert issubclass(ProfileError, UserError)
    assert run_cli(main, [], prog="autotune") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "future.json" in err and "schema" in err


def test_resolve_profile_path(tmp_path: Path) -> None:
    assert resolve_profile_path("kaggle-t4x2", tmp_path) == tmp_path / "kaggle-t4x2.json"
    assert resolve_profile_path("x/y.json", tmp_path) == Path("x/y.json")
