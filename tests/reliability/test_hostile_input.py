"""Hostile input: random and truncated y-sync frames, bogus awareness, oversized frames, slow
readers, floods of connections, junk HTTP requests.

The promises (STYLE §3.4): a bad message closes only the connection that sent it, with its
close code; the room and every other client carry on; the document is not changed by
garbage; memory stays bounded; HTTP answers are never 5xx.

Property-based tests use hypothesis; ``fuzz_protocol.py`` is the coverage-guided (atheris)
fuzzer of the same decoders, run briefly by :func:`test_atheris_fuzzer_finds_no_crash`.
"""

from __future__ import annotations

import gc
import json
import os
import random
import subprocess
import sys
import tracemalloc
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text

from mesh_collab import protocol
from mesh_collab.channel import memory_channel_pair
from mesh_collab.close_codes import CloseCode
from mesh_collab.cs3.client import Session
from mesh_collab.errors import ProtocolError
from mesh_collab.rooms import Room
from mesh_collab.updatelog import UpdateLog
from tests.helpers import EINSTEIN, MARIE, peer, until
from tests.jupyter.conftest import TOKEN, Node, NodeFactory
from tests.reliability.conftest import DATA
from tests.reliability.yclient import YClient

#: Scale of the randomised parts; MESH_COLLAB_HOSTILE_SCALE=10 for a long run.
SCALE = int(os.environ.get("MESH_COLLAB_HOSTILE_SCALE", "1"))
FIGURES: dict[str, int] = {}


def count(name: str, n: int = 1) -> None:
    FIGURES[name] = FIGURES.get(name, 0) + n


# --- strategies ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)
awareness_states = st.dictionaries(st.text(max_size=10), json_values, max_size=5)


def varuint(value: int) -> bytes:
    return protocol.uint(value)


def sample_update() -> bytes:
    doc = Doc()
    text = doc.get("source", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda e: updates.append(e.update))
    text += "hello"
    text.insert(2, "XY")
    return doc.get_update()


VALID_FRAMES = [
    protocol.sync_step1(Doc().get_state()),
    protocol.sync_step2(sample_update()),
    protocol.update(sample_update()),
    protocol.encode_awareness([protocol.AwarenessEntry(7, 3, {"cursor": [1, 2]})]),
    b"\x03",
]


def decode_fully(message: bytes) -> None:
    """Everything the room would decode from one message; only ProtocolError may escape."""
    frame = protocol.parse(message)
    if frame.kind is protocol.Kind.AWARENESS:
        protocol.decode_awareness(frame.payload)
    elif frame.kind is protocol.Kind.SYNC_STEP1:
        protocol.decode_state_vector(frame.payload)
    elif frame.kind in (protocol.Kind.SYNC_STEP2, protocol.Kind.UPDATE):
        protocol.update_struct_count(frame.payload)


# --- decoders -----------------------------------------------------------------------------


@settings(max_examples=2000 * SCALE, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    count("decoder inputs")
    try:
        decode_fully(data)
    except ProtocolError:
        pass


@settings(max_examples=500 * SCALE, deadline=None)
@given(st.sampled_from(VALID_FRAMES), st.data())
def test_truncated_and_mutated_frames_raise_only_protocol_errors(frame: bytes, data: Any) -> None:
    count("decoder inputs")
    cut = data.draw(st.integers(0, len(frame)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, max(0, len(frame) - 1)),
                                         st.integers(0, 255)), max_size=3))
    mutated = bytearray(frame[:cut])
    for pos, byte in flips:
        if pos < len(mutated):
            mutated[pos] = byte
    try:
        decode_fully(bytes(mutated))
    except ProtocolError:
        pass


@settings(max_examples=500 * SCALE, deadline=None)
@given(st.integers(0, 2**70), st.integers(0, 12))
def test_bogus_varuints(value: int, extra_continuations: int) -> None:
    count("decoder inputs")
    raw = varuint(value)
    raw = b"\x80" * extra_continuations + raw
    for message in (b"\x00\x02" + raw, b"\x01" + raw, b"\x00\x00" + raw + b"\x00"):
        try:
            decode_fully(message)
        except ProtocolError:
            pass


