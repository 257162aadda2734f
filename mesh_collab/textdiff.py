"""Character-level edits that turn one text into another, applied to a pycrdt ``Text``.

Used wherever a text changed outside the CRDT (a notebook cell's source, a text file) has to
become a CRDT edit: only the changed characters are deleted and inserted, so a
collaborator's concurrent typing elsewhere in the text survives the merge.
"""

from __future__ import annotations

from collections.abc import Iterator
from difflib import SequenceMatcher

from pycrdt import Text

from mesh_collab import seqdiff

__all__ = ["char_edits", "edit_text"]

# Above this many compared characters, a changed block of lines is replaced as a whole.
_MAX_DIFF_WORK = 250_000


def edit_text(ytext: Text, new: str) -> bool:
    """Turn ``ytext`` into ``new`` with the fewest character-level inserts and deletes;
    return whether anything changed.

    pycrdt 0.14 indexes Text by UTF-8 byte, so each code-point offset is converted; edits
    are applied right to left, so the text left of each edit is still the old text.
    """
    old = str(ytext)
    edits = list(char_edits(old, new))
    for start, end, replacement in reversed(edits):
        byte_start = len(old[:start].encode("utf-8"))
        if end > start:
            del ytext[byte_start : byte_start + len(old[start:end].encode("utf-8"))]
        if replacement:
            ytext.insert(byte_start, replacement)
    return bool(edits)


def char_edits(old: str, new: str) -> Iterator[tuple[int, int, str]]:
    """Yield ``(start, end, replacement)`` code-point edits of ``old``, left to right.

    A bounded line diff first (:mod:`mesh_collab.seqdiff`, O(n log n)), then a character
    diff inside each changed block of lines up to ``_MAX_DIFF_WORK`` character pairs: long
    sources cost near-linear time, and only the changed characters are touched.
    """
    prefix = 0
    limit = min(len(old), len(new))
    while prefix < limit and old[prefix] == new[prefix]:
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and old[-1 - suffix] == new[-1 - suffix]:
        suffix += 1
    a, b = old[prefix : len(old) - suffix], new[prefix : len(new) - suffix]
    if not a or not b:
        if a or b:
            yield prefix, prefix + len(a), b
        return
    lines_a, lines_b = a.splitlines(keepends=True), b.splitlines(keepends=True)
    starts_a = _offsets(lines_a, prefix)
    starts_b = _offsets(lines_b, 0)
    for tag, i1, i2, j1, j2 in seqdiff.opcodes(lines_a, lines_b):
        if tag == "equal":
            continue
        start, end = starts_a[i1], starts_a[i2]
        block_a, block_b = old[start:end], b[starts_b[j1] : starts_b[j2]]
        if tag != "replace" or len(block_a) * len(block_b) > _MAX_DIFF_WORK:
            yield start, end, block_b
            continue
        chars = SequenceMatcher(None, block_a, block_b, autojunk=False)
        for ctag, c1, c2, d1, d2 in chars.get_opcodes():
            if ctag != "equal":
                yield start + c1, start + c2, block_b[d1:d2]


def _offsets(lines: list[str], base: int) -> list[int]:
    offsets = [base]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    return offsets
