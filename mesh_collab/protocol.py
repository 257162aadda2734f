"""The y-websocket wire protocol: parsing client frames, encoding server frames.

Every frame starts with a message type (varuint): 0 sync, 1 awareness, 3 query-awareness
(y-protocols), 2 raw (jupyter-collaboration's own). A sync frame carries a sub-type (0 step
1: a state vector; 1 step 2 and 2 update: a Yjs update) and a length-prefixed payload. An
awareness frame carries a length-prefixed list of ``(client id, clock, JSON state)``. The
only raw message a client sends is the save request of the stock frontend (Ctrl+S): the
string ``"save"`` and a request id; the server answers with a raw JSON string
``{"type": "save", "responseTo": <id>, "status": "success" | "skipped" | "failed"}``.

Everything here is strict: a truncated frame, trailing bytes, an unknown type or a state that
is not a JSON object raises :class:`~mesh_collab.errors.ProtocolError`, so that the room can
close that one connection.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from mesh_collab.errors import ProtocolError

#: Largest varuint we accept (2**53, JavaScript's safe integer range, like lib0).
_MAX_UINT = 2**53
#: At most this many awareness entries in one frame.
MAX_AWARENESS_ENTRIES = 256
#: At most this many bytes of JSON in one awareness state (cursors and a user: well under).
MAX_AWARENESS_STATE = 64 * 1024


def _no_constants(name: str) -> Any:
    # NaN and Infinity are not JSON: browsers' JSON.parse would reject what we relay.
    raise ValueError(f"{name} is not JSON")


class Kind(enum.IntEnum):
    """The kinds of frame mesh_collab understands."""

    SYNC_STEP1 = 0
    SYNC_STEP2 = 1
    UPDATE = 2
    AWARENESS = 10
    QUERY_AWARENESS = 13
    #: The stock frontend's save request (a raw message "save" and a request id).
    SAVE = 20
    #: mesh_collab's own control message between nodes (JSON): never from browsers.
    CONTROL = 100


@dataclass(frozen=True, slots=True)
class Frame:
    """A parsed frame: its kind and payload (state vector, update or awareness list)."""

    kind: Kind
    payload: bytes
    #: The id of a save request (:attr:`Kind.SAVE`), which its answer repeats.
    request_id: int = 0


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def uint(self) -> int:
        value = shift = 0
        while True:
            if self.pos >= len(self.data):
                raise ProtocolError("truncated varuint")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if value > _MAX_UINT:
                raise ProtocolError("varuint out of range")
            if byte < 0x80:
                return value
            shift += 7

    def bytes(self) -> bytes:
        length = self.uint()
        end = self.pos + length
        if end > len(self.data):
            raise ProtocolError("truncated payload")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError("trailing bytes after message")


def uint(value: int) -> bytes:
    """Encode a varuint."""
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def _prefixed(data: bytes) -> bytes:
    return uint(len(data)) + data


def parse(message: bytes) -> Frame:
    """Parse one frame from a client or peer.

    Raises:
        ProtocolError: the frame is empty, truncated, has trailing bytes or an unknown type.
    """
    if not isinstance(message, bytes | bytearray) or not message:
        raise ProtocolError("empty or non-binary message")
    reader = _Reader(bytes(message))
    msg_type = reader.uint()
    if msg_type == 0:
        sub = reader.uint()
        if sub not in (0, 1, 2):
            raise ProtocolError(f"unknown sync message type {sub}")
        payload = reader.bytes()
        reader.end()
        return Frame(Kind(sub), payload)
    if msg_type == 1:
        payload = reader.bytes()
        reader.end()
        return Frame(Kind.AWARENESS, payload)
    if msg_type == 2:
        if reader.bytes() != b"save":
            raise ProtocolError("unknown raw message")
        request_id = reader.uint()
        reader.end()
        return Frame(Kind.SAVE, b"", request_id)
    if msg_type == 3:
        return Frame(Kind.QUERY_AWARENESS, b"")
    if msg_type == Kind.CONTROL:
        payload = reader.bytes()
        reader.end()
        return Frame(Kind.CONTROL, payload)
    raise ProtocolError(f"unknown message type {msg_type}")


def control(message: dict[str, Any]) -> bytes:
    """A control frame (between nodes) carrying ``message`` as JSON."""
    return uint(Kind.CONTROL) + _prefixed(json.dumps(message, separators=(",", ":")).encode())


def save_reply(request_id: int, status: str) -> bytes:
    """The answer to a client's save request: a raw frame carrying a JSON string."""
    reply = {"type": "save", "responseTo": request_id, "status": status}
    return uint(2) + _prefixed(json.dumps(reply, separators=(",", ":")).encode())


