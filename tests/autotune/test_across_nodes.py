"""The profile says how its one-node settings carry to several nodes (autotune.show)."""
from __future__ import annotations

from pathlib import Path

from autotune.profile import load_profile
from autotune.show import across_nodes

REPO = Path(__file__).resolve().parents[2]


def test_profile_says_per_node_settings_and_the_global_effective_batch():
    profile = load_profile(REPO / "profiles" / "cpu-2core.json")
    s = profile.settings
    text = across_nodes(profile, nodes=2)
    effective = s.batch_size * s.accumulate_grad_batches * s.devices
    assert f"per node {s.devices} rank(s) of batch {s.batch_size}" in text
    assert f"{s.num_workers} loader workers per rank" in text
    assert f"effective batch {effective} x 2 nodes = {2 * effective}" in text
    assert "torchrun --nnodes 2 --nproc-per-node 1" in text and "--num-nodes 2" in text
