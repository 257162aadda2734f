"""The recycle bin: a delete is restorable by the space's owner, with ids and versions
(contract suite; the embedded gateway's own rules are marked so)."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import pytest

from mesh_collab import errors
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import RecycleItem, Role
from mesh_collab.pytest_plugin import Site


def embedded_only(site: Site) -> None:
    if not site.embedded:
        pytest.skip("the embedded gateway's recycle rules (restore targets, retention)")


async def item_of(session: Session, space: str, path: str) -> RecycleItem:
    """The one bin item deleted from ``path`` (a real Reva's bin holds other runs' too)."""
    (item,) = [i for i in await session.files.list_recycle(space) if i.path == path]
    return item


async def test_delete_then_restore_gives_the_file_back(
    site: Site, einstein: Session, workdir: str
) -> None:
    home = site.home("einstein")
    path = f"{workdir}/nb.ipynb"
    first = await einstein.files.write(path, b"v1")
    await einstein.files.write(path, b"v2")
    before = time.time()
    await einstein.files.delete(path)
    with pytest.raises(errors.NotFound):
        await einstein.files.stat(path)

    item = await item_of(einstein, home, path)
    assert not item.is_dir and item.size == 2
    assert before - 2 <= item.deleted <= time.time() + 2
    assert [i.key for i in await einstein.files.list_recycle(home, key=item.key)] == [item.key]

    await einstein.files.restore_recycle_item(home, item.key)
    assert await einstein.files.read(path) == b"v2"
    assert item.key not in {i.key for i in await einstein.files.list_recycle(home)}
    if site.embedded:  # EOS restores versions only when asked to (--restore-versions)
        assert (await einstein.files.stat(path)).id == first.id
        (version,) = await einstein.versions.list(path)
        assert await einstein.versions.read(path, version.key) == b"v1"


async def test_a_folder_comes_back_with_its_content_and_ids(
    site: Site, einstein: Session, workdir: str
) -> None:
    embedded_only(site)
    home = site.home("einstein")
    folder = f"{workdir}/proj"
    await einstein.files.mkdir(folder)
    await einstein.files.mkdir(f"{folder}/sub")
    a = await einstein.files.write(f"{folder}/a.ipynb", b"aaa")
    b = await einstein.files.write(f"{folder}/sub/b.txt", b"bbbbb")
    await einstein.files.set_metadata(a.id, {"k": "v"})
    await einstein.files.delete(folder)
    for gone in (a.id, b.id):
        with pytest.raises(errors.NotFound):
            await einstein.files.stat(gone)

    item = await item_of(einstein, home, folder)
    assert item.is_dir and item.size == 8
    await einstein.files.restore_recycle_item(home, item.key)
    assert await einstein.files.read(a.id) == b"aaa"
    assert (await einstein.files.stat(b.id)).path == f"{folder}/sub/b.txt"
    assert (await einstein.files.stat(a.id)).metadata["k"] == "v"


async def test_restore_to_another_path_and_a_taken_target(
    site: Site, einstein: Session, workdir: str
) -> None:
    embedded_only(site)
    home = site.home("einstein")
    path = f"{workdir}/nb.ipynb"
    info = await einstein.files.write(path, b"old")
    await einstein.files.delete(path)
    await einstein.files.write(path, b"new")  # the original place is taken
    item = await item_of(einstein, home, path)
    with pytest.raises(errors.AlreadyExists):
        await einstein.files.restore_recycle_item(home, item.key)
    with pytest.raises(errors.NotFound):
        await einstein.files.restore_recycle_item(home, item.key, to=f"{workdir}/no/x.ipynb")
    with pytest.raises(errors.PermissionDenied):  # only into the item's own space
        await einstein.files.restore_recycle_item(
            home, item.key, to=f"{site.home('marie')}/x.ipynb"
        )
    await einstein.files.restore_recycle_item(home, item.key, to=f"{workdir}/old.ipynb")
    restored = await einstein.files.stat(f"{workdir}/old.ipynb")
    assert restored.id == info.id and await einstein.files.read(restored.id) == b"old"
    assert await einstein.files.read(path) == b"new"
    with pytest.raises(errors.NotFound):
        await einstein.files.restore_recycle_item(home, item.key)


async def test_purge_one_item_then_the_whole_bin(
    site: Site, einstein: Session, workdir: str
) -> None:
    embedded_only(site)
    assert site.gateway is not None
    home = site.home("einstein")
    infos = []
    for name in ("a", "b", "c"):
        await einstein.files.write(f"{workdir}/{name}.txt", b"1")
        infos.append(await einstein.files.write(f"{workdir}/{name}.txt", b"2"))
        await einstein.files.delete(f"{workdir}/{name}.txt")
    a = await item_of(einstein, home, f"{workdir}/a.txt")
    version_dir = site.gateway.root / "versions" / infos[0].id.opaque_id
    assert version_dir.is_dir()

    await einstein.files.purge_recycle(home, a.key)
    assert a.key not in {i.key for i in await einstein.files.list_recycle(home)}
    assert not version_dir.exists()  # the versions went with it
    with pytest.raises(errors.NotFound):
        await einstein.files.restore_recycle_item(home, a.key)
    with pytest.raises(errors.NotFound):
        await einstein.files.purge_recycle(home, a.key)
    with pytest.raises(ValueError, match="empty_recycle"):
        await einstein.files.purge_recycle(home, "")

    assert len(await einstein.files.list_recycle(home)) == 2
    await einstein.files.empty_recycle(home)
    assert await einstein.files.list_recycle(home) == []
    assert not any((site.gateway.root / "trash").iterdir())


async def test_only_the_owner_reaches_a_bin(
    site: Site, einstein: Session, marie: Session, workdir: str
) -> None:
    home = site.home("einstein")
    path = f"{workdir}/nb.ipynb"
    await einstein.files.write(path, b"mine")
    await einstein.files.delete(path)
    item = await item_of(einstein, home, path)
    try:
        seen = await marie.files.list_recycle(home)
    except errors.PermissionDenied:
        seen = []  # the embedded gateway; Reva master with EOS lists the caller's own bin
    assert item.key not in {i.key for i in seen}
    assert item.key not in {i.key for i in await marie.files.list_recycle(site.home("marie"))}
    if site.embedded:
        for call in (
            marie.files.list_recycle(home),
            marie.files.restore_recycle_item(home, item.key),
            marie.files.restore_recycle_item(home, item.key, to=f"{site.home('marie')}/x"),
            marie.files.purge_recycle(home, item.key),
            marie.files.empty_recycle(home),
        ):
            with pytest.raises(errors.PermissionDenied):
                await call
    assert (await item_of(einstein, home, path)).key == item.key


# ---- retention (embedded gateway) -----------------------------------------------------------


async def test_a_full_bin_drops_its_oldest_items_first(
    gateway_factory: Any, cs3_client_factory: Any
) -> None:
    gw = await gateway_factory(site="site-a", recycle_max_bytes=10)
    einstein = await (await cs3_client_factory(gw.grpc_address)).login("einstein", "relativity")
    home = "/home/einstein"
    for name, size in (("a", 6), ("b", 4), ("c", 3), ("big", 20)):
        await einstein.files.write(f"{home}/{name}", b"x" * size)
    kept = []
    for name in ("a", "b", "c", "big"):
        await einstein.files.delete(f"{home}/{name}")
        kept.append(sorted(i.path for i in await einstein.files.list_recycle(home)))
    assert kept == [
        [f"{home}/a"],
        [f"{home}/a", f"{home}/b"],  # 10 bytes: at the limit
        [f"{home}/b", f"{home}/c"],  # 13 bytes: a, the oldest, went
        [f"{home}/big"],  # the newest item stays, whatever its size
    ]


async def test_a_grantee_cannot_push_the_owners_deletions_out_of_the_bin(
    gateway_factory: Any, cs3_client_factory: Any
) -> None:
    gw = await gateway_factory(site="site-a", recycle_max_bytes=10)
    cs3 = await cs3_client_factory(gw.grpc_address)
    einstein = await cs3.login("einstein", "relativity")
    marie = await cs3.login("marie", "radioactivity")
    home = "/home/einstein"
    await einstein.files.mkdir(f"{home}/lab")
    lab = await einstein.files.stat(f"{home}/lab")
    assert marie.user is not None
    await einstein.shares.create(lab.id, marie.user.id, Role.EDITOR)
    await einstein.files.write(f"{home}/lab/thesis", b"x" * 8)
    await marie.files.delete(f"{home}/lab/thesis")  # 8 of 10 bytes
    junk = await marie.files.write(f"{home}/lab/junk", b"j" * 8)
    with pytest.raises(errors.QuotaExceeded):
        await marie.files.delete(junk.id)
    assert await einstein.files.read(junk.id) == b"j" * 8
    assert [i.path for i in await einstein.files.list_recycle(home)] == [f"{home}/lab/thesis"]
    # The owner's own delete makes room, the oldest items going first.
    await einstein.files.delete(junk.id)
    assert [i.path for i in await einstein.files.list_recycle(home)] == [f"{home}/lab/junk"]


async def test_items_older_than_the_retention_are_purged(
    gateway_factory: Any, cs3_client_factory: Any
) -> None:
    gw = await gateway_factory(site="site-a", recycle_max_age=3600)
    einstein = await (await cs3_client_factory(gw.grpc_address)).login("einstein", "relativity")
    home = "/home/einstein"
    for name in ("old", "recent"):
        await einstein.files.write(f"{home}/{name}", b"x")
        await einstein.files.delete(f"{home}/{name}")
    # Age one item past the retention (the passing of time is not the thing tested here).
    db = sqlite3.connect(gw.root / "meta.sqlite")
    with db:
        db.execute("UPDATE recycle SET deleted = deleted - 7200 WHERE path = 'home/einstein/old'")
    db.close()
    assert [i.path for i in await einstein.files.list_recycle(home)] == [f"{home}/recent"]
    assert len(list((gw.root / "trash").iterdir())) == 1