@settings(max_examples=500 * SCALE, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**53), st.integers(0, 2**53),
                          awareness_states | st.none()), max_size=8))
def test_awareness_round_trip(entries: list[tuple[int, int, dict[str, Any] | None]]) -> None:
    count("decoder inputs")
    frame = protocol.encode_awareness([protocol.AwarenessEntry(*e) for e in entries])
    parsed = protocol.parse(frame)
    assert parsed.kind is protocol.Kind.AWARENESS
    decoded = protocol.decode_awareness(parsed.payload)
    assert [(e.client_id, e.clock, e.state) for e in decoded] == entries


def awareness_with(raw: bytes) -> bytes:
    """An awareness payload with one entry whose state is ``raw`` (not necessarily JSON)."""
    return varuint(1) + varuint(42) + varuint(1) + varuint(len(raw)) + raw


HOSTILE_STATES = [
    pytest.param(b'{"a": ' + b"1" * 5000 + b"}", id="int-over-4300-digits"),
    pytest.param(b"[" * 100_000, id="deep-nesting"),
    pytest.param(b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}", id="deep-but-valid"),
    pytest.param(b'{"a": NaN}', id="nan"),
    pytest.param(b'{"a": Infinity}', id="infinity"),
    pytest.param(b'"a string"', id="not-an-object"),
]


@pytest.mark.parametrize("raw", HOSTILE_STATES)
def test_hostile_awareness_json_is_a_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode_awareness(awareness_with(raw))


# --- a live room ------------------------------------------------------------------------


