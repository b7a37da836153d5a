"""Recovery playbooks: what one is (a short declarative sequence of steps) and where they come from.

A playbook is a TOML file: `description`, `[params.NAME]` (`default`, `description`, `pattern`
the value must match in full, or `choices`; `literal = true` for text a pattern must find as it
is, not as a regular expression) and `[[steps]]`, each exactly one of

- `expect = REGEX` — wait (`timeout`, default 30 s) until the output matches; with `screen =
  true` the terminal screen as a VT100 would show it (full-screen programs such as GRUB's menu
  draw with cursor movements, not lines), counted once the match has held for 0.3 s (not
  half drawn), a row ending in a backslash (GRUB's mark for a line that goes on) joined with
  the next;
- `send = TEXT` — type it; `<name>` is a key (`KEYS`: `<enter>`, `<esc>`, `<up>`, `<ctrl-x>`,
  `<f10>`...), `<lt>` a literal `<`;
- `repeat = TEXT` — type it every `every` (default 200 ms) until `until` matches the output (or
  the screen, `screen = true`), or `cursor` matches the screen line the cursor is on, at most
  `times` times (without `until`/`cursor`: exactly `times` times); with `cursor` one key at a
  time: the next is typed when the screen the last one left has settled (or after `every` with
  no answer);
- `action = NAME` — `reset`, `power-cycle`, `power-on`, `power-off`, `nmi`, `break`, `sysrq` (with
  `keys`), `restart` (reset if the port can, else power-cycle, else wait for the target to restart
  by itself) or `none`;
- `pause = DURATION`.

Any step may have a `title` (shown while it runs) and a `fail` message (shown if it times out);
an `expect` with `optional = true` only notes a timeout. `${NAME}` inserts a parameter (into
patterns as a regular expression unless it is `literal`, into typed text as literal characters).
Parameter values are recorded in the audit trail, so a playbook must never take a secret; the
keystrokes themselves are never stored.

Shipped playbooks live beside this module (bridge/console/playbooks/), site ones in the
configured directory (`[playbooks] dir`, /etc/serial-bridge/playbooks/); a site playbook of the
same name replaces the shipped one. Files are read when asked for, so an edit needs no restart.
"""

from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.config import parse_duration

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).parent / "playbooks"
MAX_STEPS = 100
MAX_VALUE = 200
ACTIONS = (
    "reset", "power-cycle", "power-on", "power-off", "nmi", "break", "sysrq", "restart", "none",
)  # fmt: skip
KINDS = ("expect", "send", "repeat", "action", "pause")
STEP_KEYS = {
    *KINDS, "title", "fail", "timeout", "screen", "every", "until", "cursor", "times", "keys",
    "optional",
}  # fmt: skip
SECRET_NAMES = {"password", "token", "secret", "totp", "code", "cookie", "keystrokes", "passphrase"}
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_PARAM_REF = re.compile(r"\$\{([a-z_][a-z0-9_]*)\}")
_KEY_TOKEN = re.compile(r"<([a-z0-9-]+)>")
_PRINTABLE = r"[^\x00-\x1f\x7f]*"

KEYS: dict[str, bytes] = {
    "enter": b"\r", "esc": b"\x1b", "tab": b"\t", "backspace": b"\x7f", "bs": b"\x7f",
    "space": b" ", "lt": b"<", "up": b"\x1b[A", "down": b"\x1b[B", "right": b"\x1b[C",
    "left": b"\x1b[D", "home": b"\x1b[H", "end": b"\x1b[F", "insert": b"\x1b[2~",
    "delete": b"\x1b[3~", "pgup": b"\x1b[5~", "pgdn": b"\x1b[6~",
    "f1": b"\x1bOP", "f2": b"\x1bOQ", "f3": b"\x1bOR", "f4": b"\x1bOS", "f5": b"\x1b[15~",
    "f6": b"\x1b[17~", "f7": b"\x1b[18~", "f8": b"\x1b[19~", "f9": b"\x1b[20~",
    "f10": b"\x1b[21~", "f11": b"\x1b[23~", "f12": b"\x1b[24~",
    **{f"ctrl-{c}": bytes([ord(c) - 96]) for c in "abcdefghijklmnopqrstuvwxyz"},
}  # fmt: skip


class PlaybookError(ValueError):
    """A playbook that cannot be used, or arguments it refuses: the message names what."""


