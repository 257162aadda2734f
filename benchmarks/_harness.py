"""Shared pieces of the collaboration benchmarks (not a benchmark itself).

* :func:`gateway` runs ``mesh-collab gateway`` as a process;
* :func:`mesh_server` and :func:`stock_server` run a real ``jupyter server`` process each:
  mesh_collab against the gateway (single-user, einstein), and the stock
  jupyter-collaboration 5 server (``jupyter_server_ydoc``) on a local root folder. Both load
  the same minimal set of extensions (no jupyterlab, terminals, lsp or notebook_shim), log at
  WARNING and listen on 127.0.0.1;
* :class:`YClient` is a y-websocket client (aiohttp websocket + pycrdt ``Doc``), light
  enough to run a few hundred of them in the one client process (the benchmark script);
* notebook generators, percentiles, the table printer and the JSON writer.
"""

# Benchmark set-up reads and writes small local files (runtime files, notebooks) from async
# code on purpose; nothing else runs in these processes meanwhile.
# ruff: noqa: ASYNC240

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import psutil
from pycrdt import Array, Doc, Map, Text

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
#: ../shared/data beside the checkout (the benchmarks alone use it; the tests ship theirs).
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NOTEBOOKS = DATA / "notebooks"
TRACES = DATA / "traces"
TOKEN = "mesh-collab-bench"
USER, PASSWORD = "einstein", "relativity"
HOME = f"/home/{USER}"

MESH = "mesh_collab"
STOCK = "jupyter-collaboration"
KINDS = (MESH, STOCK)
#: Not a server under test: the bare pycrdt relay of ``_floor_server.py`` (fanout.py only).
FLOOR = "floor"

# Extensions both servers run without (they cost memory and start-up time, and are the same
# for both): only the collaboration server under test is loaded.
_COMMON_OFF = {
    "jupyterlab": False,
    "jupyter_lsp": False,
    "notebook_shim": False,
    "jupyter_server_terminals": False,
}


# --- processes -------------------------------------------------------------------------------


