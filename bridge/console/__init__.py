"""One target's console: the hub that reads the UART, the writer lease, actions and fan-out.

- `port`: the hub (`Port`): owns a transport, numbers every byte with an offset, feeds the ring log
  and the subscribers, reopens a lost device.
- `lease`: who may type (one writer, the rest read-only), take-over, idle expiry, `on_release`.
- `actions`: BREAK, SysRq, NMI/reset/power, one at a time, with keystrokes held during BREAK+key.
- `fanout`: cursor-based subscribers: live clients share one chunk, slow ones catch up from history.
- `scrollback`: the in-memory tail of recent output.
- `sysrq`: the kernel's SysRq keys, validation and descriptions.
"""
