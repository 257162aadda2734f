"""``CS3ContentsManager``: Jupyter's files API (``/api/contents``) on CS3 storage.

**Whose files?** jupyter_server has one contents manager for all users, and its methods get
no request. The manager therefore reads the request user's CS3 session from
:data:`mesh_collab.jupyter.identity.current_session`, a ``ContextVar`` that
:meth:`CS3IdentityProvider.get_user` sets while authenticating the request. That works because
tornado runs a handler's ``prepare`` (where authentication happens) and its ``get``/``put``/...
in one task, each request in its own task, and ``await`` keeps the context. Outside a request
(no session in the context) the single-user session is used; in multi-user mode that is an
HTTP 401.

**The tree.** The Jupyter root is the user's CS3 home; ``Shared with me`` is a virtual,
read-only folder with the shares the user accepted (see :mod:`mesh_collab.jupyter.fileids`, the
one place that maps Jupyter paths to CS3). A local share is addressed by resource id. An OCM
share (from another site) is read through its WebDAV URL with the share's secret; saving it is
refused, because the owner's site holds the file: edits reach it through the live room, whose
primary node at the home site writes it under its CS3 lock (``writable`` still tells whether
the share lets the user edit, so JupyterLab opens the notebook editable).

**Checkpoints are CS3 versions** (:class:`CS3Checkpoints`): the storage keeps the replaced
content of every overwrite.

Every CS3 error becomes a ``tornado.web.HTTPError`` in :func:`http_error` only.
"""

# jupyter_server and nbformat are untyped: calling into them is not an error here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import base64
import binascii
import mimetypes
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx
import nbformat
from jupyter_server.services.contents.checkpoints import AsyncCheckpoints
from jupyter_server.services.contents.manager import AsyncContentsManager
from tornado.web import HTTPError
from traitlets import default

from mesh_collab import errors
from mesh_collab.cs3 import statuses
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import FileInfo, ReceivedShare, Ref, Role
from mesh_collab.jupyter.fileids import (
    SHARED_FOLDER,
    HomeLocation,
    Location,
    OCMLocation,
    ShareLocation,
    SharesFolder,
    locate,
    shared_entries,
)
from mesh_collab.jupyter.identity import current_session

if TYPE_CHECKING:
    from mesh_collab.jupyter.app import MeshState

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: HTTP status of each storage error; the first matching class wins (subclasses first).
_STATUS: tuple[tuple[type[errors.StorageError], int], ...] = (
    (errors.NotFound, 404),
    (errors.PermissionDenied, 403),
    (errors.Unauthenticated, 401),
    (errors.LockConflict, 409),
    (errors.AlreadyExists, 409),
    (errors.Conflict, 409),
    (errors.InvalidArgument, 400),
    (errors.QuotaExceeded, 413),
    (errors.Unimplemented, 501),
    (errors.StorageUnavailable, 503),
)


def http_error(exc: errors.StorageError, path: str, *, holder: str = "") -> HTTPError:
    """The ``HTTPError`` a storage error on the Jupyter ``path`` turns into.

    NotFound 404, PermissionDenied 403, Unauthenticated 401, LockConflict 409 (naming the lock
    holder when known), AlreadyExists and other conflicts 409, InvalidArgument 400,
    QuotaExceeded 413, Unimplemented 501, StorageUnavailable 503, anything else 500.
    """
    status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 500)
    message = f"{exc.default_message}: {path!r}"
    if isinstance(exc, errors.LockConflict):
        message += f" is locked by {holder}" if holder else " is locked by another application"
    elif exc.detail and status >= 500:
        message += f" ({exc.detail})"
    return HTTPError(status, message)


class _Clock:
    """Keeps ``last_modified`` moving forward whenever a resource's etag changes.

    CS3 mtimes may have a one-second resolution, and two writes within a second would then
    look like no change to a client polling ``last_modified``.
    """

    def __init__(self, size: int = 4096) -> None:
        self._seen: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._size = size

    def __call__(self, key: str, etag: str, mtime: float) -> float:
        last = self._seen.get(key)
        if last is not None and last[0] != etag and mtime <= last[1]:
            mtime = last[1] + 0.001
        elif last is not None and last[0] == etag:
            mtime = max(mtime, last[1])
        self._seen[key] = (etag, mtime)
        self._seen.move_to_end(key)
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return mtime


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC) if seconds > 0 else _EPOCH