def gateway(root: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start ``mesh-collab gateway`` on free ports; return the process and its addresses."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh_collab", "--log-level", "WARNING", "gateway",
         "--root", str(root), "--port", "0", "--data-port", "0", "--demo-users"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit("the gateway did not start")
    return proc, json.loads(line)


def stop(proc: subprocess.Popen[Any] | asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()


@dataclass
class Server:
    """One running collaboration server process."""

    kind: str
    url: str
    pid: int
    root: Path
    log_path: Path
    grpc: str = ""
    http: aiohttp.ClientSession | None = None
    _cs3: Any = None
    _session: Any = None

    @property
    def ws_base(self) -> str:
        return self.url.replace("http://", "ws://") + "api/collaboration/room/"

    def rss(self) -> int:
        """Resident memory of the server process, bytes."""
        return int(psutil.Process(self.pid).memory_info().rss)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process used so far."""
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    async def put_notebook(self, name: str, data: bytes) -> None:
        """Store a notebook where the server reads it (CS3 home, or the root folder)."""
        if self.kind == MESH:
            await self._session.files.write(f"{HOME}/{name}", data)
        else:
            (self.root / name).write_bytes(data)

    async def open_session(self, name: str) -> str:
        """``PUT /api/collaboration/session/<name>``; returns the room's websocket URL."""
        if self.kind == FLOOR:
            return f"{self.url.replace('http://', 'ws://')}{quote(name)}"
        assert self.http is not None
        return await open_session(self.http, self.url, TOKEN, name)


async def open_session(http: aiohttp.ClientSession, url: str, token: str, name: str) -> str:
    """Open notebook ``name`` like the frontend does (``PUT /api/collaboration/session/``) at
    the Jupyter server ``url``; returns the room's websocket URL, with the session id."""
    async with http.put(
        f"{url}api/collaboration/session/{quote(name)}",
        data=json.dumps({"format": "json", "type": "notebook"}),
        headers={"Authorization": f"token {token}"},
    ) as response:
        body = await response.text()
        if response.status not in (200, 201):
            raise RuntimeError(f"{url}: session {name}: {response.status} {body}")
        session = json.loads(body)
    room = f"json:notebook:{session['fileId']}"
    query = f"sessionId={quote(session['sessionId'])}&token={token}"
    return f"{url.replace('http://', 'ws://')}api/collaboration/room/{room}?{query}"


async def _announced(runtime: Path, proc: asyncio.subprocess.Process, log_path: Path) -> str:
    deadline = time.monotonic() + 120
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            for found in runtime.glob("jpserver-*.json"):
                text = found.read_text()
                if not text:
                    continue
                url = f"http://127.0.0.1:{json.loads(text)['port']}/"
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{url}api") as response:
                        if response.status == 200:
                            return url
            if proc.returncode is not None:
                raise RuntimeError(f"jupyter server exited:\n{log_path.read_text()[-3000:]}")
            # A starting process gives no event to wait on: poll, under the deadline.
            await asyncio.sleep(0.1)
    raise RuntimeError(f"jupyter server did not start:\n{log_path.read_text()[-3000:]}")


@contextlib.asynccontextmanager
async def jupyter_server(
    kind: str,
    base: Path,
    *,
    grpc: str = "",
    cleanup_delay: float = 60.0,
    extra: Iterable[str] = (),
) -> AsyncIterator[Server]:
    """Run one ``jupyter server`` process of ``kind`` with its state under ``base``."""
    base.mkdir(parents=True, exist_ok=True)
    dirs = {name: base / name for name in ("config", "data", "runtime", "root", "cwd")}
    for path in dirs.values():
        path.mkdir(exist_ok=True)
    if kind == MESH:
        extensions = {**_COMMON_OFF, "mesh_collab.jupyter": True, "jupyter_server_ydoc": False,
                      "jupyter_server_fileid": False}
        args = [
            f"--MeshCollabApp.gateway={grpc}",
            f"--MeshCollabApp.cs3_username={USER}",
            f"--MeshCollabApp.data_dir={base / 'node'}",
            f"--MeshCollabApp.document_cleanup_delay={cleanup_delay}",
        ]
    else:
        extensions = {**_COMMON_OFF, "mesh_collab.jupyter": False, "jupyter_server_ydoc": True,
                      "jupyter_server_fileid": True}
        args = [f"--YDocExtension.document_cleanup_delay={cleanup_delay}"]
    (dirs["config"] / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": extensions}})
    )
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "MESH_COLLAB_CS3_PASSWORD": PASSWORD,
    }
    for name in ("JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "MESH_COLLAB_GATEWAY"):
        env.pop(name, None)
    log_path = base / "server.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *(os.environ["BENCH_SERVER_CMD"].split() if os.environ.get("BENCH_SERVER_CMD")
              else [sys.executable, "-m", "jupyter", "server"]), "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0", "--ServerApp.log_level=WARN",
            f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={dirs['root']}",
            *args, *extra,
            env=env, stdout=log_file, stderr=subprocess.STDOUT,
            cwd=dirs["cwd"],  # the stock server writes its SQLite YStore into the cwd
        )
        try:
            url = await _announced(dirs["runtime"], proc, log_path)
            server = Server(kind, url, proc.pid, dirs["root"], log_path, grpc=grpc)
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as http:
                server.http = http
                if kind == MESH:
                    from mesh_collab.cs3.client import CS3Client

                    async with CS3Client(grpc) as cs3:
                        server._session = await cs3.login(USER, PASSWORD)
                        yield server
                else:
                    yield server
        finally:
            stop(proc)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def floor_server(base: Path) -> AsyncIterator[Server]:
    """Run ``_floor_server.py`` (the bare pycrdt relay) as a process."""
    root = base / "root"
    root.mkdir(parents=True)
    log_path = base / "server.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "_floor_server.py"), str(root),
            stdout=subprocess.PIPE, stderr=log_file, cwd=HERE,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if not line:
                raise RuntimeError(f"floor server did not start:\n{log_path.read_text()}")
            url = f"http://127.0.0.1:{json.loads(line)['port']}/"
            server = Server(FLOOR, url, proc.pid, root, log_path)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                server.http = http
                yield server
        finally:
            stop(proc)
            await proc.wait()


