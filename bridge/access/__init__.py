"""Who is asking and what they may do, independent of any protocol; every front door asks here.

- `passwords`: scrypt hashing and constant-time checks.
- `store`: the users and tokens files in `state_dir` (hashes only, mode 0600).
- `sessions`: login sessions, in memory only.
- `totp`: one-time codes (RFC 6238) for the second factor.
- `throttle`: login throttling per account and per source.
- `policy`: roles and per-user port lists -> allowed or not.
"""
