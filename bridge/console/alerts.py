"""Console alerts of one port: output lines matched against rules, rate-limited, and boot timing.

The hub (bridge.console.port) hands every published chunk to `AlertWatch.feed` with its offset
and gets back the alerts it raised, rare events it then marks in the ring log (right after the
matching line), audits, announces to the port's clients and hands to the webhook.

Cost on the hot path: a rule whose every match starts with a literal text (each shipped rule does:
"Kernel panic", "BUG: ", ...; `required_literals`) is not searched at all unless one of those
texts is in the chunk, and one search finds any of them: RE2 (google-re2, a DFA: about 1.5 ms of
CPU per MiB here whatever the number of rules) where it is installed, else Python's own engine
(about 5 ms/MiB; per rule searches cost 0.6 ms/MiB each). A rule without such a literal is searched
in every chunk by the regex engine. Only when a rule may match is the text split into lines and
each line tested in Python. (So a match must not span an escape sequence: colour around a message
is fine, colour inside the matched words is not.)
Lines are split on "\\n"; a trailing "\\r" and terminal escape sequences are removed before
matching; a line is matched on its first MAX_LINE bytes. The line still being received (a prompt
such as `login: ` has no line end) is tested too, against the rules whose pattern ends in `$`,
once per line.

Rules match in order and the first that matches a line wins. A rule whose `boot` is "start"
(the kernel's banner, U-Boot, GRUB's menu) starts the boot clock without an alert, as do reset
and power actions (`boot_started`); a "done" rule (a login prompt) fires only while a boot is
being timed, counts the boot and gives its duration. Each rule may fire at most `rate` times in
its window per port; the matches past that are counted (`suppressed`), and the next alert of the
rule says how many were left out.
"""

from __future__ import annotations

import re
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from bridge.config.alerts import AlertRule

try:  # a multi-string search at DFA speed (x86_64 and aarch64 wheels); stdlib re otherwise
    import re2
except ImportError:  # the fallback is tested by forcing it (tests/test_alerts.py)
    re2 = None

MAX_LINE = 4096  # bytes of a line that are matched
MAX_TEXT = 300  # characters of the line an alert carries
_ESCAPES = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -/]*[0-~])")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MIN_LITERAL = 3  # a shorter leading literal screens out too little to be worth it
_SPECIAL = frozenset(".^$*+?{}[]()|\\")
_FLAGS = frozenset("aiLmsux")


def required_literals(pattern: str) -> tuple[bytes, ...] | None:
    """Texts one of which every match of `pattern` contains (each top-level branch's leading
    literal), or None when some branch does not start with MIN_LITERAL literal characters (or
    the pattern sets global flags, which may change what its literals match)."""
    if pattern.startswith("(?") and pattern[2:3] in _FLAGS:
        return None
    literals = []
    for branch in _branches(pattern):
        literal = _leading_literal(branch)
        if len(literal) < MIN_LITERAL or "\n" in literal or "\r" in literal:
            return None
        literals.append(literal.encode())
    return tuple(literals)


def _branches(pattern: str) -> list[str]:
    """The pattern split at its top-level "|" (not inside a group or a character class)."""
    parts, depth, start, i, klass = [], 0, 0, 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if klass:
            klass = c != "]"
        elif c == "[":
            klass, i = True, i + 1
            i += pattern[i : i + 1] == "^"
            i += pattern[i : i + 1] == "]"  # "[]...]", "[^]...]": that "]" is a member
            continue
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
        i += 1
    parts.append(pattern[start:])
    return parts


def _leading_literal(branch: str) -> str:
    """The characters every match of `branch` starts with (after a "^")."""
    out: list[str] = []
    i = 1 if branch.startswith("^") else 0
    while i < len(branch):
        c, step = branch[i], 1
        if c == "\\":
            c, step = branch[i + 1 : i + 2], 2
            if not c or c.isalnum() or not c.isascii():
                break  # \d, \b, \x41, ...: not a plain character
        elif c in _SPECIAL:
            break
        after = branch[i + step : i + step + 1]
        if after in ("*", "?", "{"):
            break  # this character may be absent
        out.append(c)
        if after == "+":
            break
        i += step
    return "".join(out)


def _literal_screen(literals: list[bytes]) -> Any:
    """One compiled search for any of `literals` (bytes for bytes: Latin-1 in RE2)."""
    pattern = b"|".join(re.escape(literal) for literal in literals)
    if re2 is None:
        return re.compile(pattern)
    options = re2.Options()
    options.encoding = re2.Options.Encoding.LATIN1
    return re2.compile(pattern, options)


@dataclass(frozen=True)
class Alert:
    """One alert: which rule, where in the output (the line's first offset, and the offset just
    after it, where its marker goes), when, and what the line said."""

    rule: str
    severity: str
    line: str
    start: int
    end: int
    time: float
    suppressed: int = 0  # matches of this rule left out (rate limit) since its last alert
    boot_seconds: float | None = None  # a "done" rule: the boot's duration

    def fields(self) -> dict[str, Any]:
        """As a log marker, an audit record and a webhook post carry it."""
        out: dict[str, Any] = {
            "rule": self.rule,
            "severity": self.severity,
            "at": self.start,
            "line": self.line,
        }
        if self.suppressed:
            out["suppressed"] = self.suppressed
        if self.boot_seconds is not None:
            out["boot_seconds"] = round(self.boot_seconds, 3)
        return out