@contextlib.asynccontextmanager
async def servers(
    kinds: Iterable[str], base: Path, **kwargs: Any
) -> AsyncIterator[Callable[[str], contextlib.AbstractAsyncContextManager[Server]]]:
    """A factory of servers sharing one gateway: ``async with start(MESH) as server``."""
    gw_proc, addresses = gateway(base / "gateway")
    counter = iter(range(1000))

    def start(kind: str) -> contextlib.AbstractAsyncContextManager[Server]:
        if kind == FLOOR:
            return floor_server(base / f"{kind}-{next(counter)}")
        return jupyter_server(kind, base / f"{kind}-{next(counter)}", grpc=addresses["grpc"],
                              **kwargs)

    try:
        yield start
    finally:
        gw_proc.terminate()
        gw_proc.wait(timeout=10)


# --- the y-websocket client ------------------------------------------------------------------


def _uint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_uint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def state_vector(state: bytes) -> dict[int, int]:
    """Decode a Yjs state vector (``Doc.get_state()``): client id -> clock."""
    count, pos = _read_uint(state, 0)
    clocks = {}
    for _ in range(count):
        client, pos = _read_uint(state, pos)
        clocks[client], pos = _read_uint(state, pos)
    return clocks


def holds(doc: Doc, target: dict[int, int]) -> bool:
    """Whether ``doc`` has seen every client's clock in ``target`` (a decoded state vector)."""
    have = state_vector(doc.get_state())
    return all(have.get(client, 0) >= clock for client, clock in target.items())


def sync_step1(state: bytes) -> bytes:
    return b"\x00\x00" + _uint(len(state)) + state


def sync_step2(update: bytes) -> bytes:
    return b"\x00\x01" + _uint(len(update)) + update


def update_frame(update: bytes) -> bytes:
    return b"\x00\x02" + _uint(len(update)) + update


