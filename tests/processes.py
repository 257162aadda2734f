"""Child processes of the test process, for tests of what a node starts."""

from __future__ import annotations

import psutil


def pool_workers() -> set[int]:
    """The pids of this process's anyio worker processes (``anyio.to_process``)."""
    return {p.pid for p in psutil.Process().children() if "anyio.to_process" in p.cmdline()}
