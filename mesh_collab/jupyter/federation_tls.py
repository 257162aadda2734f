"""The TLS listener for node-to-node links (``MeshCollabApp.federation_port``).

A node whose browsers use plain http on loopback (the demo, a laptop) can still take the
links of other nodes over TLS: the same Jupyter application is served on a second port with
a certificate, and the node's entry in the mesh directory names ``https://host:port/``. The
links are then ``wss://``, verified by the linking node against ``MeshCollabApp.mesh_ca``.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tornado.httpserver import HTTPServer


@asynccontextmanager
async def federation_listener(state: Any) -> AsyncIterator[None]:
    """Serve the node's application over TLS on ``federation_port`` while the node runs.

    Raises:
        ValueError: the port is set without a certificate and key.
        OSError: the port cannot be bound or the certificate not read.
    """
    config = state.config
    if not config.federation_port:
        yield
        return
    if not (config.federation_certfile and config.federation_keyfile):
        raise ValueError("federation_port needs federation_certfile and federation_keyfile")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.federation_certfile, config.federation_keyfile)
    server = HTTPServer(config.serverapp.web_app, ssl_options=context)
    server.listen(config.federation_port, config.federation_ip)
    config.log.info("mesh_collab: federation links over TLS on %s:%d", config.federation_ip,
                    config.federation_port)
    try:
        yield
    finally:
        server.stop()
