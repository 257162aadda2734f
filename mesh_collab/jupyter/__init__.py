"""mesh_collab as a jupyter_server extension: app, contents, identity, file ids, handlers.

Installing the package enables it: ``jupyter-config/jupyter_server_config.d/mesh_collab.json``
(installed to ``etc/jupyter/jupyter_server_config.d/``) turns on ``mesh_collab.jupyter`` and
turns off ``jupyter_server_ydoc``, so that exactly one implementation serves
``/api/collaboration/*``. The JupyterLab collaboration frontend stays as it is.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """The extension point jupyter_server loads (imported lazily: handlers.py imports us)."""
    from mesh_collab.jupyter.app import MeshCollabApp

    return [{"module": "mesh_collab.jupyter", "app": MeshCollabApp}]
