"""The browser side: the pages `/login`, `/` (ports overview) and `/ports/{name}` (the console, an
xterm.js terminal), their static assets under `/static/`, and two small JSON helpers the pages use
(`GET /api/csrf`, `GET /api/sysrq-keys`, `GET /api/ports/{name}/access`).

Pages are HTML files in `static/html/`; each response gets a fresh nonce that the page's own
script (`static/js/csp-shim.js`) gives to the `<style>` elements xterm.js creates, so the pages run
under a strict Content-Security-Policy without `'unsafe-inline'` (see docs/browser.md).
xterm.js itself lives in `static/vendor/`, copied there by `scripts/build-assets` (the build
backend runs it for every pip install); when it is missing the console page says so, with the fix
for this kind of install, instead of failing silently.
"""

from __future__ import annotations

import functools
import html
import logging
import secrets
from pathlib import Path
from urllib.parse import quote, urlsplit

from aiohttp import web

from bridge.access.policy import Permission, allowed
from bridge.console.port import PortError
from bridge.console.sysrq import SYSRQ_KEYS
from bridge.web.authn import SESSION_COOKIE, authorise, check_host, identity_of
from bridge.web.state import STATE, port_error

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
HTML_DIR = STATIC_DIR / "html"
VENDOR_DIR = STATIC_DIR / "vendor"
"""Where build-assets puts xterm.js; a module attribute so tests can point it elsewhere."""

VENDOR_FILES = ("xterm/xterm.js", "xterm/xterm.css", "addon-fit/addon-fit.js")

CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    "": "text/plain",  # LICENSE files
}


def page_csp(nonce: str) -> str:
    """The pages' policy: only this origin, no inline script; inline `<style>` only with the
    response's nonce (xterm.js creates style elements; the page's shim gives them the nonce)."""
    return (
        "default-src 'none'; script-src 'self'; "
        f"style-src 'self' 'nonce-{nonce}'; "
        "connect-src 'self'; img-src 'self'; font-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def vendor_missing() -> list[str]:
    return [f for f in VENDOR_FILES if not (VENDOR_DIR / f).is_file()]


def vendor_fix() -> str:
    """What brings the terminal's files back: in a source tree (an editable install) its script;
    an installed package was built without them and needs building again where npm is."""
    if (STATIC_DIR.parents[2] / "scripts" / "build-assets").is_file():
        return (
            "Run scripts/build-assets in the source tree this serial-bridge runs from (it needs "
            "Node.js and npm: apt install nodejs npm), then reload."
        )
    return (
        "This installation was built without them. Install Node.js and npm (apt install nodejs "
        "npm), install serial-bridge again from its source (pip install --force-reinstall "
        "SOURCE), restart it and reload."
    )


@functools.cache
def _template(name: str) -> str:
    return (HTML_DIR / name).read_text(encoding="utf-8")


def _render(name: str, status: int = 200, **values: str) -> web.Response:
    """An HTML page from static/html with `{{key}}` placeholders filled in (values escaped)."""
    nonce = secrets.token_urlsafe(18)
    text = _template(name)
    for key, value in {"nonce": nonce, **values}.items():
        text = text.replace("{{" + key + "}}", html.escape(value, quote=True))
    response = web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
    response.headers["Content-Security-Policy"] = page_csp(nonce)
    response.headers["Cache-Control"] = "no-store"
    return response


def _to_login(request: web.Request) -> web.HTTPFound:
    return web.HTTPFound("/login?next=" + quote(request.path, safe="/"))


def local_path(value: str) -> bool:
    """True for a path on this site that no browser can read as another origin: it starts with
    one `/`, has no backslash, no control character and no white space (URL parsers drop tabs and
    newlines, so "/\t/evil.example" is "//evil.example"), and names no host."""
    if not value.startswith("/") or value.startswith("//"):
        return False
    if any(ch == "\\" or ch.isspace() or not ch.isprintable() for ch in value):
        return False
    return urlsplit(value).netloc == "" and urlsplit(value).scheme == ""


async def login_page(request: web.Request) -> web.Response:
    """The sign-in form. A `next` that is not a local path is refused (a redirect to the bare
    form): after signing in, the form's script goes to `next`, so it must not lead off-site."""
    check_host(request)
    nxt = request.query.get("next")
    if nxt is not None and not local_path(nxt):
        raise web.HTTPFound("/login")
    return _render("login.html")


async def ports_page(request: web.Request) -> web.Response:
    check_host(request)
    if identity_of(request) is None:
        raise _to_login(request)
    return _render("ports.html")


async def console_page(request: web.Request) -> web.Response:
    check_host(request)
    name = request.match_info["name"]
    identity = identity_of(request)
    if identity is None:
        raise _to_login(request)
    if name not in request.app[STATE].ports or not identity.may_see_port(name):
        return _render("notfound.html", status=404, port=name)
    missing = vendor_missing()
    if missing:
        log.error(
            "browser terminal assets missing from %s (%s): %s", VENDOR_DIR, missing, vendor_fix()
        )
    return _render(
        "console.html", port=name, vendor="missing" if missing else "ok", vendor_fix=vendor_fix()
    )


async def csrf(request: web.Request) -> web.Response:
    """The CSRF token of the caller's session (the cookie is HttpOnly, so pages ask here); a
    cross-origin page cannot read this answer, and the cookie is SameSite=Strict."""
    identity = authorise(request, Permission.READ)
    session = request.app[STATE].sessions.get(request.cookies.get(SESSION_COOKIE, ""))
    return web.json_response(
        {
            "user": identity.user,
            "role": identity.role,
            "csrf": session.csrf if identity.via == "session" and session else None,
        }
    )


async def port_access(request: web.Request) -> web.Response:
    """Whether the caller may open this port's console, with the same checks as the websocket.
    A browser cannot see why a websocket upgrade was refused; the console page asks here."""
    name = request.match_info["name"]
    identity = authorise(request, Permission.READ, name)
    try:
        request.app[STATE].ports[name].check_enabled()
    except PortError as exc:
        raise port_error(exc) from None
    return web.json_response(
        {
            "port": name,
            "user": identity.user,
            "role": identity.role,
            "write": allowed(identity, Permission.WRITE, name),
            "lines": allowed(identity, Permission.LINES, name),
        }
    )


async def sysrq_keys(request: web.Request) -> web.Response:
    authorise(request, Permission.READ)
    return web.json_response(
        [
            {
                "key": k.key,
                "name": k.name,
                "description": k.description,
                "destructive": k.destructive,
                "needs": k.needs,
            }
            for k in SYSRQ_KEYS.values()
        ]
    )


async def static(request: web.Request) -> web.StreamResponse:
    """Files under static/ (not the page templates); vendor files from VENDOR_DIR."""
    rel = request.match_info["path"]
    if rel.startswith("vendor/"):
        root, rel = VENDOR_DIR, rel.removeprefix("vendor/")
    elif rel.startswith("html/"):
        raise web.HTTPNotFound()
    else:
        root = STATIC_DIR
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        raise web.HTTPNotFound(text="not found")
    response = web.FileResponse(path)
    response.content_type = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
    response.headers["Cache-Control"] = "no-cache"
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/login", login_page)
    app.router.add_get("/", ports_page)
    app.router.add_get("/ports/{name}", console_page)
    app.router.add_get("/api/csrf", csrf)
    app.router.add_get("/api/sysrq-keys", sysrq_keys)
    app.router.add_get("/api/ports/{name}/access", port_access)
    app.router.add_get("/static/{path:.+}", static)
