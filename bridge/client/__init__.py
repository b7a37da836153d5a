"""The client side: the library that talks to a bridge, and the commands built on it.

- `http`: `BridgeClient` (TLS with certificate pinning, login, API calls, the console websocket).
- `connect`: the interactive terminal (`serial-bridge connect`): raw mode, escapes, resume.
- `remote`: the remote commands (`login`, `ports`, `log`, `sysrq`, `nmi`, `power`, ...).
"""
