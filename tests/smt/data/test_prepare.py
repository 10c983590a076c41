"""Preparation: output contract, cache reuse, skip-and-count of bad rows, clear run-level errors."""
from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

import smt.data.prepare as prep
from autotune.errors import UserError, run_cli
from smt.data.__main__ import main
from smt.data.prepare import PrepareConfig, map_function, output_features, prepare
from smt.data.sources import load_source
from smt.tokenizer import Vocab, tokenize

FAST = dict(isolate=False)      # in-process map: the child-process path has its own tests


def _image_folder(raw_dir: Path, dest: Path, n: int = 6) -> list[str]:
    """Write `n` rows of the raw fixture as an image folder; returns the stems."""
    dest.mkdir(parents=True, exist_ok=True)
    train = datasets.load_from_disk(str(raw_dir))["train"]
    stems = []
    for i in range(n):
        row = train[i]
        row["image"].save(dest / f"r{i}.png")
        (dest / f"r{i}.krn").write_text(row["transcription"])
        stems.append(f"r{i}")
    return stems


def test_prepared_rows_follow_the_contract(synth_raw_dir, tmp_path) -> None:
    out = tmp_path / "out"
    res = prepare(synth_raw_dir, PrepareConfig(reduce_ratio=0.5, **FAST), out=out, quiet=True)
    raw = datasets.load_from_disk(str(synth_raw_dir))
    dd = datasets.load_from_disk(str(out))
    assert set(dd) == {"train", "val", "test"}
    assert isinstance(dd["train"].features["image"], datasets.Image)
    assert dd["train"].column_names == ["image", "transcription"]
    for i in range(3):
        src, got = raw["train"][i]["image"], dd["train"][i]["image"]
        assert got.mode == "L"
        assert abs(got.width - src.width * 0.5) <= 1 and abs(got.height - src.height * 0.5) <= 1
    # Stored as encoded PNG bytes, never as pixel lists.
    stored = dd["train"].with_format("arrow")[0:1].column("image").to_pylist()[0]
    assert stored["bytes"][:8] == b"\x89PNG\r\n\x1a\n"
    vocab = Vocab.load(out / "vocab.json")
    assert vocab.fmt == "bekern" and Path(res.vocab_path).is_file()
    for text in dd["train"]["transcription"]:
        vocab.encode(tokenize(text, "bekern"))
    meta = json.loads((Path(res.cache_dir) / "meta.json").read_text())
    assert meta["creator"] == "smt-autotune" and meta["complete"] is True
    assert meta["params"]["reduce_ratio"] == 0.5 and meta["source"] == str(synth_raw_dir)
    assert res.rows_kept == {"train": 16, "val": 4, "test": 4} and not res.skipped


def test_second_identical_call_reuses_the_cache(synth_raw_dir) -> None:
    first = prepare(synth_raw_dir, PrepareConfig(**FAST), quiet=True)
    second = prepare(synth_raw_dir, PrepareConfig(num_proc=2, writer_batch_size=7, **FAST),
                     quiet=True)
    assert not first.cached and second.cached
    assert second.cache_dir == first.cache_dir
    assert "reusing cached preparation" in second.summary()
    assert second.dataset["train"]["transcription"] == first.dataset["train"]["transcription"]
    other = prepare(synth_raw_dir, PrepareConfig(reduce_ratio=0.25, **FAST), quiet=True)
    assert other.cache_dir != first.cache_dir and not other.cached


def test_map_function_for_autotune_returns_encoded_images(synth_raw_dir) -> None:
    raw = load_source(synth_raw_dir)
    fn, kw = map_function(0.5, "bekern")
    out = raw["train"].select(range(4)).map(fn, fn_kwargs=kw, features=output_features(),
                                            num_proc=2, writer_batch_size=2)
    assert out.features["image"] == datasets.Image()
    assert all(s == "" for s in out["skip"])
    assert out[0]["image"].mode == "L"


def _bad_rows_folder(raw_dir: Path, root: Path) -> Path:
    folder = root / "imgs"
    _image_folder(raw_dir, folder, n=4)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (folder / "corrupt.krn").write_text("**kern\n4c\n*-")
    (folder / "zero.png").write_bytes(b"")
    (folder / "zero.krn").write_text("**kern\n4c\n*-")
    good = (folder / "r0.png").read_bytes()
    for stem, text in {"empty": "  \n", "notkern": "hello world\nthis is prose",
                       "long": "**kern\n" + "4c\n" * 400 + "*-",
                       "binary": "**kern\n4c\x00\x01\n*-"}.items():
        (folder / f"{stem}.png").write_bytes(good)
        (folder / f"{stem}.krn").write_text(text)
    (folder / "notext.png").write_bytes(good)            # no transcription file at all
    return folder


def test_bad_rows_are_skipped_and_counted(synth_raw_dir, tmp_path, capsys) -> None:
    folder = _bad_rows_folder(synth_raw_dir, tmp_path)
    # Splits cut from one folder are random: put everything in train to count exactly.
    for name in ("val", "test"):
        (folder / name).mkdir()
        _image_folder(synth_raw_dir, folder / name, n=1)
    res = prepare(folder, PrepareConfig(max_tokens=300, **FAST), quiet=True)
    assert res.skipped == {prep.R_IMAGE: 2, prep.R_EMPTY: 1, prep.R_NOT_KERN: 1, prep.R_LONG: 1,
                           prep.R_TOKENS: 1, prep.R_NO_TEXT: 1}
    assert res.rows_kept == {"train": 4, "val": 1, "test": 1}
    assert res.rows_in == 13
    assert all(ex.startswith("train[") for exs in res.skipped_examples.values() for ex in exs)
    text = res.summary()
    assert "skipped 7" in text and "undecodable image: 2" in text


