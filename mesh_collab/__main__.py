"""``python -m mesh_collab``: the ``mesh-collab`` command line."""

from __future__ import annotations

import sys

from mesh_collab.cli import main

sys.exit(main())
