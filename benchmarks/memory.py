"""Benchmark: server memory per open room, mesh_collab next to jupyter-collaboration.

Opens M rooms, each on its own copy of a generated 100-cell notebook (about 65 KB, 20k
characters of source plus small outputs), and reads the server process's resident memory
(RSS) after 1, 10, 100 and 1000 open rooms. A room is opened the way the frontend does it
(session request, websocket, full sync), then its client leaves; both servers keep idle
rooms open for ``document_cleanup_delay`` (set to an hour here), so the rooms stay open and
nothing but rooms is measured. Both servers run as processes in the same run.

    .venv/bin/python benchmarks/memory.py            # up to 1000 rooms
    .venv/bin/python benchmarks/memory.py --quick    # up to 10 rooms
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from typing import Any

import _harness as h
from pycrdt import Doc

from mesh_collab import notebook


def notebook_100() -> bytes:
    """A 100-cell notebook: 50 markdown and 50 code cells, ~20k characters of source."""
    return h.generated_notebook(100, 85_000, seed=100)


def in_process_size(data: bytes) -> tuple[int, int]:
    """(encoded CRDT state bytes, Python-side RSS growth per doc) of the notebook, for
    scale: the same load mesh_collab does, without a server."""
    import psutil
    from jupyter_ydoc import YNotebook

    nb = json.loads(data)
    docs = []
    gc.collect()
    before = psutil.Process().memory_info().rss
    for _ in range(50):
        doc = Doc()
        notebook.load(YNotebook(ydoc=doc), nb)
        docs.append(doc)
    gc.collect()
    per_doc = (psutil.Process().memory_info().rss - before) // 50
    return len(docs[0].get_update()), per_doc


async def settle(server: h.Server) -> int:
    """RSS once background work after opening (first checkpoints, lock, file stat) settled."""
    await asyncio.sleep(2.0)
    return server.rss()


async def open_rooms(server: h.Server, first: int, last: int, data: bytes) -> None:
    gate = asyncio.Semaphore(8)
    assert server.http is not None

    async def open_one(i: int) -> None:
        async with gate:
            name = f"mem-{i:04d}.ipynb"
            await server.put_notebook(name, data)
            url = await server.open_session(name)
            client = h.YClient(server.http, url)
            await client.connect()
            await client.wait_synced()
            await client.close()

    await asyncio.gather(*(open_one(i) for i in range(first, last)))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    args = parser.parse_args()
    steps = [1, 10] if args.quick else [1, 10, 100, 1000]
    kinds = args.servers.split(",")
    data = notebook_100()
    state_bytes, doc_rss = in_process_size(data)
    rows: list[dict[str, Any]] = []
    with h.workdir() as base:
        async with h.servers(kinds, base, cleanup_delay=3600) as start:
            for kind in kinds:
                async with start(kind) as server:
                    # One room on another notebook first: code paths loaded, caches warm.
                    await server.put_notebook("warm.ipynb",
                                              (h.NOTEBOOKS / "notebook3.ipynb").read_bytes())
                    url = await server.open_session("warm.ipynb")
                    assert server.http is not None
                    client = h.YClient(server.http, url)
                    await client.connect()
                    await client.wait_synced()
                    await client.close()
                    baseline = await settle(server)
                    opened = 0
                    for step in steps:
                        t0 = time.perf_counter()
                        await open_rooms(server, opened, step, data)
                        seconds = time.perf_counter() - t0
                        opened = step
                        rss = await settle(server)
                        rows.append({
                            "server": kind,
                            "rooms": step,
                            "rss_MiB": rss / 2**20,
                            "baseline_MiB": baseline / 2**20,
                            "per_room_KiB": (rss - baseline) / step / 1024,
                            "open_s": seconds,
                        })
                        print(f"  {kind}: {step} rooms, RSS {rss / 2**20:.0f} MiB, "
                              f"{(rss - baseline) / step / 1024:.0f} KiB/room", flush=True)
    h.print_table("Server RSS with open rooms (100-cell notebook each)", rows)
    print(f"\nnotebook: {len(data):,} bytes, CRDT state {state_bytes:,} bytes; one pycrdt doc "
          f"of it in a bare process: {doc_rss / 1024:.0f} KiB RSS")
    config = {"steps": steps, "notebook_bytes": len(data), "state_bytes": state_bytes,
              "bare_doc_rss_bytes": doc_rss}
    h.write_results("memory", args, config, rows)


if __name__ == "__main__":
    asyncio.run(main())
