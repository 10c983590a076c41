"""Bad input through the real entry points: exit 2, one line naming the input, a traceback only
with --debug; and nothing from a file, a dataset or the network runs code or gets in.

Items another test already covers (not repeated here): bad rows skipped and counted
(tests/smt/data/test_prepare.py::test_bad_rows_are_skipped_and_counted: corrupt and zero-byte
images, empty / non-kern / untokenisable / over-long / missing transcriptions), missing path,
hub id without network, missing columns, empty folder (test_run_level_errors_are_one_line),
full disk (test_full_disk_is_refused_before_the_map), invalid / truncated / future-schema
profiles (tests/autotune/test_profile.py), a profile from other hardware (tests/autotune/
test_resolve.py), smt.train flags (tests/smt/test_train.py::test_bad_flag_is_one_line_naming_it),
smt.predict corrupt / zero-byte / oversize images and code-running checkpoints
(tests/smt/test_predict.py), storage URL masking (tests/autotune/test_search.py).
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from autotune.errors import run_cli

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "smt"))       # tiny_scores: the training tests' data


def _entry(name: str) -> Callable[[Sequence[str] | None], int]:
    """Each CLI's in-process entry point, wrapped the way its __main__ wraps it."""
    if name == "smt.data":
        from smt.data.__main__ import main
        return lambda argv: run_cli(main, argv, prog="python -m smt.data")
    if name == "autotune":
        from autotune.cli import main as at_main
        return at_main
    if name == "smt.train":
        from smt.train import main as train_main
        return lambda argv: run_cli(train_main, argv, prog="smt.train")
    if name == "smt.predict":
        from smt.predict import main as predict_main
        return lambda argv: run_cli(predict_main, argv, prog="smt.predict")
    raise KeyError(name)


