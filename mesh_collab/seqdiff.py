"""A bounded diff of two sequences: patience anchors, then difflib only where it is cheap.

:class:`difflib.SequenceMatcher` is quadratic or worse when items repeat (12 KB of two
alternating lines took 6.8 s), and the sequences here come from users: the lines of a file
written outside the CRDT, the cells of a notebook. This diff costs O(n log n) plus a fixed
budget:

1. common prefix and suffix are matched;
2. items that occur exactly once on both sides are anchors; the longest run of anchors in
   the same order on both sides (a longest increasing subsequence) is matched, as patience
   diff (git's) does, and each gap between anchors is diffed the same way;
3. a gap without anchors goes to difflib when it is small (at most ``SMALL_WORK`` item
   pairs) and is otherwise reported as replaced: its items are deleted and inserted whole.

The total work over all gaps is capped at ``budget`` items; past it, gaps left are replaced.
A replace is always a correct diff, only a coarser one.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Hashable, Sequence
from difflib import SequenceMatcher

__all__ = ["SMALL_WORK", "opcodes"]

#: Gaps of at most this many item pairs (len(a) * len(b)) are aligned by difflib.
SMALL_WORK = 10_000

Opcode = tuple[str, int, int, int, int]


def opcodes(a: Sequence[Hashable], b: Sequence[Hashable], *, budget: int | None = None
            ) -> list[Opcode]:
    """Edit script from ``a`` to ``b`` in :meth:`difflib.SequenceMatcher.get_opcodes` form:
    ``(tag, i1, i2, j1, j2)`` with tag ``"equal"``, ``"replace"``, ``"delete"`` or
    ``"insert"``, covering both sequences left to right."""
    if budget is None:
        budget = 20 * (len(a) + len(b)) + 100_000
    blocks = sorted(_matches(a, b, budget))
    script: list[Opcode] = []
    i = j = 0
    for ai, bj, size in [*_joined(blocks), (len(a), len(b), 0)]:
        tag = ("replace" if i < ai and j < bj else "delete" if i < ai
               else "insert" if j < bj else "")
        if tag:
            script.append((tag, i, ai, j, bj))
        if size:
            script.append(("equal", ai, ai + size, bj, bj + size))
        i, j = ai + size, bj + size
    return script


def _matches(a: Sequence[Hashable], b: Sequence[Hashable], budget: int
             ) -> list[tuple[int, int, int]]:
    """Matched blocks ``(i, j, size)``, in no particular order."""
    found: list[tuple[int, int, int]] = []
    gaps = [(0, len(a), 0, len(b))]
    while gaps:
        alo, ahi, blo, bhi = gaps.pop()
        start = alo
        while alo < ahi and blo < bhi and a[alo] == b[blo]:
            alo, blo = alo + 1, blo + 1
        if alo > start:
            found.append((start, blo - (alo - start), alo - start))
        end = ahi
        while alo < ahi and blo < bhi and a[ahi - 1] == b[bhi - 1]:
            ahi, bhi = ahi - 1, bhi - 1
        if ahi < end:
            found.append((ahi, bhi, end - ahi))
        n, m = ahi - alo, bhi - blo
        if not n or not m:
            continue
        if budget < n + m:
            continue  # over budget: replaced
        budget -= n + m
        anchors = _anchors(a, b, alo, ahi, blo, bhi)
        if anchors:
            i, j = alo, blo
            for ai, bj in anchors:
                found.append((ai, bj, 1))
                gaps.append((i, ai, j, bj))
                i, j = ai + 1, bj + 1
            gaps.append((i, ahi, j, bhi))
        elif n * m <= SMALL_WORK:
            matcher = SequenceMatcher(None, a[alo:ahi], b[blo:bhi], autojunk=False)
            found.extend((alo + i, blo + j, size)
                         for i, j, size in matcher.get_matching_blocks() if size)
    return found


def _anchors(a: Sequence[Hashable], b: Sequence[Hashable], alo: int, ahi: int, blo: int,
             bhi: int) -> list[tuple[int, int]]:
    """The longest same-order run of items unique on both sides of the gap."""
    count_a = Counter(a[alo:ahi])
    count_b = Counter(b[blo:bhi])
    where_b = {b[j]: j for j in range(blo, bhi) if count_b[b[j]] == 1}
    pairs = [(i, where_b[a[i]]) for i in range(alo, ahi)
             if count_a[a[i]] == 1 and a[i] in where_b]
    # Longest increasing subsequence of the j's (patience sorting).
    tails: list[int] = []  # tails[k]: the smallest j that ends a run of length k + 1
    tail_at: list[int] = []  # index into pairs of that tail
    back: list[int] = []  # index into pairs of the previous item of each pair's run
    for index, (_, j) in enumerate(pairs):
        k = bisect_left(tails, j)
        if k == len(tails):
            tails.append(j)
            tail_at.append(index)
        else:
            tails[k], tail_at[k] = j, index
        back.append(tail_at[k - 1] if k else -1)
    run: list[tuple[int, int]] = []
    index = tail_at[-1] if tail_at else -1
    while index >= 0:
        run.append(pairs[index])
        index = back[index]
    return run[::-1]


def _joined(blocks: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Adjacent blocks merged into one."""
    out: list[tuple[int, int, int]] = []
    for i, j, size in blocks:
        if out and out[-1][0] + out[-1][2] == i and out[-1][1] + out[-1][2] == j:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + size)
        else:
            out.append((i, j, size))
    return out
