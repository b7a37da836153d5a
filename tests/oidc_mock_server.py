"""Serve `oidc-provider-mock` over TLS on 127.0.0.1 (its own CLI has no TLS option).

    python tests/oidc_mock_server.py KEY_AND_CERT.pem   -> prints "PORT n" once listening

The mock takes its issuer from the request's Host, so the bridge's configured issuer must be
exactly https://127.0.0.1:PORT.
"""

from __future__ import annotations

import ssl
import sys

import oidc_provider_mock
from werkzeug.serving import make_server


def main() -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[1])
    app = oidc_provider_mock.app(require_nonce=True)
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=context)
    print(f"PORT {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
