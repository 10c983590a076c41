"""autotune: measure the machine and the workload, decide the training settings, explain why.

The names below are the light, stable public API (no torch import). Probing
(`autotune.probe`), planning (`autotune.plan`), the CLI (`autotune.cli`) and the Optuna
search (`autotune.search`) are imported from their modules when needed.
"""
from autotune.decide import Budgets, Decision, NothingFitsError
from autotune.errors import UserError, run_cli
from autotune.hardware import fingerprint, inventory
from autotune.measure import (ProgressWatchdog, RssSampler, free_memory, is_oom_error,
                              tree_rss_bytes)
from autotune.profile import (Profile, ProfileError, find_profile, load_profile, profiles_dir,
                              resolve_profile_path, save_profile)
from autotune.records import HardwareInfo, Measurements
from autotune.settings import Settings

__all__ = [
    "Budgets", "Decision", "NothingFitsError", "UserError", "run_cli", "fingerprint",
    "inventory", "ProgressWatchdog", "RssSampler", "free_memory", "is_oom_error",
    "tree_rss_bytes", "Profile", "ProfileError", "find_profile", "load_profile",
    "profiles_dir", "resolve_profile_path", "save_profile", "HardwareInfo", "Measurements",
    "Settings",
]
