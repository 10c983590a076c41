"""Skip or fail, one decision for every test that needs something the machine may lack (a
PostgreSQL server, a network or UTS namespace, a memory cgroup). Locally a missing piece skips with the
reason; where its switch is set to 1 (`.ci/run` sets them all) it fails instead, so a green
CI cannot hide tests that never ran."""
from __future__ import annotations

import os
from typing import NoReturn

import pytest

POSTGRES = "SMT_REQUIRE_POSTGRES"
NAMESPACES = "SMT_REQUIRE_NAMESPACES"
CGROUPS = "SMT_REQUIRE_CGROUPS"


def skip_or_fail(reason: str, switch: str) -> NoReturn:
    """Fail when `switch` is 1 in the environment, else skip; with the reason either way."""
    if os.environ.get(switch) == "1":
        pytest.fail(f"{switch}=1 but {reason}")
    pytest.skip(reason)
