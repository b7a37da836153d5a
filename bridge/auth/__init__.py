"""Who is asking and what they may do: users, API tokens, sessions and the role policy.

- `passwords`: scrypt hashing and constant-time checks.
- `store`: the users and tokens files in `state_dir` (hashes only, mode 0600).
- `sessions`: browser/CLI login sessions, in memory only.
- `policy`: roles and per-user port lists -> allowed or not. Every route asks `policy.allowed`.
"""
