"""Small parsers with no dependencies inside bridge/, used by several layers.

- `termseq`: terminal output split into text and escape sequences (for `connect`'s screen filter
  and the log's readable text).
- `strictjson`: JSON from the network, parsed strictly (no NaN/Infinity, bounded nesting).
"""
