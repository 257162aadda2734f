"""The FUSE mount of a CS3 folder: what ``mesh-collab mount`` serves, so that any program
(a kernel's ``open("data.txt")``, a shell, a compiled tool) sees the user's CS3 files.

Usage::

    async with CS3Client(gateway) as cs3:
        session = await cs3.login("einstein", "relativity")
        async with FuseMount(session, root="/home/einstein", mountpoint=Path("/mnt/cs3")):
            ...  # mounted here; unmounted when the block ends

:class:`FuseMount` is built on pyfuse3 (libfuse 3's low-level API) in its asyncio mode, so
every FUSE request is a coroutine on the same event loop as the async CS3 client;
``docs/architecture.md`` says why.

What each operation does in CS3:

* ``lookup``/``getattr``: Stat. Attributes are cached by the kernel for ``attr_timeout``
  seconds (default 1), so a change made through CS3 shows within that time.
* ``read``: ranged downloads (HTTP ``Range``) of 4 MiB blocks, the last one kept by the
  handle, unless the file is open for writing, when the handle's buffer answers.
* ``create``/``write``/``truncate``: into a buffer of the open handle (the whole file,
  fetched on the first write unless opened with ``O_TRUNC``).
* ``flush`` (every ``close()``) and ``release``: one upload of a changed buffer, which CS3
  keeps as a new version of the file. A file locked by another application (a Reva lock)
  refuses the upload: ``close()`` fails with ``EBUSY``, nothing is written.
* ``unlink``/``rmdir``/``mkdir``/``rename``: Delete, Delete (of an empty folder),
  CreateContainer, Move (the file keeps its resource id; a rename over an existing file
  deletes that file first, as POSIX rename replaces it).

Inode numbers stand for paths below the mounted root, handed out as the kernel looks them up;
a rename moves the paths that it concerns.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pyfuse3
import pyfuse3.asyncio

from mesh_collab import errors
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import FileInfo
from mesh_collab.cs3.oserrors import errno_of, holder_of

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Block size reported to programs (what ``st_blksize`` tells ``cp`` and friends to use).
_BLOCK = 128 * 1024
#: Bytes downloaded at once for a read from a file not open for writing.
READ_AHEAD = 4 * 2**20


def _fuse_errors(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Answer the kernel with the errno of a storage error (``mesh_collab.cs3.oserrors``)."""

    @functools.wraps(method)
    async def wrapper(self: CS3Operations, *args: Any) -> T:
        try:
            return await method(self, *args)
        except errors.StorageError as exc:
            self.log.debug("op=fuse.%s failed: %s", method.__name__, exc)
            raise pyfuse3.FUSEError(errno_of(exc)) from exc

    return wrapper


