"""Status as the API server will accept it, and the merge-patch that writes it.

The CRD's status schema bounds every string (4096 characters), list (256 items) and map (128 keys),
and JSON has no NaN or infinity: a status breaking any of these is refused whole (400/422), and
the same refusal would repeat on every poll. `clean` makes any status the pass computes fit, so
a single bad number or an over-long message never costs the user the rest of the status.
"""

from __future__ import annotations

import math
from typing import Any

MAX_STRING = 4096
MAX_ITEMS = 256
MAX_KEYS = 128
_ELLIPSIS = " …[truncated]"


def clean(value: Any) -> Any:
    """A copy of `value` within the schema's limits: non-finite numbers → None, strings cut to
    `MAX_STRING`, lists to their newest `MAX_ITEMS` (status lists are oldest first), maps to their
    first `MAX_KEYS` keys."""
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if len(value) <= MAX_STRING else value[: MAX_STRING - len(_ELLIPSIS)] + _ELLIPSIS
    if isinstance(value, dict):
        items = list(value.items())[:MAX_KEYS]
        return {k: clean(v) for k, v in items}
    if isinstance(value, list | tuple):
        return [clean(v) for v in list(value)[-MAX_ITEMS:]]
    return value


def patch(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """Merge-patch of `status`: changed top-level keys, and None for keys to remove."""
    out = {k: v for k, v in desired.items() if current.get(k) != v}
    out.update({k: None for k in current if k not in desired and k != "kopf"})
    return out


def fallback(desired: dict[str, Any], refusal: str) -> dict[str, Any]:
    """The smallest status that still tells the user what happened when the full one was refused."""
    phase = desired.get("phase")
    return {
        "phase": phase,
        "message": clean(f"the API server refused this run's status update ({refusal}); last phase {phase}"),
    }
