"""Versions: every overwrite keeps the replaced content, restorable (contract suite)."""

from __future__ import annotations

import pytest

from mesh_collab import errors
from mesh_collab.cs3.client import Session


async def test_each_overwrite_keeps_a_version(einstein: Session, workdir: str) -> None:
    path = f"{workdir}/v.ipynb"
    for content in (b"v1", b"v2", b"v3"):
        await einstein.files.write(path, content)
    versions = await einstein.versions.list(path)
    assert len(versions) == 2
    assert [await einstein.versions.read(path, v.key) for v in versions] == [b"v2", b"v1"]
    assert versions[0].mtime >= versions[1].mtime


async def test_restore_makes_a_version_current_and_keeps_history(
    einstein: Session, workdir: str
) -> None:
    path = f"{workdir}/v.ipynb"
    first = await einstein.files.write(path, b"v1")
    await einstein.files.write(path, b"v2")
    (old,) = await einstein.versions.list(path)
    await einstein.versions.restore(path, old.key)
    assert await einstein.files.read(path) == b"v1"
    info = await einstein.files.stat(path)
    assert info.id == first.id
    versions = await einstein.versions.list(path)
    contents = [await einstein.versions.read(path, v.key) for v in versions]
    assert b"v2" in contents  # the replaced content was kept


async def test_unknown_version_is_not_found(einstein: Session, workdir: str) -> None:
    path = f"{workdir}/v.ipynb"
    await einstein.files.write(path, b"v1")
    assert await einstein.versions.list(path) == []
    with pytest.raises(errors.NotFound):
        await einstein.versions.restore(path, "no-such-version")
    with pytest.raises(errors.NotFound):
        await einstein.versions.read(path, "no-such-version")
