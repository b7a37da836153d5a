"""The network side: aiohttp routes, authentication of requests, the console websocket, pages.

- `app`: the application, its shared state and the security middleware.
- `authn`: who is asking (session cookie, bearer token), CSRF and Origin/Host checks.
- `api`: the JSON HTTP API (login, ports, actions, health, metrics).
- `console`: the console websocket and its message protocol.
- `frames`: websocket frames built once per chunk and shared by every client.
"""
