"""The SSH front door: `ssh alice:node2@bridge` with plain OpenSSH (docs/ssh.md).

A door beside bridge.web, never importing it: it asks `bridge.access` for every decision and
drives the console hub (`bridge.console.port.Port`) like the websocket does.

- `hostkey`: the ed25519 host key in `state_dir/ssh/` and its fingerprint.
- `server`: the listener (asyncssh), its algorithm lists and connection limits.
- `auth`: one connection: authentication (keys, certificates, keyboard-interactive password),
  failure limits, forwarding decisions.
- `terminal`: the channel as a terminal: queued input, line input, output held during prompts.
- `session`: one session channel: second factor, port menu, the console itself, the escape prompt.
- `commands`: the commands of the escape prompt and of `ssh user:port@bridge COMMAND`.
"""