class YClient:
    """A y-websocket client: one aiohttp websocket and one pycrdt ``Doc``.

    It answers the server's sync step 1, applies step 2 and updates to its document, and
    sends its own document changes (made with :meth:`edit`) as update frames. Awareness and
    other frames are counted but ignored. ``on_change(t)`` is called after each applied frame
    with the time it was read from the socket. With ``apply=False`` it only counts what it
    receives (a writer sending pre-made updates).
    """

    def __init__(
        self, http: aiohttp.ClientSession, url: str, doc: Doc | None = None, *, apply: bool = True
    ) -> None:
        self.http = http
        self.apply = apply
        self.url = url
        self.doc = doc if doc is not None else Doc()
        self.synced = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.bytes_in = 0
        self.frames_in = 0
        self.update_frames = 0
        self.step2_bytes = 0
        self.on_change: Callable[[float], None] | None = None
        self._local: list[bytes] = []
        self._applying = False
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._sub = self.doc.observe(self._observe)

    def _observe(self, event: Any) -> None:
        if not self._applying:
            self._local.append(event.update)

    async def connect(self, *, send_step1: bool = True) -> YClient:
        self._ws = await self.http.ws_connect(self.url, max_msg_size=0, autoping=True)
        self._task = asyncio.get_running_loop().create_task(self._read())
        if send_step1:
            await self._ws.send_bytes(sync_step1(self.doc.get_state()))
        return self

    async def _read(self) -> None:
        assert self._ws is not None
        ws = self._ws
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    continue
                now = time.perf_counter()
                data: bytes = msg.data
                self.bytes_in += len(data)
                self.frames_in += 1
                if data[0] != 0 or len(data) < 3 or not self.apply:
                    continue
                sub = data[1]
                length, pos = _read_uint(data, 2)
                payload = data[pos : pos + length]
                if sub == 0:
                    await ws.send_bytes(sync_step2(self.doc.get_update(payload)))
                    continue
                self._applying = True
                try:
                    self.doc.apply_update(payload)
                finally:
                    self._applying = False
                if sub == 1:
                    self.step2_bytes += len(payload)
                    self.synced.set()
                else:
                    self.update_frames += 1
                if self.on_change is not None:
                    self.on_change(now)
        finally:
            self.close_code = ws.close_code
            self.closed.set()

    async def edit(self, fn: Callable[[Doc], Any]) -> list[bytes]:
        """Change the document in one transaction and send the update; returns the updates."""
        with self.doc.transaction():
            fn(self.doc)
        sent, self._local = self._local, []
        assert self._ws is not None
        for update in sent:
            await self._ws.send_bytes(update_frame(update))
        return sent

    async def send_raw(self, frame: bytes) -> None:
        assert self._ws is not None
        await self._ws.send_bytes(frame)

    async def wait_synced(self, limit: float = 60) -> None:
        synced = asyncio.ensure_future(self.synced.wait())
        closed = asyncio.ensure_future(self.closed.wait())
        done, pending = await asyncio.wait(
            {synced, closed}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        if not self.synced.is_set():
            raise RuntimeError(f"not synced (closed with {self.close_code}): {self.url}")

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.doc.unobserve(self._sub)


@dataclass
class Typing:
    """What :func:`type_and_measure` saw: latencies (seconds) per receiver, and how many
    arrivals were expected."""

    latencies: list[list[float]]
    expected: int
    seconds: float

    @property
    def all(self) -> list[float]:
        return [x for per in self.latencies for x in per]


async def type_and_measure(
    typist: YClient, receivers: list[YClient], *, rate: float, seconds: float, warmup: float,
    cell: int = 0, drain: float = 30.0, start: float | None = None,
) -> Typing:
    """Type ``rate`` keystrokes per second at the end of ``cell`` for ``warmup + seconds``;
    return, for each receiver, the latency of every keystroke after the warm-up.

    Keystroke k is typed at ``start + k / rate`` (``time.perf_counter()``; by default 50 ms
    from now), so that two typists can take turns.

    Latency runs from just before the typist's transaction to the moment a receiver read the
    frame that brought the keystroke (keystroke k is in when the cell's text has grown by k
    characters, so a frame carrying several keystrokes counts for each of them). After the
    last keystroke it waits at most ``drain`` seconds for them to arrive everywhere.
    """
    base = len(cell_source(typist.doc, cell))
    total = int((warmup + seconds) * rate)
    first_measured = int(warmup * rate)
    sent: list[float] = [0.0] * (total + 1)
    latencies: list[list[float]] = [[] for _ in receivers]
    all_in = asyncio.Event()
    pending = {"left": len(receivers)}

    def watcher(client: YClient, out: list[float]) -> Callable[[float], None]:
        source = cell_source(client.doc, cell)
        state = {"seen": 0}

        def on_change(t: float) -> None:
            have = len(source) - base
            first = max(state["seen"] + 1, first_measured)
            out.extend(t - sent[k] for k in range(first, have + 1))
            if have > state["seen"]:
                state["seen"] = have
                if have >= total:
                    pending["left"] -= 1
                    if pending["left"] == 0:
                        all_in.set()

        return on_change

    for client, out in zip(receivers, latencies, strict=True):
        client.on_change = watcher(client, out)
    source = cell_source(typist.doc, cell)
    wall0 = time.perf_counter()
    if start is None:
        start = time.perf_counter() + 0.05
    for k in range(1, total + 1):
        delay = start + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[k] = time.perf_counter()
        await typist.edit(lambda doc, at=base + k - 1: source.insert(at, "x"))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_in.wait(), drain)
    for client in receivers:
        client.on_change = None
    expected = (total - first_measured + 1) * len(receivers)
    return Typing(latencies, expected, time.perf_counter() - wall0)


def cells(doc: Doc) -> Array:
    return doc.get("cells", type=Array)


def cell_source(doc: Doc, index: int = 0) -> Text:
    cell: Map = cells(doc)[index]
    return cell["source"]


# --- notebooks -------------------------------------------------------------------------------


