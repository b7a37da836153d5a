"""Deciding about a first-seen bridge, as ssh does: show its certificate fingerprint and ask.

The question goes to the controlling terminal (`/dev/tty`), so it works when standard input
carries a password (`--password-stdin`) and never reads a script's input as an answer. Without a
terminal nothing is asked and the bridge is refused, unless the user said `--trust-on-first-use`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from bridge.client.http import ClientError, UnknownBridge, normalise_fingerprint

MAX_ANSWER = 512


def _ask(question: str) -> str | None:
    """One line from the controlling terminal, or None when there is none."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None
    try:
        os.write(fd, question.encode())
        answer = bytearray()
        while b"\n" not in answer and len(answer) < MAX_ANSWER:
            piece = os.read(fd, MAX_ANSWER)
            if not piece:
                break
            answer += piece
        return answer.decode(errors="replace").strip()
    finally:
        os.close(fd)


def _confirms(answer: str, fingerprint: str) -> bool:
    if answer.lower() == "yes":
        return True
    try:  # pasting the fingerprint one has checked counts as yes, as in ssh
        return normalise_fingerprint(answer) == fingerprint
    except ClientError:
        return False


def decider(trust_on_first_use: bool) -> Callable[[str, str], bool]:
    """The `trust` callback for BridgeClient."""

    def decide(hostport: str, fingerprint: str) -> bool:
        if trust_on_first_use:
            print(
                f"serial-bridge: first connection to {hostport}; trusting its certificate "
                f"{fingerprint} (--trust-on-first-use)",
                file=sys.stderr,
            )
            return True
        answer = _ask(
            f"The bridge {hostport} is not known yet.\n"
            f"Its certificate fingerprint is {fingerprint}\n"
            "Compare it with `serial-bridge cert show` on the bridge.\n"
            "Trust this bridge and continue (yes/no/[fingerprint])? "
        )
        if answer is None:
            raise UnknownBridge(
                f"{hostport} is not a known bridge (its certificate is {fingerprint}) and there "
                "is no terminal to ask; nothing was sent to it. Compare that with `serial-bridge "
                f"cert show` on the bridge, then pass --fingerprint {fingerprint} (or "
                "--trust-on-first-use)"
            )
        if not _confirms(answer, fingerprint):
            raise UnknownBridge(f"{hostport} not trusted; nothing was sent to it")
        return True

    return decide
