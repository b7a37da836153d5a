"""The client side: the library that talks to a bridge, and the commands built on it.

- `http`: `BridgeClient` (TLS with certificate pinning, login, API calls, the console websocket).
- `trust`: a first-seen bridge's fingerprint, shown and confirmed on the terminal.
- `connect`: the interactive terminal (`serial-bridge connect`): raw mode, replay, resume.
- `keys`: connect's keyboard: escapes, typed keys told from the terminal's own answers.
- `remote`: the remote commands (`connect`, `log`, `sysrq`, `nmi`, `power`).
- `results`: one human line for an action's answer.
"""
