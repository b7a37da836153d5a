"""One target's console: the hub that reads the UART, the writer lease, actions and fan-out.

- `port`: the hub (`Port`): owns a transport, numbers every byte with an offset, feeds the ring log
  and the subscribers, reopens a lost device.
- `alerts`: output lines matched against alert rules (rate limits, boot timing).
- `events`: what happened, recorded: ring log markers, `event` messages to clients, the audit.
- `playbook`, `rescue`: recovery playbooks (TOML, shipped in `playbooks/` and the site's) and the
  runner that plays one on the port, holding the writer lease pinned.
- `coalesce`: a stream's small reads gathered into fewer chunks; typing never delayed.
- `lease`: who may type (one writer, the rest read-only), take-over, idle expiry, `on_release`,
  and the client slots kept for those who may write.
- `actions`: BREAK, SysRq, NMI/reset/power, one at a time (pre-emption, cancel, bounds), with
  keystrokes held during BREAK+key and checked against `sysrq_deny` after a BREAK.
- `errors`: what the console refuses, each with the HTTP status that fits.
- `fanout`: cursor-based subscribers: live clients share one chunk, slow ones catch up from history.
- `scrollback`: the in-memory tail of recent output, for a port that keeps no ring log.
- `replay`: reads over a port's one history store, and where a replay starts.
- `sysrq`: the kernel's SysRq keys, validation and descriptions.
"""