def garbage(rng: random.Random) -> bytes:
    """Random bytes, or a valid frame truncated / bit-flipped / with a bogus length."""
    kind = rng.randrange(4)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    frame = bytearray(rng.choice(VALID_FRAMES))
    if kind == 1:
        return bytes(frame[: rng.randrange(len(frame))])
    if kind == 2:
        for _ in range(rng.randrange(1, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        return bytes(frame)
    return bytes(frame[:2]) + b"\xff\xff\xff\xff\x07" + bytes(frame[2:])


async def test_garbage_never_hurts_the_room_or_its_clients(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("MESH_COLLAB_SEED", "1")))
    n = 300 * SCALE
    codes: dict[int, int] = {}
    async with UpdateLog(tmp_path / "u.sqlite") as log, Room(
        "hostile", updatelog=log, max_message_size=65536
    ) as room, anyio.create_task_group() as tg:
        async with peer(room, tg, EINSTEIN) as good:
            good.text += "before "
            await until(lambda: str(room.doc.get("source", type=Text)) == "before ", room.doc)
            for i in range(n):
                server_end, bad = memory_channel_pair(f"bad-{i}")
                # Half the attackers are viewers: their updates must not even be decoded.
                writable = bool(i % 2)
                tg.start_soon(partial(room.serve, server_end, MARIE, writable=writable))
                before = str(room.doc.get("source", type=Text))
                for _ in range(rng.randrange(1, 4)):
                    await bad.send(garbage(rng))
                    count("frames sent to a live room")
                # The room reads every frame, then closes the channel (or kills it earlier).
                await bad.shutdown()
                with anyio.fail_after(5):
                    await bad.closed.wait()
                await room.flush()
                codes[bad.close_code or 0] = codes.get(bad.close_code or 0, 0) + 1
                if not writable:
                    assert str(room.doc.get("source", type=Text)) == before
            good.text += "after"
            await until(lambda: str(good.text) == str(room.doc.get("source", type=Text))
                        and str(good.text).endswith("after"), room.doc, good.doc)
            await room.flush()
            assert room.stats.clients == 1
            # The good peer's edits are intact and in order. A mutated update from a writer
            # may still carry a valid insertion (its valid part is that writer's edit); only
            # the parts that refer to unknown items are refused and purged.
            text = str(room.doc.get("source", type=Text))
            assert "before " in text and text.index("before ") < text.index("after")
            clean = Doc()
            clean.apply_update(room.doc.get_update())
            assert str(clean.get("source", type=Text)) == text  # nothing left pending
        tg.cancel_scope.cancel()
    assert set(codes) <= {CloseCode.RESET_CONNECTION, CloseCode.NORMAL}, codes


@pytest.mark.parametrize("raw", HOSTILE_STATES)
async def test_hostile_awareness_closes_only_its_connection(raw: bytes) -> None:
    async with Room("aw") as room, anyio.create_task_group() as tg:
        async with peer(room, tg, EINSTEIN) as good:
            server_end, bad = memory_channel_pair("bad")
            tg.start_soon(room.serve, server_end, MARIE)
            await bad.send(b"\x01" + protocol.uint(len(awareness_with(raw)))
                           + awareness_with(raw))
            with anyio.fail_after(5):
                await bad.closed.wait()
            assert bad.close_code == CloseCode.RESET_CONNECTION
            good.text += "still served"
            await until(lambda: str(room.doc.get("source", type=Text)) == "still served",
                        room.doc)
        tg.cancel_scope.cancel()


async def test_relayed_awareness_is_strict_json() -> None:
    """What the node relays must parse with JavaScript's JSON.parse (no NaN, no Infinity)."""
    async with Room("aw-json") as room, anyio.create_task_group() as tg:
        a_end, a = memory_channel_pair("a")
        b_end, b = memory_channel_pair("b")
        tg.start_soon(room.serve, a_end, EINSTEIN)
        tg.start_soon(room.serve, b_end, MARIE)
        await a.send(b"\x01" + protocol.uint(len(awareness_with(b'{"x": 1}')))
                     + awareness_with(b'{"x": 1}'))
        await room.flush()
        frames = []
        with anyio.move_on_after(1):  # collect what b was sent; nothing more is coming
            while True:
                frames.append(protocol.parse(await b.recv()))
        for frame in frames:
            if frame.kind is protocol.Kind.AWARENESS:
                for entry in protocol.decode_awareness(frame.payload):
                    json.loads(json.dumps(entry.state), parse_constant=_reject)
        tg.cancel_scope.cancel()


def _reject(name: str) -> None:
    raise AssertionError(f"not JSON: {name}")


async def test_slow_reader_is_closed_and_memory_stays_bounded() -> None:
    tracemalloc.start()
    try:
        async with Room("slow", outbox_size=64) as room, anyio.create_task_group() as tg:
            async with peer(room, tg, EINSTEIN) as writer:
                slow_server, slow = memory_channel_pair("slow")
                stuck, never_read = anyio.create_memory_object_stream[bytes](0)
                slow_server._send = stuck  # its reader never reads: sends block forever
                tg.start_soon(room.serve, slow_server, MARIE)
                # It asks for the document, as every client does, then never reads.
                await slow.send(protocol.sync_step1(Doc().get_state()))
                gc.collect()
                before = tracemalloc.get_traced_memory()[0]
                for i in range(5000):
                    writer.text += str(i % 10)
                    if i % 100 == 0:
                        await room.flush()
                with anyio.fail_after(10):
                    await slow.closed.wait()
                assert slow.close_code == CloseCode.TOO_SLOW
                await until(lambda: len(str(room.doc.get("source", type=Text))) == 5000,
                            room.doc)
                gc.collect()
                grown = tracemalloc.get_traced_memory()[0] - before
                # 5000 one-character updates; nothing queued for the dead reader beyond 64.
                assert grown < 8 * 2**20, grown
                never_read.close()
            tg.cancel_scope.cancel()
    finally:
        tracemalloc.stop()


# --- a real node: websockets and HTTP -------------------------------------------------------


async def notebook_room(node: Node, einstein: Session, name: str) -> tuple[str, dict]:
    await einstein.files.write(f"/home/einstein/{name}", (DATA / "test4.ipynb").read_bytes())
    response = await node.api("PUT", f"collaboration/session/{name}",
                              body={"format": "json", "type": "notebook"})
    assert response.status_code == 201, response.text
    s = response.json()
    url = (node.url.replace("http://", "ws://") + f"api/collaboration/room/json:notebook:"
           f"{s['fileId']}?token={TOKEN}&sessionId={s['sessionId']}")
    return url, s


async def test_flood_of_connections_and_oversized_frames(
    node_factory: NodeFactory, gateway: Any, einstein: Session
) -> None:
    node = await node_factory(gateway, max_message_size=65536)
    url, _ = await notebook_room(node, einstein, "flood.ipynb")
    rng = random.Random(2)
    rounds, per_round = 6 * SCALE, 40
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        good = await tg.start(YClient(url).run, http)
        await good.until(good.synced.is_set)

        async def attacker(i: int) -> None:
            try:
                ws = await http.ws_connect(url)
            except aiohttp.ClientError:
                count("flood connections refused")
                return
            count("flood connections")
            mode = i % 4
            if mode == 1:
                await ws.send_bytes(garbage(rng))
            elif mode == 2:
                await ws.send_bytes(b"\x00\x02" + b"x" * 70000)  # over max_message_size
                msg = await ws.receive()
                while msg.type is aiohttp.WSMsgType.BINARY:  # the room's greeting may come first
                    msg = await ws.receive()
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
                assert ws.close_code == CloseCode.MESSAGE_TOO_BIG, ws.close_code
            if mode == 3:
                ws._response.close()  # dropped without a close frame
            else:
                await ws.close()

        for _ in range(3):  # warm-up: the first rounds allocate caches
            async with anyio.create_task_group() as flood:
                for i in range(per_round):
                    flood.start_soon(attacker, i)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(rounds):
                async with anyio.create_task_group() as flood:
                    for i in range(per_round):
                        flood.start_soon(attacker, i)
            # The healthy client is still served, and the room forgot every attacker.
            from tests.helpers import append

            append(good.nb.ycells[0], " still here")
            await good.flush()
            room = next(iter(node.state.server.rooms.values()))
            await room.room.flush()
            await good.until(lambda: str(room.ynotebook.ycells[0]["source"]).endswith(
                " still here"))
            with anyio.fail_after(10):
                while room.room.stats.clients != 1:
                    await room.room.flush()
                    await anyio.sleep(0.05)  # connections end asynchronously: poll the count
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 4 * 2**20, f"{grown} bytes kept after {rounds * per_round} connections"
        await good.close()
    FIGURES["flood memory growth (bytes)"] = grown


PATHS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["../../etc/passwd", "..%2F..%2Fmeta.sqlite", "%2e%2e/%2e%2e/x.ipynb",
                     "a/../../b.ipynb", "/home/marie/x.ipynb", "x\x00.ipynb", "~/x.ipynb",
                     "a" * 5000, "Shared with me/../../x.ipynb", "%00", "..", "."]),
)
BODIES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"null", b"[]", b"{}", b'{"format": "json"}', b'{"type": 7}',
                     b'{"format": "json", "type": "notebook"}', b'{"format": ["x"]}']),
    json_values.map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=150 * SCALE, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=PATHS, body=BODIES, method=st.sampled_from(["PUT", "GET", "POST", "DELETE"]))
