"""Files: stat, list, read, write, move, delete, metadata (contract suite)."""

from __future__ import annotations

import pytest

from mesh_collab import errors
from mesh_collab.cs3.client import Session
from mesh_collab.pytest_plugin import Site
from mesh_collab.resources import ResourceId


async def test_write_then_read_round_trips(einstein: Session, workdir: str) -> None:
    for size in (0, 1, 1024, 1024 * 1024):
        body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        info = await einstein.files.write(f"{workdir}/f{size}.bin", body)
        assert info.size == size
        assert await einstein.files.read(f"{workdir}/f{size}.bin") == body


async def test_stat_describes_the_file(einstein: Session, workdir: str) -> None:
    info = await einstein.files.write(f"{workdir}/nb.ipynb", b"{}")
    assert info.path == f"{workdir}/nb.ipynb"
    assert info.name == "nb.ipynb"
    assert not info.is_dir
    assert info.etag.startswith('"') and info.etag.endswith('"')  # etags are quoted
    assert info.owner is not None and einstein.user is not None
    assert info.owner.opaque_id == einstein.user.id.opaque_id
    folder = await einstein.files.stat(workdir)
    assert folder.is_dir and info.parent_id == folder.id
    assert ResourceId.parse(str(info.id)) == info.id


async def test_resource_id_is_stable_across_overwrite_and_rename(
    einstein: Session, workdir: str
) -> None:
    first = await einstein.files.write(f"{workdir}/a.ipynb", b"one")
    second = await einstein.files.write(f"{workdir}/a.ipynb", b"two")
    assert second.id == first.id and second.etag != first.etag
    await einstein.files.move(f"{workdir}/a.ipynb", f"{workdir}/b.ipynb")
    moved = await einstein.files.stat(f"{workdir}/b.ipynb")
    assert moved.id == first.id
    by_id = await einstein.files.stat(first.id)
    assert by_id.path == f"{workdir}/b.ipynb"
    assert await einstein.files.read(first.id) == b"two"
    with pytest.raises(errors.NotFound):
        await einstein.files.stat(f"{workdir}/a.ipynb")


async def test_delete_then_recreate_gives_a_new_id(einstein: Session, workdir: str) -> None:
    old = await einstein.files.write(f"{workdir}/x.ipynb", b"1")
    await einstein.files.delete(f"{workdir}/x.ipynb")
    with pytest.raises(errors.NotFound):
        await einstein.files.stat(old.id)
    new = await einstein.files.write(f"{workdir}/x.ipynb", b"1")
    assert new.id != old.id


async def test_relative_reference(einstein: Session, workdir: str) -> None:
    folder = await einstein.files.stat(workdir)
    await einstein.files.mkdir(f"{workdir}/sub")
    await einstein.files.write(f"{workdir}/sub/r.txt", b"rel")
    info = await einstein.files.stat((folder.id, "./sub/r.txt"))
    assert info.path == f"{workdir}/sub/r.txt"


async def test_list_container(einstein: Session, workdir: str) -> None:
    await einstein.files.mkdir(f"{workdir}/d")
    await einstein.files.write(f"{workdir}/f.txt", b"f")
    entries = {i.name: i.is_dir for i in await einstein.files.list(workdir)}
    assert entries == {"d": True, "f.txt": False}


async def test_missing_things_are_not_found(einstein: Session, workdir: str) -> None:
    for call in (
        einstein.files.stat(f"{workdir}/nope"),
        einstein.files.list(f"{workdir}/nope"),
        einstein.files.read(f"{workdir}/nope"),
        einstein.files.delete(f"{workdir}/nope"),
        einstein.files.move(f"{workdir}/nope", f"{workdir}/other"),
        einstein.files.mkdir(f"{workdir}/no/parent"),
        einstein.files.write(f"{workdir}/no/parent.txt", b"x"),
    ):
        with pytest.raises(errors.NotFound):
            await call


async def test_mkdir_twice_already_exists(einstein: Session, workdir: str) -> None:
    await einstein.files.mkdir(f"{workdir}/twice")
    with pytest.raises(errors.AlreadyExists):
        await einstein.files.mkdir(f"{workdir}/twice")


async def test_arbitrary_metadata(einstein: Session, workdir: str) -> None:
    path = f"{workdir}/m.ipynb"
    await einstein.files.write(path, b"{}")
    await einstein.files.set_metadata(path, {"mesh_collab.lineage": "abc", "other": "1"})
    info = await einstein.files.stat(path)
    assert info.metadata["mesh_collab.lineage"] == "abc" and info.metadata["other"] == "1"
    await einstein.files.unset_metadata(path, ["other"])
    assert "other" not in (await einstein.files.stat(path)).metadata
    with pytest.raises(errors.InvalidArgument):
        await einstein.files.set_metadata(path, {"": "empty key"})


async def test_if_match_guards_a_write(einstein: Session, workdir: str) -> None:
    path = f"{workdir}/cas.ipynb"
    first = await einstein.files.write(path, b"1")
    second = await einstein.files.write(path, b"2", if_match=first.etag)
    with pytest.raises(errors.Conflict):
        await einstein.files.write(path, b"3", if_match=first.etag)
    assert await einstein.files.read(path) == b"2"
    assert (await einstein.files.stat(path)).etag == second.etag


async def test_users_cannot_reach_each_others_homes(
    site: Site, einstein: Session, marie: Session, workdir: str
) -> None:
    secret = await einstein.files.write(f"{workdir}/secret.ipynb", b"mine")
    for call in (
        marie.files.stat(secret.id),
        marie.files.read(secret.id),
        marie.files.read(f"{workdir}/secret.ipynb"),
        marie.files.write(f"{workdir}/secret.ipynb", b"theirs"),
        marie.files.list(workdir),
        marie.files.delete(secret.id),
    ):
        with pytest.raises((errors.PermissionDenied, errors.NotFound)):
            await call
    assert await einstein.files.read(secret.id) == b"mine"


async def test_users(einstein: Session) -> None:
    found = await einstein.users.find("mari")
    assert [u.username for u in found] == ["marie"]
    marie = await einstein.users.get(found[0].id)
    assert marie.display_name
    assert (await einstein.users.by_claim("username", "marie")).id == marie.id
    with pytest.raises(errors.NotFound):
        await einstein.users.by_claim("username", "nobody-such-user")