def _one_line_error(capsys: pytest.CaptureFixture[str], cli: str, argv: list[str],
                    *names: str) -> str:
    capsys.readouterr()
    code = _entry(cli)(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in err, err
    return err


# ------------------------------------------------------------------ zero, negative, absurd flags
FLAGS = [
    ("smt.data", ["prepare", "--num-proc", "0"], "--num-proc"),
    ("smt.data", ["prepare", "--num-proc", "100000"], "--num-proc"),
    ("smt.data", ["prepare", "--writer-batch-size", "-3"], "--writer-batch-size"),
    ("smt.data", ["prepare", "--reduce-ratio", "0"], "--reduce-ratio"),
    ("smt.data", ["prepare", "--reduce-ratio", "7"], "--reduce-ratio"),
    ("smt.data", ["prepare", "--reduce-ratio", "nan"], "--reduce-ratio"),
    ("smt.data", ["prepare", "--max-tokens", "0"], "--max-tokens"),
    ("smt.data", ["prepare", "--shard-rows", "0"], "--shard-rows"),
    ("smt.data", ["prepare", "--stall-timeout", "-1"], "--stall-timeout"),
    ("smt.data", ["prepare", "--stall-timeout", "inf"], "--stall-timeout"),
    ("smt.data", ["prepare", "--ram-budget-gb", "0"], "--ram-budget-gb"),
    ("smt.data", ["prepare", "--ram-budget", "0"], "--ram-budget"),
    ("smt.data", ["prepare", "--ram-budget", "lots"], "--ram-budget"),
    ("smt.data", ["prepare", "--format", "midi"], "--format"),
    ("smt.data", ["synth", "--out", "x", "--num-proc", "0"], "--num-proc"),
    ("smt.data", ["synth", "--out", "x", "--count", "-5"], "--count"),
    ("smt.data", ["synth", "--out", "x", "--val", "-1"], "--val"),
    ("autotune", ["probe", "--devices", "0"], "--devices"),
    ("autotune", ["probe", "--devices", "100000"], "--devices"),
    ("autotune", ["probe", "--effective-batch", "-4"], "--effective-batch"),
    ("autotune", ["probe", "--time-budget", "inf"], "--time-budget"),
    ("autotune", ["probe", "--time-budget", "nan"], "--time-budget"),
    ("autotune", ["probe", "--ram-budget", "0"], "--ram-budget"),
    ("autotune", ["probe", "--ram-budget=-3GB"], "--ram-budget"),
    ("autotune", ["probe", "--vram-budget", "lots"], "--vram-budget"),
    ("autotune", ["plan", "--hardware", "x.json", "--devices", "0"], "--devices"),
    ("autotune", ["plan"], "--hardware"),
    ("autotune", ["search", "--trials", "0"], "--trials"),
    ("autotune", ["search", "--trials", "many"], "--trials"),
    ("autotune", ["search", "--steps-per-trial", "-1"], "--steps-per-trial"),
    ("autotune", ["search", "--heartbeat", "0"], "--heartbeat"),
    ("autotune", ["search", "--trial-timeout", "-5"], "--trial-timeout"),
    ("autotune", ["nonsense"], "nonsense"),
    ("smt.predict", ["--checkpoint", "c.ckpt", "x.png", "--batch-size", "0"], "--batch-size"),
    ("smt.predict", ["--checkpoint", "c.ckpt", "x.png", "--batch-size", "1000000"], "--batch-size"),
    ("smt.predict", ["--checkpoint", "c.ckpt", "x.png", "--reduce-ratio", "0"], "--reduce-ratio"),
    ("smt.predict", ["--checkpoint", "c.ckpt", "x.png", "--max-len", "-1"], "--max-len"),
    ("smt.predict", ["x.png"], "--checkpoint"),
    ("smt.train", ["--num-proc", "100000"], "--num-proc"),
    ("smt.train", ["--patience", "-1"], "--patience"),
]


@pytest.mark.parametrize("cli, argv, flag", FLAGS, ids=[" ".join([c, *a]) for c, a, _ in FLAGS])
@pytest.mark.timeout(60)
def test_bad_flag_values_are_one_line_naming_the_flag(cli: str, argv: list[str], flag: str,
                                                      capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    argv = [str(tmp_path / a) if a in ("x", "x.json") else a for a in argv]
    _one_line_error(capsys, cli, argv, flag)


@pytest.mark.parametrize("cli, argv", [
    ("smt.data", ["--debug", "prepare", "--num-proc", "0"]),
    ("autotune", ["probe", "--devices", "0", "--debug"]),
    ("smt.predict", ["--checkpoint", "c.ckpt", "x.png", "--batch-size", "0", "--debug"]),
])
def test_debug_shows_the_traceback_of_a_flag_error(cli: str, argv: list[str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert _entry(cli)(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].count("error:") == 1


# ------------------------------------------------------------------ output paths (issue 13 item 8)


OUT_CASES = [
    ("autotune", ["probe", "--out", "{dir}"], "--out", "is a folder"),
    ("autotune", ["probe", "--out", "{ro}/p.json"], "--out", "cannot write"),
    ("autotune", ["plan", "--hardware", "{spec}", "--out", "{dir}"], "--out", "is a folder"),
    ("autotune", ["plan", "--hardware", "{spec}", "--out", "{ro}/p.json"], "--out", "cannot write"),
    ("autotune", ["show", "{profile}", "--plot", "{file}"], "--plot", "is an existing file"),
    ("autotune", ["show", "{profile}", "--plot", "{ro}/plots"], "--plot", "cannot write"),
    ("autotune", ["search", "--trials", "1", "--save-profile", "{dir}"], "--save-profile",
     "is a folder"),
    ("autotune", ["search", "--trials", "1", "--plot", "{file}"], "--plot", "is an existing file"),
    ("smt.predict", ["--checkpoint", "c.ckpt", "x.png", "--out", "{file}"], "--out",
     "is an existing file"),
    ("smt.predict", ["--checkpoint", "c.ckpt", "x.png", "--out", "{ro}/k"], "--out", "cannot write"),
    ("smt.train", ["--max-steps", "1", "--out", "{file}"], "--out", "is an existing file"),
    ("smt.train", ["--max-steps", "1", "--out", "{ro}/run"], "--out", "cannot write"),
    ("smt.train", ["--data", "{dir}", "--max-steps", "1", "--out", "{dir}/run"], "--out",
     "lies inside the input"),
]


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_a_gpu_only_strategy_on_cpu_is_one_line_before_the_data(
        strategy: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    missing = tmp_path / "no-such-data"        # the data would be an error too: it comes later
    _one_line_error(capsys, "smt.train", ["--strategy", strategy, "--data", str(missing),
                                          "--max-steps", "1", "--out", str(tmp_path / "run")],
                    f"--strategy {strategy}", "CUDA")


@pytest.mark.parametrize("cli, argv, flag, message", OUT_CASES,
                         ids=[" ".join([c, *a]) for c, a, _, _ in OUT_CASES])
@pytest.mark.timeout(60)
def test_an_unusable_output_path_is_one_line_before_any_work(
        cli: str, argv: list[str], flag: str, message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("keep me")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"cpu_count": 4, "ram": "30GB", "gpus": [], "gpu_count": 0}))
    values = {"dir": tmp_path / "dir", "file": tmp_path / "file", "spec": spec,
              "profile": REPO / "tests" / "autotune" / "fixtures" / "profile-synthetic-cpu.json"}
    if any("{ro}" in a for a in argv):
        values["ro"] = request.getfixturevalue("read_only_dir")
    argv = [a.format(**values) for a in argv]
    _one_line_error(capsys, cli, argv, flag, message)
    assert (tmp_path / "file").read_text() == "keep me"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".probe"))]


