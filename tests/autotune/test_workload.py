"""The workload door: autotune finds a workload by name and checks it speaks the protocol."""
from __future__ import annotations

import sys
import types

import pytest

from autotune.errors import UserError
from autotune.workload import Workload, load_workload
from workload_fakes import FakeWorkload


@pytest.fixture()
def plugin(monkeypatch):
    """A third-party package `thirdparty_pkg` whose `workload` module makes a FakeWorkload."""
    module = types.ModuleType("thirdparty_pkg.workload")
    module.make_workload = lambda **kw: FakeWorkload(rows=kw.get("rows", 40))
    monkeypatch.setitem(sys.modules, "thirdparty_pkg", types.ModuleType("thirdparty_pkg"))
    monkeypatch.setitem(sys.modules, "thirdparty_pkg.workload", module)
    return module


def test_fake_workload_satisfies_the_protocol():
    assert isinstance(FakeWorkload(), Workload)


def test_plain_name_gets_workload_appended_and_kwargs_pass_through(plugin):
    work = load_workload("thirdparty_pkg", rows=12)
    assert isinstance(work, FakeWorkload) and work.rows == 12


def test_dotted_name_is_the_module_itself(plugin):
    assert isinstance(load_workload("thirdparty_pkg.workload"), FakeWorkload)


def test_unknown_workload_is_a_user_error():
    with pytest.raises(UserError, match="unknown workload 'nosuchworkload'"):
        load_workload("nosuchworkload")


def test_module_without_factory_or_with_a_bad_object(monkeypatch):
    bare = types.ModuleType("bare_wl.workload")
    monkeypatch.setitem(sys.modules, "bare_wl", types.ModuleType("bare_wl"))
    monkeypatch.setitem(sys.modules, "bare_wl.workload", bare)
    with pytest.raises(UserError, match="has no make_workload"):
        load_workload("bare_wl")
    bare.make_workload = lambda **kw: object()
    with pytest.raises(TypeError, match="lacking .*map_spec"):
        load_workload("bare_wl")
