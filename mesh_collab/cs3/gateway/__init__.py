"""The embedded CS3 gateway: ``EmbeddedGateway`` serves the CS3 APIs over local files.

See :mod:`mesh_collab.cs3.gateway.app`.
"""

from __future__ import annotations

from .app import EmbeddedGateway as EmbeddedGateway

__all__ = ["EmbeddedGateway"]
