"""One SSH session channel: the second factor, the port menu, the console, the escape prompt.

After authentication a session runs, in order:
1. the one-time code, for a user with TOTP who has not given one yet (a key or certificate
   login: SSH has no "key, then code" in its authentication, so it is asked here);
2. an exec request (`ssh alice:node2@bridge power cycle`): one command, its exit status;
3. otherwise the port: PORT of `USER:PORT`, or a numbered menu of the ports the user may see;
4. the console: attached to the hub like a websocket client (`Port.attach`), read-write when the
   user may write and the lease is free, else read-only with a notice. The last `[ssh] replay`
   bytes of history come first, so the current prompt or panic is on screen. Keystrokes go to the
   target; an RFC 4335 break request (OpenSSH `~B`) becomes a BREAK (write permission; audited,
   marked in the log), in its place among the keystrokes, so the key typed next is SysRq. The
   escape key (`[ssh] escape`, Ctrl-] by default; twice sends it) opens the command prompt
   (bridge.ssh.commands); console output waits while it is open.

Hub status changes (writer, online/offline) become `[serial-bridge]` lines on this terminal only.
The session is an OpenConsole (bridge.access.consoles): when its credential ends it is told why
and closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncssh

from bridge.access.gate import Denied
from bridge.access.policy import Identity, Permission, allowed
from bridge.console.errors import NotWriter
from bridge.console.port import Attachment, Port, PortError
from bridge.ssh import commands
from bridge.ssh.context import Door, Login
from bridge.ssh.menu import choose_port
from bridge.ssh.notices import Notices
from bridge.ssh.terminal import Break, Terminal

log = logging.getLogger(__name__)
CODE_TRIES = 3


def key_name(key: bytes) -> str:
    """`^]` for a control byte."""
    code = key[0]
    return "^?" if code == 0x7F else f"^{chr(code ^ 0x40)}"


class ConsoleChannel(asyncssh.SSHServerSession[bytes]):
    """asyncssh's session object for one channel of the SSH door."""

    def __init__(self, door: Door, login: Login) -> None:
        self.door, self.login = door, login
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.term: Terminal | None = None
        self.pty = False
        self.size = (80, 24)
        self.command: str | None = None
        self._identity: Identity | None = None
        self.port: Port | None = None
        self.att: Attachment | None = None
        self._task: asyncio.Task[None] | None = None
        self._quit = False
        self._notices: Notices | None = None  # set on attach
        self._told_read_only = False

    # ---- asyncssh callbacks ------------------------------------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan
        chan.set_write_buffer_limits(high=256 * 1024, low=64 * 1024)
        self.term = Terminal(chan)
        self.term.on_message = self._status

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], modes: Any
    ) -> bool:
        self.pty = True
        self.size = (term_size[0] or 80, term_size[1] or 24)
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self.command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        return False  # no SFTP, no SCP

    def session_started(self) -> None:
        assert self.term is not None
        self.term.newline = b"\r\n" if self.pty else b"\n"
        self._task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self.term is not None:
            self.term.feed(data)

    def break_received(self, msec: int) -> bool:
        if self.term is not None:
            self.term.feed_break(msec)
        return True

    def eof_received(self) -> bool:
        if self.term is not None:
            self.term.feed_eof()
        return True  # the session closes the channel when it is done

    def terminal_size_changed(self, width: int, height: int, pixw: int, pixh: int) -> None:
        self.size = (width or self.size[0], height or self.size[1])  # sent on request: `stty`

    def pause_writing(self) -> None:
        if self.term is not None:
            self.term.pause_writing()

    def resume_writing(self) -> None:
        if self.term is not None:
            self.term.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        # The session task ends by itself: an action it started runs to its end and is audited
        # (as on the websocket), then it sees the end of input and detaches.
        if self.term is not None:
            self.term.close()

    # ---- as an OpenConsole (bridge.access.consoles) ------------------------------------------

    @property
    def identity(self) -> Identity:
        assert self._identity is not None
        return self._identity

    @property
    def port_name(self) -> str:
        return self.port.name if self.port is not None else ""

    @property
    def last_input(self) -> float:
        return self.att.last_input if self.att is not None else 0.0

    @property
    def closed(self) -> bool:
        return self.term is None or self.term.closed

    async def end(self, reason: str, going_away: bool = False) -> None:
        if self.term is not None and not self.term.closed:
            self.term.release()
            self.term.say(f"disconnected: {reason}")
            self.term.close()
        if self.chan is not None:
            self.chan.close()

    # ---- the session -------------------------------------------------------------------------

    async def _run(self) -> None:
        term, chan = self.term, self.chan
        assert term is not None and chan is not None
        status = 1
        try:
            status = await self._main(term)
        except Exception:
            log.exception("ssh: session of %s failed", self.login.user)
            term.error("internal error; see the bridge's log")
        finally:
            self.door.consoles.remove(self)
            if self.att is not None and self.port is not None:
                await self.port.detach(self.att)
        if not term.closed:
            term.closed = True
            chan.exit(status)

    async def _main(self, term: Terminal) -> int:
        identity = await self._second_factor(term)
        if identity is None:
            return 1
        self._identity = identity
        if self.command is not None:
            return await self._exec(term, identity, self.command)
        name = self.login.port
        if name is None:
            name = await choose_port(term, self.door, identity)
            if name is None:
                return 0
        try:
            self.door.gate.authorise(identity, Permission.READ, name)
        except Denied as denied:
            term.error(denied.message)
            return 1
        return await self._console(term, identity, self.door.ports[name])

    async def _second_factor(self, term: Terminal) -> Identity | None:
        login, gate = self.login, self.door.gate
        user = gate.users.get(login.user)
        if user is not None and user.totp_secret and not login.mfa:
            for _ in range(CODE_TRIES):
                self._prompt_out(term, "One-time code: ")
                code = await term.read_line(echo=False)
                if not isinstance(code, str):
                    return None
                try:
                    await gate.check_code(login.user, code.strip(), login.peer)
                except Denied as denied:
                    term.error(denied.message)
                    continue
                login.mfa = True  # forwarding on this connection may now use it too
                self.door.audit.record(
                    "login", user=login.user, peer=login.peer, ok=True, via="ssh", method="totp"
                )
                break
            else:
                return None
        identity = gate.identify_ssh(login.user, login.credential, login.mfa, login.generation)
        if identity is None:
            term.error(
                "TOTP is required here: enroll a code first (serial-bridge user totp)"
                if user is not None and not user.totp_secret
                else "your credentials are no longer valid"
            )
        return identity

    def _prompt_out(self, term: Terminal, text: str) -> None:
        """A question: on the terminal, or on standard error for an exec without a pty."""
        if self.command is not None and not self.pty and self.chan is not None:
            self.chan.write_stderr(text.encode())
        else:
            term.show(text, end=False)

    async def _exec(self, term: Terminal, identity: Identity, command: str) -> int:
        port = None
        if self.login.port is not None:
            try:
                self.door.gate.authorise(identity, Permission.READ, self.login.port)
            except Denied as denied:
                term.error(denied.message)
                return 1
            port = self.door.ports[self.login.port]
        inv = commands.Invocation(
            self.door, identity, port, self.login.peer, term.show, None, size=self.size
        )
        return await commands.run(inv, command, term.error)

    # ---- the console -------------------------------------------------------------------------

    async def _console(self, term: Terminal, identity: Identity, port: Port) -> int:
        server = self.door.config().server
        if len(self.door.consoles.of(user=identity.user)) >= server.max_connections_per_user:
            term.error("too many console connections for this user")
            return 1
        may_write = allowed(identity, Permission.WRITE, port.name)
        start = port.replay_start(self.door.ssh.replay)  # from a line start
        try:
            self.att = port.attach(
                term, identity.user, self.login.peer, "rw" if may_write else "ro", False, start
            )
        except PortError as exc:
            term.error(str(exc))
            return 1
        self.port = port
        self.door.consoles.add(self)
        self._notices = Notices(port.mode_of(self.att), port.status()["writer"])
        term.say(self._hello(port, may_write))
        while not self._quit:
            item = await term.read_chunk()
            if item is None:
                break
            if isinstance(item, Break):
                await self._break()
            else:
                await self._keys(term, item)
        return 0

    def _hello(self, port: Port, may_write: bool) -> str:
        assert self.att is not None
        escape = key_name(self.door.ssh.escape)
        state = "" if port.online else " (offline)"
        if port.mode_of(self.att) == "rw":
            mode = "read-write"
        elif not may_write:
            mode = f"read-only (your role is {self.identity.role})"
        else:
            mode = f"read-only: {self._writer()} is writing ({escape} takeover)"
        return f"{port.name}{state}: {mode}; {escape} opens the command prompt ({escape} help)"

    async def _keys(self, term: Terminal, data: bytes) -> None:
        escape = self.door.ssh.escape
        at = data.find(escape)
        if at < 0:
            await self._type(data)
            return
        if at:
            await self._type(data[:at])
        term.unread(data[at + 1 :])
        await self._prompt(term)

    async def _type(self, data: bytes) -> None:
        assert self.port is not None and self.att is not None and self.term is not None
        escape = key_name(self.door.ssh.escape)
        if not allowed(self.identity, Permission.WRITE, self.port.name):
            self._tell_read_only(f"read-only: your role ({self.identity.role}) may only read")
            return
        try:
            await self.port.write(self.att, data)
        except NotWriter:
            writer = self._writer()
            who = f"{writer} is writing" if writer else "nobody is writing"
            self._tell_read_only(f"read-only: {who}; {escape} takeover to type")
        except PortError as exc:
            self.term.say(f"keystrokes refused: {exc}")

    def _writer(self) -> str | None:
        return self._notices.writer if self._notices is not None else None

    def _tell_read_only(self, text: str) -> None:
        if not self._told_read_only and self.term is not None:
            self._told_read_only = True  # once, until the lease changes
            self.term.say(text, held=True)

    async def _break(self) -> None:
        """OpenSSH `~B`: a BREAK, in order among the keystrokes (write permission)."""
        assert self.port is not None and self.term is not None
        inv = self._invocation(self.term)
        await commands.run(inv, "break", self.term.say)

    async def _prompt(self, term: Terminal) -> None:
        escape = self.door.ssh.escape
        term.hold()
        try:
            term.show(f"\n[serial-bridge] command ({key_name(escape)} again sends it): ", end=False)
            first = await term.read_byte()
            if first is None:
                return
            if first == escape[0]:
                term.show("")
                await self._type(escape)
                return
            if isinstance(first, Break):
                term.show("")
                await self._break()
                return
            term.unread(bytes([first]))
            line = await term.read_line()
            if not isinstance(line, str):
                return
            inv = self._invocation(term)
            await commands.run(inv, line, term.say)
            self._quit = inv.quit
            self._told_read_only = False
        finally:
            term.release()

    def _invocation(self, term: Terminal) -> commands.Invocation:
        async def confirm(question: str) -> bool:
            answer = await term.read_line(question)
            return isinstance(answer, str) and answer.strip().lower() in ("y", "yes")

        return commands.Invocation(
            self.door,
            self.identity,
            self.port,
            self.login.peer,
            term.show,
            confirm,
            att=self.att,
            size=self.size,
        )

    def _status(self, message: dict[str, Any]) -> None:
        """A hub message for this client -> `[serial-bridge]` lines, in order with output."""
        term = self.term
        if term is None or self._notices is None:
            return
        notice = self._notices.read(message)
        for line in notice.lines:
            term.say(line, held=True)
        if notice.lease_changed:
            self._told_read_only = False
        if notice.closed:
            self._quit = True
            term.feed_eof()