async def test_http_apis_never_answer_5xx(node: Node, path: str, body: bytes, method: str) -> None:
    # Percent signs are kept, so the sampled paths may carry their own escapes.
    quoted = quote(path, safe="/%")
    # Known 500s are kept apart, in their own tests: ours is bug B6
    # (test_session_body_that_is_not_an_object_is_400); on the contents API the same bodies
    # are 500s of jupyter_server itself (get_json_body decodes UTF-8 outside its try,
    # ContentsHandler.patch calls model.get on any JSON value).
    # A NUL or backslash in the path: CS3 says INVALID_ARGUMENT, answered 503 (bug B9).
    b9 = "\x00" in path or "\\" in path or "%00" in path or "%5C" in path.upper()
    if not (method == "PUT" and (_b6(body) or b9)):
        count("HTTP requests")
        r = await node.http.request(
            method, f"{node.url}api/collaboration/session/{quoted}", content=body
        )
        assert r.status_code < 500, (method, path, body, r.status_code, r.text[:200])
    contents_method = method if method != "POST" else "PATCH"
    if not (contents_method in ("PATCH", "PUT") and _b6(body)):
        count("HTTP requests")
        r = await node.http.request(
            contents_method, f"{node.url}api/contents/{quoted}", content=body
        )
        assert r.status_code < 500, (method, path, body, r.status_code, r.text[:200])


