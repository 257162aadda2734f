"""Load a notebook into a live CRDT document, and merge an external change into it.

The document schema is jupyter_ydoc's :class:`~jupyter_ydoc.YNotebook` (``doc["cells"]``: an
Array of cell Maps with a ``source`` Text, a ``metadata`` Map and, for code cells, an
``outputs`` Array; ``doc["meta"]``: ``nbformat``, ``nbformat_minor`` and a ``metadata`` Map),
which is what the stock JupyterLab collaboration frontend reads. Cells are always built with
``YNotebook.create_ycell`` so the frontend sees exactly the structure jupyter_ydoc produces.

Usage::

    nb = from_bytes(data)                       # validated nbformat 4.x dict
    ynb = YNotebook(Doc(client_id=0))           # deterministic first load, see load()
    load(ynb, nb)
    ...
    stats = merge_into(ynb, from_bytes(changed), origin=StoreOrigin(...))
    data = to_bytes(to_notebook(ynb))

:func:`merge_into` never replaces the whole document: unchanged cells keep their Y.Map, edited
sources get character-level edits (so a collaborator's concurrent typing elsewhere in the cell
survives), and only the changed fields of a cell are rewritten.
"""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import nbformat
from jupyter_ydoc import YNotebook
from pycrdt import Array, Doc, Map, Text

from mesh_collab import seqdiff
from mesh_collab.textdiff import edit_text

__all__ = [
    "MergeStats", "file_of_state", "from_bytes", "load", "merge_into", "seed_state", "to_bytes",
    "to_notebook",
]

NotebookDict = dict[str, Any]

# What jupyter_ydoc's YNotebook.set() writes into empty notebook metadata. They carry no
# information (a real kernel always has a name), so to_notebook() drops them again.
_PLACEHOLDER_METADATA = {
    "kernelspec": {"name": "", "display_name": ""},
    "language_info": {"name": ""},
}
# Keys of a cell Map that are not part of the .ipynb (jupyter_ydoc runtime state).
_RUNTIME_KEYS = frozenset({"execution_state"})
_MAX_PAIRING_WORK = 10_000
_SAMPLE = 4096
# Minimum bigram similarity for two changed cells to count as "the same cell edited".
_PAIRING_THRESHOLD = 0.5


@dataclass(frozen=True, slots=True)
class MergeStats:
    """What :func:`merge_into` did, cell by cell.

    A cell whose ``cell_type`` changed counts as one deleted and one inserted cell.
    """

    kept: int = 0
    edited: int = 0
    inserted: int = 0
    deleted: int = 0
    metadata_changed: bool = False

    @property
    def changed(self) -> bool:
        """Whether the merge modified the document at all."""
        return bool(self.edited or self.inserted or self.deleted or self.metadata_changed)


def from_bytes(data: bytes | str) -> NotebookDict:
    """Parse and validate an ``.ipynb`` file of nbformat 4 (any minor version).

    Multi-line strings stored as lists are joined, as ``nbformat.reads`` does.

    Args:
        data: The file content, UTF-8 encoded or already decoded.

    Returns:
        The notebook as a dict (an ``nbformat.NotebookNode``).

    Raises:
        ValueError: If ``data`` is not UTF-8, not JSON, not an nbformat 4 notebook, does
            not validate against its nbformat schema, or is nested too deeply to be read
            (JSON nested some hundreds deep: no notebook is).
    """
    try:
        return _parse(data)
    except RecursionError as exc:
        # json, nbformat and the validator all recurse: whichever reaches the interpreter's
        # limit first, it is a file we do not read, not an internal error.
        raise ValueError("Not a notebook: nested too deeply") from exc