class Inodes:
    """Inode numbers for CS3 paths below the mounted root (the root is ``ROOT_INODE``)."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/") or "/"
        self._paths: dict[int, str] = {pyfuse3.ROOT_INODE: self.root}
        self._inodes: dict[str, int] = {self.root: pyfuse3.ROOT_INODE}
        self._next = pyfuse3.ROOT_INODE + 1

    def path(self, inode: int) -> str:
        """The CS3 path of ``inode``.

        Raises:
            FUSEError: ENOENT for an inode the kernel should not know.
        """
        try:
            return self._paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def child(self, parent: int, name: bytes) -> str:
        """The CS3 path of ``name`` in the folder ``parent``."""
        text = os.fsdecode(name)
        if "/" in text or text in ("", ".", ".."):
            raise pyfuse3.FUSEError(errno.EINVAL)
        base = self.path(parent)
        return f"{base.rstrip('/')}/{text}"

    def inode(self, path: str) -> int:
        """The inode number of ``path``, given it the first time."""
        number = self._inodes.get(path)
        if number is None:
            number, self._next = self._next, self._next + 1
            self._inodes[path] = number
            self._paths[number] = path
        return number

    def moved(self, old: str, new: str) -> None:
        """Follow a rename: ``old`` and everything below it now live at ``new``."""
        self.removed(new)
        for path in [p for p in self._inodes if p == old or p.startswith(old + "/")]:
            number = self._inodes.pop(path)
            moved = new + path[len(old):]
            self._inodes[moved] = number
            self._paths[number] = moved

    def removed(self, path: str) -> None:
        """Forget ``path`` and what was below it (a later file there gets a new inode)."""
        for gone in [p for p in self._inodes if p == path or p.startswith(path + "/")]:
            del self._paths[self._inodes.pop(gone)]


@dataclass(eq=False)
class OpenFile:
    """One open file handle.

    Attributes:
        content: the whole file, once it is open for writing and touched; None while reads
            go to the storage.
        dirty: the content changed since the last upload.
    """

    inode: int
    path: str
    writable: bool
    content: bytearray | None = None
    dirty: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The last block downloaded for reading (``ahead_start`` is its offset in the file).
    ahead: bytes = b""
    ahead_start: int = 0
    ahead_eof: bool = False


class CS3Operations(pyfuse3.Operations):  # type: ignore[misc]
    """The FUSE operations of one CS3 session's folder (see the module docstring).

    Args:
        session: the CS3 session whose user the mount acts as.
        root: the CS3 path shown at the mount point, e.g. ``/home/einstein``.
        attr_timeout: seconds the kernel may cache names and attributes.
        log: the logger to use.
    """

    enable_writeback_cache = False

    def __init__(
        self,
        session: Session,
        root: str,
        *,
        attr_timeout: float = 1.0,
        log: logging.Logger | None = None,
    ) -> None:
        super().__init__()
        self.session = session
        self.inodes = Inodes(root)
        self.attr_timeout = attr_timeout
        self.log = log or logging.getLogger(__name__)
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, list[tuple[bytes, pyfuse3.EntryAttributes]]] = {}
        self._next_fh = 1

    # -- attributes ----------------------------------------------------------------------

    def _attributes(self, inode: int, info: FileInfo | None, size: int = 0,
                    mtime: float = 0.0) -> pyfuse3.EntryAttributes:
        """Attributes from a Stat (or, for a file being written, from its buffer)."""
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        if info is not None and info.is_dir:
            attrs.st_mode = stat.S_IFDIR | 0o755
            attrs.st_nlink = 2
        else:
            writable = info.writable if info is not None else True
            attrs.st_mode = stat.S_IFREG | (0o644 if writable else 0o444)
            attrs.st_nlink = 1
        if info is not None:
            size, mtime = (0 if info.is_dir else info.size), info.mtime
        attrs.st_size = size
        attrs.st_blksize = _BLOCK
        attrs.st_blocks = (size + 511) // 512
        attrs.st_uid, attrs.st_gid = os.getuid(), os.getgid()
        ns = int(mtime * 1e9)
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = ns
        attrs.attr_timeout = attrs.entry_timeout = self.attr_timeout
        return attrs

    def _buffered(self, path: str) -> OpenFile | None:
        """An open handle whose buffer holds newer content of ``path`` than the storage."""
        for handle in self._files.values():
            if handle.path == path and handle.content is not None and handle.dirty:
                return handle
        return None

    async def _stat(self, path: str) -> pyfuse3.EntryAttributes:
        inode = self.inodes.inode(path)
        handle = self._buffered(path)
        if handle is not None and handle.content is not None:
            return self._attributes(inode, None, len(handle.content), _now())
        try:
            info = await self.session.files.stat(path)
        except errors.NotFound:
            self.inodes.removed(path)
            raise
        return self._attributes(inode, info)

    @_fuse_errors
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: Any = None) -> pyfuse3.EntryAttributes:
        return await self._stat(self.inodes.child(parent_inode, name))

    @_fuse_errors
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return await self._stat(self.inodes.path(inode))

    @_fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: Any) -> pyfuse3.EntryAttributes:
        # Only the size means something to CS3; mode, owner and times are the storage's.
        if fields.update_size:
            path = self.inodes.path(inode)
            handle = self._files.get(fh) if fh is not None else None
            if handle is not None:
                async with handle.lock:
                    content = await self._content(handle)
                    _resize(content, attr.st_size)
                    handle.dirty = True
            else:
                data = b""
                if attr.st_size:
                    data = await self.session.files.read(path, end=attr.st_size)
                content = bytearray(data)
                _resize(content, attr.st_size)
                await self._upload(path, bytes(content))
        return await self._stat(self.inodes.path(inode))

    # -- folders -------------------------------------------------------------------------

    @_fuse_errors
    async def opendir(self, inode: int, ctx: Any) -> int:
        path = self.inodes.path(inode)
        entries = []
        for info in await self.session.files.list(path):
            child = f"{path.rstrip('/')}/{info.name}"
            entries.append((os.fsencode(info.name),
                            self._attributes(self.inodes.inode(child), info)))
        fh = self._new_fh()
        self._dirs[fh] = entries
        return fh

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries = self._dirs.get(fh, [])
        for index in range(start_id, len(entries)):
            name, attrs = entries[index]
            if not pyfuse3.readdir_reply(token, name, attrs, index + 1):
                return

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @_fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: Any) -> pyfuse3.EntryAttributes:
        path = self.inodes.child(parent_inode, name)
        await self.session.files.mkdir(path)
        return await self._stat(path)

    @_fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        path = self.inodes.child(parent_inode, name)
        info = await self.session.files.stat(path)
        if not info.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if await self.session.files.list(path):
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        await self.session.files.delete(path)
        self.inodes.removed(path)

    @_fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        path = self.inodes.child(parent_inode, name)
        info = await self.session.files.stat(path)
        if info.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        await self.session.files.delete(path)
        self.inodes.removed(path)

    @_fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # CS3 cannot swap two entries atomically
        old = self.inodes.child(parent_inode_old, name_old)
        new = self.inodes.child(parent_inode_new, name_new)
        try:
            target: FileInfo | None = await self.session.files.stat(new)
        except errors.NotFound:
            target = None
        if target is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            if target.is_dir and await self.session.files.list(new):
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            # POSIX rename replaces the target; a CS3 Move does not.
            await self.session.files.delete(new)
        await self.session.files.move(old, new)
        self.inodes.moved(old, new)
        for handle in self._files.values():
            if handle.path == old or handle.path.startswith(old + "/"):
                handle.path = new + handle.path[len(old):]

    # -- files ---------------------------------------------------------------------------

    def _new_fh(self) -> int:
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        return fh

    def _file_info(self, handle: OpenFile) -> pyfuse3.FileInfo:
        fh = self._new_fh()
        self._files[fh] = handle
        # keep_cache=False: each open reads afresh what CS3 holds now.
        return pyfuse3.FileInfo(fh=fh, keep_cache=False)

    @_fuse_errors
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        path = self.inodes.path(inode)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        handle = OpenFile(inode=inode, path=path, writable=writable)
        if writable and flags & os.O_TRUNC:
            handle.content, handle.dirty = bytearray(), True
        return self._file_info(handle)

    @_fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        # Nothing is uploaded before the first flush: one version, not an empty one first.
        path = self.inodes.child(parent_inode, name)
        inode = self.inodes.inode(path)
        handle = OpenFile(inode=inode, path=path, writable=True, content=bytearray(),
                          dirty=True)
        info = self._file_info(handle)
        return info, self._attributes(inode, None, 0, _now())

    async def _content(self, handle: OpenFile) -> bytearray:
        """The handle's buffer, fetched from the storage on first use (call under its lock)."""
        if handle.content is None:
            handle.content = bytearray(await self.session.files.read(handle.path))
        return handle.content

    @_fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._handle(fh)
        if handle.content is not None:
            return bytes(handle.content[off : off + size])
        # Reads ahead: the kernel asks for 128 KiB at a time, and one download per request
        # would cost a round trip to the gateway each (50 MB read in 2.2 s instead of 0.6).
        start = off - handle.ahead_start
        end = handle.ahead_start + len(handle.ahead)
        if not (0 <= start and (off + size <= end or handle.ahead_eof)):
            wanted = max(size, READ_AHEAD)
            block = await self.session.files.read(handle.path, start=off, end=off + wanted)
            handle.ahead, handle.ahead_start, start = block, off, 0
            handle.ahead_eof = len(block) < wanted  # the block reaches the end of the file
        return handle.ahead[start : start + size]

    @_fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handle(fh)
        if not handle.writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        async with handle.lock:
            content = await self._content(handle)
            if off > len(content):
                content.extend(bytes(off - len(content)))
            content[off : off + len(buf)] = buf
            handle.dirty = True
        return len(buf)

    @_fuse_errors
    async def flush(self, fh: int) -> None:
        await self._flush(self._handle(fh))

    @_fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._flush(self._handle(fh))

    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is not None and handle.dirty:
            # The kernel ignores errors of release: a failed upload can only be logged here.
            try:
                await self._flush(handle)
            except errors.StorageError as exc:
                self.log.warning("op=fuse.release ref=%s upload failed: %s", handle.path, exc)

    def _handle(self, fh: int) -> OpenFile:
        try:
            return self._files[fh]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None

    async def _flush(self, handle: OpenFile) -> None:
        """Upload the handle's buffer if it changed (one CS3 version).

        A failed upload is reported once (to this flush) and not retried: the program's
        ``close()`` fails, as POSIX allows when data could not be written.
        """
        async with handle.lock:
            if not handle.dirty or handle.content is None:
                return
            handle.dirty = False
            await self._upload(handle.path, bytes(handle.content))

    async def _upload(self, path: str, data: bytes) -> None:
        try:
            await self.session.files.write(path, data)
        except errors.LockConflict:
            holder = ""
            try:
                holder = holder_of(await self.session.locks.get(path))
            except errors.StorageError:
                pass  # the lock's holder only improves the message
            self.log.warning(
                "op=fuse.write ref=%s refused: the file is locked by %s", path,
                holder or "another application",
            )
            raise
        self.log.debug("op=fuse.write ref=%s size=%d", path, len(data))

    async def flush_all(self) -> None:
        """Upload every changed open file (at unmount)."""
        for handle in list(self._files.values()):
            try:
                await self._flush(handle)
            except errors.StorageError as exc:
                self.log.warning("op=fuse.unmount ref=%s upload failed: %s", handle.path, exc)

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        # CS3 quotas are not mapped: report a large, mostly free filesystem.
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = _BLOCK
        data.f_blocks = data.f_bfree = data.f_bavail = 2**30
        data.f_files = data.f_ffree = data.f_favail = 2**30
        data.f_namemax = 255
        return data


