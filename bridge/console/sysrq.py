"""Knowledge of the Linux kernel's Magic SysRq keys: what each key does, and key validation.

Owns the key table (for help texts and the web's SysRq menu) and `validate_keys`, which every
front end (websocket, HTTP, CLI) uses before a BREAK+key reaches a target. Nothing here touches a
device; the timing of BREAK and keys belongs to the port hub and the transports.

The table follows the kernel's `drivers/tty/sysrq.c` and `Documentation/admin-guide/sysrq.rst`
(Linux 6.1). Keys marked `needs` exist only with that kernel option or architecture; the bridge
accepts them (the kernel prints its help text for a key it does not know, which is harmless).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class SysrqKey:
    """One SysRq key: its letter, a short name for menus, what it does, and whether it is
    destructive (loses data or stops the target) so a UI can ask for confirmation."""

    key: str
    name: str
    description: str
    destructive: bool = False
    needs: str = ""


def _table() -> dict[str, SysrqKey]:
    keys = [
        SysrqKey("b", "reboot", "Reboot immediately, without syncing or unmounting disks", True),
        SysrqKey("c", "crash", "Crash the kernel (panic; a crash dump if kdump is set up)", True),
        SysrqKey("d", "locks", "Show all locks held", needs="CONFIG_LOCKDEP"),
        SysrqKey("e", "term-all", "Send SIGTERM to all processes except init", True),
        SysrqKey("f", "oom-kill", "Call the OOM killer to kill one memory hog", True),
        SysrqKey("g", "kgdb", "Enter the kernel debugger (kgdb)", True, "CONFIG_KGDB"),
        SysrqKey("h", "help", "Print the SysRq help line"),
        SysrqKey("i", "kill-all", "Send SIGKILL to all processes except init", True),
        SysrqKey("j", "thaw", "Thaw filesystems frozen by the FIFREEZE ioctl"),
        SysrqKey("k", "sak", "Secure Access Key: kill all programs on the current console", True),
        SysrqKey("l", "backtrace", "Show a stack backtrace of all active CPUs"),
        SysrqKey("m", "memory", "Dump current memory information"),
        SysrqKey("n", "nice-rt", "Make real-time tasks nice-able"),
        SysrqKey("o", "power-off", "Power the system off", True),
        SysrqKey("p", "registers", "Dump the current registers and flags"),
        SysrqKey("q", "timers", "Dump per-CPU armed hrtimers and clock event devices"),
        SysrqKey("r", "unraw", "Take the keyboard out of raw mode"),
        SysrqKey("s", "sync", "Sync all mounted filesystems"),
        SysrqKey("t", "tasks", "Dump the list of current tasks and their state"),
        SysrqKey("u", "remount-ro", "Remount all mounted filesystems read-only"),
        SysrqKey("v", "console", "Restore the framebuffer console (ETM dump on ARM)", needs="arch"),
        SysrqKey("w", "blocked", "Dump tasks in uninterruptible (blocked) state"),
        SysrqKey(
            "x", "arch-x", "Architecture specific (xmon on PowerPC, kdb on SPARC)", needs="arch"
        ),
        SysrqKey("y", "cpu-regs", "Show global CPU registers (SPARC64)", needs="arch"),
        SysrqKey("z", "ftrace", "Dump the ftrace buffer"),
    ]
    for level in range(10):
        keys.append(
            SysrqKey(str(level), f"loglevel-{level}", f"Set the console log level to {level}")
        )
    return {k.key: k for k in sorted(keys, key=lambda k: k.key)}


SYSRQ_KEYS: Mapping[str, SysrqKey] = MappingProxyType(_table())
"""Every key the bridge accepts, lowercase, in sort order (digits first)."""

DESTRUCTIVE_KEYS = frozenset(k.key for k in SYSRQ_KEYS.values() if k.destructive)


def describe(key: str) -> str:
    """One help line for a key, such as `t: tasks - Dump the list of current tasks ...`."""
    entry = SYSRQ_KEYS[key.lower()]
    note = f" (needs {entry.needs})" if entry.needs else ""
    return f"{entry.key}: {entry.name} - {entry.description}{note}"


def help_text() -> str:
    """A multi-line summary of all keys, for `serial-bridge sysrq --help` and similar."""
    return "\n".join(describe(k) for k in SYSRQ_KEYS)


def validate_keys(keys: object, deny: frozenset[str] = frozenset()) -> str:
    """Check a key or a sequence such as "REISUB"; returns it lowercase.

    Raises ValueError naming the first problem: not a string, an empty sequence, a character
    that is not a SysRq key, or a key in the port's `sysrq_deny` list.
    """
    if not isinstance(keys, str):
        # Never str() it: str(None) is "None", and n, o, n, e are all SysRq keys (o powers off).
        raise ValueError(f'SysRq keys must be a string such as "h" or "REISUB", not {keys!r}')
    if not keys:
        raise ValueError("no SysRq key given (examples: h, t, REISUB)")
    lowered = keys.lower()
    denied = {k.lower() for k in deny}
    for position, char in enumerate(lowered):
        if char not in SYSRQ_KEYS:
            shown = repr(keys[position])
            raise ValueError(
                f"{shown} (position {position + 1}) is not a SysRq key; "
                "keys are 0-9 and the letters b-z (h prints the kernel's help)"
            )
        if char in denied:
            raise ValueError(
                f"SysRq {char!r} ({SYSRQ_KEYS[char].name}) is denied on this port (sysrq_deny)"
            )
    return lowered
