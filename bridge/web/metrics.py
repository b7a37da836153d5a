"""`GET /metrics`: the daemon's state in Prometheus' text format, through prometheus-client.

Nothing is counted here: at each scrape the collectors (bridge.web.collectors, imported at the
first scrape) read what the hub (`Port`), its ring log and the access gate already count, and
prometheus-client writes it out (escaping, HELP/TYPE lines, histogram buckets), so the
exposition is valid by construction (`promtool check metrics` in the tests). docs/metrics.md
lists every series.

What a scrape shows depends on who asks: an identity restricted to some ports sees only those
ports' series; bridge-wide series (logins, the process) only an identity that may see every port.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from bridge.access.policy import Permission
from bridge.web.authn import authorise
from bridge.web.state import STATE

if TYPE_CHECKING:
    from bridge.console.port import Port


async def metrics(request: web.Request) -> web.Response:
    identity = authorise(request, Permission.READ)
    state = request.app[STATE]
    from bridge.web.collectors import scrape  # prometheus-client: loaded at the first scrape

    everything = identity.ports is None  # may see every port: the bridge-wide series too
    visible = [p for name, p in sorted(state.ports.items()) if identity.may_see_port(name)]
    stores = state.storage(bridge=everything)
    stores = {k: v for k, v in stores.items() if _visible(k, visible)}
    body, content_type = scrape(
        visible, stores, state.gate if everything else None, state.audit_sinks
    )
    return web.Response(body=body, headers={"Content-Type": content_type})


def _visible(store: str, ports: list[Port]) -> bool:
    """A port's ring log only to who may see the port; the other stores were filtered above."""
    return not store.startswith("log:") or any(store == f"log:{p.name}" for p in ports)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
