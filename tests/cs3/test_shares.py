"""Shares on one site: create, receive, accept, rights, revoke (contract suite)."""

from __future__ import annotations

import pytest

from mesh_collab import errors
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import Lock, Role, ShareState
from mesh_collab.pytest_plugin import Site


async def test_viewer_share(einstein: Session, marie: Session, workdir: str) -> None:
    nb = await einstein.files.write(f"{workdir}/shared.ipynb", b"by einstein")
    assert marie.user is not None
    share = await einstein.shares.create(nb.id, marie.user.id, Role.VIEWER)
    assert share.role is Role.VIEWER and share.resource_id == nb.id
    assert [s.id for s in await einstein.shares.list(nb.id)] == [share.id]
    with pytest.raises(errors.AlreadyExists):
        await einstein.shares.create(nb.id, marie.user.id, Role.EDITOR)

    received = [r for r in await marie.shares.received() if r.share.id == share.id]
    assert len(received) == 1 and received[0].state is ShareState.PENDING
    assert received[0].info is not None and received[0].info.id == nb.id
    await marie.shares.accept(share.id)
    (accepted,) = [r for r in await marie.shares.received() if r.share.id == share.id]
    assert accepted.state is ShareState.ACCEPTED

    assert await marie.files.read(nb.id) == b"by einstein"
    assert not (await marie.files.stat(nb.id)).writable
    with pytest.raises(errors.PermissionDenied):
        await marie.files.write(nb.id, b"by marie")
    with pytest.raises(errors.PermissionDenied):
        await marie.locks.set(nb.id, Lock(lock_id="m", app_name="mesh_collab"))
    assert await einstein.files.read(nb.id) == b"by einstein"


async def test_editor_share_then_revoke(einstein: Session, marie: Session, workdir: str) -> None:
    nb = await einstein.files.write(f"{workdir}/shared.ipynb", b"v1")
    assert marie.user is not None
    share = await einstein.shares.create(nb.id, marie.user.id, Role.EDITOR)
    await marie.shares.accept(share.id)
    assert (await marie.files.stat(nb.id)).writable
    await marie.files.write(nb.id, b"by marie")
    assert await einstein.files.read(nb.id) == b"by marie"

    await einstein.shares.update(share.id, Role.VIEWER)
    with pytest.raises(errors.PermissionDenied):
        await marie.files.write(nb.id, b"again")

    await einstein.shares.remove(share.id)
    with pytest.raises((errors.PermissionDenied, errors.NotFound)):
        await marie.files.read(nb.id)
    with pytest.raises(errors.NotFound):
        await einstein.shares.remove(share.id)


async def test_decline(einstein: Session, marie: Session, workdir: str) -> None:
    nb = await einstein.files.write(f"{workdir}/shared.ipynb", b"v1")
    assert marie.user is not None
    share = await einstein.shares.create(nb.id, marie.user.id, Role.VIEWER)
    await marie.shares.decline(share.id)
    (declined,) = [r for r in await marie.shares.received() if r.share.id == share.id]
    assert declined.state is ShareState.REJECTED


async def test_share_of_a_missing_resource(
    einstein: Session, marie: Session, workdir: str
) -> None:
    assert marie.user is not None
    with pytest.raises(errors.NotFound):
        await einstein.shares.create(f"{workdir}/missing.ipynb", marie.user.id, Role.VIEWER)


# ---- what an editor may not do (the embedded gateway's rules, as Reva's) -------------------


def embedded_only(site: Site) -> None:
    if not site.embedded:
        pytest.skip("grantees reach a real Reva's shares through their share jail, not by id")


async def test_an_editor_cannot_take_or_delete_the_shared_file(
    site: Site, einstein: Session, marie: Session, workdir: str
) -> None:
    embedded_only(site)
    nb = await einstein.files.write(f"{workdir}/report.ipynb", b"v1")
    await einstein.files.write(nb.id, b"v2")
    assert marie.user is not None
    share = await einstein.shares.create(nb.id, marie.user.id, Role.EDITOR)
    await marie.shares.accept(share.id)
    for target in (f"{site.home('marie')}/taken.ipynb", f"{workdir}/renamed.ipynb"):
        with pytest.raises(errors.PermissionDenied):
            await marie.files.move(nb.id, target)
    with pytest.raises(errors.PermissionDenied):
        await marie.files.delete(nb.id)

    info = await einstein.files.stat(f"{workdir}/report.ipynb")
    assert info.id == nb.id and info.owner == einstein.user.id  # type: ignore[union-attr]
    assert await einstein.files.read(nb.id) == b"v2"
    assert len(await einstein.versions.list(nb.id)) == 1
    await marie.files.write(nb.id, b"by marie")  # editing stays allowed
    assert await einstein.files.read(nb.id) == b"by marie"