# ------------------------------------------------------------------ profiles given to training
def _valid_profile() -> dict:
    return json.loads((REPO / "tests" / "autotune" / "fixtures" / "profile-synthetic-cpu.json")
                      .read_text())


def _write_profile(tmp: Path, kind: str) -> Path:
    path = tmp / f"{kind}.json"
    text = json.dumps(_valid_profile(), indent=2)
    if kind == "truncated":
        path.write_text(text[: len(text) // 2])
    elif kind == "future":
        path.write_text(json.dumps({**_valid_profile(), "schema": 99}))
    elif kind == "empty":
        path.write_text("")
    elif kind == "deep":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "gpu-memory":
        data = _valid_profile()
        data["hardware"]["gpus"] = [{"name": "T4", "memory_bytes": "lots", "capability": [7, 5]}]
        path.write_text(json.dumps(data))
    elif kind == "bad-setting":
        data = _valid_profile()
        data["settings"]["batch_size"] = -2
        path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("kind, message", [("truncated", "truncated"), ("future", "schema"),
                                           ("empty", "empty"), ("bad-setting", "batch_size"),
                                           ("deep", "nested too deeply"),
                                           ("gpu-memory", "gpus[0].memory_bytes")])
@pytest.mark.parametrize("cli", ["smt.train", "autotune-show", "autotune-search"])
def test_a_broken_profile_stops_every_cli_in_one_line(cli: str, kind: str, message: str,
                                                      tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    profile = _write_profile(tmp_path, kind)
    argv = {"smt.train": ["--profile", str(profile), "--max-steps", "1",
                          "--out", str(tmp_path / "run")],
            "autotune-show": ["show", str(profile)],
            "autotune-search": ["search", "--from", str(profile), "--trials", "1",
                                "--run-dir", str(tmp_path / "s")]}[cli]
    _one_line_error(capsys, cli.split("-")[0], argv, str(profile), message)
    assert not (tmp_path / "run").exists()       # stopped before any run folder or data work


# ------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a zip at all", b"\x80\x04K\x01."])
@pytest.mark.parametrize("cli", ["smt.train", "smt.predict"])
def test_a_damaged_checkpoint_is_one_line(cli: str, content: bytes, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(content)
    argv = (["--resume", str(tmp_path / "run"), "--max-steps", "5"] if cli == "smt.train"
            else ["--checkpoint", str(ckpt), str(tmp_path / "x.png")])
    _one_line_error(capsys, cli, argv, str(ckpt))


# ------------------------------------------------------------------ data sources through the CLIs
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.mark.timeout(120)
def test_training_on_an_unreachable_hub_id_says_pass_a_local_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch)
    _one_line_error(capsys, "smt.train", ["--data", "someone/scores", "--max-steps", "1",
                                          "--out", str(tmp_path / "run"), "--preset", "debug"],
                    "someone/scores", "cannot reach the hub; pass a local path")


@pytest.mark.timeout(120)
def test_probing_a_missing_path_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch)
    missing = str(tmp_path / "no" / "such" / "scores")
    _one_line_error(capsys, "autotune", ["probe", "--data", missing, "--preset", "debug",
                                         "--out", str(tmp_path / "p.json")],
                    missing, "no such file or folder")
    assert not (tmp_path / "p.json").exists()


@pytest.mark.timeout(120)
def test_a_folder_without_transcription_column_names_the_columns(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import datasets
    src = tmp_path / "d"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"image": [b"x"], "label": ["**kern"]})}).save_to_disk(str(src))
    _one_line_error(capsys, "smt.train", ["--data", str(src), "--max-steps", "1",
                                          "--out", str(tmp_path / "run"), "--preset", "debug"],
                    str(src), "lacks column(s) transcription", "it has: image, label")


