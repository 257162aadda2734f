"""Jupyter paths and CS3 resource ids: the one place that maps one onto the other.

A Jupyter path (``"notebooks/a.ipynb"``, relative to the contents root) names a resource in the
CS3 namespace of the request's user:

==============================  ================================================================
Jupyter path                    CS3 resource
==============================  ================================================================
``""``                          the user's home, ``/home/<username>`` (``home_template``)
``"a/b.ipynb"``                 ``/home/<username>/a/b.ipynb``
``"Shared with me"``            a virtual, read-only folder: the user's accepted received shares
``"Shared with me/<name>"``     a local share: the shared resource, addressed by resource id
``"Shared with me/<n>/x/y"``    inside a shared folder: ``(resource id, "./x/y")``
``"Shared with me/<name>"``     an OCM share: the owner's resource at the owner's site
==============================  ================================================================

:func:`locate` turns a Jupyter path into a :data:`Location`; the contents manager
(:mod:`mesh_collab.jupyter.contents`) and the two id functions below use it, so the home prefix
and the shares folder are defined here only.

The file id of a Jupyter path is the CS3 ``ResourceId`` of what it names: a Stat by path gives
it, a Stat by id gives the path back. CS3 keeps ids across rename and overwrite, so no index is
kept here (unlike jupyter_server_fileid, whose ids are lost when a file changes outside Jupyter).
Two paths to one resource (the owner's ``"nb.ipynb"`` and a recipient's
``"Shared with me/nb.ipynb"``) give the same id, which is what puts both users in one room. For
an OCM share the id is the owner's resource id at the owner's site
(:attr:`~mesh_collab.cs3.models.ReceivedOCMShare.remote_resource_id`): the room key is the same
at both sites.

Usage::

    rid = await resource_id_for(session, "Shared with me/nb.ipynb")
    assert await path_for(session, rid) == "Shared with me/nb.ipynb"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from mesh_collab import errors
from mesh_collab.cs3.models import ReceivedOCMShare, ReceivedShare, Ref, ShareState
from mesh_collab.resources import ResourceId

if TYPE_CHECKING:
    from mesh_collab.cs3.client import Session

#: The name of the virtual folder listing the shares the user received.
SHARED_FOLDER = "Shared with me"

#: Where a user's home is in the CS3 namespace (Reva's demo layout and the embedded gateway).
DEFAULT_HOME_TEMPLATE = "/home/{username}"


def normalize(path: str) -> str:
    """Return a Jupyter API path without leading, trailing or doubled slashes.

    Raises:
        ValueError: for ``.`` or ``..`` components (Jupyter paths never contain them).
    """
    parts = [p for p in path.strip("/").split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"not a valid path: {path!r}")
    return "/".join(parts)


def home_path(session: Session, home_template: str = DEFAULT_HOME_TEMPLATE) -> str:
    """The CS3 path of the session user's home.

    Raises:
        RuntimeError: the session does not know its user (call ``whoami`` first).
    """
    if session.user is None:
        raise RuntimeError("the CS3 session does not know its user yet")
    return home_template.format(username=session.user.username).rstrip("/") or "/"


@dataclass(frozen=True, slots=True)
class HomeLocation:
    """A path in the user's home (``cs3_path`` is absolute; ``path`` ``""`` is the home)."""

    path: str
    cs3_path: str

    @property
    def ref(self) -> Ref:
        return self.cs3_path


@dataclass(frozen=True, slots=True)
class SharesFolder:
    """The virtual ``Shared with me`` folder itself."""

    path: str = SHARED_FOLDER


@dataclass(frozen=True, slots=True)
class ShareLocation:
    """A local share (``rest`` empty) or a path inside a shared folder."""

    path: str
    share: ReceivedShare
    rest: str = ""

    @property
    def resource_id(self) -> ResourceId:
        """The id of the shared resource itself (not of ``rest``)."""
        return self.share.share.resource_id

    @property
    def ref(self) -> Ref:
        if not self.rest:
            return self.resource_id
        return (self.resource_id, f"./{self.rest}")


@dataclass(frozen=True, slots=True)
class OCMLocation:
    """A share from a user at another site (``rest`` non-empty inside a shared folder)."""

    path: str
    share: ReceivedOCMShare
    rest: str = ""

    @property
    def url(self) -> str:
        """The WebDAV URL of the resource at the owner's site."""
        base = self.share.webdav_uri.rstrip("/")
        return f"{base}/{self.rest}" if self.rest else base


Location = HomeLocation | SharesFolder | ShareLocation | OCMLocation
"""What a Jupyter path names (see the module docstring)."""

SharedEntry = ReceivedShare | ReceivedOCMShare


