"""Suite-wide fixtures. Every test gets its own cache root so nothing touches ~/.cache."""
from __future__ import annotations

import pytest

from smt.paths import ENV_CACHE


@pytest.fixture(autouse=True)
def _one_os_environ():
    """datasets' `map(num_proc>1)` replaces `os.environ` with a deep copy (datasets 5.2,
    arrow_dataset.py): code holding the original (a default argument, rich's Console) then
    reads stale values and a later test's monkeypatch.setenv misses it. Put the original back,
    after each test, with the contents it had before the test: an in-process run that set a
    variable for its own child processes (Lightning's LOCAL_RANK, MASTER_PORT) must not
    reach the next test's subprocesses."""
    import os
    env = os.environ
    before = dict(env)
    yield
    os.environ = env
    if dict(env) != before:
        env.clear()
        env.update(before)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv(ENV_CACHE, str(root))
    # datasets' own cache (hub downloads, map caches of in-memory sets) stays inside the test too.
    monkeypatch.setenv("HF_DATASETS_CACHE", str(root / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield root


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nothing can be created in. As root, permission bits do not stop a write, so
    there a read-only kernel filesystem (/sys) serves; skipped where neither is available."""
    import os
    import shutil
    from pathlib import Path
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    try:
        (Path("/sys") / "smt-autotune-probe").mkdir()
    except OSError:
        return Path("/sys") / "smt-autotune-probe"
    shutil.rmtree("/sys/smt-autotune-probe", ignore_errors=True)
    pytest.skip("no read-only folder available")


# -- shared data fixtures (owned by the data layer; cheap: ~24 rendered systems per session) --

SYNTH_COUNTS = {"train": 16, "val": 4, "test": 4}


@pytest.fixture(scope="session")
def synth_raw_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny raw synthetic dataset (save_to_disk DatasetDict: 16/4/4 systems, columns
    `image` PNG + `transcription` kern). Read-only: copy it before changing anything."""
    from smt.data.synth import build

    out = tmp_path_factory.mktemp("synth") / "raw"
    build(out, count=sum(SYNTH_COUNTS.values()), kind="system", seed=7, num_proc=1,
          val=SYNTH_COUNTS["val"], test=SYNTH_COUNTS["test"], quiet=True)
    return out


@pytest.fixture(scope="session")
def prepared_dir(synth_raw_dir, tmp_path_factory: pytest.TempPathFactory):
    """`synth_raw_dir` prepared at reduce_ratio 0.5, bekern: a save_to_disk DatasetDict with
    `vocab.json` inside the folder. Read-only."""
    from smt.data.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("prepared") / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_CACHE, str(tmp_path_factory.mktemp("prep-cache")))
        prepare(synth_raw_dir, PrepareConfig(reduce_ratio=0.5, isolate=False), out=out, quiet=True)
    return out
