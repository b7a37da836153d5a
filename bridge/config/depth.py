"""How deeply a config file may nest, checked before anything walks what it holds.

A real config nests four levels at most (`ports.NAME.lines.nmi.gpio`). A file nesting thousands
(`x = [[[[...`, or a dotted key of thousands of parts) made tomllib, or the error messages that
quote a bad value, exhaust Python's recursion and crash `check-config` with a traceback. Here:

- `too_deep(data)`: the dotted key of the first value nested more than `MAX_DEPTH` levels in what
  tomllib parsed (walked with a stack, never recursively), or None;
- `deepest_key(text)`: for text too deep for tomllib itself, the key whose value opens the most
  brackets (best effort, for the message only).
"""

from __future__ import annotations

import re
from typing import Any

MAX_DEPTH = 16
PROBLEM = f"values nested more than {MAX_DEPTH} levels deep (a config needs 4 at most)"
_HEADER = re.compile(r"\[\[?\s*([^\[\]#]+?)\s*\]\]?\s*(#.*)?")
_ASSIGN = re.compile(r"""([A-Za-z0-9_\-."' ]+?)\s*=""")


def too_deep(data: Any) -> str | None:
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, key, depth = stack.pop()
        if depth > MAX_DEPTH:
            return key or "(top level)"
        if isinstance(value, dict):
            stack += [(v, f"{key}.{k}" if key else str(k), depth + 1) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, key, depth + 1) for v in value]
    return None


def deepest_key(text: str) -> str:
    lines = text.splitlines() or [""]
    worst = max(range(len(lines)), key=lambda i: lines[i].count("[") + lines[i].count("{"))
    table, key = "", ""
    for line in lines[: worst + 1]:
        stripped = line.strip()
        if header := _HEADER.fullmatch(stripped):
            table, key = header.group(1), ""
        elif assign := _ASSIGN.match(stripped):
            key = assign.group(1).strip()
    return ".".join(part for part in (table, key) if part) or "(top level)"
