"""`--profile` resolution: defaults, a name, a path, and `auto` reusing a matching profile or
probing (with a warning when the only profile comes from other hardware)."""
from __future__ import annotations

import dataclasses

import pytest

import autotune.workload
from autotune.errors import UserError
from autotune.hardware import inventory
from autotune.profile import Profile, load_profile, save_profile
from autotune.resolve import resolve_profile
from autotune.settings import Settings
from workload_fakes import FakeWorkload


@pytest.fixture()
def fake_workload(monkeypatch):
    work = FakeWorkload()
    calls = []

    def load(name="smt", **kwargs):
        calls.append((name, kwargs))
        return work

    monkeypatch.setattr(autotune.workload, "load_workload", load)
    work.calls = calls
    return work


@pytest.fixture(scope="module")
def here():
    return inventory()


def _profile(hardware, workload_fp: str, batch: int, name: str, *, kind: str = "probe",
             created: str = "") -> Profile:
    return Profile(name=name, hardware=hardware, workload={"fingerprint": workload_fp,
                                                           "dataset": "fake", "model": "tiny"},
                   settings=Settings(batch_size=batch, effective_batch_size=batch), kind=kind,
                   created=created)


def _other_hardware(hw):
    return dataclasses.replace(hw, cpu_count=hw.cpu_count + 62, fingerprint="0ther0hardware00")


class FakeProbe:
    def __init__(self, hardware, batch: int = 7):
        self.calls = []
        self.hardware = hardware
        self.batch = batch

    def __call__(self, *, data, preset, devices, name, workload, hardware):
        self.calls.append({"data": data, "preset": preset, "devices": devices, "name": name})
        return _profile(hardware, workload.fingerprint(), self.batch, name)


def test_no_profile_means_default_settings(tmp_path):
    resolved = resolve_profile(None, data=None, preset="paper", profiles_dir=tmp_path)
    assert resolved.settings == Settings()
    assert resolved.path is None and resolved.profile is None and not resolved.probed


@pytest.mark.parametrize("how", ["name", "path"])
def test_named_profile_or_path(tmp_path, here, fake_workload, how):
    save_profile(_profile(here, fake_workload.fingerprint(), 3, "mine"), tmp_path / "mine.json")
    spec = "mine" if how == "name" else str(tmp_path / "mine.json")
    said = []
    resolved = resolve_profile(spec, data=None, preset="debug", profiles_dir=tmp_path,
                               say=said.append)
    assert resolved.settings.batch_size == 3
    assert resolved.path == tmp_path / "mine.json"
    assert resolved.profile["name"] == "mine" and not resolved.probed
    assert said == []                               # same machine, same workload: no warning


def test_unknown_name_is_one_line_naming_the_choices(tmp_path, here, fake_workload):
    save_profile(_profile(here, "x", 3, "kaggle-t4x2"), tmp_path / "kaggle-t4x2.json")
    with pytest.raises(UserError, match=r"profile 'nope': no such file .*kaggle-t4x2"):
        resolve_profile("nope", data=None, preset="paper", profiles_dir=tmp_path)


def test_named_profile_from_other_hardware_is_used_with_a_warning(tmp_path, here, fake_workload):
    save_profile(_profile(_other_hardware(here), fake_workload.fingerprint(), 5, "big"),
                 tmp_path / "big.json")
    said = []
    resolved = resolve_profile("big", data=None, preset="paper", profiles_dir=tmp_path,
                               say=said.append)
    assert resolved.settings.batch_size == 5 and not resolved.probed
    assert any("other hardware" in s for s in said)


def test_auto_reuses_a_matching_profile_without_probing(tmp_path, here, fake_workload):
    save_profile(_profile(here, fake_workload.fingerprint(), 4, "old", created="2026-01-01T00:00:00+00:00"),
                 tmp_path / "old.json")
    save_profile(_profile(here, fake_workload.fingerprint(), 6, "new", created="2026-02-01T00:00:00+00:00"),
                 tmp_path / "new.json")
    probe = FakeProbe(here)
    resolved = resolve_profile("auto", data="somewhere", preset="small", profiles_dir=tmp_path,
                               probe=probe, say=lambda s: None)
    assert probe.calls == []
    assert resolved.settings.batch_size == 6 and resolved.path == tmp_path / "new.json"
    assert not resolved.probed
    assert fake_workload.calls == [("smt", {"data": "somewhere", "preset": "small"})]


def test_auto_probes_saves_and_then_reuses(tmp_path, here, fake_workload):
    probe = FakeProbe(here, batch=7)
    said = []
    first = resolve_profile("auto", data=None, preset="debug", profiles_dir=tmp_path,
                            probe=probe, say=said.append)
    assert first.probed and len(probe.calls) == 1
    assert any("probing" in s for s in said)
    assert first.path.parent == tmp_path and first.path.exists()
    assert load_profile(first.path).settings.batch_size == 7
    second = resolve_profile("auto", data=None, preset="debug", profiles_dir=tmp_path,
                             probe=probe, say=said.append)
    assert not second.probed and len(probe.calls) == 1
    assert second.path == first.path


def test_auto_with_only_other_hardware_warns_and_reprobes(tmp_path, here, fake_workload):
    save_profile(_profile(_other_hardware(here), fake_workload.fingerprint(), 64, "server"),
                 tmp_path / "server.json")
    probe = FakeProbe(here, batch=2)
    said = []
    resolved = resolve_profile("auto", data=None, preset="paper", profiles_dir=tmp_path,
                               probe=probe, say=said.append)
    assert len(probe.calls) == 1 and resolved.probed
    assert resolved.settings.batch_size == 2                    # never the server's 64
    warning = next(s for s in said if "other hardware" in s)
    assert "server.json" in warning and here.fingerprint in warning


@pytest.mark.parametrize("stored_workload, stored_kind", [
    ("another-dataset", "probe"),       # same machine, other data or preset
    (None, "plan"),                     # a plan is a prediction: auto prefers measuring
])
def test_auto_does_not_reuse_other_workloads_or_plans(tmp_path, here, fake_workload,
                                                      stored_workload, stored_kind):
    fp = stored_workload or fake_workload.fingerprint()
    save_profile(_profile(here, fp, 9, "stored", kind=stored_kind), tmp_path / "stored.json")
    probe = FakeProbe(here, batch=1)
    resolved = resolve_profile("auto", data=None, preset="paper", profiles_dir=tmp_path,
                               probe=probe, say=lambda s: None)
    assert resolved.probed and resolved.settings.batch_size == 1


def test_auto_reprobes_when_asked_for_another_device_count(tmp_path, here, fake_workload):
    save_profile(_profile(here, fake_workload.fingerprint(), 4, "one"), tmp_path / "one.json")
    probe = FakeProbe(here)
    resolved = resolve_profile("auto", data=None, preset="paper", devices=2,
                               profiles_dir=tmp_path, probe=probe, say=lambda s: None)
    assert resolved.probed and probe.calls[0]["devices"] == 2
