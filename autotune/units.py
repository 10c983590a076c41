"""Sizes as people write them ("30GB", "15.5GiB", 16e9) and as we print them."""
from __future__ import annotations

import math
import re

KIB, MIB, GIB, TIB = 1024, 1024 ** 2, 1024 ** 3, 1024 ** 4

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000 ** 2, "mb": 1000 ** 2, "mib": 1024 ** 2,
    "g": 1000 ** 3, "gb": 1000 ** 3, "gib": 1024 ** 3,
    "t": 1000 ** 4, "tb": 1000 ** 4, "tib": 1024 ** 4,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(value: str | int | float, what: str = "size") -> int:
    """Bytes from an int, a float or a string like "30GB", "15.5 GiB", "512MiB".

    Decimal units (GB) are powers of 1000 and binary ones (GiB) powers of 1024, as the
    vendors print them. Raises ValueError naming `what` on anything else, zero or negative.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a size in bytes or like '16GiB', got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = _SIZE.match(str(value))
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"{what} must be a size like '30GB' or '15.5GiB', got {value!r}")
        number, unit = float(match.group(1)), match.group(2).lower()
    size = number * _UNITS[unit]
    if not math.isfinite(size) or size <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return int(size)


def size_arg(text: str) -> int:
    """An argparse `type` for a size flag (`--ram-budget 24GB`): bytes via `parse_size`."""
    import argparse
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def format_bytes(n: float | int | None) -> str:
    """Binary units with one decimal: 1.5 GiB, 300.0 MiB; '?' for unknown."""
    if n is None:
        return "?"
    n = float(n)
    for unit, scale in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"