def _parse(data: bytes | str) -> NotebookDict:
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        raw = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"Not a notebook: not UTF-8 JSON ({exc})") from exc
    if not isinstance(raw, dict) or "nbformat" not in raw:
        raise ValueError("Not a notebook: no top-level 'nbformat' field")
    if raw["nbformat"] != 4 or not isinstance(raw.get("nbformat_minor"), int):
        raise ValueError(
            f"Unsupported notebook format {raw['nbformat']!r}.{raw.get('nbformat_minor')!r}:"
            " only nbformat 4.x is supported"
        )
    nb = nbformat.from_dict(raw)  # type: ignore[no-untyped-call]
    try:
        with warnings.catch_warnings():
            # nbformat "repairs" a 4.5 cell without id by adding a random one, with a
            # warning: validate a copy, so that load() can derive a deterministic id.
            warnings.simplefilter("ignore")
            nbformat.validate(copy.deepcopy(nb), version=4, version_minor=raw["nbformat_minor"])
    except nbformat.ValidationError as exc:
        raise ValueError(f"Invalid notebook: {exc.message}") from exc
    nbformat.v4.rwbase.rejoin_lines(nb)  # type: ignore[no-untyped-call]
    return nb  # type: ignore[no-any-return]


def to_bytes(nb: NotebookDict) -> bytes:
    """Serialise a notebook the way Jupyter writes ``.ipynb`` files.

    Args:
        nb: A notebook dict, e.g. from :func:`to_notebook`.

    Returns:
        UTF-8 JSON, one-space indent, sorted keys, multi-line strings split into lists, and a
        trailing newline (byte-identical to the file for notebooks that Jupyter wrote).
    """
    node = nbformat.from_dict(copy.deepcopy(nb))  # type: ignore[no-untyped-call]
    text: str = nbformat.writes(node, version=4)  # type: ignore[no-untyped-call]
    return (text + "\n").encode("utf-8")


def file_of_state(state: bytes) -> bytes:
    """The ``.ipynb`` bytes an encoded document state is written as.

    It builds its own document from ``state`` (reading a YNotebook may write to it, see
    :func:`to_notebook`), so it shares nothing with a live one: safe in a worker thread or
    process.
    """
    doc = Doc()
    doc.apply_update(state)
    return to_bytes(to_notebook(YNotebook(ydoc=doc)))


def seed_state(data: bytes) -> bytes:
    """The encoded state of the document a new history starts from, built from ``.ipynb``
    bytes: deterministic (client id 0, content-derived cell ids), so that every node that
    starts from the same bytes builds the same items. Safe in a worker thread or process.

    Raises:
        ValueError: ``data`` is not a valid notebook.
    """
    seed = Doc(client_id=0)
    load(YNotebook(ydoc=seed), from_bytes(data))
    return seed.get_update()


def to_notebook(ynotebook: YNotebook) -> NotebookDict:
    """Read the live document back as a notebook dict.

    This is ``YNotebook.get()`` (which drops runtime keys, strips cell ids for nbformat < 4.5
    and de-duplicates cells with the same id, renaming a non-identical duplicate in the
    document itself) minus the empty ``kernelspec`` and
    ``language_info`` placeholders that ``YNotebook.set()`` invents for notebooks without
    them, so that a file with empty metadata is written back unchanged.

    Args:
        ynotebook: The live notebook.

    Returns:
        The notebook dict.
    """
    nb: NotebookDict = ynotebook.get()
    metadata = nb.get("metadata", {})
    for key, placeholder in _PLACEHOLDER_METADATA.items():
        if metadata.get(key) == placeholder:
            del metadata[key]
    return nb


