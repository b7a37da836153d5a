"""The SSH front door: `ssh alice:node2@bridge` with plain OpenSSH (docs/ssh.md).

A door beside bridge.web, never importing it: it asks `bridge.access` for every decision and
drives the console hub (`bridge.console.port.Port`) like the websocket does.

- `context`: what every connection shares (config, gate, ports, audit, open consoles), `Login`.
- `hostkey`: the ed25519 host key in `state_dir/ssh/` and its fingerprint.
- `server`: the listener (asyncssh), its algorithm lists and connection limits.
- `auth`: one connection: authentication (keys, certificates, keyboard-interactive password),
  failure limits, what it may open.
- `forward`: `ssh -L` to a port's RFC 2217 endpoint, and nothing else.
- `terminal`: the channel as a terminal: queued input, line input, output held during prompts.
- `session`: one session channel: second factor, the console itself, the escape prompt.
- `menu`: the port menu of a login without a port.
- `notices`: hub status messages as `[serial-bridge]` lines.
- `commands`: the commands of the escape prompt and of `ssh user:port@bridge COMMAND`.
"""
