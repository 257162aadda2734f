"""Benchmark: opening notebooks, mesh_collab next to the stock jupyter-collaboration server.

For each notebook of ../shared/data/notebooks plus a generated 5 MB / 1000-cell one:

* **cold**: the room is not open. Time from the session request (``PUT
  /api/collaboration/session``) through the websocket handshake until the client's document
  holds every cell of the notebook;
* **warm**: the room is open (a first client stays connected); time from connecting until a
  new client holds the whole document (median of 3).

"Holds the whole document" is checked on the client's own document: as many cells as the
file, and the same total source length. Both servers run as processes in the same run. Each
server gets ``--settle`` seconds (default 2) after it answers before the first open, as a
browser takes to load JupyterLab: a mesh_collab node starts its worker process for large
notebooks then (``start_worker``), which the first large notebook would otherwise wait for.

    .venv/bin/python benchmarks/open_notebook.py            # 11 notebooks + the 5 MB one
    .venv/bin/python benchmarks/open_notebook.py --quick    # 3 small notebooks
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import _harness as h
from pycrdt import Array

QUICK = ["notebook3.ipynb", "Running_Code.ipynb", "test4.ipynb"]
GENERATED = "generated-5MB-1000cells.ipynb"


def shape(data: bytes) -> tuple[int, int]:
    nb = json.loads(data)
    total = 0
    for cell in nb["cells"]:
        source = cell.get("source", "")
        total += len("".join(source) if isinstance(source, list) else source)
    return len(nb["cells"]), total


def holds(client: h.YClient, n_cells: int, chars: int) -> bool:
    cells = client.doc.get("cells", type=Array)
    if len(cells) != n_cells:
        return False
    # pycrdt Text lengths count UTF-8 bytes; compare characters.
    return sum(len(str(cell["source"])) for cell in cells) == chars


async def join(server: h.Server, url: str, n_cells: int, chars: int) -> tuple[h.YClient, float]:
    """Connect a client; return it and the seconds until it holds the whole document."""
    assert server.http is not None
    start = time.perf_counter()
    client = h.YClient(server.http, url)
    changed = asyncio.Event()
    client.on_change = lambda t: changed.set()
    await client.connect()
    await client.wait_synced()
    deadline = time.perf_counter() + 120
    while not holds(client, n_cells, chars):
        if time.perf_counter() > deadline or client.closed.is_set():
            raise RuntimeError(f"{server.kind}: client never got the whole document")
        changed.clear()
        try:
            await asyncio.wait_for(changed.wait(), 1)
        except TimeoutError:
            pass
    return client, time.perf_counter() - start


async def measure(server: h.Server, name: str, data: bytes, index: int) -> dict[str, Any]:
    n_cells, chars = shape(data)
    path = f"open-{index}.ipynb"
    await server.put_notebook(path, data)
    start = time.perf_counter()
    url = await server.open_session(path)
    first, _ = await join(server, url, n_cells, chars)
    cold = time.perf_counter() - start
    warm = []
    for _ in range(3):
        client, seconds = await join(server, url, n_cells, chars)
        warm.append(seconds)
        await client.close()
    sync_bytes = first.bytes_in
    await first.close()
    return {
        "notebook": name,
        "server": server.kind,
        "file_KB": len(data) / 1000,
        "cells": n_cells,
        "cold_ms": cold * 1000,
        "warm_ms": statistics.median(warm) * 1000,
        "bytes_to_client_KB": sync_bytes / 1000,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds between a server answering and the first open")
    args = parser.parse_args()
    if args.quick:
        notebooks = [(n, (h.NOTEBOOKS / n).read_bytes()) for n in QUICK]
    else:
        notebooks = [(p.name, p.read_bytes()) for p in sorted(h.NOTEBOOKS.glob("*.ipynb"),
                                                             key=lambda p: p.stat().st_size)]
        notebooks.append((GENERATED, h.notebook_5mb()))
    kinds = args.servers.split(",")
    rows: list[dict[str, Any]] = []
    with h.workdir() as base:
        async with h.servers(kinds, base) as start:
            for kind in kinds:
                async with start(kind) as server:
                    await asyncio.sleep(args.settle)
                    # Warm-up: first room of the process (imports, first file id, first fsync).
                    await measure(server, "warm-up", (h.NOTEBOOKS / QUICK[0]).read_bytes(), 999)
                    for i, (name, data) in enumerate(notebooks):
                        row = await measure(server, name, data, i)
                        rows.append(row)
                        print(f"  {kind} {name}: cold {row['cold_ms']:.0f} ms, "
                              f"warm {row['warm_ms']:.0f} ms", flush=True)
    order = {name: i for i, (name, _) in enumerate(notebooks)}
    rows.sort(key=lambda r: (order[r["notebook"]], r["server"]))
    h.print_table("Opening a notebook: until a new client holds the whole document", rows)
    h.write_results("open_notebook", args, {"notebooks": [n for n, _ in notebooks]}, rows)


if __name__ == "__main__":
    asyncio.run(main())
