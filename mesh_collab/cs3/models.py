"""Value objects for what the CS3 client returns, converted from the ``cs3apis`` messages.

Callers of :mod:`mesh_collab.cs3` get these frozen dataclasses, never protobuf messages, so
the rest of mesh_collab does not depend on the generated code.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from cs3.identity.user.v1beta1 import resources_pb2 as user_res
from cs3.sharing.collaboration.v1beta1 import resources_pb2 as share_res
from cs3.sharing.ocm.v1beta1 import resources_pb2 as ocm_res
from cs3.storage.provider.v1beta1 import resources_pb2 as storage_res
from cs3.types.v1beta1 import types_pb2

from mesh_collab.resources import ResourceId


class Role(enum.StrEnum):
    """What a share lets its grantee do."""

    VIEWER = "viewer"
    EDITOR = "editor"


_VIEWER_BITS = (
    "stat",
    "get_path",
    "get_quota",
    "list_container",
    "initiate_file_download",
    "list_file_versions",
    "list_grants",
)
_EDITOR_BITS = (
    *_VIEWER_BITS,
    "initiate_file_upload",
    "create_container",
    "delete",
    "move",
    "restore_file_version",
    "list_recycle",
    "restore_recycle_item",
)


def permissions_for(role: Role | str) -> storage_res.ResourcePermissions:
    """Return the CS3 ``ResourcePermissions`` of a viewer or editor share.

    Raises:
        ValueError: for an unknown role.
    """
    bits = {Role.VIEWER: _VIEWER_BITS, Role.EDITOR: _EDITOR_BITS}[Role(role)]
    return storage_res.ResourcePermissions(**dict.fromkeys(bits, True))


def role_of(perms: storage_res.ResourcePermissions) -> Role:
    """Return the role a permission set amounts to: editor when it allows uploads."""
    return Role.EDITOR if perms.initiate_file_upload else Role.VIEWER


def timestamp(ts: types_pb2.Timestamp) -> float:
    """Seconds since the epoch of a CS3 timestamp (0.0 when unset)."""
    return ts.seconds + ts.nanos / 1e9


def to_timestamp(seconds: float) -> types_pb2.Timestamp:
    """A CS3 timestamp for ``seconds`` since the epoch."""
    whole = int(seconds)
    return types_pb2.Timestamp(seconds=whole, nanos=int((seconds - whole) * 1e9))


def resource_id(rid: storage_res.ResourceId) -> ResourceId:
    """Convert a protobuf ``ResourceId``."""
    return ResourceId(storage_id=rid.storage_id, opaque_id=rid.opaque_id, space_id=rid.space_id)


def to_resource_id(rid: ResourceId) -> storage_res.ResourceId:
    """Convert to a protobuf ``ResourceId``."""
    return storage_res.ResourceId(
        storage_id=rid.storage_id, space_id=rid.space_id, opaque_id=rid.opaque_id
    )


@dataclass(frozen=True, slots=True)
class UserId:
    """A CS3 user id: the identity provider (a site's domain) and the user's opaque id."""

    idp: str
    opaque_id: str
    type: int = user_res.USER_TYPE_PRIMARY

    @classmethod
    def from_proto(cls, uid: user_res.UserId) -> UserId:
        return cls(idp=uid.idp, opaque_id=uid.opaque_id, type=uid.type)

    def to_proto(self) -> user_res.UserId:
        return user_res.UserId(idp=self.idp, opaque_id=self.opaque_id, type=self.type)


@dataclass(frozen=True, slots=True)
class User:
    """A CS3 user."""

    id: UserId
    username: str
    display_name: str = ""
    mail: str = ""

    @classmethod
    def from_proto(cls, user: user_res.User) -> User:
        return cls(
            id=UserId.from_proto(user.id),
            username=user.username,
            display_name=user.display_name,
            mail=user.mail,
        )


@dataclass(frozen=True, slots=True)
class Lock:
    """A CS3 lock. ``expiration`` is seconds since the epoch, 0.0 for none."""

    lock_id: str
    app_name: str = ""
    type: int = storage_res.LOCK_TYPE_WRITE
    user: UserId | None = None
    expiration: float = 0.0
    creation_time: float = 0.0

    @classmethod
    def from_proto(cls, lock: storage_res.Lock) -> Lock:
        return cls(
            lock_id=lock.lock_id,
            app_name=lock.app_name,
            type=lock.type,
            user=UserId.from_proto(lock.user) if lock.HasField("user") else None,
            expiration=timestamp(lock.expiration),
            creation_time=timestamp(lock.creation_time),
        )

    def to_proto(self) -> storage_res.Lock:
        lock = storage_res.Lock(lock_id=self.lock_id, app_name=self.app_name, type=self.type)
        if self.user is not None:
            lock.user.CopyFrom(self.user.to_proto())
        if self.expiration:
            lock.expiration.CopyFrom(to_timestamp(self.expiration))
        return lock

    def expired(self, now: float) -> bool:
        """Whether the lock has expired at ``now`` (master/EOS shows expired locks in Stat)."""
        return bool(self.expiration) and self.expiration <= now


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What Stat or ListContainer says of a resource."""

    id: ResourceId
    path: str
    name: str
    is_dir: bool
    size: int
    etag: str
    mtime: float
    mime_type: str = ""
    owner: UserId | None = None
    parent_id: ResourceId | None = None
    lock: Lock | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    writable: bool = True

    @classmethod
    def from_proto(cls, info: storage_res.ResourceInfo) -> FileInfo:
        return cls(
            id=resource_id(info.id),
            path=info.path,
            name=info.name or info.path.rsplit("/", 1)[-1],
            is_dir=info.type == storage_res.RESOURCE_TYPE_CONTAINER,
            size=info.size,
            etag=info.etag,
            mtime=timestamp(info.mtime),
            mime_type=info.mime_type,
            owner=UserId.from_proto(info.owner) if info.HasField("owner") else None,
            parent_id=resource_id(info.parent_id) if info.parent_id.opaque_id else None,
            lock=Lock.from_proto(info.lock) if info.lock.lock_id else None,
            metadata=dict(info.arbitrary_metadata.metadata),
            writable=(
                info.permission_set.initiate_file_upload
                if info.HasField("permission_set")
                else True
            ),
        )


@dataclass(frozen=True, slots=True)
class Version:
    """One stored version of a file (a former content, restorable by ``key``)."""

    key: str
    size: int
    mtime: float
    etag: str

    @classmethod
    def from_proto(cls, v: storage_res.FileVersion) -> Version:
        return cls(key=v.key, size=v.size, mtime=float(v.mtime), etag=v.etag)


@dataclass(frozen=True, slots=True)
class RecycleItem:
    """A deleted resource in a space's recycle bin, restorable by ``key``.

    Attributes:
        key: what restore and purge name the item by.
        path: where the resource was when it was deleted (a Reva edge provider gives it
            relative to the space root, ``./...``).
        is_dir: whether it is a container (deleted with its content).
        size: its size in bytes when deleted.
        deleted: when it was deleted, in seconds since the epoch.
    """

    key: str
    path: str
    is_dir: bool
    size: int
    deleted: float

    @classmethod
    def from_proto(cls, item: storage_res.RecycleItem) -> RecycleItem:
        return cls(
            key=item.key,
            path=item.ref.path,
            is_dir=item.type == storage_res.RESOURCE_TYPE_CONTAINER,
            size=item.size,
            deleted=timestamp(item.deletion_time),
        )


class ShareState(enum.IntEnum):
    """State of a received share (local or OCM)."""

    PENDING = share_res.SHARE_STATE_PENDING
    ACCEPTED = share_res.SHARE_STATE_ACCEPTED
    REJECTED = share_res.SHARE_STATE_REJECTED


@dataclass(frozen=True, slots=True)
class Share:
    """A share on this site: ``resource_id`` given to ``grantee`` with ``role``."""

    id: str
    resource_id: ResourceId
    grantee: UserId
    owner: UserId
    role: Role

    @classmethod
    def from_proto(cls, s: share_res.Share) -> Share:
        return cls(
            id=s.id.opaque_id,
            resource_id=resource_id(s.resource_id),
            grantee=UserId.from_proto(s.grantee.user_id),
            owner=UserId.from_proto(s.owner),
            role=role_of(s.permissions.permissions),
        )


@dataclass(frozen=True, slots=True)
class ReceivedShare:
    """A share someone on this site gave the caller, with the resource when known."""

    share: Share
    state: ShareState
    info: FileInfo | None = None

    @classmethod
    def from_proto(
        cls, rs: share_res.ReceivedShare, info: storage_res.ResourceInfo | None = None
    ) -> ReceivedShare:
        return cls(
            share=Share.from_proto(rs.share),
            state=ShareState(rs.state),
            info=FileInfo.from_proto(info) if info is not None and info.id.opaque_id else None,
        )


def _opaque_text(opaque: types_pb2.Opaque) -> dict[str, str]:
    out = {}
    for key, entry in opaque.map.items():
        if entry.decoder in ("plain", ""):
            out[key] = entry.value.decode("utf-8", "replace")
        elif entry.decoder == "json":
            out[key] = json.dumps(json.loads(entry.value))
    return out


@dataclass(frozen=True, slots=True)
class OCMShare:
    """A share the caller made to a user at another site."""

    id: str
    resource_id: ResourceId
    grantee: UserId
    name: str
    role: Role = Role.VIEWER

    @classmethod
    def from_proto(cls, s: ocm_res.Share) -> OCMShare:
        role = Role.VIEWER
        for method in s.access_methods:
            if method.HasField("webdav_options"):
                role = role_of(method.webdav_options.permissions)
        return cls(
            id=s.id.opaque_id,
            resource_id=resource_id(s.resource_id),
            grantee=UserId.from_proto(s.grantee.user_id),
            name=s.name,
            role=role,
        )


@dataclass(frozen=True, slots=True)
class ReceivedOCMShare:
    """A share a user at another site gave the caller.

    ``opaque`` carries what the sending site added: the embedded gateway puts the owner's
    resource id (``resource_id``) and site (``owner_site``) there.
    """

    id: str
    name: str
    owner: UserId
    state: ShareState
    webdav_uri: str
    shared_secret: str
    role: Role
    opaque: Mapping[str, str]
    ctime: float = 0.0

    @property
    def remote_resource_id(self) -> ResourceId | None:
        """The owner's resource id, when the sending site told it."""
        text = self.opaque.get("resource_id")
        return ResourceId.parse(text) if text else None

    @classmethod
    def from_proto(cls, s: ocm_res.ReceivedShare) -> ReceivedOCMShare:
        uri = secret = ""
        role = Role.VIEWER
        for proto in s.protocols:
            if proto.HasField("webdav_options"):
                dav = proto.webdav_options
                uri, secret = dav.uri, dav.shared_secret
                role = role_of(dav.permissions.permissions)
        return cls(
            id=s.id.opaque_id,
            name=s.name,
            owner=UserId.from_proto(s.owner),
            state=ShareState(s.state) if s.state in ShareState._value2member_map_ else (
                ShareState.PENDING
            ),
            webdav_uri=uri,
            shared_secret=secret,
            role=role,
            opaque=_opaque_text(s.opaque),
            ctime=timestamp(s.ctime),
        )

    def __repr__(self) -> str:
        # The shared secret is a credential: keep it out of logs and reprs.
        return f"ReceivedOCMShare(id={self.id!r}, name={self.name!r}, state={self.state.name})"


Ref = str | ResourceId | tuple[ResourceId, str]
"""How callers name a resource: an absolute path (``"/home/einstein/nb.ipynb"``), a resource
id (object or its ``storage$space!opaque`` string), or a resource id plus a relative path
(``(folder_id, "./sub/nb.ipynb")``)."""


def reference(ref: Ref) -> storage_res.Reference:
    """Build a CS3 ``Reference`` in one of the three forms of the cs3apis proto comment.

    Raises:
        ValueError: if ``ref`` is none of the accepted forms.
    """
    if isinstance(ref, tuple):
        rid, rel = ref
        if not (rel == "." or rel.startswith("./")):
            raise ValueError(f"a relative path must start with './': {rel!r}")
        return storage_res.Reference(resource_id=to_resource_id(rid), path=rel)
    if isinstance(ref, ResourceId):
        return storage_res.Reference(resource_id=to_resource_id(ref), path=".")
    if isinstance(ref, str) and ref.startswith("/"):
        return storage_res.Reference(path=ref)
    if isinstance(ref, str):
        return reference(ResourceId.parse(ref))
    raise ValueError(f"not a CS3 reference: {ref!r}")


def describe(ref: Ref) -> str:
    """The text form of a reference, for messages and logs."""
    if isinstance(ref, tuple):
        return f"{ref[0]}/{ref[1]}"
    return str(ref)