async def shared_entries(session: Session) -> dict[str, SharedEntry]:
    """Return the accepted received shares by their name in the ``Shared with me`` folder.

    Local shares whose resource the gateway no longer describes are left out. Two shares with
    the same name are told apart by the owner (``"nb.ipynb (marie)"``), then by the share id.

    Raises:
        StorageError: listing the shares failed.
    """
    # (cast: in shares.py, `list[...]` annotations sit next to a method named `list`.)
    local_shares = cast("Sequence[ReceivedShare]", await session.shares.received())
    ocm_shares = cast("Sequence[ReceivedOCMShare]", await session.ocm.received())
    entries: list[tuple[str, str, SharedEntry]] = [
        (local.info.name, local.share.owner.opaque_id, local)
        for local in local_shares
        if local.state is ShareState.ACCEPTED and local.info is not None
    ]
    entries.extend(
        (ocm.name.rsplit("/", 1)[-1], ocm.owner.opaque_id, ocm)
        for ocm in ocm_shares
        if ocm.state is ShareState.ACCEPTED and ocm.name
    )
    # Sort by share id so that tie-breaking does not depend on the gateway's listing order.
    entries.sort(key=lambda e: _share_id(e[2]))
    counts: dict[str, int] = {}
    for name, _, _ in entries:
        counts[name] = counts.get(name, 0) + 1
    named: dict[str, SharedEntry] = {}
    for name, owner, entry in entries:
        key = name if counts[name] == 1 else f"{name} ({owner})"
        if key in named:
            key = f"{name} ({_share_id(entry)})"
        named[key] = entry
    return named


def _share_id(entry: SharedEntry) -> str:
    return entry.share.id if isinstance(entry, ReceivedShare) else entry.id


async def locate(
    session: Session, path: str, *, home_template: str = DEFAULT_HOME_TEMPLATE
) -> Location:
    """Return what the Jupyter ``path`` names for the session's user.

    Raises:
        NotFound: a ``Shared with me/<name>`` that is no accepted share.
        ValueError: a path with ``.`` or ``..`` components.
        StorageError: listing the shares failed.
    """
    path = normalize(path)
    head, _, rest = path.partition("/")
    if head != SHARED_FOLDER:
        home = home_path(session, home_template)
        return HomeLocation(path=path, cs3_path=f"{home}/{path}" if path else home)
    if not rest:
        return SharesFolder()
    name, _, inner = rest.partition("/")
    entry = (await shared_entries(session)).get(name)
    if entry is None:
        raise errors.NotFound("no such share", op="locate", ref=path)
    if isinstance(entry, ReceivedShare):
        return ShareLocation(path=path, share=entry, rest=inner)
    return OCMLocation(path=path, share=entry, rest=inner)


async def resource_id_for(
    session: Session, jupyter_path: str, *, home_template: str = DEFAULT_HOME_TEMPLATE
) -> ResourceId:
    """Return the CS3 resource id of what ``jupyter_path`` names (the room key of a notebook).

    Raises:
        NotFound: no such resource, the virtual ``Shared with me`` folder (it has no id), or
            a path inside an OCM share, or an OCM share whose site did not send the owner's
            resource id.
        PermissionDenied: the user may not see it.
    """
    loc = await locate(session, jupyter_path, home_template=home_template)
    if isinstance(loc, SharesFolder):
        raise errors.NotFound("the shares folder is virtual", op="resource_id", ref=loc.path)
    if isinstance(loc, OCMLocation):
        rid = loc.share.remote_resource_id
        if rid is None or loc.rest:
            raise errors.NotFound(
                "no resource id for this OCM path", op="resource_id", ref=loc.path
            )
        return rid
    if isinstance(loc, ShareLocation) and not loc.rest:
        return loc.resource_id
    return (await session.files.stat(loc.ref)).id


async def path_for(
    session: Session, resource_id: ResourceId, *, home_template: str = DEFAULT_HOME_TEMPLATE
) -> str | None:
    """Return the Jupyter path under which the session's user sees ``resource_id``, or None.

    The user's own files map into their home; a resource shared with them (or inside a shared
    folder) maps into ``Shared with me``; an OCM share maps from the owner's resource id.

    Raises:
        StorageError: a CS3 call failed for another reason than not finding the resource.
    """
    entries = await shared_entries(session)
    for name, entry in entries.items():
        if isinstance(entry, ReceivedOCMShare) and entry.remote_resource_id == resource_id:
            return f"{SHARED_FOLDER}/{name}"
    try:
        info = await session.files.stat(resource_id)
    except (errors.NotFound, errors.PermissionDenied):
        return None
    home = home_path(session, home_template)
    if info.path == home:
        return ""
    if info.path.startswith(home.rstrip("/") + "/"):
        return info.path[len(home.rstrip("/")) + 1 :]
    for name, entry in entries.items():
        if not isinstance(entry, ReceivedShare) or entry.info is None:
            continue
        if entry.share.resource_id == resource_id:
            return f"{SHARED_FOLDER}/{name}"
        root = entry.info.path.rstrip("/")
        if entry.info.is_dir and root and info.path.startswith(root + "/"):
            return f"{SHARED_FOLDER}/{name}/{info.path[len(root) + 1 :]}"
    return None