# ------------------------------------------------------------------ nobody gets in
class _Payload:
    """Unpickling this runs a command: every reader of our inputs must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_profile_is_rejected_as_json_and_never_unpickled(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    profile = tmp_path / "evil.json"
    profile.write_bytes(pickle.dumps({"schema": 1, "x": _Payload(marker)}))
    _one_line_error(capsys, "autotune", ["show", str(profile)], str(profile))
    _one_line_error(capsys, "smt.train", ["--profile", str(profile), "--max-steps", "1"],
                    str(profile))
    assert not marker.exists()


def test_a_code_running_checkpoint_is_refused_before_anything_else(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Cheap twin of test_predict's trained-run check: a minimal checkpoint, no training."""
    import torch
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "global_step": 3, "extra": _Payload(marker)}, ckpt)
    _one_line_error(capsys, "smt.train", ["--resume", str(tmp_path / "run")], "weights-only")
    _one_line_error(capsys, "smt.predict", ["--checkpoint", str(ckpt), "x.png"], "weights-only")
    assert not marker.exists()


def test_a_dataset_folder_with_a_loading_script_runs_no_code(tmp_path: Path,
                                                             synth_raw_dir: Path) -> None:
    """A folder that carries a dataset script is read as plain files; the script never runs,
    and a hub id is loaded without asking for remote code."""
    import datasets

    from smt.data import sources
    folder = tmp_path / "scores"
    folder.mkdir()
    row = datasets.load_from_disk(str(synth_raw_dir))["train"][0]
    row["image"].save(folder / "a.png")
    (folder / "a.krn").write_text(row["transcription"])
    marker = tmp_path / "pwned"
    (folder / "scores.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    src = sources.open_source(folder)
    assert src.kind == "folder" and len(src.dataset["train"]) == 1
    assert not marker.exists()

    seen: list[dict] = []

    def fake_load_dataset(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(kwargs)
        raise ConnectionError("offline")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets, "load_dataset", fake_load_dataset)
        with pytest.raises(Exception, match="cannot reach the hub"):
            sources.open_source("someone/scores")
    assert seen and not any(kw.get("trust_remote_code") for kw in seen)


def _listening(pid: int) -> set[str]:
    import psutil
    found: set[str] = set()
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for p in procs:
        try:
            found |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == "LISTEN"}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("hostname", ["as-is", "resolves-to-lan"])
def test_ddp_on_one_machine_listens_on_loopback_only(tmp_path: Path, hostname: str) -> None:
    """Two DDP ranks on one machine open no socket beyond loopback. `resolves-to-lan` runs in a
    network namespace whose hostname resolves to a LAN address (the usual container setup),
    where gloo binds its pair sockets to that address unless pinned to loopback."""
    import netns
    from tiny_scores import FAST, tiny_dataset_dict
    if hostname == "resolves-to-lan":
        netns.require("net")
    data = tiny_dataset_dict(tmp_path / "tiny", n_train=2, n_val=1, n_test=1)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for var in ("MASTER_ADDR", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "smt.train", "--data", str(data), *FAST, "--batch-size", "1",
           "--devices", "2", "--strategy", "ddp", "--max-steps", "4", "--out", str(tmp_path / "r")]
    if hostname == "resolves-to-lan":
        found = netns.run([{"argv": cmd, "log": str(tmp_path / "train.log")}], tmp_path,
                          lan=True, env=env)
        assert found["hostname_address"] == netns.LAN_ADDRESS   # the setup the test is about
        seen = set(found["listening"])
    else:
        seen, err, rc = _watch_listening(cmd, env)
        assert rc == 0, err[-2000:]
    assert seen, "the DDP run opened no listening socket at all"
    assert seen <= {"127.0.0.1", "::1"}, f"listening on {sorted(seen)}"


def _watch_listening(cmd: list[str], env: dict[str, str]) -> tuple[set[str], str, int]:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    seen: set[str] = set()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            seen.update(_listening(proc.pid))
            time.sleep(0.05)
    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        _, err = proc.communicate(timeout=500)
    finally:
        stop.set()
        watcher.join()
        if proc.poll() is None:
            proc.kill()
    return seen, err, proc.returncode


