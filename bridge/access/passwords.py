"""Password hashing with scrypt (n=2**15, r=8, p=1, 16-byte salt); verification in constant time.

Hashing is CPU and memory heavy (32 MiB each): `hash_async`/`verify_async` run in a thread behind a
small semaphore so parallel logins cannot exhaust the appliance's memory or block the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import os

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

N, R, P, LENGTH = 2**15, 8, 1, 32
_SEMAPHORE_SLOTS = 2
_semaphores: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}
# A hash of a random password: unknown users are checked against it so they cost the same time.
_DUMMY: str | None = None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    key = Scrypt(salt=salt, length=LENGTH, n=N, r=R, p=P).derive(password.encode())
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        if scheme != "scrypt":
            return False
        kdf = Scrypt(salt=base64.b64decode(salt), length=LENGTH, n=int(n), r=int(r), p=int(p))
        kdf.verify(password.encode(), base64.b64decode(key))
        return True
    except (InvalidKey, ValueError):
        return False


def dummy_hash() -> str:
    global _DUMMY
    if _DUMMY is None:
        _DUMMY = hash_password(_b64(os.urandom(18)))
    return _DUMMY


def _semaphore() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    sem = _semaphores.get(loop)
    if sem is None:
        _semaphores.clear()
        sem = _semaphores[loop] = asyncio.Semaphore(_SEMAPHORE_SLOTS)
    return sem


async def verify_async(password: str, encoded: str | None) -> bool:
    """Check a password off the event loop; `encoded=None` (unknown user) costs the same."""
    async with _semaphore():
        target = encoded if encoded is not None else dummy_hash()
        ok = await asyncio.get_running_loop().run_in_executor(
            None, verify_password, password, target
        )
        return ok and encoded is not None


async def hash_async(password: str) -> str:
    async with _semaphore():
        return await asyncio.get_running_loop().run_in_executor(None, hash_password, password)
