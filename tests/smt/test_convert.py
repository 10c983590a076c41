"""smt.convert: a reference-format checkpoint (made here: its key names and shapes, random
weights) becomes ours, computes what the reference computes, and bad folders are one line."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autotune.errors import UserError, run_cli
from reference_fixture import (HEADS, hand_table_1d, hand_table_2d, reference_logits, vocabulary,
                               write_reference_folder)
from smt import checkpoint as ck
from smt.config import SMTConfig
from smt.convert import ImageConvention, convert
from smt.convert.__main__ import main as convert_main
from smt.convert.keys import LAYOUTS
from smt.model import SMTModel
from smt.model.positional import reference_1d, reference_2d, sincos_1d, sincos_2d
from smt.tokenizer import Vocab

LAYOUT_HEADS = {"smt": HEADS, "smt++": 4}


def _load(out: Path) -> SMTModel:
    model = SMTModel(SMTConfig.load(out / "config.json"))
    state = ck.load_checkpoint(out / "model.ckpt")["state_dict"]
    model.load_state_dict({k[len("model."):]: v for k, v in state.items()})
    return model.eval()


def _source_of(key: str, layout: str) -> str | None:
    for pattern, target in LAYOUTS[layout]:
        m = pattern.fullmatch(key)
        if m:
            return target(m)
    raise AssertionError(key)


# ---------------------------------------------------------------- positional tables
def test_reference_tables_equal_the_hand_computed_formula() -> None:
    assert torch.allclose(reference_1d(7, 8).double(), hand_table_1d(7, 8), atol=1e-6)
    # [H * W, d] row-major against [d, H, W]
    hand = hand_table_2d(3, 5, 8).flatten(1).T
    assert torch.allclose(reference_2d(3, 5, 8).double(), hand, atol=1e-6)
    # and bit-identical to the reference's float32 evaluation at a long position
    assert reference_1d(1512, 256)[1500, 0].item() == torch.sin(torch.tensor(1500.0)).item()


def test_our_tables_equal_their_hand_computed_formula() -> None:
    import math
    dim, length = 8, 6
    hand = torch.zeros(length, dim, dtype=torch.float64)
    for p in range(length):
        for i in range(dim // 2):                    # sines block, then cosines block
            f = 10000.0 ** (-2 * i / dim)
            hand[p, i], hand[p, dim // 2 + i] = math.sin(p * f), math.cos(p * f)
    assert torch.allclose(sincos_1d(length, dim).double(), hand, atol=1e-6)
    grid = sincos_2d(2, 3, 16)
    assert torch.allclose(grid[1 * 3 + 2, :8], sincos_1d(2, 8)[1])      # row half from row 1
    assert torch.allclose(grid[1 * 3 + 2, 8:], sincos_1d(3, 8)[2])      # column half from column 2
    assert not torch.allclose(sincos_1d(length, dim), reference_1d(length, dim))


@pytest.mark.parametrize("positional", ["ours", "reference"])
def test_both_tables_decode_consistently(positional: str) -> None:
    torch.manual_seed(0)
    model = SMTModel(SMTConfig.preset("debug", vocab_size=20, positional=positional,
                                      grid_rounding="floor", max_seq_len=16)).eval()
    images = torch.rand(2, 1, 40, 72)
    sizes = torch.tensor([[40, 72], [33, 50]])
    assert model.generate(images, 12, sizes) == model.generate_uncached(images, 12, sizes)


# ---------------------------------------------------------------- conversion
@pytest.mark.parametrize(("layout", "weights"), [("smt", "safetensors"), ("smt++", "bin")])
def test_conversion_maps_every_parameter_and_computes_what_the_reference_does(
        tmp_path: Path, layout: str, weights: str) -> None:
    src = tmp_path / "smt-camera-grandstaff"
    state = write_reference_folder(src, layout, weights)
    result = convert(str(src), tmp_path / "out")
    assert result.layout == layout and result.dataset == "camera-grandstaff"
    assert result.dropped_keys == ["encoder.layernorm.bias", "encoder.layernorm.weight"]
    model = _load(tmp_path / "out")
    ours = model.state_dict()
    landed = 0
    for key, tensor in state.items():
        target = _source_of(key, layout)
        if target is not None:
            assert torch.equal(ours[target], tensor.reshape(ours[target].shape)), key
            landed += 1
    assert landed == len(ours)                          # every parameter of ours came from one key
    # ids kept exactly, specials wherever the reference put them
    vocab = Vocab.load(tmp_path / "out" / "vocab.json")
    assert {t: i for i, t in enumerate(vocab.tokens)} == vocabulary()
    assert (model.config.pad_id, model.config.bos_id, model.config.eos_id) == (
        vocab.pad_id, vocab.bos_id, vocab.eos_id)
    assert model.config.positional == "reference"
    # the reference's forward pass, on an image whose sides are not multiples of 16
    image = torch.rand(1, 1, 70, 100)
    tokens = torch.tensor([[vocab.bos_id, 3, 5, 7, 11]])
    with torch.no_grad():
        expected = reference_logits(state, image, tokens, layout, LAYOUT_HEADS[layout])
        assert torch.allclose(model(image, tokens), expected, atol=1e-4)
        # with our tables instead, the converted weights compute something else
        other = SMTModel(model.config.replace(positional="ours")).eval()
        other.load_state_dict(model.state_dict())
        assert not torch.allclose(other(image, tokens), expected, atol=1e-2)
    reference = json.loads((tmp_path / "out" / "reference.json").read_text())
    assert reference["image"] == {"reduce_ratio": 0.85, "min_height_px": 256, "max_width_px": 3056,
                                  "resize": "ceil"}
    assert reference["fmt"] == "ref-system"


def test_cli_converts_and_predict_runs_on_the_result(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from smt.predict import Predictor, main as predict_main

    write_reference_folder(tmp_path / "ref")
    assert run_cli(convert_main, [str(tmp_path / "ref"), "--out", str(tmp_path / "out"),
                                  "--dataset", "grandstaff"]) == 0
    assert "parameters mapped" in capsys.readouterr().out
    image = tmp_path / "system.png"
    Image.fromarray((np.random.default_rng(0).random((120, 300)) * 255).astype(np.uint8)).save(image)
    assert run_cli(predict_main, ["--checkpoint", str(tmp_path / "out"), str(image),
                                  "--max-len", "8", "--device", "cpu"]) == 0
    predictor = Predictor.from_checkpoint(tmp_path / "out", device="cpu")
    assert predictor.fmt == "ref-system"
    assert tuple(predictor.load_image(image).shape) == (1, 256, 300)    # stretched to 256 px high


def test_image_conventions_resize_as_the_reference() -> None:
    system = ImageConvention(0.5, 256, 3056, "ceil")
    assert system.target_size(3000, 100) == (1500, 128)      # height raised to 256 first
    assert system.target_size(4001, 301) == (1528, 151)      # width cut to 3056, ceil(150.5)
    assert ImageConvention(0.5, None, None, "ceil").target_size(4001, 301) == (2001, 151)
    assert ImageConvention(0.5).target_size(4001, 301) == (2000, 150)      # ours: rounded


# ---------------------------------------------------------------- bad folders
class _RunsCode:
    def __reduce__(self):  # a pickle that would call a function when loaded
        return (Path.touch, (self.marker,))

    marker = Path("/nonexistent")


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert run_cli(convert_main, argv, prog="smt.convert") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("smt.convert: error:")
    return err


def test_bad_folders_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--out", str(tmp_path / "out"), "--dataset", "fp-grandstaff"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no config.json" in _one_line_error(capsys, [str(empty), *base])

    shapes = tmp_path / "shapes"
    state = write_reference_folder(shapes, "smt", "bin")
    state["decoder.decoder.layers.1.ffn.0.weight"] = torch.zeros(7, 32)
    torch.save(state, shapes / "pytorch_model.bin")
    err = _one_line_error(capsys, [str(shapes), *base])
    assert "decoder.decoder.layers.1.ffn.0.weight" in err and "[7, 32]" in err

    unknown = tmp_path / "unknown"
    state = write_reference_folder(unknown, "smt", "bin")
    state["decoder.adapter.weight"] = torch.zeros(3)
    torch.save(state, unknown / "pytorch_model.bin")
    assert "'decoder.adapter.weight'" in _one_line_error(capsys, [str(unknown), *base])

    missing = tmp_path / "missing"
    state = write_reference_folder(missing, "smt", "bin")
    del state["decoder.vocab_projection.bias"]
    torch.save(state, missing / "pytorch_model.bin")
    assert "'head.bias'" in _one_line_error(capsys, [str(missing), *base])

    hostile = tmp_path / "hostile"
    write_reference_folder(hostile, "smt", "bin")
    _RunsCode.marker = tmp_path / "code-ran"
    (hostile / "pytorch_model.bin").write_bytes(pickle.dumps({"x": _RunsCode()}))
    assert "plain tensors" in _one_line_error(capsys, [str(hostile), *base])
    assert not _RunsCode.marker.exists()

    vocab_mismatch = tmp_path / "i2w"
    write_reference_folder(vocab_mismatch, "smt", "bin")
    config = json.loads((vocab_mismatch / "config.json").read_text())
    config["i2w"]["1"] = "<nonsense>"
    (vocab_mismatch / "config.json").write_text(json.dumps(config))
    assert "i2w['1']" in _one_line_error(capsys, [str(vocab_mismatch), *base])

    assert "--dataset" in _one_line_error(capsys, [str(hostile), "--out", str(tmp_path / "o")])
    assert "not a hub model id" in _one_line_error(capsys, ["no/such/path", *base])


def test_an_existing_conversion_is_not_overwritten(tmp_path: Path) -> None:
    write_reference_folder(tmp_path / "ref")
    convert(str(tmp_path / "ref"), tmp_path / "out", dataset="grandstaff")
    with pytest.raises(UserError, match="--force"):
        convert(str(tmp_path / "ref"), tmp_path / "out", dataset="grandstaff")
    convert(str(tmp_path / "ref"), tmp_path / "out", dataset="grandstaff", force=True)


# ---------------------------------------------------------------- fine-tuning from it
def test_extend_vocab_keeps_every_id_and_row() -> None:
    from smt.convert.finetune import grow_rows

    state = {"embedding.weight": torch.randn(5, 4), "head.weight": torch.randn(5, 4),
             "head.bias": torch.randn(5)}
    grown = grow_rows(state, 8)
    assert torch.equal(grown["embedding.weight"][:5], state["embedding.weight"])
    assert grown["head.weight"].shape == (8, 4) and torch.equal(grown["head.weight"][:5], state["head.weight"])
    assert not grown["head.weight"][5:].any()                 # new rows start silent
    assert torch.equal(grown["head.bias"][5:], state["head.bias"].min().expand(3))
    vocab = Vocab(["x", "<eos>", "<pad>", "<bos>"], "kern", given_ids=True).extended(["b", "a", "x"])
    assert vocab.tokens == ["x", "<eos>", "<pad>", "<bos>", "a", "b"] and vocab.pad_id == 2


def test_the_published_sizes_map_onto_the_paper_preset() -> None:
    from smt.convert.keys import check_complete, map_keys
    from smt.model import count_params
    from reference_fixture import reference_state

    config = SMTConfig.preset("paper", vocab_size=181)
    expected = SMTModel(config).state_dict()
    for layout in ("smt", "smt++"):
        state = reference_state(layout, 181, widths=(64, 128, 256), depths=(3, 3, 9),
                                d_model=256, ff=256, layers=8)
        mapped = map_keys(state, layout, "published")
        check_complete(mapped, expected, "published")
        assert sum(t.numel() for t in mapped.state.values()) == count_params(config)
    assert round(count_params(config) / 1e6, 1) == 10.9


@pytest.mark.timeout(600)
def test_fine_tuning_starts_from_the_converted_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import datasets

    from smt.convert.finetune import apply, fit_to_data, load_init
    from smt.tokenizer import tokenize
    from smt.train import main as train_main
    from tiny_scores import tiny_dataset_dict

    monkeypatch.setenv("SMT_AUTOTUNE_CACHE", str(tmp_path / "cache"))
    write_reference_folder(tmp_path / "ref")
    conv = tmp_path / "conv"
    convert(str(tmp_path / "ref"), conv, dataset="grandstaff")
    # No dropout, so the first training step's loss is the loaded model's loss exactly.
    SMTConfig.load(conv / "config.json").replace(dropout=0.0).save(conv / "config.json")
    data = tiny_dataset_dict(tmp_path / "data", n_train=1, n_val=1, n_test=1)
    # No --format: the run reads the data as the converted model does (ref-system).
    args = ["--data", str(data), "--init-from", str(conv), "--num-workers", "0",
            "--precision", "32-true", "--teacher-noise", "0", "--batch-size", "1", "--max-steps", "1",
            "--lr", "1e-9", "--reduce-ratio", "1.0", "--patience", "0", "--val-batches", "1"]
    capsys.readouterr()
    assert run_cli(train_main, [*args, "--out", str(tmp_path / "refused")], prog="smt.train") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vocabulary lacks" in err and "--extend-vocab" in err

    run = tmp_path / "run"
    assert run_cli(train_main, [*args, "--extend-vocab", "--out", str(run)], prog="smt.train") == 0
    first_loss = json.loads((run / "summary.json").read_text())["train_loss"]
    vocab = Vocab.load(run / "vocab.json")
    assert vocab.tokens[:len(vocabulary())] == Vocab.load(conv / "vocab.json").tokens   # ids kept
    config = SMTConfig.load(run / "config.json")
    assert config.positional == "reference" and config.vocab_size == len(vocab)

    row = datasets.load_from_disk(str(data))["train"][0]
    image = torch.from_numpy(np.asarray(row["image"].convert("L"), dtype=np.float32) / 255.0)[None, None]
    ids = torch.tensor(vocab.encode(tokenize(row["transcription"], "ref-system"), add_special=True))[None]

    def loss_of(model: SMTModel) -> float:
        with torch.no_grad():
            return float(model.eval().loss(model(image, ids[:, :-1]), ids[:, 1:]))

    loaded = SMTModel(config)
    apply(loaded, fit_to_data(load_init(str(conv)), vocab.tokens, "ref-system", True,
                              config.max_height, config.max_width, config.max_seq_len))
    torch.manual_seed(0)
    assert first_loss == pytest.approx(loss_of(loaded), rel=1e-4)
    assert abs(first_loss - loss_of(SMTModel(config))) > 1e-2            # a fresh model's differs
    # and the weights it trained are the converted ones (one step at lr 1e-9 moves nothing)
    trained = ck.load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    converted = ck.load_checkpoint(conv / "model.ckpt")["state_dict"]
    for key, tensor in converted.items():
        if key not in ("model.embedding.weight", "model.head.weight", "model.head.bias"):
            assert torch.allclose(trained[key], tensor, atol=1e-6), key


@pytest.mark.parametrize(("flags", "says"), [
    (["--init-from", "x", "--resume", "auto"], "pass one of them"),
    (["--extend-vocab"], "needs --init-from"),
    (["--init-from", "/no/such/model", "--max-steps", "1"], "no such file or folder"),
])
def test_init_from_flag_mistakes_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str], flags: list[str],
                                              says: str) -> None:
    from smt.train import main as train_main

    monkeypatch.setenv("SMT_AUTOTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    assert run_cli(train_main, ["--data", str(data), *flags, "--out", str(tmp_path / "run")],
                   prog="smt.train") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err


def test_a_hub_id_is_downloaded_through_huggingface_hub(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    snapshot = tmp_path / "hub" / "snapshots" / ("ab" * 20)
    write_reference_folder(snapshot, "smt++")
    calls = []

    def fake_download(repo_id: str, revision: str | None = None, allow_patterns=None) -> str:
        calls.append((repo_id, revision, sorted(allow_patterns)))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    result = convert("someone/smt-grandstaff", tmp_path / "out", revision="v1")
    assert calls == [("someone/smt-grandstaff", "v1",
                      ["config.json", "model.safetensors", "pytorch_model.bin"])]
    assert result.dataset == "grandstaff" and result.layout == "smt++"
    assert json.loads((tmp_path / "out" / "reference.json").read_text())["revision"] == "ab" * 20

    def offline(**_: object) -> str:
        raise OSError("We couldn't connect to the hub.\nCheck your connection.")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UserError, match="^cannot download someone/smt-grandstaff: We couldn't connect"):
        convert("someone/smt-grandstaff", tmp_path / "out2")
