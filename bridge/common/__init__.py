"""Small parsers with no dependencies inside bridge/, used by several layers.

- `termseq`: terminal output split into text and escape sequences (for `connect`'s screen filter
  and the log's readable text).
- `screen`: the filter that keeps a target's output from reaching beyond an operator's screen
  (clipboard writes, requests that make the terminal type back), used by `connect` and the SSH door.
- `telnet`: telnet framing and option negotiation, for the RFC 2217 door (a server) and the telnet
  console transport in bridge.hw (a client).
- `strictjson`: JSON from the network, parsed strictly (no NaN/Infinity, bounded nesting).
"""
