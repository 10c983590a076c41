"""Suite-wide fixtures. Every test gets its own cache root so nothing touches ~/.cache."""
from __future__ import annotations

import pytest

from smt.paths import ENV_CACHE


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv(ENV_CACHE, str(root))
    # datasets' own cache (hub downloads, map caches of in-memory sets) stays inside the test too.
    monkeypatch.setenv("HF_DATASETS_CACHE", str(root / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield root
