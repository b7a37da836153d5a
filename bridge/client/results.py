"""One human line for the answer of an action (`sysrq`, `nmi`, `power`; `--json` prints the
answer itself instead, for scripts), and for an event of the log (`log --events`)."""

from __future__ import annotations

import time
from typing import Any

_NAMES = {"nmi": "NMI", "reset": "reset", "break": "BREAK"}


def _how(result: dict[str, Any]) -> str:
    """How the bridge did it: the GPIO line and pulse, or the QMP command."""
    if "qmp" in result:
        return f"QMP {result['qmp']}"
    if "gpio" in result:
        pulse = result.get("pulse_ms")
        return f"GPIO {result['gpio']}" + (f" pulsed {pulse} ms" if pulse else " not pulsed")
    return ""


def _who_when(result: dict[str, Any]) -> str:
    parts = []
    if result.get("user"):
        parts.append(f"by {result['user']}")
    if isinstance(result.get("time"), int | float):
        parts.append("at " + time.strftime("%H:%M:%S", time.localtime(result["time"])))
    return (" " + " ".join(parts)) if parts else ""


def describe(result: dict[str, Any]) -> str:
    """E.g. `node2: SysRq h sent (BREAK 250 ms + key) by alice at 14:02:11`."""
    port = result.get("port", "?")
    action = str(result.get("action", "?"))
    if action in ("status", "power") and "power" in result and "pulse_ms" not in result:
        qemu = f" (QEMU: {result['qemu_status']})" if result.get("qemu_status") else ""
        return f"{port}: power is {result['power']}{qemu}"
    if action == "cancel":
        what = result.get("cancelled", "the running sequence")
        return f"{port}: cancelled {what}{_who_when(result)}"
    if action == "sysrq":
        keys = " ".join(str(result.get("keys", "")))
        how = f"BREAK {result.get('break_ms', '?')} ms + key"
        if len(str(result.get("keys", ""))) > 1:
            how += f", {result.get('interval_ms', '?')} ms apart"
        return f"{port}: SysRq {keys} sent ({how}){_who_when(result)}"
    name = _NAMES.get(action, f"power {action}")
    how = _how(result)
    line = f"{port}: {name} done" + (f" ({how})" if how else "")
    if result.get("power") and result.get("power") != "unknown":
        line += f"; power is {result['power']}"
    line += _who_when(result)
    if result.get("note"):
        line += f" — {result['note']}"
    return line


def describe_event(event: dict[str, Any]) -> str:
    """One line for a log event marker (`log --events`): time, offset, what happened, who."""
    kind = str(event.get("event", "?"))
    who = f" by {event['user']}" if event.get("user") else ""
    if kind == "alert":
        boot = f" (boot took {event['boot_seconds']} s)" if "boot_seconds" in event else ""
        what = f"alert {event.get('rule')} ({event.get('severity')}){boot}: {event.get('line', '')}"
    elif kind == "sysrq":
        what = f"sysrq {event.get('keys', '')}{who}"
    elif kind == "power":
        what = f"power {event.get('action', '')}{who}"
    elif kind == "playbook":
        step = f" at step {event['step']}" if event.get("result") not in ("ok", "started") else ""
        what = f"playbook {event.get('playbook')} {event.get('result')}{step}{who}"
    elif kind in ("offline", "gap", "unclean-stop"):
        detail = event.get("reason") or (f"to {event['to']}" if "to" in event else "")
        what = f"{kind} {detail}".strip()
    else:
        what = f"{kind}{who}"
    at = event.get("at", event.get("offset"))
    return f"{event.get('time', '-'):<24}  {at:>10}  {what}"
