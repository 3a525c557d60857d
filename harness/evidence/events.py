"""What every renderer reads from trace events: the event type, and numbers that a broken
or hand-edited trace may hold as anything."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

#: One trace line, parsed (docs/traces.md).
Event = Mapping[str, Any]


def number(value: Any) -> float | None:
    """A finite real number, else None (booleans, strings, NaN are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None
