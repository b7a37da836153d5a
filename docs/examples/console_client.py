#!/usr/bin/env python3
"""A minimal serial-bridge client, written from docs/protocol.md alone (aiohttp, nothing else).

It pins the bridge's certificate, authenticates (an API token, or a password login that keeps the
`__Host-` session cookie), lists the ports, opens one console websocket, types a line (Enter is
`\\r`), prints what the target answers until an expected text appears, and logs out (a
state-changing request: it carries the CSRF token and the Origin).

    SERIAL_BRIDGE_TOKEN=sbt_... console_client.py https://bridge:8443/lab1 \\
        --fingerprint SHA256:3f9a...c41e --send 'uname -a' --expect Linux
    echo "$PASSWORD" | console_client.py https://192.0.2.10:8443/lab1 --user alice \\
        --fingerprint SHA256:3f9a...c41e --send 'uname -a' --expect Linux

Exit status: 0 when the expected text arrived (or nothing was expected), 1 when it did not
within --timeout seconds, 2 on a refusal (HTTP error, closed websocket).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any
from urllib.parse import urlsplit

import aiohttp


class Refused(Exception):
    """The bridge said no: an HTTP error answer or a closed websocket."""


def pin(fingerprint: str) -> aiohttp.Fingerprint:
    """`SHA256:<hex>` (as `serial-bridge cert show` prints it) is the SHA-256 of the DER-encoded
    certificate; aiohttp compares exactly that digest, and needs no CA for it."""
    return aiohttp.Fingerprint(bytes.fromhex(fingerprint.removeprefix("SHA256:").replace(":", "")))


async def check(response: aiohttp.ClientResponse) -> Any:
    """The JSON body of a 2xx answer; otherwise Refused with the bridge's `{"error": ...}`."""
    if response.status >= 400:
        try:
            reason = (await response.json())["error"]
        except (aiohttp.ContentTypeError, json.JSONDecodeError, KeyError, TypeError):
            reason = response.reason
        raise Refused(f"{response.method} {response.url.path}: {response.status} {reason}")
    return await response.json()


async def run(args: argparse.Namespace, password: str | None, token: str | None) -> int:
    url = urlsplit(args.url)
    base, port = f"https://{url.netloc}", url.path.strip("/")
    # Origin: exactly "https://" + the Host header sent (host[:port] as in the URL). Needed on
    # the websocket with a session cookie, and on every cookie-authenticated POST.
    headers = {"Origin": base}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    # unsafe=True: aiohttp's default jar drops every cookie of a host given as an IP address,
    # and with it the __Host-sb_session cookie.
    jar = aiohttp.CookieJar(unsafe=True)
    connector = aiohttp.TCPConnector(ssl=pin(args.fingerprint))
    async with aiohttp.ClientSession(connector=connector, cookie_jar=jar, headers=headers) as http:
        csrf = None
        if not token:
            body = {"username": args.user, "password": password}
            if args.totp:
                body["totp"] = args.totp
            async with http.post(f"{base}/api/login", json=body) as resp:
                csrf = (await check(resp))["csrf"]
        async with http.get(f"{base}/api/ports") as resp:
            for p in await check(resp):  # here `viewers` is a count
                online = "online" if p["online"] else "offline"
                print(f"port {p['name']}: {online}, {p['viewers']} viewer(s)", file=sys.stderr)
        try:
            found = await console(http, base, port, args)
        finally:
            if csrf is not None:
                async with http.post(f"{base}/api/logout", headers={"X-CSRF-Token": csrf}) as resp:
                    await check(resp)
    return 0 if found else 1


async def console(
    http: aiohttp.ClientSession, base: str, port: str, args: argparse.Namespace
) -> bool:
    """Open the console, type `--send` + Enter, print output until `--expect` is seen."""
    ws_url = f"{base.replace('https://', 'wss://')}/api/ports/{port}/console"
    try:
        # without `from`: live output only; from=N replays from offset N, from=-N the last N bytes
        query = {"mode": "rw"} if args.from_ is None else {"mode": "rw", "from": str(args.from_)}
        ws = await http.ws_connect(ws_url, params=query)
    except aiohttp.WSServerHandshakeError as exc:
        raise Refused(f"websocket: {exc.status} {exc.message}") from None
    async with ws:
        position, seen, sent = 0, b"", False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.timeout
        while not (args.expect and args.expect.encode() in seen):
            left = deadline - loop.time()
            if left <= 0:
                return not args.expect
            try:
                msg = await ws.receive(timeout=left)
            except TimeoutError:
                continue
            if msg.type == aiohttp.WSMsgType.BINARY:  # console output
                position += len(msg.data)
                seen = (seen + msg.data)[-65536:]
                sys.stdout.buffer.write(msg.data)
                sys.stdout.flush()
            elif msg.type == aiohttp.WSMsgType.TEXT:  # a JSON control message
                event = json.loads(msg.data)
                print(f"[{event['type']}] {msg.data}", file=sys.stderr)
                if event["type"] == "hello":
                    # `hello.offset` is where the bytes that follow start; here `viewers` is a
                    # list of user names. The writer lease may be someone else's: then we are
                    # read-only and keystrokes would be refused.
                    position = event["offset"]
                    if args.send is not None and event["mode"] == "rw":
                        await ws.send_bytes(args.send.encode() + b"\r")  # Enter is CR
                        sent = True
                elif event["type"] == "gap":  # not held (too slow, or a crash): continue at `to`
                    position = event["to"]
            else:
                raise Refused(f"websocket closed: {ws.close_code} {msg.extra or ''}".rstrip())
        if args.send is not None and not sent:
            print("not sent: another client holds the write lease", file=sys.stderr)
        print(
            f"\n(at offset {position}: reconnect with from={position} to resume)", file=sys.stderr
        )
        return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="https://HOST:PORT/PORTNAME")
    parser.add_argument("--fingerprint", required=True, help="SHA256:<hex> of the certificate")
    parser.add_argument("--user", help="log in with a password read from standard input")
    parser.add_argument("--totp", help="a one-time code, if the account has TOTP")
    parser.add_argument("--send", help="a line to type (Enter is added)")
    parser.add_argument("--expect", help="wait until the output contains this text")
    parser.add_argument("--from", dest="from_", type=int, help="replay from this offset first")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    args = parser.parse_args()
    token = os.environ.get("SERIAL_BRIDGE_TOKEN")
    if not token and not args.user:
        parser.error("give --user (password on standard input) or set SERIAL_BRIDGE_TOKEN")
    password = None if token else sys.stdin.readline().rstrip("\r\n")
    try:
        return asyncio.run(run(args, password, token))
    except aiohttp.ServerFingerprintMismatch as exc:  # before anything was sent
        print(f"refused: certificate {exc.got.hex()} is not the pinned one", file=sys.stderr)
        return 2
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
