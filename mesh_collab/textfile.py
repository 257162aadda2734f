"""Text files as live CRDT documents: the codec of ``text:file`` rooms.

The document schema is jupyter_ydoc's :class:`~jupyter_ydoc.YUnicode` (``doc["source"]``, a
Text), which the stock JupyterLab file editor reads. The file's bytes are UTF-8 and are
written back exactly as typed (line endings included). A file that is not UTF-8 text (a NUL
byte, an invalid sequence) is binary: it gets no room.

Every function takes and returns plain bytes or strings, so :mod:`mesh_collab.offload` can
run it in a worker.
"""

from __future__ import annotations

from pycrdt import Doc, Text

from mesh_collab.notebook import MergeStats
from mesh_collab.textdiff import edit_text

__all__ = ["file_of_state", "from_bytes", "merge_into", "seed_state"]


def from_bytes(data: bytes) -> str:
    """The text of a file.

    Raises:
        ValueError: the file is binary (not UTF-8, or it holds a NUL byte).
    """
    if b"\x00" in data:
        raise ValueError("a binary file (it holds NUL bytes) cannot be edited as text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("a binary file (not UTF-8 text) cannot be edited as text") from exc


def _source(doc: Doc) -> Text:
    return doc.get("source", type=Text)


def file_of_state(state: bytes) -> bytes:
    """The file bytes an encoded document state is written as."""
    doc = Doc()
    doc.apply_update(state)
    return str(_source(doc)).encode("utf-8")


def seed_state(data: bytes) -> bytes:
    """The encoded state a new history starts from: deterministic (client id 0), so every
    node that starts from the same bytes builds the same items.

    Raises:
        ValueError: the file is binary.
    """
    seed = Doc(client_id=0)
    text = from_bytes(data)
    if text:
        _source(seed).insert(0, text)
    return seed.get_update()


def merge_into(doc: Doc, text: str) -> MergeStats:
    """Edit ``doc`` into ``text``, character by character, in one transaction."""
    with doc.transaction():
        changed = edit_text(_source(doc), text)
    return MergeStats(edited=1) if changed else MergeStats(kept=1)