class _Rule:
    __slots__ = (
        "block",
        "boot",
        "line",
        "literals",
        "name",
        "prompt",
        "rate",
        "recent",
        "severity",
        "skipped",
    )

    def __init__(self, rule: AlertRule) -> None:
        self.name, self.severity, self.boot, self.rate = (
            rule.name,
            rule.severity,
            rule.boot,
            rule.rate,
        )
        self.line = re.compile(rule.pattern.encode())
        self.block = re.compile(rule.pattern.encode(), re.MULTILINE)
        self.prompt = rule.pattern.endswith("$")  # may match the line being received
        self.literals = required_literals(rule.pattern)
        self.recent: deque[float] = deque()
        self.skipped = 0


def _clean(line: bytes) -> bytes:
    if b"\x1b" in line:
        line = _ESCAPES.sub(b"", line)
    return line.rstrip(b"\r")[:MAX_LINE]


def _text(line: bytes) -> str:
    text = _CONTROLS.sub("", line.decode("utf-8", "replace"))
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


class AlertWatch:
    """The alert rules of one port and what they have seen."""

    def __init__(self, rules: tuple[AlertRule, ...] = ()) -> None:
        self.rules: list[_Rule] = []
        self.counts: Counter[tuple[str, str]] = Counter()  # (rule, severity) -> matches
        self.suppressed: Counter[str] = Counter()
        self.boots = 0
        self.last_boot: float | None = None  # seconds, of the last boot timed
        self._booting: float | None = None  # monotonic start of the boot being timed
        self._tail = b""  # the line being received
        self._tail_start = 0
        self._tail_fired: set[str] = set()
        self.set_rules(rules)

    def set_rules(self, rules: tuple[AlertRule, ...]) -> None:
        """New rules (a reload); counters and the boot being timed stay."""
        self.rules = [_Rule(r) for r in rules]
        self._prompts = [r for r in self.rules if r.prompt]
        self._unscreened = [r for r in self.rules if r.literals is None]
        literals = [lit for r in self.rules for lit in r.literals or ()]
        self._screen = _literal_screen(literals) if literals else None

    def boot_started(self) -> None:
        """A reset or power-on: time the boot from now."""
        self._booting = time.monotonic()

    @property
    def booting(self) -> bool:
        return self._booting is not None

    def feed(self, data: bytes, offset: int) -> list[Alert]:
        """Alerts raised by `data`, output starting at `offset` (the hot path: see above)."""
        if not self.rules:
            return []
        hits: list[Alert] = []
        last = data.rfind(b"\n")
        if last >= 0:
            head = data[:last]
            block = self._tail + head if self._tail else head
            screened = self._screen is None or self._screen.search(block) is None
            rules = self._unscreened if screened else self.rules
            if rules and b"\r" in block:  # lines are matched without "\r" ($ before "\r\n")
                block = block.replace(b"\r\n", b"\n")
            rules = [r for r in rules if r.block.search(block)]
            if rules:
                self._lines(head, offset, rules, hits)
            self._tail, self._tail_start = data[last + 1 :][:MAX_LINE], offset + last + 1
            self._tail_fired = set()
        elif len(self._tail) < MAX_LINE:
            self._tail += data[: MAX_LINE - len(self._tail)]
        if self._tail and self._prompts:
            line = _clean(self._tail)
            end = offset + len(data)
            self._match(line, self._tail_start, end, self._prompts, hits, partial=True)
        return hits

    def _lines(self, head: bytes, offset: int, rules: list[_Rule], hits: list[Alert]) -> None:
        """Test the lines `head` completes (the first continues the line being received)."""
        start = self._tail_start
        pos = 0
        for i, piece in enumerate(head.split(b"\n")):
            end = offset + pos + len(piece) + 1  # just after its "\n"
            line = _clean(self._tail + piece if i == 0 else piece)
            self._match(line, start, end, rules, hits, partial=False, first=i == 0)
            pos += len(piece) + 1
            start = offset + pos

    def _match(
        self,
        line: bytes,
        start: int,
        end: int,
        rules: list[_Rule],
        hits: list[Alert],
        partial: bool,
        first: bool = False,
    ) -> None:
        """The first rule that matches `line` fires, unless it fired on the line's first part
        (a prompt) already, while the line was being received."""
        if partial and self._tail_fired:
            return
        for rule in rules:
            if rule.line.search(line):
                if first and rule.name in self._tail_fired:
                    return
                if partial:
                    self._tail_fired.add(rule.name)
                alert = self._fire(rule, line, start, end)
                if alert is not None:
                    hits.append(alert)
                return

    def _fire(self, rule: _Rule, line: bytes, start: int, end: int) -> Alert | None:
        now = time.monotonic()
        boot_seconds = None
        if rule.boot == "start":
            if self._booting is None:
                self._booting = now
            return None
        if rule.boot == "done":
            if self._booting is None:
                return None  # a prompt again, not after a boot
            boot_seconds, self._booting = now - self._booting, None
            self.boots += 1
            self.last_boot = boot_seconds
        self.counts[rule.name, rule.severity] += 1
        count, window = rule.rate
        while rule.recent and now - rule.recent[0] >= window:
            rule.recent.popleft()
        if len(rule.recent) >= count:
            rule.skipped += 1
            self.suppressed[rule.name] += 1
            return None
        rule.recent.append(now)
        skipped, rule.skipped = rule.skipped, 0
        return Alert(
            rule.name, rule.severity, _text(line), start, end, time.time(), skipped, boot_seconds
        )

    def summary(self) -> dict[str, Any]:
        """For /api/ports: alerts per rule, boots and the last boot's duration."""
        alerts: Counter[str] = Counter()
        for (name, _severity), n in self.counts.items():
            alerts[name] += n
        last = round(self.last_boot, 3) if self.last_boot is not None else None
        return {
            "alerts": dict(sorted(alerts.items())),
            "boots": self.boots,
            "last_boot_seconds": last,
        }