def decode_save_reply(message: bytes) -> dict[str, Any]:
    """Decode a save answer (:func:`save_reply`), as the frontend does.

    Raises:
        ProtocolError: not a raw frame carrying a JSON object.
    """
    reader = _Reader(bytes(message))
    if reader.uint() != 2:
        raise ProtocolError("not a raw message")
    try:
        reply = json.loads(reader.bytes())
    except ValueError as exc:
        raise ProtocolError("raw message is not JSON") from exc
    reader.end()
    if not isinstance(reply, dict):
        raise ProtocolError("raw message is not a JSON object")
    return reply


def save_request(request_id: int) -> bytes:
    """A client's save request (what the stock frontend sends on Ctrl+S)."""
    return uint(2) + _prefixed(b"save") + uint(request_id)


def decode_control(payload: bytes) -> dict[str, Any]:
    """Decode a control frame's payload.

    Raises:
        ProtocolError: not a JSON object with a string ``type``.
    """
    try:
        message = json.loads(payload, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("control message is not JSON") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("control message without a type")
    return message


def sync_step1(state_vector: bytes) -> bytes:
    """A sync step 1 frame (our state vector: "send me what I miss")."""
    return b"\x00\x00" + _prefixed(state_vector)


def sync_step2(update: bytes) -> bytes:
    """A sync step 2 frame (the answer to a step 1)."""
    return b"\x00\x01" + _prefixed(update)


def update(update: bytes) -> bytes:
    """A sync update frame."""
    return b"\x00\x02" + _prefixed(update)


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    """One client's awareness: its id, clock and state (None: the client left)."""

    client_id: int
    clock: int
    state: dict[str, Any] | None


def decode_awareness(payload: bytes) -> list[AwarenessEntry]:
    """Decode the payload of an awareness frame.

    Raises:
        ProtocolError: truncated, too many entries, or a state that is not a JSON object.
    """
    reader = _Reader(payload)
    count = reader.uint()
    if count > MAX_AWARENESS_ENTRIES:
        raise ProtocolError(f"too many awareness entries: {count}")
    entries = []
    for _ in range(count):
        client_id = reader.uint()
        clock = reader.uint()
        raw = reader.bytes()
        if len(raw) > MAX_AWARENESS_STATE:
            raise ProtocolError(f"awareness state too large: {len(raw)} bytes")
        try:
            state = json.loads(raw, parse_constant=_no_constants) if raw else None
        except (ValueError, RecursionError) as exc:
            # ValueError covers bad UTF-8, bad JSON, NaN/Infinity and Python's limit on the
            # digits of an integer; RecursionError, absurd nesting.
            raise ProtocolError("awareness state is not JSON") from exc
        if state is not None and not isinstance(state, dict):
            raise ProtocolError("awareness state is not a JSON object")
        entries.append(AwarenessEntry(client_id, clock, state))
    reader.end()
    return entries


def encode_state(state: dict[str, Any] | None) -> bytes:
    """One awareness state as it travels in a frame (compact JSON; ``null``: the client
    left)."""
    if state is None:
        return b"null"
    return json.dumps(state, separators=(",", ":")).encode()


def encode_awareness_states(entries: list[tuple[int, int, bytes]]) -> bytes:
    """An awareness frame carrying ``(client id, clock, encoded state)`` entries (states
    from :func:`encode_state`, which a room keeps so as to encode each state once)."""
    body = bytearray(uint(len(entries)))
    for client_id, clock, state in entries:
        body += uint(client_id) + uint(clock) + _prefixed(state)
    return b"\x01" + _prefixed(bytes(body))


def encode_awareness(entries: list[AwarenessEntry]) -> bytes:
    """An awareness frame carrying ``entries``."""
    return encode_awareness_states(
        [(entry.client_id, entry.clock, encode_state(entry.state)) for entry in entries]
    )


def decode_state_vector(sv: bytes) -> dict[int, int]:
    """Decode a Yjs state vector (client id -> next clock).

    Raises:
        ProtocolError: the state vector is malformed.
    """
    reader = _Reader(sv)
    count = reader.uint()
    out = {}
    for _ in range(count):
        client = reader.uint()
        out[client] = reader.uint()
    reader.end()
    return out


def update_struct_count(update: bytes) -> int:
    """The number of per-client struct blocks at the start of a Yjs v1 update (0: none)."""
    return _Reader(update).uint() if update else 0
