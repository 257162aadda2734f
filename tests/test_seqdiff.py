"""The bounded sequence diff: always a correct edit script, minimal where cheap, and never
quadratic on what a user can write."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_collab import seqdiff
from mesh_collab.textdiff import char_edits

items = st.lists(st.sampled_from("abcdefgh"), max_size=60)


def apply(a: list[str], b: list[str], script: list[seqdiff.Opcode]) -> list[str]:
    out: list[str] = []
    i = j = 0
    for tag, i1, i2, j1, j2 in script:
        assert (i1, j1) == (i, j), "the script covers both sides left to right"
        if tag == "equal":
            assert a[i1:i2] == b[j1:j2]
            out += a[i1:i2]
        else:
            assert tag in ("replace", "delete", "insert")
            out += b[j1:j2]
        i, j = i2, j2
    assert (i, j) == (len(a), len(b))
    return out


@given(items, items)
@settings(max_examples=400, deadline=None)
def test_the_script_turns_one_sequence_into_the_other(a: list[str], b: list[str]) -> None:
    assert apply(a, b, seqdiff.opcodes(a, b)) == b


@given(items, items, st.integers(0, 200))
@settings(max_examples=200, deadline=None)
def test_a_spent_budget_gives_a_coarser_but_correct_script(
    a: list[str], b: list[str], budget: int
) -> None:
    assert apply(a, b, seqdiff.opcodes(a, b, budget=budget)) == b


def test_small_edits_in_a_long_text_are_found_exactly() -> None:
    lines = [f"line {n}\n" for n in range(50_000)]
    new = lines[:100] + ["inserted\n"] + lines[100:30_000] + lines[30_001:]
    script = [op for op in seqdiff.opcodes(lines, new) if op[0] != "equal"]
    assert script == [("insert", 100, 100, 100, 101), ("delete", 30_000, 30_001, 30_001, 30_001)]


def test_a_small_gap_without_unique_items_is_aligned_not_replaced() -> None:
    """No item occurs once on both sides: difflib aligns the small gap."""
    a, b = list("ababab"), list("bababa")
    assert [op for op in seqdiff.opcodes(a, b) if op[0] == "equal"] == [
        ("equal", 0, 5, 1, 6)
    ]


def test_the_work_on_repeated_lines_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two alternating lines, 12 KB of them: difflib took 6.8 s (quadratic), and a write of
    that size froze the node. The work done is counted, not timed: difflib only ever sees
    small gaps, and the anchor passes together touch at most the budget's items."""
    rng = random.Random(1)
    a = [rng.choice(("a\n", "b\n")) for _ in range(200_000)]
    b = [rng.choice(("a\n", "b\n")) for _ in range(200_000)]
    a[1000], b[1500] = "unique\n", "unique\n"  # one anchor, so the gaps get split
    difflib_pairs: list[int] = []
    anchor_items: list[int] = []
    real_matcher, real_anchors = seqdiff.SequenceMatcher, seqdiff._anchors

    def matcher(junk: object, x: list[str], y: list[str], **kw: object) -> object:
        difflib_pairs.append(len(x) * len(y))
        return real_matcher(junk, x, y, **kw)

    def anchors(x: list[str], y: list[str], alo: int, ahi: int, blo: int, bhi: int) -> object:
        anchor_items.append(ahi - alo + bhi - blo)
        return real_anchors(x, y, alo, ahi, blo, bhi)

    monkeypatch.setattr(seqdiff, "SequenceMatcher", matcher)
    monkeypatch.setattr(seqdiff, "_anchors", anchors)
    script = seqdiff.opcodes(a, b)
    assert apply(a, b, script) == b
    assert ("equal", 1000, 1001, 1500, 1501) in script
    assert all(pairs <= seqdiff.SMALL_WORK for pairs in difflib_pairs)
    assert sum(anchor_items) <= 20 * (len(a) + len(b)) + 100_000


def test_char_edits_of_a_large_repeated_text_rebuild_it() -> None:
    rng = random.Random(2)
    old = "".join(rng.choice(("a\n", "b\n")) for _ in range(100_000))
    new = "".join(rng.choice(("a\n", "b\n")) for _ in range(100_000))
    rebuilt, at = [], 0
    for start, end, replacement in char_edits(old, new):
        rebuilt += [old[at:start], replacement]
        at = end
    assert "".join(rebuilt) + old[at:] == new