# ------------------------------------------------------------------ oversize image at training time
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_resuming_on_images_larger_than_the_model_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The model's maximum image size comes from the first run's data (config.json); resuming
    on the same scores scanned at twice the size must stop in one line, not deep in the model."""
    import datasets
    import torch
    from tiny_scores import trained_paths
    paths = trained_paths()
    run = tmp_path / "run"
    shutil.copytree(paths["run"], run)
    big = datasets.load_from_disk(str(paths["data"])).map(
        lambda row: {"image": row["image"].resize((row["image"].width * 2,
                                                   row["image"].height * 2))})
    big.save_to_disk(str(tmp_path / "big"))
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    capsys.readouterr()
    _one_line_error(capsys, "smt.train", ["--resume", str(run), "--data", str(tmp_path / "big"),
                                          "--max-steps", str(step + 2)], "maximum")


# ------------------------------------------------------------------ predict (issue 13 item 8)
class _Refused:
    """Any class outside torch's weights-only allow-list."""


@pytest.mark.parametrize("argv, message", [
    (["--device", "cuda"], "CUDA is not available here"),
    (["--device", "tpu9"], "unknown device"),
], ids=["cuda without CUDA", "unknown device"])
def test_predict_refuses_a_bad_device_before_loading(argv: list[str], message: str,
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _one_line_error(capsys, "smt.predict", ["--checkpoint", str(tmp_path / "none.ckpt"),
                                            str(tmp_path / "x.png"), *argv], "--device", message)


def test_predict_checkpoint_folder_without_one_says_what_is_expected(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _one_line_error(capsys, "smt.predict", ["--checkpoint", str(tmp_path), "x.png"],
                    str(tmp_path), "checkpoints/last.ckpt")


def test_the_weights_only_refusal_names_the_global_in_full(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    ckpt = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {}, "extra": _Refused()}, ckpt)
    _one_line_error(capsys, "smt.predict", ["--checkpoint", str(ckpt), "x.png"],
                    str(ckpt), f"{__name__}._Refused")


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("ratio", ["abc", 0], ids=["non-numeric", "zero"])
def test_predict_with_a_broken_run_json_ratio_is_one_line(ratio: object, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from tiny_scores import trained_run
    run = tmp_path / "run"
    shutil.copytree(trained_run(), run)
    record = json.loads((run / "run.json").read_text())
    record["settings"]["reduce_ratio"] = ratio
    (run / "run.json").write_text(json.dumps(record))
    from PIL import Image
    Image.new("L", (64, 32), 255).save(tmp_path / "x.png")
    # A folder as --checkpoint: its checkpoints/last.ckpt.
    _one_line_error(capsys, "smt.predict", ["--checkpoint", str(run), str(tmp_path / "x.png")],
                    "run.json", "reduce_ratio")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_predict_on_a_decompression_bomb_is_one_line(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image
    from tiny_scores import trained_run
    image = tmp_path / "bomb.png"
    Image.new("L", (64, 64), 255).save(image)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)     # 4096 px > 2x the limit
    _one_line_error(capsys, "smt.predict", ["--checkpoint", str(trained_run()), str(image)],
                    str(image), "decompression bomb")


def test_convert_out_over_its_source_is_refused_and_the_source_kept(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 13 item 1 for smt.convert: our config.json must not replace the source's."""
    from reference_fixture import write_reference_folder
    from smt.convert.__main__ import main as convert_main
    src = tmp_path / "ref"
    write_reference_folder(src)
    before = {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()}
    for out in (src, src / "converted"):
        capsys.readouterr()
        code = run_cli(convert_main, [str(src), "--out", str(out), "--dataset", "grandstaff"],
                       prog="smt.convert")
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "--out" in err, err
    assert {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()} == before


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("change", ["vocabulary", "config"])
def test_resuming_a_checkpoint_of_another_model_is_one_line_before_the_data(
        change: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tiny_scores import trained_run
    run = tmp_path / "run"
    shutil.copytree(trained_run(), run)
    if change == "vocabulary":
        vocab = json.loads((run / "vocab.json").read_text())
        vocab["tokens"] = vocab["tokens"][:-3]
        (run / "vocab.json").write_text(json.dumps(vocab))
    else:
        config = json.loads((run / "config.json").read_text())
        config["d_model"], config["ff_dim"] = config["d_model"] * 2, config["ff_dim"] * 2
        config["encoder_widths"][-1] = config["d_model"]
        (run / "config.json").write_text(json.dumps(config))
    record = json.loads((run / "run.json").read_text())
    record["data"] = str(tmp_path / "no-such-data")         # data work would fail differently
    (run / "run.json").write_text(json.dumps(record))
    err = _one_line_error(capsys, "smt.train", ["--resume", str(run), "--max-steps", "500"])
    assert "no-such-data" not in err
    assert ("vocab" in err) if change == "vocabulary" else ("config.json" in err)
