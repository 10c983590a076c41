"""smt.model.greedy: the fast decoding path gives the tokens of the uncached loop (the
reference's way: the whole decoder re-run over the prefix for every token) on several images,
batch sizes and rows stopping at <eos> at different steps; its caches have the shapes and
dtypes the step writes (bf16 under autocast); a failing torch.compile falls back to eager."""
from __future__ import annotations

import pytest
import torch
from test_model import _model_with_varied_endings, make

from smt.model import greedy
from smt.model.greedy import DecodeCache


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: a second OpenMP thread mostly spins against other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _padded(sizes: list[tuple[int, int]], dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of different sizes padded white into one batch, with their sizes, and content
    that differs in brightness so a rigged model ends the rows at different steps."""
    torch.manual_seed(seed)
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    batch = torch.ones(len(sizes), 1, h, w, dtype=dtype)
    for i, (ih, iw) in enumerate(sizes):
        batch[i, :, :ih, :iw] = torch.rand(1, ih, iw, dtype=dtype) ** (len(sizes) - i) * 3
    return batch, torch.tensor(sizes)


CASES = [  # dtype, image sizes (h, w), batch sizes to split them into
    (torch.float64, [(64, 256)] * 4, (1, 4)),
    (torch.float32, [(64, 256)] * 6, (1, 2, 6)),
    (torch.float32, [(48, 160), (64, 256), (30, 100), (64, 200), (40, 256)], (1, 3, 5)),
    (torch.float64, [(64, 64), (20, 90), (64, 128)], (1, 3)),
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("dtype", "sizes", "batches"), CASES)
def test_tokens_equal_the_uncached_loop_with_rows_stopping_at_different_steps(dtype, sizes, batches) -> None:
    images, image_sizes = _padded(sizes, dtype, seed=len(sizes))
    max_len = 20
    model = _model_with_varied_endings(images.double(), max_len).to(dtype)   # <eos> reachable
    reference = model.generate_uncached(images, max_len, image_sizes)
    assert len({len(r) for r in reference}) >= 2                # rows stop at different steps
    for batch in batches:
        fast: list[list[int]] = []
        for start in range(0, len(sizes), batch):
            fast += model.generate(images[start:start + batch], max_len, image_sizes[start:start + batch])
        assert fast == reference, f"batch {batch}"


def test_rows_end_at_eos_and_the_rest_run_to_max_len() -> None:
    images, sizes = _padded([(64, 256)] * 5, torch.float64, seed=5)
    model = _model_with_varied_endings(images, 24)
    out = model.generate(images, 24, sizes)
    eos = model.config.eos_id
    assert all(eos not in row and len(row) <= 24 for row in out)
    assert len({len(row) for row in out}) >= 2                # rows really stopped at different steps


@pytest.mark.parametrize(("autocast", "dtype"), [(False, torch.float32), (True, torch.bfloat16)])
def test_cache_shapes_and_dtypes(autocast: bool, dtype: torch.dtype) -> None:
    model = make().eval()
    cfg = model.config
    images, sizes = _padded([(64, 256), (48, 200), (64, 128)], torch.float32, seed=0)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        memory = model.encode(images, sizes)
        cache = DecodeCache.start(model.layers, memory.keys, memory.values, memory.mask, 9)
        out = model.generate(images, 9, sizes)
    head_dim = cfg.d_model // cfg.n_heads
    cells = memory.keys.shape[1]
    assert cache.self_kv.shape == (cfg.n_layers, 2, 3, cfg.n_heads, 9, head_dim)
    assert cache.cross_k.shape == cache.cross_v.shape == (cfg.n_layers, 3, cfg.n_heads, cells, head_dim)
    assert {cache.self_kv.dtype, cache.cross_k.dtype, cache.cross_v.dtype} == {dtype}
    assert cache.mask is not None and cache.mask.shape == (3, 1, 1, cells) and cache.live == 3
    assert len(out) == 3 and all(len(row) <= 9 for row in out)


def test_compaction_moves_the_kept_rows_to_the_front() -> None:
    model = make().eval()
    images, sizes = _padded([(64, 256), (48, 200), (64, 128), (32, 64)], torch.float32, seed=1)
    with torch.inference_mode():
        memory = model.encode(images, sizes)
        cache = DecodeCache.start(model.layers, memory.keys, memory.values, memory.mask, 6)
        cache.self_kv.copy_(torch.randn_like(cache.self_kv))
        before_kv, before_k = cache.self_kv.clone(), cache.cross_k.clone()
        cache.keep(torch.tensor([1, 3]), filled=4)
    assert cache.live == 2
    torch.testing.assert_close(cache.self_kv[:, :, :2, :, :4], before_kv[:, :, [1, 3], :, :4], rtol=0, atol=0)
    torch.testing.assert_close(cache.cross_k[:, :2], before_k[:, [1, 3]], rtol=0, atol=0)
    torch.testing.assert_close(cache.mask, memory.mask[[1, 3]])


@pytest.mark.parametrize("fails_at", ["compile", "first call"])
def test_a_failing_compile_falls_back_to_eager(monkeypatch, fails_at: str) -> None:
    def broken_compile(fn, **_):
        if fails_at == "compile":
            raise RuntimeError("no compiler here")

        def run(*args, **kwargs):
            raise RuntimeError("compiled step failed")
        return run
    model = make(vocab_size=50, seed=2).eval()
    images = torch.rand(2, 1, 48, 160)
    expected = model.generate(images, 12)
    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(greedy, "COMPILED_STEP", greedy.CompiledStep())
    assert model.generate(images, 12, compile=True) == expected
    assert greedy.COMPILED_STEP.failed                   # and later calls go straight to eager
    assert model.generate(images[:1], 12, compile=True) == expected[:1]


def _bench(name: str):
    """A bench script as a module (bench/ is not a package; gpu_check imports bench_decode
    from its own folder)."""
    import importlib.util
    import sys
    from pathlib import Path
    folder = Path(__file__).resolve().parents[2] / "bench"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(folder))


def test_bench_cells_agree_and_flag_a_differing_cell(monkeypatch) -> None:
    """The cells bench_decode and gpu_check's decoding section time: every method's tokens
    agree with the uncached loop's, the table has a row per batch, and a cell whose tokens
    differ is named."""
    bench = _bench("bench_decode")
    monkeypatch.setattr(greedy, "COMPILED_STEP", greedy.CompiledStep())
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)          # compile = eager here
    model = make(vocab_size=50, seed=4).eval()
    with torch.inference_mode():
        memory = model.encode(torch.rand(3, 1, 48, 160))
    methods = {"ours": [6, 9], "ours compiled": [6], "uncached": [6]}
    best, tokens = bench.time_cells(model, memory, [1, 3], [6, 9], methods, repeats=1)
    assert set(best) == {(m, b, n) for m, at in methods.items() for n in at for b in (1, 3)}
    assert bench.differing(tokens) == []
    assert bench.decode_table(best, [1, 3], [6, 9], "t").row_count == 4
    tokens[("ours compiled", 3, 6)][2][-1] += 1          # against the uncached loop
    tokens[("ours", 3, 9)][0][-1] += 1                   # against ours at batch 1
    assert sorted(bench.differing(tokens)) == [("ours", 3, 9), ("ours compiled", 3, 6)]


def test_gpu_check_has_its_decoding_section() -> None:
    gpu_check = _bench("gpu_check")
    assert gpu_check.DECODE_BATCHES == (1, 16, 64)
    assert callable(gpu_check.decode_section)


def test_gpu_check_asks_that_the_loop_was_timed_on_the_gpu(tmp_path) -> None:
    """gpu_check's loop goal, on the recorded CPU profile (its loop cells ran on the CPU: not
    met) and on the same profile as if probed on CUDA (met)."""
    import json
    from pathlib import Path

    from autotune.profile import load_profile
    gpu_check = _bench("gpu_check")
    recorded = Path(__file__).resolve().parents[1] / "autotune" / "fixtures" / \
        "profile-recorded-cpu-debug.json"
    profile = load_profile(recorded)
    assert profile.measurements.loop_trials and not gpu_check.loop_timed_on_cuda(profile)
    data = json.loads(recorded.read_text())
    for trial in data["measurements"]["loop"]["trials"]:
        trial["device"] = "cuda:0"
    moved = tmp_path / "on-cuda.json"
    moved.write_text(json.dumps(data))
    assert gpu_check.loop_timed_on_cuda(load_profile(moved))
