"""Points in time as ``--start``/``--end`` take them: Unix seconds or RFC 3339, as Prometheus' API does."""

from __future__ import annotations

import math
from datetime import UTC, datetime


def parse_time(text: str) -> float:
    """Unix seconds from ``1764000000``, ``1764000000.5`` or ``2025-11-24T16:00:00Z``.

    A ValueError quotes the text.
    """
    s = text.strip()
    try:
        value = float(s)
    except ValueError:
        try:
            dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{text!r} is not a time: expected Unix seconds or RFC 3339 (2025-11-24T16:00:00Z)"
            ) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r}: expected a non-negative, finite Unix time")
    return value
