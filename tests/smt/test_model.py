"""SMTModel: shapes, /16 encoder, padding invariance, cached == uncached decoding, loss,
input errors, and the analytic size model against autograd, the FLOP counter and RSS."""
from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from smt.config import PRESETS, SMTConfig
from smt.model import SMTModel, count_params, estimate_memory
from smt.model.estimate import _activation_bytes


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: on a shared 2-core box, OpenMP's second thread mostly spins
    against other processes (a 30-token decode took 3 s with 2 threads, 0.04 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(preset: str = "debug", seed: int = 0, **changes) -> SMTModel:
    torch.manual_seed(seed)
    return SMTModel(SMTConfig.preset(preset, **changes))


# ------------------------------------------------------------------ architecture
def test_paper_preset_has_the_reference_size() -> None:
    model = make("paper", vocab_size=181)
    n = model.num_params()
    assert n == count_params(model.config)
    assert abs(n - 10.9e6) / 10.9e6 < 0.01, n          # the published SMT: ~10.9 M at vocab 181


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_count_params_matches_the_built_model(preset: str) -> None:
    model = make(preset, vocab_size=57)
    assert model.num_params() == count_params(model.config)


@pytest.mark.parametrize(("h", "w", "grid"), [(256, 1024, (16, 64)), (250, 1000, (16, 63)), (16, 16, (1, 1))])
def test_encoder_downsamples_by_exactly_16(h: int, w: int, grid: tuple[int, int]) -> None:
    model = make()
    memory = model.encode(torch.rand(2, 1, h, w))
    assert memory.keys.shape == (2, grid[0] * grid[1], model.config.d_model)
    assert model.encoder.downsample == 16


@pytest.mark.parametrize(("b", "h", "w", "t"), [(1, 64, 256, 1), (3, 100, 333, 17)])
def test_forward_gives_logits_per_position(b: int, h: int, w: int, t: int) -> None:
    model = make(vocab_size=50)
    logits = model(torch.rand(b, 1, h, w), torch.randint(0, 50, (b, t)))
    assert logits.shape == (b, t, 50)
    assert torch.isfinite(logits).all()


def test_padded_batch_gives_each_image_its_own_result() -> None:
    """A small image padded (white) into a batch with a large one, with image_sizes, decodes
    as it does alone: logits and greedy output."""
    model = make().eval()
    small, large = torch.rand(1, 1, 70, 200), torch.rand(1, 1, 128, 512)
    batch = torch.ones(2, 1, 128, 512)
    batch[0, :, :70, :200] = small[0]
    batch[1] = large[0]
    sizes = torch.tensor([[70, 200], [128, 512]])
    ids = torch.randint(3, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        together = model(batch, ids, sizes)
        alone = torch.cat([model(small, ids[:1]), model(large, ids[1:])])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    # without image_sizes the padding is content and the result does change
    with torch.no_grad():
        assert not torch.allclose(model(batch, ids)[0], alone[0], atol=1e-5)
    assert model.generate(batch, 20, sizes) == model.generate(small, 20) + model.generate(large, 20)


def test_loss_ignores_pad_targets() -> None:
    model = make(vocab_size=30).eval()
    images, ids = torch.rand(1, 1, 64, 128), torch.randint(3, 30, (1, 8))
    logits = model(images, ids)
    targets = torch.randint(3, 30, (1, 8))
    padded = targets.clone()
    padded[0, 5:] = model.config.pad_id
    expected = torch.nn.functional.cross_entropy(logits[0, :5], targets[0, :5])
    torch.testing.assert_close(model.loss(logits, padded), expected)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("images", "ids", "match"),
    [
        (torch.rand(1, 1, 600, 100), None, r"600x100 px .* larger than .* 512x2048"),
        (torch.rand(1, 1, 64, 4096), None, "larger than"),
        (torch.rand(1, 3, 64, 64), None, r"\[B, 1, H, W\]"),
        (torch.randint(0, 255, (1, 1, 64, 64)), None, "floating point"),
        (torch.rand(1, 1, 64, 64), torch.zeros(1, 600, dtype=torch.long), "max_seq_len=512"),
        (torch.rand(2, 1, 64, 64), torch.zeros(1, 5, dtype=torch.long), r"\[B=2, T\]"),
    ],
)
def test_bad_inputs_raise_clear_value_errors(images, ids, match) -> None:
    model = make()
    ids = torch.zeros(images.shape[0], 3, dtype=torch.long) if ids is None else ids
    with pytest.raises(ValueError, match=match):
        model(images, ids)


def test_oversize_image_is_refused_by_generate_too() -> None:
    with pytest.raises(ValueError, match="larger than"):
        make().generate(torch.rand(1, 1, 513, 64), max_len=4)


@pytest.mark.parametrize(("sizes", "match"), [([[65, 10]], "within"), ([[0, 10]], "within"), ([[10, 10], [1, 1]], r"\[B=1, 2\]")])
def test_bad_image_sizes_are_named(sizes, match) -> None:
    with pytest.raises(ValueError, match=match):
        make()(torch.rand(1, 1, 64, 64), torch.zeros(1, 2, dtype=torch.long), torch.tensor(sizes))


# ------------------------------------------------------------------ decoding
def _model_with_varied_endings(images: torch.Tensor, max_len: int) -> SMTModel:
    """A float64 debug model whose <eos> bias is chosen so rows stop at different steps
    (a random model otherwise never or always emits <eos> first)."""
    model = make(vocab_size=40).double().eval()
    with torch.no_grad():
        model.head.weight *= 30                 # spread the rows' logits apart
        for bias in torch.linspace(-3, 3, 25):
            model.head.bias[model.config.eos_id] = bias
            lengths = {len(r) for r in model.generate_uncached(images, max_len)}
            if len(lengths) >= 2 and min(lengths) < max_len:
                return model
    raise AssertionError("no <eos> bias gave rows of different lengths")


@pytest.mark.timeout(120)
def test_cached_generate_equals_uncached_with_rows_ending_at_different_times() -> None:
    torch.manual_seed(1)
    images = torch.rand(5, 1, 64, 256, dtype=torch.float64) ** torch.arange(1, 6).view(5, 1, 1, 1) * 3
    max_len = 24
    model = _model_with_varied_endings(images, max_len)
    reference = model.generate_uncached(images, max_len)
    assert len({len(r) for r in reference}) >= 2
    for batch_size in (1, 2, 5):
        cached = []
        for start in range(0, 5, batch_size):
            cached += model.generate(images[start:start + batch_size], max_len)
        assert cached == reference, f"batch size {batch_size}"


def test_generate_float32_matches_uncached_and_respects_limits() -> None:
    model = make(vocab_size=60, seed=3)
    model.train()
    images = torch.rand(3, 1, 48, 160)
    out = model.generate(images, max_len=15)
    assert model.training                                   # mode restored
    assert out == model.generate_uncached(images, max_len=15)
    for row in out:                                          # <eos> ends a row and is not returned
        assert len(row) <= 15 and model.config.eos_id not in row
    with pytest.raises(ValueError, match="max_len"):
        model.generate(images, max_len=model.config.max_seq_len)


# ------------------------------------------------------------------ size model
@pytest.mark.parametrize(
    ("preset", "b", "h", "w", "t", "padded"),
    [("debug", 2, 128, 512, 40, True), ("debug", 1, 100, 500, 33, False),
     ("small", 1, 128, 256, 30, True), ("paper", 2, 64, 256, 20, True)],
)
def test_activation_count_matches_what_autograd_saves(preset, b, h, w, t, padded) -> None:
    """The analytic activation count equals the bytes autograd keeps for backward (distinct
    storages, parameters excluded) plus the returned logits, within 1%."""
    model = make(preset).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    images = torch.rand(b, 1, h, w)
    ids = torch.randint(3, model.config.vocab_size, (b, t))
    sizes = torch.tensor([[h - 7, w - 40]] * b) if padded else None
    saved: dict[int, int] = {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        storage = x.untyped_storage()
        if storage.data_ptr() not in params:
            saved.setdefault(storage.data_ptr(), storage.nbytes())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        logits = model(images, ids, sizes)
        model.loss(logits, ids)
    measured = sum(saved.values()) + logits.untyped_storage().nbytes()
    predicted, _ = _activation_bytes(model.config, b, h, w, t, 4)
    assert predicted == pytest.approx(measured, rel=0.01)


@pytest.mark.parametrize(("preset", "b", "h", "w", "t"), [("debug", 2, 128, 512, 40), ("small", 1, 64, 256, 24)])
def test_flop_estimate_matches_torch_flop_counter(preset, b, h, w, t) -> None:
    """Forward FLOPs counted by torch (math attention, so attention matmuls are visible) are a
    third of the estimated training-step FLOPs; causal attention costs half in the estimate."""
    model = make(preset).eval()
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        model(torch.rand(b, 1, h, w), torch.randint(3, model.config.vocab_size, (b, t)))
    assert model.estimate_flops(b, h, w, t) / 3 == pytest.approx(counter.get_total_flops(), rel=0.03)
    assert model.estimate_flops(2 * b, h, w, t) == 2 * model.estimate_flops(b, h, w, t)


def test_memory_estimate_parts_and_precisions() -> None:
    config = SMTConfig.preset("paper")
    fp32 = estimate_memory(config, 2, 256, 1024, 512, "32")
    n = count_params(config)
    assert (fp32.weights_bytes, fp32.gradients_bytes, fp32.optimizer_bytes) == (4 * n, 4 * n, 8 * n)
    assert fp32.total_bytes == (fp32.weights_bytes + fp32.gradients_bytes + fp32.optimizer_bytes
                                + fp32.activations_bytes)
    mixed = estimate_memory(config, 2, 256, 1024, 512, "16-mixed")
    assert mixed.activations_bytes == pytest.approx(fp32.activations_bytes / 2, rel=0.05)
    assert mixed.weights_bytes == 6 * n                      # fp32 master + fp16 autocast copy
    one = estimate_memory(config, 1, 256, 1024, 512)
    assert fp32.activations_bytes == pytest.approx(2 * one.activations_bytes, rel=0.01)
    assert estimate_memory(config, 1, 512, 1024, 512).activations_bytes > 1.8 * one.activations_bytes
    with pytest.raises(ValueError, match="precision"):
        estimate_memory(config, 1, 64, 64, 8, "fp8")
    with pytest.raises(ValueError, match="exceeds"):
        estimate_memory(config, 1, 4000, 64, 8)
    with pytest.raises(ValueError, match="batch_size"):
        estimate_memory(config, 0, 64, 64, 8)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_memory_estimate_within_25_percent_of_measured_cpu_step_rss() -> None:
    """One steady-state CPU training step (forward + backward + Adam) of the small preset at a
    system-sized image, batch 2, in a fresh process: peak RSS growth over the process before
    the model existed vs `estimate_memory(...).total_bytes`."""
    from autotune.measure import reset_peak_rss
    from smt.measure_step import measure_in_subprocess

    if not reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs: peak RSS cannot be reset here")
    result = measure_in_subprocess("small", batch_size=2, height=256, width=1024, seq_len=256, threads=1)
    assert result.peak_rss_growth_bytes is not None
    ratio = result.estimated_total_bytes / result.peak_rss_growth_bytes
    print(f"estimate {result.estimated_total_bytes / 2**20:.0f} MiB, measured "
          f"{result.peak_rss_growth_bytes / 2**20:.0f} MiB, ratio {ratio:.2f}")
    assert 0.75 <= ratio <= 1.25