async def test_an_editor_moves_inside_a_shared_folder_only(
    site: Site, einstein: Session, marie: Session, workdir: str
) -> None:
    embedded_only(site)
    folder = f"{workdir}/proj"
    await einstein.files.mkdir(folder)
    await einstein.files.mkdir(f"{folder}/sub")
    nb = await einstein.files.write(f"{folder}/a.ipynb", b"a")
    info = await einstein.files.stat(folder)
    assert marie.user is not None
    await einstein.shares.create(info.id, marie.user.id, Role.EDITOR)

    await marie.files.move(nb.id, (info.id, "./sub/a.ipynb"))
    assert (await einstein.files.stat(nb.id)).path == f"{folder}/sub/a.ipynb"
    for source, target in (
        (nb.id, f"{site.home('marie')}/a.ipynb"),  # into her home
        (nb.id, f"{workdir}/a.ipynb"),  # out of the shared folder, same space
        (info.id, f"{site.home('marie')}/proj"),  # the share's root
        (info.id, f"{workdir}/renamed"),
    ):
        with pytest.raises(errors.PermissionDenied):
            await marie.files.move(source, target)
    assert (await einstein.files.stat(nb.id)).path == f"{folder}/sub/a.ipynb"
    assert (await einstein.files.stat(info.id)).path == folder
    with pytest.raises(errors.PermissionDenied):
        await marie.files.delete(info.id)


async def test_an_owner_cannot_move_into_another_space(
    site: Site, einstein: Session, marie: Session, workdir: str
) -> None:
    embedded_only(site)
    assert einstein.user is not None
    await marie.files.mkdir(f"{site.home('marie')}/inbox")
    inbox = await marie.files.stat(f"{site.home('marie')}/inbox")
    await marie.shares.create(inbox.id, einstein.user.id, Role.EDITOR)
    mine = await einstein.files.write(f"{workdir}/mine.ipynb", b"mine")
    with pytest.raises(errors.PermissionDenied):
        await einstein.files.move(mine.id, (inbox.id, "./mine.ipynb"))
    assert (await einstein.files.stat(mine.id)).path == f"{workdir}/mine.ipynb"


async def test_an_editors_delete_in_a_shared_folder_lands_in_the_owners_bin(
    site: Site, einstein: Session, marie: Session, workdir: str
) -> None:
    embedded_only(site)
    folder = f"{workdir}/proj"
    await einstein.files.mkdir(folder)
    nb = await einstein.files.write(f"{folder}/thesis.ipynb", b"v1")
    await einstein.files.write(nb.id, b"v2")
    info = await einstein.files.stat(folder)
    assert marie.user is not None
    await einstein.shares.create(info.id, marie.user.id, Role.EDITOR)
    await marie.files.write(nb.id, b"v3")

    await marie.files.delete(nb.id)
    with pytest.raises(errors.NotFound):
        await einstein.files.stat(f"{folder}/thesis.ipynb")
    with pytest.raises(errors.PermissionDenied):
        await marie.files.list_recycle(site.home("einstein"))
    assert await marie.files.list_recycle(site.home("marie")) == []
    (item,) = [i for i in await einstein.files.list_recycle(site.home("einstein"))
               if i.path == f"{folder}/thesis.ipynb"]
    with pytest.raises(errors.PermissionDenied):
        await marie.files.restore_recycle_item(site.home("einstein"), item.key)

    await einstein.files.restore_recycle_item(site.home("einstein"), item.key)
    assert await einstein.files.read(f"{folder}/thesis.ipynb") == b"v3"
    assert (await einstein.files.stat(f"{folder}/thesis.ipynb")).id == nb.id
    history = [await einstein.versions.read(nb.id, v.key)
               for v in await einstein.versions.list(nb.id)]
    assert history == [b"v2", b"v1"]
    assert await marie.files.read(nb.id) == b"v3"  # the share reaches it again
