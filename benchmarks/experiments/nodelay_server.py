"""Experiment: ``jupyter server`` with mesh_collab's room websockets set to TCP_NODELAY.

Not a benchmark: it patches ``RoomHandler.open`` in this process only, to show what the
change proposed in benchmarks/README.md (Nagle's algorithm on the room websockets) gains.
Use it as the server command of any benchmark::

    BENCH_SERVER_CMD="$PWD/.venv/bin/python $PWD/benchmarks/experiments/nodelay_server.py" \
        .venv/bin/python benchmarks/reconnect.py --quick --servers mesh_collab --out /tmp/x
"""
import sys

from mesh_collab.jupyter import handlers

orig = handlers.RoomHandler.open
async def open_(self, room_id):
    self.set_nodelay(True)
    return await orig(self, room_id)
handlers.RoomHandler.open = open_
from jupyter_server.serverapp import main  # noqa: E402 - after the patch

sys.exit(main())
