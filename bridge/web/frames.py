"""Server-to-client websocket frames (RFC 6455, unmasked, no compression), built once and shared.

The console websocket writes these bytes straight to each connection's transport: a chunk of
output is framed once (`binary_frame`) and the same bytes go to every live client.
"""

from __future__ import annotations

import json
import struct
from typing import Any


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


def binary_frame(payload: bytes) -> bytes:
    return _frame(0x2, payload)


def text_frame(message: dict[str, Any]) -> bytes:
    return _frame(0x1, json.dumps(message, separators=(",", ":")).encode())
