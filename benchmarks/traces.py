"""Benchmark: real editing traces typed through a server into a second client.

The traces (``automerge-paper``, ``seph-blog1`` from ../shared/data/traces) are first
typed in-process into a pycrdt document, one transaction per trace transaction, in a new
code cell of a notebook: the rate of that is the **limit** (pycrdt alone, nothing else).
The updates it produced are then sent, as fast as the connection takes them, by a writer
client through each server into a reader client, which applies them to its own document.
Sustained rate = trace transactions / (first send -> the reader holds the last one); the
reader's cell text must equal the trace's final text. Each server is a fresh process per
trace; both servers run in the same run.

    .venv/bin/python benchmarks/traces.py            # the whole traces (jupyter-collaboration:
                                                     # the first 30,000 transactions)
    .venv/bin/python benchmarks/traces.py --quick    # the first 5,000 transactions
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import time
from typing import Any

import _harness as h
from pycrdt import Array, Doc, Map, Text

TRACES = ("automerge-paper", "seph-blog1")
EMPTY_NOTEBOOK = json.dumps({
    "cells": [], "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                             "name": "python3"}},
    "nbformat": 4, "nbformat_minor": 5,
}).encode()
CELL_ID = "trace-cell"


def load_trace(name: str, limit: int | None) -> tuple[list[list[list[Any]]], str]:
    with gzip.open(h.TRACES / f"{name}.json.gz") as f:
        data = json.load(f)
    txns = [t["patches"] for t in data["txns"]]
    if limit is None or limit >= len(txns):
        return txns, data["endContent"]
    txns = txns[:limit]
    text = data.get("startContent", "")
    for patches in txns:
        for pos, delete, insert in patches:
            text = text[:pos] + insert + text[pos + delete :]
    return txns, text


def type_in_process(txns: list[list[list[Any]]]) -> tuple[list[bytes], float, str]:
    """Type the trace into a new notebook cell; returns (updates, seconds, final text).

    The first update creates the cell; each following one is one trace transaction.
    """
    doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    cells = doc.get("cells", type=Array)
    with doc.transaction():
        cells.append(Map({
            "id": CELL_ID, "cell_type": "code", "source": Text(), "metadata": Map(),
            "outputs": Array(), "execution_count": None,
        }))
    source: Text = cells[0]["source"]
    start = time.perf_counter()
    for patches in txns:
        with doc.transaction():
            for pos, delete, insert in patches:
                if delete:
                    del source[pos : pos + delete]
                if insert:
                    source.insert(pos, insert)
    elapsed = time.perf_counter() - start
    return updates, elapsed, str(source)


def apply_in_process(updates: list[bytes]) -> float:
    """Seconds to apply the updates to a fresh document (what a relay or receiver does)."""
    doc = Doc()
    start = time.perf_counter()
    for update in updates:
        doc.apply_update(update)
    return time.perf_counter() - start


def trace_text(doc: Doc) -> str | None:
    for cell in doc.get("cells", type=Array):
        if cell.get("id") == CELL_ID:
            return str(cell["source"])
    return None


async def replay(
    server: h.Server, name: str, updates: list[bytes], expected: str, n_txns: int
) -> dict[str, Any]:
    nb = f"trace-{name}.ipynb"
    await server.put_notebook(nb, EMPTY_NOTEBOOK)
    url = await server.open_session(nb)
    assert server.http is not None
    reader = h.YClient(server.http, url)
    writer = h.YClient(server.http, url, apply=False)
    await reader.connect()
    await reader.wait_synced()
    await writer.connect(send_step1=False)
    # A server may relay the updates one frame each or merged (mesh_collab merges a batch's
    # updates per client), and may send frames of its own (mesh_collab marks the notebook
    # saved after each checkpoint): the trace has arrived when the reader's state vector
    # covers the writer's last update; the text is compared then.
    arrived: list[float] = []
    check = asyncio.Event()

    def on_change(t: float) -> None:
        if h.holds(reader.doc, target):
            arrived.append(t)
            check.set()

    reader.on_change = on_change
    frames = [h.update_frame(u) for u in updates]
    final = Doc()
    for update in updates:
        final.apply_update(update)
    target = h.state_vector(final.get_state())
    cpu0 = server.cpu_seconds()
    start = time.perf_counter()
    for i, frame in enumerate(frames):
        await writer.send_raw(frame)
        if i % 64 == 63:
            await asyncio.sleep(0)  # let the reader (same process) read its socket too
    sent = time.perf_counter() - start
    finished = float("nan")
    timeout = time.perf_counter() + 900
    while time.perf_counter() < timeout and not reader.closed.is_set():
        try:
            await asyncio.wait_for(check.wait(), 1)
        except TimeoutError:
            continue
        check.clear()
        if trace_text(reader.doc) == expected:
            finished = arrived[-1]
            break
    elapsed = finished - start
    cpu = server.cpu_seconds() - cpu0
    text = trace_text(reader.doc)
    row = {
        "trace": name,
        "server": server.kind,
        "txns": n_txns,
        "ops_per_s": n_txns / elapsed if elapsed > 0 else float("nan"),
        "seconds": elapsed,
        "send_seconds": sent,
        "text_equal": text == expected,
        "server_cpu_s": cpu,
        "server_rss_MiB": server.rss() / 2**20,
        "reader_closed": reader.close_code if reader.closed.is_set() else "",
    }
    await writer.close()
    await reader.close()
    return row


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    parser.add_argument("--limit", type=int, default=None, help="first N transactions only")
    parser.add_argument(
        "--stock-limit", type=int, default=30000,
        help="first N transactions only for jupyter-collaboration (default 30000; 0: all). "
        "It relays at about 1k transactions/s while one SQLite write per update piles up "
        "behind, so a whole trace takes it over 20 minutes")
    args = parser.parse_args()
    limit = args.limit or (5000 if args.quick else None)
    kinds = args.servers.split(",")
    rows: list[dict[str, Any]] = []
    limits: list[dict[str, Any]] = []
    with h.workdir() as base:
        async with h.servers(kinds, base) as start:
            for name in TRACES:
                txns, expected = load_trace(name, limit)
                updates, typing_s, typed = type_in_process(txns)
                if typed != expected:
                    raise SystemExit(f"{name}: in-process replay does not give endContent")
                apply_s = apply_in_process(updates)
                limits.append({
                    "trace": name,
                    "txns": len(txns),
                    "type_ops_per_s": len(txns) / typing_s,
                    "apply_ops_per_s": len(updates) / apply_s,
                    "update_bytes_mean": sum(map(len, updates)) / len(updates),
                    "final_chars": len(expected),
                })
                print(f"  {name}: in-process {len(txns) / typing_s:,.0f} txn/s", flush=True)
                for kind in kinds:
                    n, text, limit_rate = len(txns), expected, limits[-1]["type_ops_per_s"]
                    if kind == h.STOCK and args.stock_limit and args.stock_limit < n:
                        # A prefix: compare with pycrdt's rate on the same prefix.
                        n = args.stock_limit
                        _, prefix_s, text = type_in_process(txns[:n])
                        limit_rate = n / prefix_s
                    async with start(kind) as server:
                        row = await replay(server, name, updates[: n + 1], text, n)
                    row["limit_ops_per_s"] = limit_rate
                    row["vs_limit"] = row["ops_per_s"] / limit_rate
                    rows.append(row)
                    print(f"  {name} {kind}: {row['ops_per_s']:,.0f} txn/s, "
                          f"equal={row['text_equal']}", flush=True)
    h.print_table("In-process pycrdt (the limit)", limits)
    h.print_table("Trace replay through the server, writer -> server -> reader", rows)
    h.write_results("traces", args, {"limit": limit, "traces": list(TRACES)},
                    {"in_process": limits, "replay": rows})
    unequal = [f"{r['trace']} ({r['server']})" for r in rows if not r["text_equal"]]
    if unequal:
        raise SystemExit(f"the reader's text differs from the trace's: {', '.join(unequal)}")


if __name__ == "__main__":
    asyncio.run(main())