def generated_notebook(n_cells: int, target_bytes: int, seed: int = 1) -> bytes:
    """A valid nbformat 4.5 notebook of ``n_cells`` cells and about ``target_bytes`` bytes.

    Markdown and code cells alternate; code cells carry a stream output. Sources are ~1/4 of
    a cell's budget, outputs the rest, so the document is both text-heavy and output-heavy
    like a real executed notebook.
    """
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "import", "numpy", "as", "np", "print", "def",
             "return", "for", "in", "range", "plot", "data", "frame", "x", "y", "=", "+"]
    per_cell = max(target_bytes // n_cells - 300, 40)

    def text(size: int) -> list[str]:
        lines, line = [], []
        length = 0
        while length < size:
            word = rng.choice(words)
            line.append(word)
            length += len(word) + 1
            if len(line) >= 10:
                lines.append(" ".join(line) + "\n")
                line = []
        lines.append(" ".join(line))
        return lines

    nb_cells = []
    for i in range(n_cells):
        if i % 2 == 0:
            nb_cells.append({"cell_type": "markdown", "id": f"cell-{i}", "metadata": {},
                             "source": text(per_cell // 2)})
        else:
            nb_cells.append({
                "cell_type": "code", "id": f"cell-{i}", "metadata": {}, "execution_count": i,
                "source": text(per_cell // 4),
                "outputs": [{"output_type": "stream", "name": "stdout",
                             "text": text(per_cell - per_cell // 4)}],
            })
    nb = {"cells": nb_cells, "metadata": {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}}, "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(nb, indent=1).encode()


def notebook_cells(data: bytes) -> int:
    return len(json.loads(data)["cells"])


# --- numbers, tables, results ----------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """Print rows (dicts with the same keys) as a Markdown table under ``title``."""
    print(f"\n### {title}\n")
    if not rows:
        print("(no rows)")
        return
    keys = list(rows[0])
    cells_ = [[fmt(row.get(k)) for k in keys] for row in rows]
    text = [isinstance(rows[0].get(k), str) for k in keys]
    widths = [max(len(k), *(len(r[i]) for r in cells_)) for i, k in enumerate(keys)]
    print("| " + " | ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)) + " |")
    print("|" + "|".join(("-" * (w + 1) + ":") if not t else "-" * (w + 2)
                         for w, t in zip(widths, text, strict=True)) + "|")
    for r in cells_:
        print("| " + " | ".join(c.ljust(w) if t else c.rjust(w)
                                for c, w, t in zip(r, widths, text, strict=True)) + " |")
    sys.stdout.flush()


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import importlib.metadata as md

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "-"

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "commit": commit,
        "versions": {name: version(name) for name in (
            "pycrdt", "jupyter-server-ydoc", "jupyter-collaboration", "pycrdt-websocket",
            "pycrdt-store", "jupyter_server", "tornado", "aiohttp")},
    }


def write_results(name: str, args: Any, config: dict[str, Any], results: Any) -> Path:
    out_dir = Path(args.out) if args.out else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    size = "quick" if args.quick else "full"
    out = out_dir / f"{name}-{size}-{stamp}.json"
    payload = {"benchmark": name, "machine": machine(), "config": config, "results": results}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwritten {out}")
    return out


def add_common_args(parser: Any) -> None:
    parser.add_argument("--quick", action="store_true", help="smoke size, for CI (< 60 s)")
    parser.add_argument("--out", default="", help="folder for the JSON result (default "
                        "benchmarks/results/)")
    parser.add_argument("--servers", default=",".join(KINDS),
                        help=f"which servers to run, comma-separated (default {','.join(KINDS)})")


@contextlib.contextmanager
def workdir() -> Any:
    """A temporary folder for servers' state, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="mesh-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class LagProbe:
    """Largest event-loop stall: a task sleeping ``interval`` repeatedly records how late it
    wakes up."""

    interval: float = 0.001
    max_lag: float = 0.0
    samples: list[float] = field(default_factory=list)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            lag = loop.time() - start - self.interval
            self.samples.append(lag)
            if lag > self.max_lag:
                self.max_lag = lag

    def reset(self) -> None:
        self.max_lag = 0.0
        self.samples = []


def notebook_5mb() -> bytes:
    """The generated large notebook: 1000 cells, 5.0 MB (5,014,856 bytes)."""
    return generated_notebook(1000, 5_600_000)
