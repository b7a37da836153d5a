"""Time-based one-time passwords (RFC 6238): SHA-1, 6 digits, 30 s steps, one step of slack.

A secret is 160 random bits, stored base32 in the user's record. A code is good for the current
step and the steps just before and after; the step that was used is remembered (the store writes
it atomically) and no code of that step or an earlier one is accepted again, so a code works once.
Steps follow the wall clock, which a bridge without a real-time clock may have had wrong: when the
last step used lies ahead of now (the clock ran ahead then and was stepped back since), codes of
the current window are accepted again, except the last USED_KEPT steps actually used, so a jump
neither locks everyone out until the clock catches up nor lets a code work twice.
Input longer than `MAX_INPUT` characters is refused before any work is done.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Sequence
from urllib.parse import quote, urlencode

from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor import InvalidToken
from cryptography.hazmat.primitives.twofactor.totp import TOTP

DIGITS = 6
STEP = 30
SLACK = 1  # steps either side of now
USED_KEPT = 8  # steps used, remembered beside the last one (see the module docstring)
MAX_INPUT = 10
SECRET_BYTES = 20  # 160 bits (RFC 4226 recommends at least 128, ideally 160)
ISSUER = "serial-bridge"


def new_secret() -> str:
    """A fresh random secret, base32 without padding (what authenticator apps expect)."""
    return base64.b32encode(os.urandom(SECRET_BYTES)).decode().rstrip("=")


def _key(secret: str) -> bytes:
    padded = secret.upper() + "=" * (-len(secret) % 8)
    return base64.b32decode(padded)


def _totp(secret: str) -> TOTP:
    return TOTP(_key(secret), DIGITS, SHA1(), STEP, enforce_key_length=True)


def provisioning_uri(secret: str, account: str, issuer: str = ISSUER) -> str:
    """The `otpauth://totp/...` URI an authenticator app enrolls from."""
    label = quote(f"{issuer}:{account}", safe="@:")
    query = urlencode(
        {"secret": secret, "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS, "period": STEP}
    )
    return f"otpauth://totp/{label}?{query}"


def code_at(secret: str, when: float) -> str:
    """The code for time `when` (tests and the enrolment check use it)."""
    return _totp(secret).generate(int(when)).decode()


def step_of(when: float) -> int:
    return int(when) // STEP


def well_formed(code: object) -> bool:
    """Cheap shape check done before anything else: a short string of digits."""
    return isinstance(code, str) and len(code) <= MAX_INPUT and code.isascii() and code.isdigit()


def fresh(step: int, last_step: int, used: Sequence[int], now_step: int) -> bool:
    """Whether a code of `step` may still be accepted: never a step in `used`; none up to
    `last_step` either, unless `last_step` lies ahead of `now_step` (a clock stepped back)."""
    return step not in used and (step > last_step or last_step > now_step + SLACK)


def verify(
    secret: str, code: object, last_step: int, now: float | None = None, used: Sequence[int] = ()
) -> int | None:
    """The step `code` belongs to if it is valid now (+-1 step) and `fresh`; None otherwise.
    The caller must store the returned step before accepting the login."""
    if not well_formed(code) or len(str(code)) != DIGITS:
        return None
    when = time.time() if now is None else now
    totp = _totp(secret)
    found: int | None = None
    for delta in range(-SLACK, SLACK + 1):
        step = step_of(when) + delta
        try:
            totp.verify(str(code).encode(), step * STEP)
        except InvalidToken:
            continue
        if found is None and fresh(step, last_step, used, step_of(when)):
            found = step
    return found
