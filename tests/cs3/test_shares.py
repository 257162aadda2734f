"""Shares on one site: create, receive, accept, rights, revoke (contract suite)."""

from __future__ import annotations

import pytest

from mesh_collab import errors
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import Lock, Role, ShareState


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
