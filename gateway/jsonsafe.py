"""Values that strict JSON can write: non-finite floats (inf, -inf, nan) become None.

The protocol refuses them at the boundary (`bad_number`), but records stored before that may hold
them, and one such record must never make the dashboard's API, the live stream or `status.json`
fail or emit `Infinity` (not JSON: browsers and `jq` refuse it).
"""

from __future__ import annotations

import math
from typing import Any


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, at any depth (dicts, lists, tuples)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
