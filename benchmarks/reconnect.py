"""Benchmark: resyncing a client that missed K updates, mesh_collab next to the stock server.

Client B holds the notebook and disconnects (keeping its document); client A types K
keystrokes (one update each, at the end of the first cell); an observer confirms the server
has them all; then B reconnects with its old document (sync step 1 with its state vector).
Measured: the bytes the server sends B (the sync step 2 payload, and everything on the
socket until B is in sync), compared with the bytes of the K updates B missed, and the time
from connecting until B's document equals A's. For several document sizes: the resync should
depend on K, not on the size of the document. Both servers run as processes in the same run.

    .venv/bin/python benchmarks/reconnect.py            # 4 documents up to 5 MB, K up to 1000
    .venv/bin/python benchmarks/reconnect.py --quick    # 2 small documents, K = 10, 100
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import _harness as h


async def wait_for(event_check: Any, client: h.YClient, limit: float = 60) -> None:
    """Wait until ``event_check()`` holds, re-checking whenever ``client`` applies a frame."""
    changed = asyncio.Event()
    client.on_change = lambda t: changed.set()
    deadline = time.perf_counter() + limit
    while not event_check():
        if time.perf_counter() > deadline or client.closed.is_set():
            raise RuntimeError("timed out waiting for the document")
        changed.clear()
        try:
            await asyncio.wait_for(changed.wait(), 1)
        except TimeoutError:
            pass
    client.on_change = None


async def run_doc(
    server: h.Server, label: str, data: bytes, ks: list[int], index: int
) -> list[dict[str, Any]]:
    name = f"reconnect-{index}.ipynb"
    await server.put_notebook(name, data)
    url = await server.open_session(name)
    assert server.http is not None
    typist, observer, victim = (h.YClient(server.http, url) for _ in range(3))
    for client in (typist, observer, victim):
        await client.connect()
        await client.wait_synced()
    full_sync = victim.step2_bytes
    rows = []
    for k in ks:
        await victim.close()
        doc = victim.doc
        source = h.cell_source(typist.doc, 0)
        missed = missed_frames = 0
        for _ in range(k):
            updates = await typist.edit(lambda d, s=source: s.insert(len(s), "x"))
            missed += sum(map(len, updates))
            missed_frames += sum(len(h.update_frame(u)) for u in updates)
        target = str(source)
        await wait_for(lambda t=target: str(h.cell_source(observer.doc, 0)) == t, observer)
        victim = h.YClient(server.http, url, doc=doc)
        start = time.perf_counter()
        await victim.connect()
        await wait_for(lambda v=victim, t=target: v.synced.is_set()
                       and str(h.cell_source(v.doc, 0)) == t, victim)
        seconds = time.perf_counter() - start
        rows.append({
            "document": label,
            "server": server.kind,
            "doc_KB": full_sync / 1000,
            "K": k,
            "missed_B": missed,
            "resync_step2_B": victim.step2_bytes,
            "resync_total_B": victim.bytes_in,
            "ratio": victim.step2_bytes / missed,
            "ms": seconds * 1000,
        })
    await asyncio.gather(*(c.close() for c in (typist, observer, victim)))
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    args = parser.parse_args()
    if args.quick:
        docs = [(n, (h.NOTEBOOKS / n).read_bytes()) for n in
                ("notebook3.ipynb", "Running_Code.ipynb")]
        ks = [10, 100]
    else:
        docs = [(n, (h.NOTEBOOKS / n).read_bytes()) for n in
                ("notebook3.ipynb", "Running_Code.ipynb",
                 "02_end_to_end_machine_learning_project.ipynb")]
        docs.append(("generated-5MB-1000cells", h.notebook_5mb()))
        ks = [1, 10, 100, 1000]
    kinds = args.servers.split(",")
    rows: list[dict[str, Any]] = []
    with h.workdir() as base:
        async with h.servers(kinds, base) as start:
            for kind in kinds:
                async with start(kind) as server:
                    await run_doc(server, "warm-up", docs[0][1], [1], 999)
                    for i, (label, data) in enumerate(docs):
                        doc_rows = await run_doc(server, label, data, ks, i)
                        rows.extend(doc_rows)
                        print(f"  {kind} {label}: " + ", ".join(
                            f"K={r['K']} {r['resync_step2_B']} B ({r['ratio']:.2f}x) "
                            f"{r['ms']:.1f} ms" for r in doc_rows), flush=True)
    order = {label: i for i, (label, _) in enumerate(docs)}
    rows.sort(key=lambda r: (order[r["document"]], r["K"], r["server"]))
    h.print_table("Reconnect after missing K updates: bytes and time to resync", rows)
    h.write_results("reconnect", args, {"documents": [d for d, _ in docs], "K": ks}, rows)


if __name__ == "__main__":
    asyncio.run(main())