@dataclass(frozen=True)
class Param:
    name: str
    default: str
    description: str = ""
    pattern: str = _PRINTABLE
    choices: tuple[str, ...] = ()
    literal: bool = False  # in patterns: the text itself, not a regular expression

    def check(self, value: str) -> str:
        if len(value) > MAX_VALUE or "\n" in value or "\r" in value:
            raise PlaybookError(f"{self.name}: at most {MAX_VALUE} characters on one line")
        if self.choices and value not in self.choices:
            raise PlaybookError(f"{self.name}: {value!r} is not one of {', '.join(self.choices)}")
        if not re.fullmatch(self.pattern, value):
            raise PlaybookError(f"{self.name}: {value!r} does not match {self.pattern}")
        return value


@dataclass(frozen=True)
class Step:
    kind: str  # one of KINDS
    value: str  # the pattern, text, action or duration (with ${params})
    title: str = ""
    fail: str = ""
    timeout: str = "30s"  # a duration, or ${param}
    screen: bool = False
    every: str = "200ms"
    until: str = ""
    cursor: str = ""
    times: str = ""  # a number, or ${param}
    keys: str = ""  # for action = "sysrq"
    optional: bool = False

    def describe(self) -> str:
        if self.title:
            return self.title
        if self.kind in ("send", "repeat"):  # never the typed text: it may be what a person typed
            return f"{self.kind} keys"
        return f"{self.kind} {self.value}"


@dataclass(frozen=True)
class Playbook:
    name: str
    description: str
    params: tuple[Param, ...]
    steps: tuple[Step, ...]
    source: str  # "shipped" or the file's path

    def arguments(self, given: dict[str, str]) -> dict[str, str]:
        """Defaults filled in and every value checked; PlaybookError for a bad or unknown one."""
        known = {p.name: p for p in self.params}
        for name in given:
            if name not in known:
                raise PlaybookError(f"{self.name} has no parameter {name!r}")
        return {p.name: p.check(str(given.get(p.name, p.default))) for p in self.params}

    def pattern_values(self, args: dict[str, str]) -> dict[str, str]:
        """The arguments as inserted into patterns: literal ones escaped."""
        literal = {p.name for p in self.params if p.literal}
        return {k: re.escape(v) if k in literal else v for k, v in args.items()}

    def summary(self) -> dict[str, Any]:
        """What a front door shows: name, description, parameters, the steps' titles."""
        return {
            "name": self.name,
            "description": self.description,
            "params": [
                {"name": p.name, "default": p.default, "description": p.description}
                | ({"choices": list(p.choices)} if p.choices else {})
                for p in self.params
            ],
            "steps": [s.describe() for s in self.steps],
            "source": self.source,
        }


def substitute(template: str, args: dict[str, str]) -> str:
    """`${name}` replaced by the argument (for patterns: Playbook.pattern_values' arguments)."""
    return _PARAM_REF.sub(lambda m: args.get(m.group(1), ""), template)


def keystrokes(template: str, args: dict[str, str]) -> bytes:
    """Typed text: `<key>` tokens become their bytes; `${param}` values stay literal text."""
    out = bytearray()
    pos = 0
    for m in _KEY_TOKEN.finditer(template):
        out += substitute(template[pos : m.start()], args).encode()
        out += KEYS[m.group(1)]
        pos = m.end()
    out += substitute(template[pos:], args).encode()
    return bytes(out)


def _text(data: dict[str, Any], key: str, where: str, default: str = "") -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise PlaybookError(f"{where}.{key}: expected a string")
    return value


def _duration(value: Any, where: str) -> str:
    """A duration (or ${param}, checked when the playbook runs), kept as text."""
    text = value if isinstance(value, str) else str(value)
    if "${" not in text:
        try:
            parse_duration(value)
        except ValueError as exc:
            raise PlaybookError(f"{where}: {exc}") from None
    return text