def test_cli_prepare_prints_rates_and_counts(synth_raw_dir, tmp_path, capsys) -> None:
    out = tmp_path / "p"
    code = main(["prepare", "--data", str(synth_raw_dir), "--reduce-ratio", "0.5", "--num-proc",
                 "1", "--writer-batch-size", "8", "--format", "ekern", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "rows/s" in printed and "kept 24 of 24" in printed and "skipped 0" in printed
    assert Vocab.load(out / "vocab.json").fmt == "ekern"
    assert main(["prepare", "--data", str(synth_raw_dir), "--format", "ekern"]) == 0
    assert "reusing cached preparation" in capsys.readouterr().out


def _missing_columns(tmp: Path) -> str:
    datasets.Dataset.from_dict({"img": [b"x"], "text": ["**kern"]}).save_to_disk(str(tmp / "d"))
    return str(tmp / "d")


@pytest.mark.parametrize("make_source,message", [
    (lambda tmp: str(tmp / "does" / "not" / "exist"), "no such file or folder"),
    (lambda tmp: "someone/some-dataset", "cannot reach the hub; pass a local path"),
    (_missing_columns, "lacks column(s) image, transcription; it has: img, text"),
    (lambda tmp: (tmp / "empty").mkdir() or str(tmp / "empty"), "no images"),
])
def test_run_level_errors_are_one_line(make_source, message, tmp_path, capsys, monkeypatch) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; set the flag itself so the hub
    # case fails at once, as on a machine without network, instead of retrying for 20 s.
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    src = make_source(tmp_path)
    capsys.readouterr()                                     # drop the fixture's own output
    code = run_cli(main, ["prepare", "--data", src], prog="python -m smt.data")
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and src in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_debug_flag_shows_the_traceback(tmp_path, capsys) -> None:
    code = run_cli(main, ["--debug", "prepare", "--data", str(tmp_path / "nope")], prog="x")
    assert code == 2 and "Traceback" in capsys.readouterr().err


def test_full_disk_is_refused_before_the_map(synth_raw_dir, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(prep, "disk_free_bytes", lambda path: 10_000)
    monkeypatch.setattr(prep, "_run_shard", lambda *a, **k: calls.append(a))
    with pytest.raises(UserError, match=r"not enough disk for the prepared cache .* need about"):
        prepare(synth_raw_dir, PrepareConfig(**FAST), quiet=True)
    assert calls == []


@pytest.mark.parametrize("field,value", [("reduce_ratio", 0.0), ("reduce_ratio", 1.5),
                                         ("num_proc", 0), ("writer_batch_size", -1),
                                         ("fmt", "midi"), ("max_tokens", 0),
                                         ("stall_timeout_s", -5)])
def test_config_validation_names_the_field(field, value) -> None:
    with pytest.raises(ValueError, match=field):
        PrepareConfig(**{field: value})


def test_transparent_images_become_white_paper() -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)                 # fully transparent black
    rgba[4:6, 4:6] = (0, 0, 0, 255)                         # a dot of opaque ink
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    gray = prep.decode_gray({"bytes": buf.getvalue(), "path": None})
    assert gray[0, 0] == 255 and gray[5, 5] == 0


@pytest.mark.parametrize("argv, warned", [(["--ram-budget", "3GiB"], False),
                                          (["--ram-budget-gb", "3"], True)])
def test_ram_budget_is_one_size_flag_and_the_old_spelling_warns(
        argv, warned, monkeypatch, capsys) -> None:
    """Issue 13 item 10: `--ram-budget SIZE` as autotune spells it; `--ram-budget-gb` warns."""
    seen = {}

    def fake_prepare(data, cfg, **kw):
        seen["bytes"] = cfg.ram_budget_bytes
        raise UserError("stop here")
    monkeypatch.setattr(prep, "prepare", fake_prepare)
    assert run_cli(main, ["prepare", *argv], prog="python -m smt.data") == 2
    assert seen["bytes"] == 3 * 2**30
    err = capsys.readouterr().err
    assert ("--ram-budget-gb is deprecated; use --ram-budget 3GiB" in err) == warned


def test_num_proc_above_the_usable_cpus_is_capped_with_a_warning(synth_raw_dir, capsys) -> None:
    """Issue 13 item 8: a --num-proc the machine cannot run is capped, not obeyed."""
    from autotune.hardware import usable_cpus
    cpus = max(1, int(usable_cpus()))
    capsys.readouterr()
    assert run_cli(main, ["prepare", "--data", str(synth_raw_dir), "--num-proc", str(cpus + 7)],
                   prog="python -m smt.data") == 0
    captured = capsys.readouterr()
    assert f"--num-proc {cpus + 7} is more than the {cpus} usable CPU(s) here; using {cpus}" \
        in captured.err
    assert f"num_proc {cpus}," in captured.out
