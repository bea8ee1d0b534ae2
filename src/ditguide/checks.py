"""Checks of parameter values that many modules share; each raises an error that names the parameter."""

from __future__ import annotations

import math
import numbers
from typing import Any


def check_number(
    value: Any,
    where: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    allowed: str = "finite",
    error: type[Exception] = ValueError,
) -> float:
    """`value` as a float if it is a real number (not a bool), finite and within [lo, hi]; else
    `error`, naming `where` and what is `allowed` (e.g. "in [0, 1]")."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{where} must be a number, got {value!r}; allowed: {allowed}")
    value = float(value)
    if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise error(f"{where} must be {allowed}, got {value!r}")
    return value
