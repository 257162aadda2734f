"""mesh_collab: real-time notebook collaboration across ScienceMesh sites, on CS3 storage."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from mesh_collab.errors import MeshCollabError as MeshCollabError
from mesh_collab.resources import ResourceId as ResourceId

try:
    __version__ = version("mesh_collab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