def load(ynotebook: YNotebook, nb: NotebookDict, *, origin: object | None = None) -> None:
    """Load a notebook into an empty document, in one transaction.

    The result is deterministic: the same notebook loaded into documents with the same
    ``client_id`` (jupyter-collaboration uses ``Doc(client_id=0)``) produces the same Yjs
    items (ids and content; only the encoded bytes may differ, as pycrdt writes JSON objects
    in hash-map order), so two servers that derive a document from the same file agree item
    by item instead of duplicating content when their histories meet. To that end, cells
    without an id (nbformat < 4.5, where the frontend still needs one) get an id derived from
    the notebook's content and the cell position, not ``uuid4()``; they are not written back
    to a < 4.5 file. Like ``YNotebook.set()``, a notebook without cells gets one empty code cell,
    because the frontend cannot show a cell-less notebook.

    Args:
        ynotebook: A YNotebook whose document has no cells yet.
        nb: The notebook to load (e.g. from :func:`from_bytes`).
        origin: Transaction origin for the load.

    Raises:
        ValueError: If the document already has cells (use :func:`merge_into`).
    """
    if len(ynotebook.ycells):
        raise ValueError("load() needs an empty document; use merge_into() to update one")
    nb = _normalised(nb)
    cells = _cells_of(nb)
    seed = hashlib.sha256(
        json.dumps(nb, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    ).digest()
    ymeta: Map[Any] = ynotebook.ydoc.get("meta", type=Map)
    with ynotebook.ydoc.transaction(origin=origin):
        ymeta["nbformat"] = nb["nbformat"]
        ymeta["nbformat_minor"] = nb["nbformat_minor"]
        ymeta["metadata"] = Map(nb.get("metadata", {}))
        ycells = []
        for index, cell in enumerate(cells):
            if "id" not in cell:
                cell = {**cell, "id": _derived_id(seed, index)}
            ycells.append(ynotebook.create_ycell(cell))
        ynotebook.ycells.extend(ycells)


def merge_into(
    ynotebook: YNotebook, new: NotebookDict, *, origin: object | None = None
) -> MergeStats:
    """Apply the difference between the live document and ``new``, in one transaction.

    Cells are matched by id when every cell of ``new`` has one, otherwise by aligning
    ``(cell_type, source)`` with the bounded diff of :mod:`mesh_collab.seqdiff`; within a
    block of changed cells, cells of the same type and similar source are paired as edits,
    the rest are deleted and inserted. Moved cells are a delete plus an insert. For a matched
    cell, only what changed is written: character-level edits to the source Text (positions
    converted to the UTF-8 byte offsets pycrdt uses), per-key metadata updates, the outputs
    after the common prefix, and plain fields. A changed ``cell_type`` replaces that cell, as
    JupyterLab does, since the frontend builds a different cell model per type. If nothing
    differs, the document is not touched (no update is emitted).

    This is a two-way merge: live edits that ``new`` lacks (e.g. not yet saved) are reverted,
    while edits made concurrently on other replicas, merged later, survive.

    Args:
        ynotebook: The live notebook.
        new: The notebook to converge to (e.g. the file as changed in storage).
        origin: Transaction origin, so observers can tell this change from client edits.

    Returns:
        Counts of kept, edited, inserted and deleted cells.
    """
    new = _normalised(new)
    new_cells = _cells_of(new)
    ycells = ynotebook.ycells
    live = [ycells[i] for i in range(len(ycells))]
    live_py = [_ycell_to_py(ycell) for ycell in live]
    kept = edited = inserted = deleted = 0
    with ynotebook.ydoc.transaction(origin=origin):
        metadata_changed = _merge_meta(ynotebook.ydoc.get("meta", type=Map), new)
        pos = 0
        for old_index, new_index in _script(live_py, new_cells):
            if old_index is None:
                assert new_index is not None
                ycells.insert(pos, ynotebook.create_ycell(new_cells[new_index]))
                inserted += 1
                pos += 1
            elif new_index is None:
                del ycells[pos]
                deleted += 1
            else:
                old, cell = live_py[old_index], new_cells[new_index]
                if old.get("cell_type") != cell["cell_type"] or not _well_formed(
                    live[old_index], cell["cell_type"]
                ):
                    del ycells[pos]
                    ycells.insert(pos, ynotebook.create_ycell(cell))
                    deleted += 1
                    inserted += 1
                elif _update_cell(live[old_index], old, cell):
                    edited += 1
                else:
                    kept += 1
                pos += 1
    return MergeStats(kept, edited, inserted, deleted, metadata_changed)


# --- reading and normalising ------------------------------------------------------------


def _normalised(nb: NotebookDict) -> NotebookDict:
    """Deep copy of ``nb`` with multi-line strings joined, as the document stores them."""
    node = nbformat.from_dict(copy.deepcopy(dict(nb)))  # type: ignore[no-untyped-call]
    node.setdefault("cells", [])
    nbformat.v4.rwbase.rejoin_lines(node)  # type: ignore[no-untyped-call]
    return node  # type: ignore[no-any-return]


def _cells_of(nb: NotebookDict) -> list[NotebookDict]:
    # Same placeholder as YNotebook.set() for a notebook without cells, minus the random id.
    cells: list[NotebookDict] = nb.get("cells") or [
        {
            "cell_type": "code",
            "execution_count": None,
            "metadata": {"trusted": True},
            "outputs": [],
            "source": "",
        }
    ]
    return cells


def _derived_id(seed: bytes, index: int) -> str:
    digest = hashlib.sha256(seed + index.to_bytes(8, "big")).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _to_ints(value: Any) -> Any:
    """Undo pycrdt's storing of every number as a float (as YNotebook.get() does)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_to_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_ints(v) for k, v in value.items()}
    return value


def _ycell_to_py(ycell: Map[Any]) -> NotebookDict:
    cell: NotebookDict = _to_ints(ycell.to_py())
    for key in _RUNTIME_KEYS:
        cell.pop(key, None)
    return cell


def _well_formed(ycell: Map[Any], cell_type: str) -> bool:
    """Whether the cell's nested shared types are where an in-place update expects them."""
    return (
        isinstance(ycell.get("source"), Text)
        and isinstance(ycell.get("metadata"), Map)
        and (cell_type != "code" or isinstance(ycell.get("outputs"), Array))
    )


# --- matching cells ---------------------------------------------------------------------


Step = tuple[int | None, int | None]  # (live index, new index); None on one side: delete/insert


def _script(live: list[NotebookDict], new: list[NotebookDict]) -> Iterator[Step]:
    """Yield an order-preserving edit script turning ``live`` into ``new``."""
    by_id = all("id" in cell for cell in new)
    keys_a: list[Any]
    keys_b: list[Any]
    if by_id:
        keys_a = [cell.get("id") for cell in live]
        keys_b = [cell["id"] for cell in new]
    else:
        keys_a = [(cell.get("cell_type"), cell.get("source")) for cell in live]
        keys_b = [(cell["cell_type"], cell["source"]) for cell in new]
    for tag, i1, i2, j1, j2 in seqdiff.opcodes(keys_a, keys_b):
        if tag == "equal":
            yield from zip(range(i1, i2), range(j1, j2), strict=True)
        elif tag == "replace" and not by_id:
            # Two cells with different ids are different cells; without ids, guess.
            yield from _pair_block(live[i1:i2], new[j1:j2], i1, j1)
        else:
            yield from ((i, None) for i in range(i1, i2))
            yield from ((None, j) for j in range(j1, j2))


def _pair_block(
    live: list[NotebookDict], new: list[NotebookDict], i0: int, j0: int
) -> Iterator[Step]:
    """Pair changed cells of a replaced block: best total similarity, order preserved."""
    n, m = len(live), len(new)
    if n * m > _MAX_PAIRING_WORK:
        yield from _positional(n, m, i0, j0)
        return

    grams_a = [_bigrams(cell.get("source", "")) for cell in live]
    grams_b = [_bigrams(cell["source"]) for cell in new]
    score = [
        [
            _similarity(grams_a[i], grams_b[j])
            if live[i].get("cell_type") == new[j]["cell_type"]
            else 0.0
            for j in range(m)
        ]
        for i in range(n)
    ]
    # best[i][j]: best total score pairing live[i:] with new[j:].
    best = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            s = score[i][j]
            best[i][j] = max(best[i + 1][j], best[i][j + 1], s + best[i + 1][j + 1] if s else 0)
    i = j = 0
    while i < n and j < m:
        s = score[i][j]
        if s and best[i][j] == s + best[i + 1][j + 1]:
            yield i0 + i, j0 + j
            i, j = i + 1, j + 1
        elif best[i][j] == best[i + 1][j]:
            yield i0 + i, None
            i += 1
        else:
            yield None, j0 + j
            j += 1
    yield from ((i0 + k, None) for k in range(i, n))
    yield from ((None, j0 + k) for k in range(j, m))


def _bigrams(text: str) -> Counter[str]:
    """Character bigrams of the source's head and tail (``_SAMPLE`` characters each): enough
    to pair a cell with its edit, and bounded (a whole 1 MB cell took 0.5 s)."""
    if len(text) > 2 * _SAMPLE:
        text = text[:_SAMPLE] + text[-_SAMPLE:]
    return Counter(text[k : k + 2] for k in range(max(len(text) - 1, 1)))


def _similarity(a: Counter[str], b: Counter[str]) -> float:
    """Dice coefficient of character bigrams, or 0 below the pairing threshold.

    Unlike difflib's ``quick_ratio`` (shared characters), unrelated sources share few
    bigrams, while a small edit changes only a few.
    """
    shared = sum((a & b).values())
    ratio = 2 * shared / (a.total() + b.total())
    return ratio if ratio >= _PAIRING_THRESHOLD else 0.0


def _positional(n: int, m: int, i0: int, j0: int) -> Iterator[Step]:
    k = min(n, m)
    yield from ((i0 + d, j0 + d) for d in range(k))
    yield from ((i0 + d, None) for d in range(k, n))
    yield from ((None, j0 + d) for d in range(k, m))


# --- updating one cell ------------------------------------------------------------------


def _update_cell(ycell: Map[Any], old: NotebookDict, new: NotebookDict) -> bool:
    """Write the fields of ``new`` that differ from ``old`` into ``ycell``; return if any."""
    changed = False
    for key in (old.keys() | new.keys()) - _RUNTIME_KEYS:
        if key == "id" and "id" not in new:
            continue  # a < 4.5 file has no ids: keep the one the document has
        if key in old and key in new and old[key] == new[key]:
            continue
        changed = True
        if key not in new:
            del ycell[key]
        elif key == "source":
            edit_text(ycell["source"], new["source"])
        elif key == "metadata":
            _update_map(ycell["metadata"], old.get("metadata", {}), new["metadata"])
        elif key == "outputs" and isinstance(ycell.get("outputs"), Array):
            youtputs: Array[Any] = ycell["outputs"]
            old_outputs, new_outputs = old.get("outputs", []), new["outputs"]
            keep = 0
            while keep < min(len(old_outputs), len(new_outputs)):
                if old_outputs[keep] != new_outputs[keep]:
                    break
                keep += 1
            del youtputs[keep:]
            youtputs.extend([_youtput(output) for output in new_outputs[keep:]])
        elif key == "outputs":
            ycell["outputs"] = Array([_youtput(output) for output in new["outputs"]])
        else:
            ycell[key] = copy.deepcopy(new[key])
    return changed


def _youtput(output: NotebookDict) -> Map[Any]:
    # Same layout as YNotebook: stream text is a Text (kernels append to it), the rest JSON.
    output = copy.deepcopy(output)
    if output.get("output_type") == "stream":
        output["text"] = Text(output.get("text", ""))
    return Map(output)


def _update_map(ymap: Map[Any], old: NotebookDict, new: NotebookDict) -> bool:
    changed = False
    for key in old.keys() - new.keys():
        del ymap[key]
        changed = True
    for key, value in new.items():
        if key not in old or old[key] != value:
            ymap[key] = copy.deepcopy(value)
            changed = True
    return changed


def _merge_meta(ymeta: Map[Any], new: NotebookDict) -> bool:
    changed = False
    for key in ("nbformat", "nbformat_minor"):
        if ymeta.get(key) != new[key]:
            ymeta[key] = new[key]
            changed = True
    metadata = new.get("metadata", {})
    ymetadata = ymeta.get("metadata")
    if isinstance(ymetadata, Map):
        changed |= _update_map(ymetadata, _to_ints(ymetadata.to_py()), metadata)
    else:
        ymeta["metadata"] = Map(copy.deepcopy(metadata))
        changed = True
    return changed