class CS3ContentsManager(AsyncContentsManager):
    """Jupyter contents on CS3, per user (see the module docstring).

    ``MeshCollabApp`` attaches its state (:meth:`attach`); until then every call is a 503.
    Post-save hooks get the CS3 path (or resource id) as ``os_path``.
    """

    _state: MeshState | None = None

    @default("checkpoints_class")
    def _default_checkpoints_class(self) -> type[AsyncCheckpoints]:
        return CS3Checkpoints

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._clock = _Clock()

    def attach(self, state: MeshState) -> None:
        """Connect the manager to the node's state (done by ``MeshCollabApp``)."""
        self._state = state

    def info_string(self) -> str:
        if self._state is None:
            return "Serving contents from CS3"
        return f"Serving contents from CS3 gateway {self._state.config.gateway}"

    # -- sessions and paths -------------------------------------------------------------------

    async def session(self) -> Session:
        """Return the CS3 session of the current request's user (see the module docstring).

        Raises:
            HTTPError: 401 without a session, 503 when the node is not connected to CS3.
        """
        state = self._state
        if state is None:
            raise HTTPError(503, "the CS3 contents manager is not attached to mesh_collab")
        await state.wait_ready()
        session = current_session.get()
        if session is None and state.config.auth_mode == "single-user":
            session = state.sessions.default
        if session is None:
            raise HTTPError(401, "no CS3 session for this request")
        return session

    @property
    def _home_template(self) -> str:
        assert self._state is not None
        return str(self._state.config.home_template)

    async def locate(self, path: str) -> tuple[Session, Location]:
        """Return the request's session and what ``path`` names.

        Raises:
            HTTPError: 404 for an unknown share or a bad path.
        """
        session = await self.session()
        try:
            loc = await locate(session, path, home_template=self._home_template)
        except ValueError as exc:
            raise HTTPError(404, f"No such file or directory: {path!r}") from exc
        except errors.StorageError as exc:
            raise http_error(exc, path) from exc
        return session, loc

    @asynccontextmanager
    async def _storage(
        self, path: str, session: Session | None = None, ref: Ref | None = None
    ) -> AsyncIterator[None]:
        """Turn storage errors of the block into HTTP errors (naming a lock's holder)."""
        try:
            yield
        except errors.LockConflict as exc:
            holder = await self._lock_holder(session, ref) if session and ref else ""
            raise http_error(exc, path, holder=holder) from exc
        except errors.StorageError as exc:
            self.log.debug("op=%s ref=%s failed: %s", exc.op, exc.ref, exc)
            raise http_error(exc, path) from exc

    async def _lock_holder(self, session: Session, ref: Ref) -> str:
        """Describe who holds the lock on ``ref`` (app and user, never the lock id)."""
        try:
            info = await session.files.stat(ref)
        except errors.StorageError:
            return ""
        lock = info.lock
        if lock is None:
            return ""
        who = repr(lock.app_name) if lock.app_name else "an application"
        if lock.user is not None and lock.user.opaque_id:
            who += f" (user {lock.user.opaque_id!r})"
        return who

    # -- existence ------------------------------------------------------------------------------

    async def is_hidden(self, path: str) -> bool:
        """Dotfiles and dot-folders are hidden (like ``FileContentsManager``)."""
        return any(part.startswith(".") for part in path.strip("/").split("/") if part)

    async def dir_exists(self, path: str) -> bool:
        path = path.strip("/")
        if not path:
            # No I/O: jupyter_server asks this at start-up, before CS3 is connected.
            return True
        return await self._exists(path, want_dir=True)

    async def file_exists(self, path: str = "") -> bool:
        path = path.strip("/")
        if not path:
            return False
        return await self._exists(path, want_dir=False)

    async def _exists(self, path: str, *, want_dir: bool) -> bool:
        try:
            session, loc = await self.locate(path)
        except HTTPError as exc:
            if exc.status_code == 404:
                return False
            raise
        if isinstance(loc, SharesFolder):
            return want_dir
        if isinstance(loc, OCMLocation):
            return not want_dir
        try:
            info = await session.files.stat(loc.ref)
        except (errors.NotFound, errors.PermissionDenied):
            return False
        except errors.StorageError as exc:
            raise http_error(exc, path) from exc
        return info.is_dir == want_dir

    # -- get ------------------------------------------------------------------------------------

    async def get(
        self,
        path: str,
        content: bool = True,
        type: str | None = None,
        format: str | None = None,
        require_hash: bool = False,
    ) -> dict[str, Any]:
        """Return the model of a file, notebook or directory.

        Raises:
            HTTPError: 404 missing or hidden, 400 wrong type or undecodable content, 413 a
                notebook over ``max_notebook_size``, or the mapped storage error.
        """
        path = path.strip("/")
        if not self.allow_hidden and await self.is_hidden(path):
            raise HTTPError(404, f"No such file or directory: {path!r}")
        session, loc = await self.locate(path)
        if isinstance(loc, SharesFolder):
            _check_type(path, "directory", type)
            model = await self._shares_folder_model(session, content)
        elif isinstance(loc, OCMLocation):
            model = await self._ocm_model(session, loc, content, type, format, require_hash)
        else:
            async with self._storage(path):
                info = await session.files.stat(loc.ref)
            if info.is_dir:
                _check_type(path, "directory", type)
                model = await self._dir_model(session, loc, info, content)
            else:
                kind = _file_type(path, type)
                model = self._base_model(path, info, kind, writable=info.writable)
                if content or require_hash:
                    model = await self._fill(
                        session, loc.ref, model, info, content, format, require_hash
                    )
        self.emit(data={"action": "get", "path": path})
        return model

    def _base_model(
        self,
        path: str,
        info: FileInfo | None,
        kind: str,
        *,
        writable: bool,
        mtime: float = 0.0,
        size: int | None = None,
    ) -> dict[str, Any]:
        if info is not None:
            mtime = self._clock(str(info.id), info.etag, info.mtime)
            size = None if info.is_dir else info.size
        when = _time(mtime)
        return {
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "type": kind,
            "created": when,
            "last_modified": when,
            "content": None,
            "format": None,
            "mimetype": None,
            "size": size,
            "writable": writable,
            "hash": None,
            "hash_algorithm": None,
        }

    async def _fill(
        self,
        session: Session,
        ref: Ref,
        model: dict[str, Any],
        info: FileInfo,
        content: bool,
        format: str | None,
        require_hash: bool,
    ) -> dict[str, Any]:
        path = model["path"]
        if require_hash:
            model["hash"], model["hash_algorithm"] = info.etag, "etag"
        if not content:
            if model["type"] == "file":
                model["mimetype"] = _mimetype(path, info.mime_type)
            return model
        if model["type"] == "notebook":
            self._check_size(path, info.size)
        async with self._storage(path, session, ref):
            data = await session.files.read(ref)
        return self._decode(model, data, format, info.mime_type)

    def _decode(
        self, model: dict[str, Any], data: bytes, format: str | None, mime_type: str = ""
    ) -> dict[str, Any]:
        path = model["path"]
        if model["type"] == "notebook":
            self._check_size(path, len(data))
            validation_error: dict[str, Any] = {}
            try:
                nb = nbformat.reads(
                    data.decode("utf-8"), as_version=4, capture_validation_error=validation_error
                )
            except (UnicodeDecodeError, ValueError) as exc:
                raise HTTPError(400, f"Unreadable Notebook: {path!r} {exc}") from exc
            except RecursionError as exc:  # JSON nested too deeply for json and nbformat
                raise HTTPError(400, f"Unreadable Notebook: {path!r} nested too deeply") from exc
            self.mark_trusted_cells(nb, path)
            model.update(content=nb, format="json")
            self.validate_notebook_model(model, validation_error)
            return model
        if format not in (None, "text", "base64"):
            raise HTTPError(400, f"Unknown format {format!r} for {path!r}")
        if format in (None, "text"):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                if format == "text":
                    raise HTTPError(
                        400, f"{path!r} is not UTF-8 encoded", reason="bad format"
                    ) from exc
            else:
                model.update(content=text, format="text")
                model["mimetype"] = _mimetype(path, mime_type) or "text/plain"
                return model
        model.update(content=base64.b64encode(data).decode("ascii"), format="base64")
        model["mimetype"] = _mimetype(path, mime_type) or "application/octet-stream"
        return model

    def _check_size(self, path: str, size: int) -> None:
        assert self._state is not None
        limit = int(self._state.config.max_notebook_size)
        if size > limit:
            raise HTTPError(413, f"Notebook too large: {path!r} has {size} bytes, limit {limit}")

    async def _dir_model(
        self, session: Session, loc: HomeLocation | ShareLocation, info: FileInfo, content: bool
    ) -> dict[str, Any]:
        path = loc.path
        model = self._base_model(path, info, "directory", writable=info.writable)
        if not content:
            return model
        async with self._storage(path):
            children = await session.files.list(loc.ref)
        listing = []
        for child in children:
            if not self.should_list(child.name):
                continue
            if not self.allow_hidden and child.name.startswith("."):
                continue
            child_path = f"{path}/{child.name}" if path else child.name
            if not path and child.name == SHARED_FOLDER:
                continue  # shadowed by the virtual folder
            kind = "directory" if child.is_dir else _file_type(child_path, None)
            entry = self._base_model(child_path, child, kind, writable=child.writable)
            if kind == "file":
                entry["mimetype"] = _mimetype(child_path, child.mime_type)
            listing.append(entry)
        if not path:
            listing.append(await self._shares_folder_model(session, content=False))
        model.update(content=listing, format="json")
        return model

    async def _shares_folder_model(self, session: Session, content: bool) -> dict[str, Any]:
        try:
            entries = await shared_entries(session)
        except errors.StorageError as exc:
            raise http_error(exc, SHARED_FOLDER) from exc
        listing = []
        newest = 0.0
        for name, entry in sorted(entries.items()):
            path = f"{SHARED_FOLDER}/{name}"
            if isinstance(entry, ReceivedShare):
                assert entry.info is not None
                info = entry.info
                kind = "directory" if info.is_dir else _file_type(path, None)
                writable = entry.share.role is Role.EDITOR and info.writable
                item = self._base_model(path, info, kind, writable=writable)
                if kind == "file":
                    item["mimetype"] = _mimetype(path, info.mime_type)
            else:
                kind = _file_type(path, None)
                item = self._base_model(
                    path, None, kind, writable=entry.role is Role.EDITOR, mtime=entry.ctime
                )
            newest = max(newest, item["last_modified"].timestamp())
            listing.append(item)
        model = self._base_model(SHARED_FOLDER, None, "directory", writable=False, mtime=newest)
        if content:
            model.update(content=listing, format="json")
        return model

    async def _ocm_model(
        self,
        session: Session,
        loc: OCMLocation,
        content: bool,
        type: str | None,
        format: str | None,
        require_hash: bool,
    ) -> dict[str, Any]:
        """Read an OCM share through its WebDAV URL (a HEAD without content)."""
        kind = _file_type(loc.path, type)
        method = "GET" if content else "HEAD"
        response = await self._webdav(session, loc, method)
        # OC-ETag is the storage's own etag (what the owner's room publishes as the
        # document's hash); a plain ETag may be the HTTP server's, of size and mtime.
        etag = response.headers.get("OC-ETag") or response.headers.get("ETag", "")
        mtime = 0.0
        if "Last-Modified" in response.headers:
            mtime = parsedate_to_datetime(response.headers["Last-Modified"]).timestamp()
        mtime = self._clock(f"ocm:{loc.share.id}:{loc.rest}", etag, mtime)
        size = int(response.headers.get("Content-Length", 0) or 0)
        model = self._base_model(
            loc.path, None, kind, writable=loc.share.role is Role.EDITOR, mtime=mtime, size=size
        )
        if require_hash:
            model["hash"], model["hash_algorithm"] = etag, "etag"
        if content:
            return self._decode(model, response.content, format)
        if kind == "file":
            model["mimetype"] = _mimetype(loc.path, "")
        return model

    async def _webdav(self, session: Session, loc: OCMLocation, method: str) -> httpx.Response:
        secret = loc.share.shared_secret
        try:
            response = await session.client.http.request(
                method, loc.url, headers={"Authorization": f"Bearer {secret}"}
            )
        except httpx.TimeoutException as exc:
            raise http_error(errors.StorageUnavailable("timed out", op=method), loc.path) from exc
        except httpx.TransportError as exc:
            raise http_error(errors.StorageUnavailable(str(exc), op=method), loc.path) from exc
        try:
            statuses.raise_for_http(response.status_code, op=f"OCM {method}", ref=loc.path)
        except errors.StorageError as exc:
            raise http_error(exc, loc.path) from exc
        return response

    # -- save -----------------------------------------------------------------------------------

    async def save(self, model: dict[str, Any], path: str = "") -> dict[str, Any]:
        """Save a notebook, file or directory and return its model without content.

        Raises:
            HTTPError: 400 bad model or chunked upload, 403 in ``Shared with me`` itself, in an
                OCM share or without write permission, 409 locked, 413 too large, or the
                mapped storage error.
        """
        path = path.strip("/")
        self.run_pre_save_hooks(model=model, path=path)
        if "chunk" in model:
            raise HTTPError(
                400,
                f"Chunked uploads are not supported on CS3 storage: {path!r}; "
                "upload the file in one request",
            )
        kind = model.get("type")
        if kind not in ("notebook", "file", "directory"):
            raise HTTPError(400, f"Unhandled contents type: {kind!r}")
        if "content" not in model and kind != "directory":
            raise HTTPError(400, "No file content provided")
        if not self.allow_hidden and await self.is_hidden(path):
            raise HTTPError(400, f"Cannot save hidden file or directory {path!r}")
        head, _, rest = path.partition("/")
        try:
            session, loc = await self.locate(path)
        except HTTPError as exc:
            if exc.status_code == 404 and head == SHARED_FOLDER and "/" not in rest:
                raise HTTPError(403, f"{SHARED_FOLDER!r} is read-only: {path!r}") from exc
            raise
        if isinstance(loc, SharesFolder) or (
            isinstance(loc, ShareLocation) and not loc.rest and kind == "directory"
        ):
            raise HTTPError(403, f"{SHARED_FOLDER!r} is read-only: {path!r}")
        if isinstance(loc, OCMLocation):
            raise HTTPError(
                403,
                f"{path!r} is shared from another site: it is saved there, by the live "
                "notebook's room, not through the contents API",
            )
        ref = loc.ref
        message = None
        if kind == "directory":
            await self._mkdir(session, path, ref)
            async with self._storage(path):
                info = await session.files.stat(ref)
        else:
            if kind == "notebook":
                data, message = self._encode_notebook(model, path)
            else:
                data = _encode_file(model, path)
            async with self._storage(path, session, ref):
                info = await session.files.write(ref, data)
        out = self._base_model(
            path, info, "directory" if info.is_dir else kind, writable=info.writable
        )
        if message:
            out["message"] = message
        self.run_post_save_hooks(model=out, os_path=str(ref if isinstance(ref, str) else path))
        self.emit(data={"action": "save", "path": path})
        return out

    def _encode_notebook(self, model: dict[str, Any], path: str) -> tuple[bytes, str | None]:
        try:
            return self._encode_notebook_content(model, path)
        except RecursionError as exc:  # JSON nested too deeply for nbformat
            raise HTTPError(400, f"Not a notebook: {path!r} nested too deeply") from exc

    def _encode_notebook_content(
        self, model: dict[str, Any], path: str
    ) -> tuple[bytes, str | None]:
        try:
            nb = nbformat.from_dict(model["content"])
        except (TypeError, ValueError, AttributeError) as exc:
            raise HTTPError(400, f"Not a notebook: {path!r}") from exc
        self.check_and_sign(nb, path)
        validation_error: dict[str, Any] = {}
        try:
            text = nbformat.writes(
                nb, version=nbformat.NO_CONVERT, capture_validation_error=validation_error
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise HTTPError(400, f"Cannot write notebook {path!r}: {exc}") from exc
        if not text.endswith("\n"):
            text += "\n"  # as nbformat.write does
        data = text.encode("utf-8")
        self._check_size(path, len(data))
        checked = self.validate_notebook_model({"content": nb}, validation_error)
        return data, checked.get("message")

    async def _mkdir(self, session: Session, path: str, ref: Ref) -> None:
        try:
            await session.files.mkdir(ref)
        except errors.AlreadyExists as exc:
            async with self._storage(path):
                info = await session.files.stat(ref)
            if not info.is_dir:
                raise HTTPError(400, f"Not a directory: {path!r}") from exc
        except errors.StorageError as exc:
            raise http_error(exc, path) from exc

    async def get_kernel_path(self, path: str, model: Any = None) -> str:
        """The folder a notebook's kernel starts in: the notebook's own (as with local
        files), which the node's kernel manager finds in its CS3 mount (``kernels.py``)."""
        path = path.strip("/")
        if not path or await self.dir_exists(path):
            return path
        return path.rsplit("/", 1)[0] if "/" in path else ""

    # -- delete and rename ----------------------------------------------------------------------

    async def delete_file(self, path: str) -> None:
        """Delete a file or a folder with its content (CS3 keeps it in the recycle bin).

        Raises:
            HTTPError: 403 for ``Shared with me`` and its entries (decline a share instead),
                or the mapped storage error.
        """
        path = path.strip("/")
        session, loc = await self.locate(path)
        ref = self._writable_ref(loc, path)
        async with self._storage(path, session, ref):
            await session.files.delete(ref)

    async def rename_file(self, old_path: str, new_path: str) -> None:
        """Move or rename; the CS3 resource id (the room key) stays the same.

        Raises:
            HTTPError: 409 when ``new_path`` exists, 403 for ``Shared with me`` and its
                entries, or the mapped storage error.
        """
        old_path, new_path = old_path.strip("/"), new_path.strip("/")
        if old_path == new_path:
            return
        if not self.allow_hidden and await self.is_hidden(new_path):
            raise HTTPError(400, f"Cannot rename to a hidden name: {new_path!r}")
        session, old = await self.locate(old_path)
        source = self._writable_ref(old, old_path)
        _, new = await self.locate(new_path)
        target = self._writable_ref(new, new_path)
        try:
            await session.files.stat(target)
        except errors.NotFound:
            pass
        except errors.StorageError as exc:
            raise http_error(exc, new_path) from exc
        else:
            raise HTTPError(409, f"File already exists: {new_path!r}")
        async with self._storage(old_path, session, source):
            await session.files.move(source, target)

    def _writable_ref(self, loc: Location, path: str) -> Ref:
        if isinstance(loc, SharesFolder | OCMLocation) or (
            isinstance(loc, ShareLocation) and not loc.rest
        ):
            raise HTTPError(403, f"{SHARED_FOLDER!r} and its entries are read-only: {path!r}")
        if isinstance(loc, HomeLocation) and not loc.path:
            raise HTTPError(400, "Can't change the root folder")
        return loc.ref


def _check_type(path: str, actual: str, wanted: str | None) -> None:
    if wanted not in (None, actual):
        raise HTTPError(400, f"{path!r} is a {actual}, not a {wanted}", reason="bad type")


def _file_type(path: str, wanted: str | None) -> str:
    if wanted == "directory":
        raise HTTPError(400, f"{path!r} is not a directory", reason="bad type")
    if wanted in ("notebook", "file"):
        return wanted
    return "notebook" if path.endswith(".ipynb") else "file"


def _mimetype(path: str, cs3_mime: str) -> str | None:
    guessed = mimetypes.guess_type(path)[0]
    if guessed:
        return guessed
    if cs3_mime and cs3_mime not in ("application/octet-stream", "httpd/unix-directory"):
        return cs3_mime
    return None


def _encode_file(model: dict[str, Any], path: str) -> bytes:
    fmt = model.get("format")
    content = model["content"]
    if not isinstance(content, str):
        raise HTTPError(400, f"File content must be a string: {path!r}")
    if fmt == "text":
        return content.encode("utf-8")
    if fmt == "base64":
        try:
            return base64.b64decode(content.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise HTTPError(400, f"Invalid base64 content: {path!r}") from exc
    raise HTTPError(400, "Must specify format of file contents as 'text' or 'base64'")


# ---- checkpoints ----------------------------------------------------------------------------

#: The checkpoint id of "the current content", when a file has no former version yet.
CURRENT = "current"


def checkpoint_id(version_key: str) -> str:
    """The checkpoint id of a CS3 version key.

    jupyter_server's checkpoint routes accept ``[\\w-]+`` only, and version keys of EOS and
    the embedded gateway contain dots, so the key travels URL-safe base64 encoded.
    """
    return "v" + base64.urlsafe_b64encode(version_key.encode()).decode("ascii").rstrip("=")


def version_key(checkpoint: str) -> str:
    """Inverse of :func:`checkpoint_id`.

    Raises:
        HTTPError: 404 for an id that is not one of ours.
    """
    if not checkpoint.startswith("v"):
        raise HTTPError(404, f"No such checkpoint: {checkpoint!r}")
    text = checkpoint[1:]
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise HTTPError(404, f"No such checkpoint: {checkpoint!r}") from exc


class CS3Checkpoints(AsyncCheckpoints):
    """Jupyter checkpoints are the CS3 versions of a file.

    * ``list_checkpoints``: the versions, newest first (id: :func:`checkpoint_id` of the
      version key; ``last_modified``: the version's mtime). A version is a *former* content:
      the storage keeps the replaced content at every overwrite.
    * ``create_checkpoint``: the storage already versions every overwrite, so creating one
      is a no-op that returns the newest version (or, for a file never overwritten,
      the ``"current"`` pseudo-checkpoint, whose restore changes nothing).
    * ``restore_checkpoint``: makes the version the current content (the replaced content
      becomes a version in turn). It is a thin call: restoring a notebook that is open in a
      live room is routed through the room by the rooms layer.
    * ``delete_checkpoint``: refused with 405 (the storage's retention policy removes
      versions). Deleting or renaming a file keeps its versions with the resource, so the
      ``*_all_checkpoints`` calls do nothing.

    The parent is the :class:`CS3ContentsManager`, whose request session is used.
    """

    @property
    def _contents(self) -> CS3ContentsManager:
        parent = self.parent
        if not isinstance(parent, CS3ContentsManager):
            raise HTTPError(500, "CS3Checkpoints needs the CS3ContentsManager")
        return parent

    async def _ref(self, path: str) -> tuple[Session, Ref | None]:
        session, loc = await self._contents.locate(path.strip("/"))
        if isinstance(loc, SharesFolder | OCMLocation):
            return session, None  # virtual, or versions held at another site
        return session, loc.ref

    async def list_checkpoints(self, path: str) -> list[dict[str, Any]]:
        session, ref = await self._ref(path)
        if ref is None:
            return []
        async with self._contents._storage(path):
            versions = await session.versions.list(ref)
        return [{"id": checkpoint_id(v.key), "last_modified": _time(v.mtime)} for v in versions]

    async def create_checkpoint(self, contents_mgr: Any, path: str) -> dict[str, Any]:
        session, ref = await self._ref(path)
        if ref is None:
            raise HTTPError(400, f"No versions for {path!r}: it is not in this site's storage")
        async with self._contents._storage(path):
            versions = await session.versions.list(ref)
            if versions:
                return {
                    "id": checkpoint_id(versions[0].key),
                    "last_modified": _time(versions[0].mtime),
                }
            info = await session.files.stat(ref)
        return {"id": CURRENT, "last_modified": _time(info.mtime)}

    async def restore_checkpoint(self, contents_mgr: Any, checkpoint_id: str, path: str) -> None:
        if checkpoint_id == CURRENT:
            return
        key = version_key(checkpoint_id)
        session, ref = await self._ref(path)
        if ref is None:
            raise HTTPError(400, f"No versions for {path!r}: it is not in this site's storage")
        async with self._contents._storage(path, session, ref):
            await session.versions.restore(ref, key)

    async def delete_checkpoint(self, checkpoint_id: str, path: str) -> None:
        raise HTTPError(
            405,
            f"Checkpoints of {path!r} are CS3 versions and cannot be deleted from Jupyter",
        )

    async def rename_checkpoint(self, checkpoint_id: str, old_path: str, new_path: str) -> None:
        """Nothing to do: versions follow the resource id."""

    async def rename_all_checkpoints(self, old_path: str, new_path: str) -> None:
        """Nothing to do: versions follow the resource id."""

    async def delete_all_checkpoints(self, path: str) -> None:
        """Nothing to do: the storage keeps a deleted file's versions with it."""