def _step(data: Any, where: str, params: set[str]) -> Step:
    if not isinstance(data, dict):
        raise PlaybookError(f"{where}: expected a table")
    unknown = set(data) - STEP_KEYS
    if unknown:
        raise PlaybookError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    kinds = [k for k in KINDS if k in data]
    if len(kinds) != 1:
        raise PlaybookError(f"{where}: exactly one of {', '.join(KINDS)}")
    kind = kinds[0]
    fields: dict[str, Any] = {}
    for key in ("title", "fail", "until", "cursor", "times", "keys"):
        fields[key] = _text(data, key, where)
    for key in ("timeout", "every"):
        if key in data:
            fields[key] = _duration(data[key], f"{where}.{key}")
    for key in ("screen", "optional"):
        if key in data and not isinstance(data[key], bool):
            raise PlaybookError(f"{where}.{key}: expected true or false")
        fields[key] = data.get(key, False)
    is_pause = kind == "pause"
    value = _duration(data[kind], f"{where}.pause") if is_pause else _text(data, kind, where)
    templated = ("until", "cursor", "times", "keys", "timeout", "every")
    for text in (value, *(fields.get(k, "") for k in templated)):
        for ref in _PARAM_REF.findall(text):
            if ref not in params:
                raise PlaybookError(f"{where}: ${{{ref}}} is not a parameter of this playbook")
    if kind in ("send", "repeat"):
        for token in _KEY_TOKEN.findall(value):
            if token not in KEYS:
                raise PlaybookError(f"{where}: unknown key <{token}> (write <lt> for a '<')")
    if kind == "action" and "${" not in value and value not in ACTIONS:
        raise PlaybookError(f"{where}.action: {value!r} is not one of {', '.join(ACTIONS)}")
    if kind == "repeat" and not (fields["until"] or fields["cursor"] or fields["times"]):
        raise PlaybookError(f"{where}: a repeat needs until, cursor or times")
    for key in ("until", "cursor") if kind != "expect" else ("until", "cursor", "value"):
        pattern = value if key == "value" else fields[key]
        if pattern and "${" not in pattern:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise PlaybookError(f"{where}: {pattern!r}: {exc}") from None
    return Step(kind, value, **fields)


def parse_playbook(name: str, data: dict[str, Any], source: str, where: str = "") -> Playbook:
    """A playbook from its TOML document; PlaybookError naming (`where`) the key that is wrong."""
    where = where or source
    description = _text(data, "description", where)
    unknown = set(data) - {"description", "params", "steps"}
    if unknown:
        raise PlaybookError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    params: list[Param] = []
    raw_params = data.get("params", {})
    if not isinstance(raw_params, dict):
        raise PlaybookError(f"{where}.params: expected tables [params.NAME]")
    for pname, p in raw_params.items():
        pwhere = f"{where}: params.{pname}"
        if not _PARAM_REF.fullmatch(f"${{{pname}}}") or not isinstance(p, dict):
            raise PlaybookError(f"{pwhere}: a lower-case name and a table")
        if pname.rsplit("_", 1)[-1] in SECRET_NAMES:
            raise PlaybookError(f"{pwhere}: playbooks never take secrets (values are audited)")
        choices = p.get("choices", [])
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise PlaybookError(f"{pwhere}.choices: expected a list of strings")
        if not isinstance(p.get("literal", False), bool):
            raise PlaybookError(f"{pwhere}.literal: expected true or false")
        param = Param(
            pname,
            str(p.get("default", "")),
            _text(p, "description", pwhere),
            _text(p, "pattern", pwhere, _PRINTABLE),
            tuple(choices),
            p.get("literal", False),
        )
        param.check(param.default)  # the default must pass its own checks
        params.append(param)
    raw_steps = data.get("steps", [])
    if not isinstance(raw_steps, list) or not raw_steps or len(raw_steps) > MAX_STEPS:
        raise PlaybookError(f"{where}: steps: 1 to {MAX_STEPS} [[steps]] tables")
    names = {p.name for p in params}
    steps = tuple(_step(s, f"{where}: steps[{i}]", names) for i, s in enumerate(raw_steps))
    return Playbook(name, description, tuple(params), steps, source)


def load_playbook(path: Path, source: str | None = None) -> Playbook:
    name = path.stem
    if not _NAME.fullmatch(name):
        raise PlaybookError(f"{path}: a playbook's file name is its name: a-z, 0-9, '-', '_'")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PlaybookError(f"{path}: {exc}") from None
    return parse_playbook(name, data, source or str(path), str(path))


def available(site_dir: Path | None) -> dict[str, Playbook]:
    """The shipped playbooks, then the site's (replacing shipped ones of the same name); a site
    file that cannot be used is logged and left out."""
    found = {p.stem: load_playbook(p, "shipped") for p in sorted(SHIPPED.glob("*.toml"))}
    if site_dir is not None and site_dir.is_dir():
        for path in sorted(site_dir.glob("*.toml")):
            try:
                found[path.stem] = load_playbook(path)
            except PlaybookError as exc:
                log.warning("playbook left out: %s", exc)
    return found
