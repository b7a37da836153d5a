"""JSON from the network, parsed strictly: the one helper every front door's JSON goes through.

Python's `json.loads` accepts what JSON itself does not: the literals `NaN`, `Infinity` and
`-Infinity`, and numbers such as `1e400` that become infinite floats. Any of these reaching an
action as an interval would hold it for ever (infinity) or fail half-way (NaN), so `loads` refuses
them, and turns the other ways a hostile text can make json fail (nesting deep enough to exhaust
the parser's recursion, an integer of more than 4300 digits) into the same ValueError a malformed
text gives: a caller answers one clear error (HTTP 400, a websocket `error`) for all of them.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def loads(text: str | bytes) -> Any:
    """Parse JSON text; ValueError (json.JSONDecodeError is one) for malformed text, NaN and
    infinities, numbers out of a float's range, and nesting too deep to parse."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
