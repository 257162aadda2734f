"""The kinds of document a room can hold, and what differs between them.

A room's machinery (lineage, lock, checkpoints, external-change merge, federation) is the
same for every kind; a :class:`DocumentKind` supplies the rest: how file bytes become a first
CRDT state, how a state becomes file bytes, how file bytes are checked, and how a changed file
is merged into a document. Room ids are ``<format>:<type>:<resource id>``, as the stock
JupyterLab frontend builds them.

=====================  ============  ===========================================
room id prefix         kind          document schema
=====================  ============  ===========================================
``json:notebook:``     notebook      jupyter_ydoc ``YNotebook``
``text:file:``         file          jupyter_ydoc ``YUnicode`` (the file editor)
``json:file:``         file          the same room as ``text:file:``
=====================  ============  ===========================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jupyter_ydoc import YNotebook
from pycrdt import Doc

from mesh_collab import notebook, textfile
from mesh_collab.notebook import MergeStats


def _merge_notebook(doc: Doc, nb: Any) -> MergeStats:
    return notebook.merge_into(YNotebook(ydoc=doc), nb)


@dataclass(frozen=True, slots=True)
class DocumentKind:
    """What one kind of document needs from a room.

    The functions are module-level functions of plain bytes, so that they can run in a
    worker process (:mod:`mesh_collab.offload`).

    Attributes:
        name: ``"notebook"`` or ``"file"`` (the ``type`` of a collaboration session).
        room_prefix: the canonical room id prefix (``"json:notebook:"``).
        seed_state: file bytes to the deterministic first state of a new lineage.
        file_of_state: an encoded state to the file's bytes.
        parse: file bytes to what ``merge_into`` takes (raises ValueError when invalid).
        merge_into: edit a document into the parsed file content, in one transaction.
    """

    name: str
    room_prefix: str
    seed_state: Callable[[bytes], bytes]
    file_of_state: Callable[[bytes], bytes]
    parse: Callable[[bytes], Any]
    merge_into: Callable[[Doc, Any], MergeStats]


NOTEBOOK = DocumentKind(
    name="notebook",
    room_prefix="json:notebook:",
    seed_state=notebook.seed_state,
    file_of_state=notebook.file_of_state,
    parse=notebook.from_bytes,
    merge_into=_merge_notebook,
)

TEXT_FILE = DocumentKind(
    name="file",
    room_prefix="text:file:",
    seed_state=textfile.seed_state,
    file_of_state=textfile.file_of_state,
    parse=textfile.from_bytes,
    merge_into=textfile.merge_into,
)

def merged_change(state: bytes, kind_name: str, content: Any) -> tuple[list[bytes], bytes,
                                                                       MergeStats]:
    """Merge ``content`` (parsed file content) into a fork of ``state``: the updates that
    make the change (empty when nothing differs), the fork's new state, and the merge
    statistics. A pure function of plain data, so that the merge (seconds of CPU for a large
    change) runs in a worker (:func:`mesh_collab.offload.run`), never on the event loop."""
    fork = Doc()
    fork.apply_update(state)
    changes: list[bytes] = []
    fork.observe(lambda event: changes.append(event.update))
    stats = BY_NAME[kind_name].merge_into(fork, content)
    return changes, fork.get_update(), stats


#: Every (format, type) of a collaboration session, and the kind that serves it.
BY_SESSION: dict[tuple[str, str], DocumentKind] = {
    ("json", "notebook"): NOTEBOOK,
    ("text", "file"): TEXT_FILE,
    ("json", "file"): TEXT_FILE,
}

#: Kinds by name (the ``kind`` of a federation link).
BY_NAME: dict[str, DocumentKind] = {NOTEBOOK.name: NOTEBOOK, TEXT_FILE.name: TEXT_FILE}


def parse_room_id(room_id: str) -> tuple[DocumentKind, str] | None:
    """Split a room id into its kind and the rest (the file id); None if no kind fits."""
    doc_format, _, rest = room_id.partition(":")
    doc_type, _, file_id = rest.partition(":")
    kind = BY_SESSION.get((doc_format, doc_type))
    return None if kind is None or not file_id else (kind, file_id)


def kind_for_path(path: str) -> DocumentKind:
    """The kind a file opens as in JupyterLab: ``.ipynb`` files as notebooks, others as text
    (what the stock frontend's default widget factories do)."""
    return NOTEBOOK if path.lower().endswith(".ipynb") else TEXT_FILE
