"""``cs3://``: an fsspec filesystem on the async CS3 client, for pandas, dask, xarray, ...

Usage (in a kernel of a mesh_collab node the gateway and token come from the environment)::

    import pandas as pd
    df = pd.read_csv("cs3://home/einstein/data.csv")

    import fsspec
    fs = fsspec.filesystem("cs3", gateway="127.0.0.1:19000", username="einstein",
                           password="relativity")
    fs.ls("home/einstein")
    with fs.open("home/einstein/out.txt", "wb") as f:   # one upload, one CS3 version, on close
        f.write(b"...")

``cs3://home/einstein/data.csv`` is the CS3 path ``/home/einstein/data.csv``; fsspec's own
path form has no leading slash (``home/einstein/data.csv``). The package registers the
protocol through the ``fsspec.specs`` entry point.

The filesystem is an fsspec ``AsyncFileSystem``: its methods are coroutines run on fsspec's
IO thread (or on the caller's loop with ``asynchronous=True``), where one
:class:`~mesh_collab.cs3.client.CS3Client` stays open between calls. Reads of a byte range
are HTTP ``Range`` downloads; files opened for reading fetch blocks that way. A file opened
for writing is buffered in memory and uploaded once, when it is closed: every upload is a CS3
version. A write to a file that another application holds the CS3 lock of raises
:class:`~mesh_collab.cs3.oserrors.FileLockedError`. Errors are ``OSError`` subclasses
(:mod:`mesh_collab.cs3.oserrors`).

Pickling (dask sends filesystems to its workers this way) carries the gateway and the
session's current token, never a password: a worker uses the token until it expires.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
from fsspec.asyn import AsyncFileSystem, sync, sync_wrapper
from fsspec.spec import AbstractBufferedFile

from mesh_collab import errors
from mesh_collab.cs3.client import CS3Client, Login, Session, StaticToken
from mesh_collab.cs3.models import FileInfo
from mesh_collab.cs3.oserrors import FileLockedError, holder_of, os_error

#: Environment variables that give the defaults of ``gateway`` and ``token`` (a mesh_collab
#: node sets both in its kernels' environment).
GATEWAY_ENV = "MESH_COLLAB_GATEWAY"
#: The CA bundle a ``grpcs://`` gateway is verified with (default: the system's).
CA_ENV = "MESH_COLLAB_GATEWAY_CA"
TOKEN_ENV = "MESH_COLLAB_CS3_TOKEN"
DEFAULT_GATEWAY = "127.0.0.1:19000"

T = TypeVar("T")


@contextmanager
def _os_errors(path: str) -> Iterator[None]:
    """Turn the storage errors of the block into the OSError fsspec callers expect."""
    try:
        yield
    except errors.StorageError as exc:
        raise os_error(exc, path) from exc


class _ClientHost:
    """Keeps one CS3 client and session open on one event loop, between fsspec's calls.

    fsspec calls a filesystem method by method, with no lifetime to enter a client's
    ``async with`` around; the client's context is held open by a task of its own on the loop
    the filesystem runs on (fsspec's IO thread), the way ``pytest_plugin.in_own_task`` hosts
    a service, and left when :meth:`close` is awaited.
    """

    def __init__(self, connect: Callable[[CS3Client], Awaitable[Session]], gateway: str,
                 rpc_timeout: float, transfer_timeout: float) -> None:
        self._connect = connect
        self._gateway = gateway
        self._rpc_timeout = rpc_timeout
        self._transfer_timeout = transfer_timeout
        self._session: Session | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._opening: asyncio.Lock | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    async def session(self) -> Session:
        """The open session, opening the client on first use.

        Raises:
            RuntimeError: called from another event loop than the first call.
            StorageError: the gateway refused the login or cannot be reached.
        """
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop, self._opening = loop, asyncio.Lock()
        elif self._loop is not loop:
            raise RuntimeError("a CS3FileSystem is used from the event loop it started on")
        assert self._opening is not None
        async with self._opening:
            if self._session is None:
                self._session = await self._open(loop)
            return self._session

    async def _open(self, loop: asyncio.AbstractEventLoop) -> Session:
        ready: asyncio.Future[Session] = loop.create_future()
        stop = asyncio.Event()

        async def host() -> None:
            try:
                ca = os.environ.get(CA_ENV) or None
                async with CS3Client(self._gateway, ca_file=Path(ca) if ca else None,
                                     rpc_timeout=self._rpc_timeout,
                                     transfer_timeout=self._transfer_timeout) as client:
                    ready.set_result(await self._connect(client))
                    await stop.wait()
            except BaseException as exc:
                if not ready.done():
                    ready.set_exception(exc)
                    return
                raise

        task = loop.create_task(host(), name="cs3fs")
        try:
            session = await ready
        except BaseException:
            await task
            raise
        self._task, self._stop = task, stop
        self._finalizer = weakref.finalize(self, _close_at_exit, loop, stop, task)
        return session

    async def close(self) -> None:
        """Close the client (the next call opens a new one)."""
        task, stop = self._task, self._stop
        self._session = self._task = self._stop = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if task is not None and stop is not None:
            stop.set()
            await task


def _close_at_exit(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, task: asyncio.Task[None]
) -> None:
    """Close a client left open when the interpreter exits (or its host is collected).

    fsspec's IO thread is a daemon: without this, its loop dies with the client's task
    half-way, and Python prints "Task was destroyed but it is pending".
    """
    if loop.is_closed() or not loop.is_running() or task.done():
        return

    async def finish() -> None:
        stop.set()
        await task

    try:
        asyncio.run_coroutine_threadsafe(finish(), loop).result(timeout=5)
    except (RuntimeError, TimeoutError):
        pass  # the loop stopped meanwhile: nothing left to close on it


class CS3FileSystem(AsyncFileSystem):  # type: ignore[misc]
    """fsspec filesystem of ``cs3://`` URLs (see the module docstring).

    Args:
        gateway: gRPC address of the CS3 gateway, ``host:port`` or ``grpcs://host:port``.
            Default the environment variable ``MESH_COLLAB_GATEWAY``, else
            ``127.0.0.1:19000``. A ``grpcs://`` gateway is verified with the CA bundle named
            by ``MESH_COLLAB_GATEWAY_CA`` (else the system's trust store).
        token: a CS3 access token. Default ``MESH_COLLAB_CS3_TOKEN`` when no username is
            given.
        username: log in with basic credentials instead (with ``password``); the login is
            renewed before the token expires.
        password: the password of ``username``. Never logged, never pickled.
        rpc_timeout: deadline of every CS3 call, in seconds.
        transfer_timeout: deadline of every upload and download, in seconds.
        asynchronous, loop, ...: fsspec's own options.

    Raises:
        ValueError: no credentials at all, or a username without a password.
    """

    protocol = "cs3"
    root_marker = ""

    def __init__(
        self,
        gateway: str | None = None,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        rpc_timeout: float = 10.0,
        transfer_timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.gateway = gateway or os.environ.get(GATEWAY_ENV) or DEFAULT_GATEWAY
        if username and not password:
            raise ValueError("cs3://: a username needs a password")
        if not token and not username:
            token = os.environ.get(TOKEN_ENV) or None
        if not token and not username:
            raise ValueError(
                f"cs3://: no credentials: pass token=, or username= and password=, or set "
                f"{TOKEN_ENV}"
            )
        self.username = username
        self._token = token or ""
        self._password = password or ""
        self._rpc_timeout = rpc_timeout
        self._transfer_timeout = transfer_timeout
        self._login: Login | None = None
        self._host = _ClientHost(self._connect, self.gateway, rpc_timeout, transfer_timeout)

    def __repr__(self) -> str:
        who = self.username or "<token>"
        return f"CS3FileSystem(gateway={self.gateway!r}, user={who!r})"

    # -- session and pickling ------------------------------------------------------------

    async def _connect(self, client: CS3Client) -> Session:
        if self._token:
            return client.session(StaticToken(self._token))
        assert self.username is not None
        # This filesystem holds the password anyway (it is pickled to workers with it):
        # log in again with it when a login reaches its maximum age.
        self._login = Login(client, "basic", self.username, self._password, keep_secret=True)
        await self._login.token()
        return Session(client, self._login, user=self._login.user)

    async def _session(self) -> Session:
        with _os_errors(self.gateway):
            return await self._host.session()

    async def _current_token(self) -> str:
        session = await self._session()
        with _os_errors(self.gateway):
            return await session.tokens.token()

    current_token = sync_wrapper(_current_token)

    async def _close_session(self) -> None:
        await self._host.close()

    #: Close the CS3 connection (the next call opens a new one).
    close_session = sync_wrapper(_close_session)

    def __reduce__(self) -> tuple[Any, ...]:
        # Workers get the session's token, not the password (logging in here if needed).
        options = dict(self.storage_options)
        options.pop("password", None)
        options.pop("username", None)
        options.pop("loop", None)
        options.pop("asynchronous", None)
        if self._token:
            token = self._token
        elif self.asynchronous:
            raise pickle.PicklingError(
                "an asynchronous CS3FileSystem logged in with a password pickles with its "
                "token: pass token=await fs._current_token() to a new instance instead"
            )
        else:
            token = sync(self.loop, self._current_token)
        options.update(gateway=self.gateway, token=token)
        return _rebuild, (type(self), options)

    # -- paths ---------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        text = str(path)
        if text.startswith("cs3://"):
            text = text[len("cs3://"):]
        return text.strip("/")

    @staticmethod
    def cs3_path(path: str) -> str:
        """The CS3 path of an fsspec path (``home/einstein/a.csv`` -> ``/home/einstein/a.csv``)."""
        return "/" + CS3FileSystem._strip_protocol(path)

    def _entry(self, path: str, info: FileInfo) -> dict[str, Any]:
        lock = info.lock if info.lock and not info.lock.expired(time.time()) else None
        return {
            "name": path,
            "size": 0 if info.is_dir else info.size,
            "type": "directory" if info.is_dir else "file",
            "mtime": info.mtime,
            "etag": info.etag,
            "id": str(info.id),
            "mimetype": info.mime_type,
            "writable": info.writable,
            "locked_by": holder_of(lock),
        }

    # -- metadata ------------------------------------------------------------------------

    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        session = await self._session()
        with _os_errors(path):
            info = await session.files.stat(self.cs3_path(path))
        return self._entry(path, info)

    async def _ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        session = await self._session()
        with _os_errors(path):
            info = await session.files.stat(self.cs3_path(path))
            children = await session.files.list(self.cs3_path(path)) if info.is_dir else None
        if children is None:
            entries = [self._entry(path, info)]
        else:
            entries = [self._entry(f"{path}/{c.name}".lstrip("/"), c) for c in children]
            entries.sort(key=lambda e: e["name"])
        return entries if detail else [e["name"] for e in entries]

    async def _mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        if create_parents:
            await self._makedirs(path, exist_ok=True)
            return
        path = self._strip_protocol(path)
        session = await self._session()
        with _os_errors(path):
            await session.files.mkdir(self.cs3_path(path))

    async def _makedirs(self, path: str, exist_ok: bool = False) -> None:
        path = self._strip_protocol(path)
        session = await self._session()
        try:
            await session.files.mkdir(self.cs3_path(path))
        except errors.AlreadyExists as exc:
            if not exist_ok:
                raise os_error(exc, path) from exc
        except errors.NotFound as exc:
            parent = self._parent(path)
            if not parent or parent == path:
                raise os_error(exc, path) from exc
            await self._makedirs(parent, exist_ok=True)
            with _os_errors(path):
                await session.files.mkdir(self.cs3_path(path))
        except errors.StorageError as exc:
            raise os_error(exc, path) from exc

    async def _rm_file(self, path: str, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        session = await self._session()
        with _os_errors(path):
            await session.files.delete(self.cs3_path(path))

    async def _rm(
        self, path: str | list[str], recursive: bool = False, maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        # CS3 deletes a container with everything in it: one Delete per given path, after
        # checking that a folder removed without `recursive` is empty.
        for p in await self._expand_path(path, recursive=False):
            if not recursive and await self._isdir(p) and await self._ls(p, detail=False):
                raise OSError(f"{p}: directory not empty (pass recursive=True)")
            await self._rm_file(p)

    async def _rmdir(self, path: str) -> None:
        if await self._ls(path, detail=False):
            raise OSError(f"{path}: directory not empty")
        await self._rm_file(path)

    rmdir = sync_wrapper(_rmdir)

    async def _mv(self, path1: str, path2: str, recursive: bool = False,
                  maxdepth: int | None = None, **kwargs: Any) -> None:
        """Move or rename with one CS3 Move (the resource keeps its id and versions)."""
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        if src == dst:
            return
        session = await self._session()
        with _os_errors(src):
            await session.files.move(self.cs3_path(src), self.cs3_path(dst))

    mv = sync_wrapper(_mv)

    async def _mv_file(self, path1: str, path2: str) -> None:
        await self._mv(path1, path2)

    # -- content -------------------------------------------------------------------------

    async def _cat_file(self, path: str, start: int | None = None, end: int | None = None,
                        **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        if (start is not None and start < 0) or (end is not None and end < 0):
            size = (await self._info(path))["size"]
            start = max(size + start, 0) if start is not None and start < 0 else start
            end = max(size + end, 0) if end is not None and end < 0 else end
        start = start or 0
        if end is not None and end <= start:
            return b""
        session = await self._session()
        with _os_errors(path):
            return await session.files.read(self.cs3_path(path), start=start, end=end)

    async def _pipe_file(self, path: str, value: bytes, mode: str = "overwrite",
                         **kwargs: Any) -> None:
        """Upload ``value`` as the file's content (one CS3 version of what it replaces).

        Raises:
            FileLockedError: another application holds the file's CS3 lock.
            FileExistsError: ``mode="create"`` and the file exists.
        """
        path = self._strip_protocol(path)
        if mode == "create" and await self._exists(path):
            raise FileExistsError(path)
        session = await self._session()
        ref = self.cs3_path(path)
        try:
            await session.files.write(ref, bytes(value))
        except errors.LockConflict as exc:
            raise FileLockedError(path, await _holder(session, ref)) from exc
        except errors.StorageError as exc:
            raise os_error(exc, path) from exc

    async def _cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        await self._pipe_file(path2, await self._cat_file(path1))

    async def _get_file(self, rpath: str, lpath: str, **kwargs: Any) -> None:
        if await self._isdir(rpath):
            await anyio.Path(lpath).mkdir(parents=True, exist_ok=True)
            return
        await anyio.Path(lpath).write_bytes(await self._cat_file(rpath))

    async def _put_file(self, lpath: str, rpath: str, mode: str = "overwrite",
                        **kwargs: Any) -> None:
        if await anyio.Path(lpath).is_dir():
            await self._makedirs(rpath, exist_ok=True)
            return
        await self._pipe_file(rpath, await anyio.Path(lpath).read_bytes(), mode=mode)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> CS3File:
        if mode not in ("rb", "wb"):
            raise ValueError(f"cs3:// files open as 'rb' or 'wb', not {mode!r}")
        return CS3File(self, path, mode, block_size=block_size or "default",
                       autocommit=autocommit, cache_options=cache_options, **kwargs)


async def _holder(session: Session, ref: str) -> str:
    """Who holds the lock of ``ref``, for the error message ("" if it cannot be told)."""
    try:
        return holder_of(await session.locks.get(ref))
    except errors.StorageError:
        return ""


def _rebuild(cls: type[CS3FileSystem], options: dict[str, Any]) -> CS3FileSystem:
    """Unpickle a filesystem (module level, so that pickle finds it)."""
    return cls(**options)


class CS3File(AbstractBufferedFile):  # type: ignore[misc]
    """A ``cs3://`` file: reads fetch byte ranges, writes buffer until one upload on close."""

    fs: CS3FileSystem
    _pending: bytes | None = None

    def _fetch_range(self, start: int, end: int) -> bytes:
        data: bytes = self.fs.cat_file(self.path, start=start, end=end)
        return data

    def _initiate_upload(self) -> None:
        """Nothing to set up: the content goes in one upload at the end."""

    def _upload_chunk(self, final: bool = False) -> bool:
        # Returning False keeps the buffer growing: CS3 has no multipart upload, and every
        # upload would be a version of its own.
        if not final:
            return False
        if self.autocommit:
            self.fs.pipe_file(self.path, self.buffer.getvalue())
        else:
            self._pending = self.buffer.getvalue()
        return True

    def commit(self) -> None:
        """Upload the content written (``autocommit=False``: at the end of a transaction)."""
        if self._pending is not None:
            self.fs.pipe_file(self.path, self._pending)
            self._pending = None

    def discard(self) -> None:
        """Drop the content written (nothing was uploaded)."""
        self._pending = None
