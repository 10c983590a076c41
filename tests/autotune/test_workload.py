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


# -- the SMT implementation, on the suite's tiny rendered dataset (16/4/4 systems) -----------

@pytest.fixture(scope="module")
def smt_work(synth_raw_dir):
    return load_workload("smt", data=str(synth_raw_dir), preset="debug")


def _decoded_sizes(path):
    import datasets
    dd = datasets.load_from_disk(str(path))
    return [im.size for s in dd for im in dd[s]["image"]]


def test_smt_workload_speaks_the_protocol_and_describes_itself(smt_work, synth_raw_dir):
    assert isinstance(smt_work, Workload)
    desc = smt_work.describe()
    assert desc["fingerprint"] == smt_work.fingerprint()
    assert desc["dataset"] == str(synth_raw_dir) and desc["model"] == "debug"
    assert desc["rows"] == {"train": 16, "val": 4, "test": 4}
    assert smt_work.dataset_rows() == 24
    assert desc["num_params"] == smt_work.num_params() > 0


def test_smt_fingerprint_is_stable_and_tracks_data_and_preset(smt_work, synth_raw_dir):
    again = load_workload("smt", data=str(synth_raw_dir), preset="debug")
    assert again.fingerprint() == smt_work.fingerprint()
    other_preset = load_workload("smt", data=str(synth_raw_dir), preset="small")
    assert other_preset.fingerprint() != smt_work.fingerprint()
    other_format = load_workload("smt", data=str(synth_raw_dir), preset="debug", fmt="kern")
    assert other_format.fingerprint() != smt_work.fingerprint()


def test_smt_unknown_preset_is_a_user_error():
    with pytest.raises(UserError, match="unknown model preset 'huge'"):
        load_workload("smt", preset="huge")


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.3])
def test_smt_largest_shape_is_the_largest_image_after_reduction(smt_work, synth_raw_dir, ratio):
    sizes = _decoded_sizes(synth_raw_dir)
    shape = smt_work.largest_shape(ratio)
    assert shape.width == round(max(w for w, _ in sizes) * ratio)
    assert shape.height == round(max(h for _, h in sizes) * ratio)
    assert shape.seq_len > 10


def test_smt_map_spec_is_the_preparation_map(smt_work):
    import io

    from PIL import Image
    sample = smt_work.raw_sample(3)
    assert len(sample) == 3 and sample.column_names == ["image", "transcription"]
    spec = smt_work.map_spec(0.5)
    out = sample.map(spec.function, fn_kwargs=dict(spec.fn_kwargs), features=spec.features)
    raw_w = Image.open(io.BytesIO(sample[0]["image"]["bytes"])).width
    assert out[0]["image"].width == round(raw_w * 0.5) and out[0]["skip"] == ""


def test_smt_model_step_on_a_worst_case_batch(smt_work):
    """The worst-case batch fits the model the workload sizes for it (the model, loss and
    optimizer are smt's own: the workload interface does not carry them)."""
    import torch

    from smt.model import SMTModel
    from smt.module import make_optimizer, token_loss
    shape = smt_work.largest_shape(0.5)
    model = SMTModel(smt_work.config(shape))
    batch = smt_work.make_batch(2, shape, "cpu")
    assert batch["images"].shape == (2, 1, shape.height, shape.width)
    assert batch["input_ids"].shape == (2, shape.seq_len - 1)
    loss_sum, tokens = token_loss(model, batch, smt_work.vocab.pad_id)
    loss = loss_sum / tokens.clamp(min=1)
    assert torch.isfinite(loss)
    loss.backward()
    make_optimizer(model.parameters(), smt_work.lr).step()
    est = [smt_work.estimate_memory(b, shape, "bf16-mixed") for b in (1, 2)]
    assert 0 < est[0] < est[1]


@pytest.mark.timeout(60)
def test_smt_loader_is_the_training_loader(smt_work):
    loader = smt_work.make_loader(batch_size=3, num_workers=1, reduce_ratio=0.5, rows=7)
    batches = list(loader)
    assert [b["images"].shape[0] for b in batches] == [3, 3, 1]
    assert batches[0]["images"].shape[-1] <= smt_work.largest_shape(0.5).width
    assert set(batches[0]) >= {"images", "image_sizes", "input_ids", "target_ids"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_smt_make_step_is_the_modules_training_step(smt_work, precision):
    """The step the probe times: SMTModule.training_step under the precision's autocast, with
    the optimizer from configure_optimizers (the weights move), freed on close."""
    import gc
    import weakref

    import torch
    shape = smt_work.largest_shape(0.5)
    step = smt_work.make_step(2, shape, precision, "cpu")
    module = weakref.ref(step.module)
    assert type(step.module).__name__ == "SMTModule"
    assert step.trainer.precision_plugin.precision == precision
    before = [p.detach().clone() for p in step.module.parameters()]
    losses = [step() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(a, b) for a, b in zip(before, step.module.parameters()))
    step.close()
    gc.collect()
    assert module() is None


@pytest.mark.timeout(120)
def test_smt_typical_batch_is_real_rows_batched_like_training(smt_work):
    """Real prepared rows, collated as the training loader collates them, fit the model sized
    for the largest shape and step through make_step."""
    from smt.builder import collate_rows
    from smt.runconfig import DEFAULT_TEACHER_NOISE
    shape = smt_work.largest_shape(0.5)
    median = smt_work.typical_shape(0.5)
    assert 0 < median.height <= shape.height and 0 < median.width <= shape.width
    assert 0 < median.seq_len <= shape.seq_len
    rows = smt_work.prepared_sample(0.5, 8)
    batch = collate_rows(rows, [1, 4, 6], smt_work.vocab, smt_work.fmt,
                         teacher_noise=DEFAULT_TEACHER_NOISE)
    assert batch["images"].shape[0] == 3
    assert batch["images"].shape[-2] <= shape.height and batch["images"].shape[-1] <= shape.width
    assert batch["input_ids"].shape[1] <= shape.seq_len - 1
    with smt_work.make_step(3, shape, "32-true", "cpu", batch=batch) as step:
        assert step() > 0