def _b6(body: bytes) -> bool:
    """A body that is JSON but not an object, or not UTF-8 at all."""
    try:
        return not isinstance(json.loads(body), dict)
    except UnicodeDecodeError:
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("body", [b"[]", b"null", b"7", b'"notebook"', b"\x80"])
async def test_session_body_that_is_not_an_object_is_400(node: Node, body: bytes) -> None:
    r = await node.http.put(f"{node.url}api/collaboration/session/x.ipynb", content=body)
    assert r.status_code == 400, r.text


@pytest.mark.parametrize("path", ["x%00.ipynb", "a%5Cb.ipynb"])
async def test_session_for_an_invalid_path_is_400(node: Node, path: str) -> None:
    r = await node.api("PUT", f"collaboration/session/{path}",
                       body={"format": "json", "type": "notebook"})
    assert r.status_code == 400, (r.status_code, r.text[:200])


async def test_escaping_paths_never_reach_another_users_storage(
    node: Node, einstein: Session, marie: Session
) -> None:
    await marie.files.write("/home/marie/secret.ipynb", (DATA / "test4.ipynb").read_bytes())
    for path in ["../marie/secret.ipynb", "..%2Fmarie%2Fsecret.ipynb",
                 "%2e%2e/marie/secret.ipynb", "a/../../marie/secret.ipynb",
                 "/home/marie/secret.ipynb", "//home/marie/secret.ipynb"]:
        for api in ("contents/", "collaboration/session/"):
            method = "GET" if api == "contents/" else "PUT"
            r = await node.http.request(
                method, node.url + "api/" + api + path,
                content=json.dumps({"format": "json", "type": "notebook"}),
            )
            count("HTTP requests")
            # Refused, never served. (415 for an invalid path is the wrong answer - bug B7 -
            # but still a refusal.)
            assert r.status_code in (400, 403, 404, 415), (api, path, r.status_code)
            assert "secret" not in r.text or r.status_code != 200
    assert await marie.files.read("/home/marie/secret.ipynb")


async def test_gateway_http_endpoints_never_answer_5xx(gateway: Any) -> None:
    rng = random.Random(3)
    async with httpx.AsyncClient() as http:
        for _ in range(200 * SCALE):
            segment = "".join(rng.choice("ab./%20\\~_-0x") for _ in range(rng.randrange(30)))
            method = rng.choice(["GET", "PUT", "POST", "DELETE", "PROPFIND", "HEAD"])
            prefix = rng.choice(["/datagateway/", "/ocm/shares", "/remote.php/dav/ocm/",
                                 "/.well-known/ocm", "/ocm/", "/"])
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
            headers = {"X-Reva-Transfer": segment} if rng.random() < 0.3 else {}
            r = await http.request(method, gateway.http_url + prefix + segment, content=body,
                                   headers=headers)
            count("HTTP requests")
            assert r.status_code < 500, (method, prefix + segment, r.status_code)


def test_atheris_fuzzer_finds_no_crash(tmp_path: Path) -> None:
    """Run the coverage-guided fuzzer of the decoders briefly (its own process: libFuzzer
    exits the process when done)."""
    runs = 20000 * SCALE
    result = subprocess.run(
        [sys.executable, "-m", "tests.reliability.fuzz_protocol", f"-runs={runs}",
         "-max_len=512", f"-artifact_prefix={tmp_path}/", "-seed=1"],
        cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    count("fuzzer inputs", runs)


def test_zz_print_figures() -> None:
    """Print what the hostile-input tests tried (collected last in this module)."""
    print("\nhostile input: " + ", ".join(f"{k}={v}" for k, v in FIGURES.items()))  # noqa: T201