def _resize(content: bytearray, size: int) -> None:
    if size < len(content):
        del content[size:]
    else:
        content.extend(bytes(size - len(content)))


def _now() -> float:
    return time.time()


async def clear_stale_mount(mountpoint: Path) -> None:
    """Unmount what a crashed earlier mount left at ``mountpoint`` ("Transport endpoint is
    not connected"), and create the folder if it is missing.

    Raises:
        MountError: something else is mounted there and working.
    """
    try:
        await anyio.Path(mountpoint).stat()
    except FileNotFoundError:
        await anyio.Path(mountpoint).mkdir(parents=True, exist_ok=True)
        return
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise errors.MountError(f"cannot use mount point {mountpoint}: {exc}") from exc
        log.warning("op=mount unmounting a stale mount at %s", mountpoint)
        await anyio.run_process(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        return
    if await anyio.Path(mountpoint).is_mount():
        raise errors.MountError(f"{mountpoint} is already a mount point")


class FuseMount(anyio.AsyncContextManagerMixin):
    """The FUSE mount of a CS3 folder, up for as long as the ``async with`` block runs.

    Entering checks the folder, clears a stale mount left by a crash, mounts and starts
    serving; leaving uploads what open files still hold, and unmounts. One mount per process
    (libfuse's session is global to pyfuse3).

    Usage::

        async with FuseMount(session, root="/home/einstein", mountpoint=Path("/mnt/cs3")) as m:
            await m.unmounted.wait()   # until unmounted from outside (fusermount3 -u)

    Args:
        session: the CS3 session whose user the mount acts as.
        root: the CS3 folder to show at the mount point.
        mountpoint: the local folder to mount at (created if missing).
        attr_timeout: seconds the kernel may cache names and attributes.
        log: the logger to use.

    Raises (on entry):
        MountError: FUSE is unusable here, the mount point is taken, or ``root`` is not a
            folder the session can read.
    """

    def __init__(
        self,
        session: Session,
        *,
        root: str,
        mountpoint: Path,
        attr_timeout: float = 1.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.session = session
        self.root = root
        self.mountpoint = mountpoint
        self.log = log or logging.getLogger(__name__)
        self.operations = CS3Operations(session, root, attr_timeout=attr_timeout, log=self.log)
        #: Set when the mount ended (unmounted from outside, or leaving the block).
        self.unmounted = anyio.Event()

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[FuseMount]:
        try:
            info = await self.session.files.stat(self.root)
        except errors.StorageError as exc:
            raise errors.MountError(f"cannot mount {self.root}: {exc}") from exc
        if not info.is_dir:
            raise errors.MountError(f"cannot mount {self.root}: not a folder")
        await clear_stale_mount(self.mountpoint)
        pyfuse3.asyncio.enable()
        options = set(pyfuse3.default_options) | {"fsname=cs3", "subtype=mesh_collab"}
        try:
            pyfuse3.init(self.operations, str(self.mountpoint), options)
        except RuntimeError as exc:
            raise errors.MountError(f"cannot mount at {self.mountpoint}: {exc}") from exc
        self.log.info("op=mount root=%s mountpoint=%s", self.root, self.mountpoint)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._serve)
                try:
                    yield self
                finally:
                    # pyfuse3's loop ends on terminate(), not on cancellation: its request
                    # tasks wait on /dev/fuse until told that the session is closing.
                    if not self.unmounted.is_set():
                        pyfuse3.terminate()
            with anyio.move_on_after(30, shield=True):
                await self.operations.flush_all()
        finally:
            pyfuse3.close(unmount=True)
            self.log.info("op=unmount mountpoint=%s", self.mountpoint)

    async def _serve(self) -> None:
        try:
            await pyfuse3.main()
        finally:
            self.unmounted.set()
