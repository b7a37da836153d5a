"""What is kept on flash: the console ring log, its on-disk format, text export and the audit trail.

- `ringlog`: the preallocated circular console log per port (append, read by offset/time, recovery).
- `ringformat`: its block and record layout (CRC, sequence numbers).
- `textexport`: bytes -> safe readable text (control sequences neutralised).
- `audit`: the JSON-lines audit trail (who did what, when), with rotation.
"""
