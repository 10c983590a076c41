import pytest

from autotune.settings import Settings, accumulation_for


@pytest.mark.parametrize("field,value", [
    ("batch_size", 0), ("batch_size", -2), ("batch_size", 2.5), ("batch_size", True),
    ("num_proc", 0), ("writer_batch_size", -1), ("devices", 0), ("accumulate_grad_batches", 0),
    ("num_workers", -1), ("reduce_ratio", 0.0), ("reduce_ratio", 1.5), ("reduce_ratio", float("nan")),
    ("precision", "fp8"), ("strategy", "horovod"), ("batch_size", 10**9),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        Settings(**{field: value})


def test_unknown_profile_key_is_named():
    with pytest.raises(ValueError, match="bogus"):
        Settings.from_dict({"batch_size": 2, "bogus": 1})


def test_round_trip_and_int_ratio():
    s = Settings.from_dict({"batch_size": 2, "reduce_ratio": 1})
    assert s.reduce_ratio == 1.0 and isinstance(s.reduce_ratio, float)
    assert Settings.from_dict(s.to_dict()) == s


def test_overrides_win_and_keep_effective_batch_honest():
    base = Settings(batch_size=2, accumulate_grad_batches=4, devices=2, effective_batch_size=16)
    changed = base.with_overrides(batch_size=4, num_workers=None)
    assert changed.batch_size == 4 and changed.num_workers == base.num_workers
    assert changed.effective_batch_size == 4 * 4 * 2


@pytest.mark.parametrize("target,batch,devices,expected", [
    (16, 2, 2, 4), (16, 3, 2, 3), (1, 8, 1, 1), (16, 16, 1, 1), (10, 4, 1, 3),
])
def test_accumulation_reaches_target(target, batch, devices, expected):
    assert accumulation_for(target, batch, devices) == expected
