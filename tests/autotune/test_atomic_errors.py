import json
import os

import pytest

from autotune.atomic import atomic_write_json
from autotune.errors import UserError, run_cli


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "profile.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2, "b": [1, 2]})
    assert json.loads(target.read_text()) == {"a": 2, "b": [1, 2]}
    assert os.listdir(target.parent) == ["profile.json"]


def test_failed_write_keeps_old_content(tmp_path):
    target = tmp_path / "p.json"
    atomic_write_json(target, {"ok": True})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": True}
    assert os.listdir(tmp_path) == ["p.json"]


def _failing(argv):
    raise UserError("profiles/x.json: missing key 'settings'")


@pytest.mark.parametrize("argv,traceback_shown", [([], False), (["--debug"], True)])
def test_user_error_is_one_line_unless_debug(capsys, argv, traceback_shown):
    assert run_cli(_failing, argv, prog="autotune") == 2
    err = capsys.readouterr().err
    assert "autotune: error: profiles/x.json: missing key 'settings'" in err
    assert ("Traceback" in err) is traceback_shown
