"""Kernels that see CS3: the node's FUSE mount of its user's home, and kernels started in it.

A notebook's files live in CS3, but a kernel is a local process: without help,
``open("data.txt")`` beside a notebook finds nothing. So the node

* runs ``mesh-collab mount`` (:mod:`mesh_collab.mount`) for its default CS3 user as a child
  process, mounting that user's home at ``MeshCollabApp.mount_root`` (:func:`kernel_mount`,
  one of the node's services). A process of its own, not a task of the node: a kernel
  reading a large file through the mount would otherwise load the event loop that relays
  every room's keystrokes, libfuse's session is one per process, and a FUSE failure stays
  in that process;
* starts kernels (:class:`CS3KernelManager`) in ``<mount>/<notebook folder>`` and with
  ``MESH_COLLAB_GATEWAY`` and ``MESH_COLLAB_CS3_TOKEN`` in their environment, so that
  ``cs3://`` URLs work with no arguments (:mod:`mesh_collab.cs3.filesystem`). The token is
  never logged; the node's password, if it came from the environment, is removed from the
  kernel's.

Where FUSE is unavailable (no ``/dev/fuse``, no ``fusermount3``, pyfuse3 not installed, or
the mount fails) the node logs one warning and kernels start where jupyter_server would
start them: the notebook's folder below ``ServerApp.root_dir`` if it exists locally, else
``root_dir`` itself. ``GET /api/mesh/status`` reports which (field ``kernels``).

Notebooks in ``Shared with me`` start their kernel at the top of the mount (the user's home):
the mount shows the home only. In multi-user mode only the node's default user (configured
credentials) is mounted, and every kernel, whoever starts it, sees that user's files.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.to_thread
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager

from mesh_collab import errors
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.filesystem import CA_ENV, GATEWAY_ENV, TOKEN_ENV
from mesh_collab.jupyter.fileids import SHARED_FOLDER, home_path, normalize

if TYPE_CHECKING:
    from mesh_collab.jupyter.app import MeshState

#: How long the mount process may take to log in and mount.
MOUNT_TIMEOUT = 30.0
#: How long the mount process gets to unmount when the node stops.
UNMOUNT_TIMEOUT = 10.0
#: The variable that hands the mount process its secret (never on its command line).
_SECRET_ENV = "MESH_COLLAB_MOUNT_SECRET"
#: Removed from a kernel's environment: the kernel gets a token instead.
_PASSWORD_ENV = "MESH_COLLAB_CS3_PASSWORD"


@dataclass(eq=False)
class KernelFiles:
    """Where the node's kernels find CS3 files: the mount, or why there is none.

    Attributes:
        gateway: the CS3 gateway, exported to kernels.
        gateway_ca: the CA bundle of a ``grpcs://`` gateway, exported to kernels; "" for none.
        mountpoint: where the mount is (or would be).
        fallback: where kernels start without the mount (``ServerApp.root_dir``).
        session: the mounted user's session, whose token kernels get; None without one.
        root: the mounted CS3 folder.
        mounted: the mount is up.
        reason: why it is not, for the log and ``/api/mesh/status``.
        settled: set once the mount is up or known to be unavailable.
    """

    gateway: str
    mountpoint: Path
    fallback: str
    gateway_ca: str = ""
    session: Session | None = None
    root: str = ""
    mounted: bool = False
    reason: str = "not started yet"
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def _parts(self, path: str) -> list[str]:
        """The folders of a Jupyter path below the mount (none for ``Shared with me``)."""
        try:
            parts = [p for p in normalize(path).split("/") if p]
        except ValueError:
            return []
        return [] if parts[:1] == [SHARED_FOLDER] else parts

    def guess_cwd(self, path: str) -> str | None:
        """The mount folder of ``path`` without looking (no I/O: safe on the event loop), or
        None without the mount. A last component with a suffix (``analysis.ipynb``) is taken
        for a file, whose folder is meant."""
        if not self.mounted:
            return None
        parts = self._parts(path)
        if parts and "." in parts[-1].strip("."):
            parts = parts[:-1]
        return str(self.mountpoint.joinpath(*parts))

    async def cwd(self, path: str) -> str | None:
        """The kernel folder for the Jupyter folder ``path``: the deepest folder of it that
        exists, in the mount; None without the mount.

        It asks CS3 directly, not through the mount: the server's event loop must not wait
        on FUSE (the mount itself waits on CS3, which may be slow).
        """
        if not self.mounted or self.session is None:
            return None
        parts = self._parts(path)
        while parts:
            try:
                info = await self.session.files.stat("/".join([self.root, *parts]))
            except errors.StorageError:
                info = None
            if info is not None and info.is_dir:
                break
            parts = parts[:-1]
        return str(self.mountpoint.joinpath(*parts))

    async def kernel_env(self, env: dict[str, str] | None) -> dict[str, str]:
        """The environment of a new kernel: ``env`` (default the node's) with the gateway
        and the mounted user's token, without the node's password."""
        out = dict(os.environ if env is None else env)
        out.pop(_PASSWORD_ENV, None)
        out[GATEWAY_ENV] = self.gateway
        if self.gateway_ca:
            out[CA_ENV] = self.gateway_ca
        if self.session is not None:
            out[TOKEN_ENV] = await self.session.tokens.token()
        return out

    def status(self) -> dict[str, Any]:
        """What ``/api/mesh/status`` tells the frontend."""
        return {
            "mounted": self.mounted,
            "cwd": str(self.mountpoint) if self.mounted else self.fallback,
            "root": self.root,
            "reason": "" if self.mounted else self.reason,
        }


class CS3KernelManager(AsyncMappingKernelManager):  # type: ignore[misc]
    """jupyter_server's kernel manager, starting kernels in the node's CS3 mount.

    Without :meth:`attach`, or while the mount is down, it behaves exactly like its base.
    """

    _files: KernelFiles | None = None

    def attach(self, files: KernelFiles) -> None:
        """Start kernels according to ``files`` from now on."""
        self._files = files

    def cwd_for_path(self, path: str, **kwargs: Any) -> str:
        """The kernel folder of ``path``: in the mount when it is up.

        jupyter_server calls this from its event loop (for ``JPY_SESSION_NAME``); the base
        walks up with ``os.path.isdir``, which in the mount would wait on FUSE, so the mount's
        folder is worked out without I/O here, and exactly in :meth:`start_kernel`.
        """
        cwd = self._files.guess_cwd(path) if self._files is not None else None
        return cwd or str(super().cwd_for_path(path, **kwargs))

    async def start_kernel(self, *, kernel_id: str | None = None, path: str | None = None,
                           **kwargs: Any) -> str:
        """Start a kernel in the notebook's folder of the mount, with CS3 in its env."""
        files = self._files
        if files is not None:
            with anyio.move_on_after(MOUNT_TIMEOUT):
                await files.settled.wait()  # the node's first kernels wait for the mount
            kwargs["env"] = await files.kernel_env(kwargs.get("env"))
            cwd = await files.cwd(path) if path is not None else None
            if cwd is not None and (kernel_id is None or kernel_id not in self):
                # Handed over as `cwd` (the base would look through the mount, blocking).
                kwargs["cwd"], path = cwd, None
        kernel: str = await super().start_kernel(kernel_id=kernel_id, path=path, **kwargs)
        return kernel


def fuse_missing() -> str:
    """Why FUSE cannot work on this machine, or "" when it may."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    if importlib.util.find_spec("pyfuse3") is None:
        return "pyfuse3 is not installed (pip install 'mesh_collab[mount]')"
    return ""


@asynccontextmanager
async def kernel_mount(state: MeshState) -> AsyncIterator[KernelFiles | None]:
    """The node's service that mounts its default user's home for kernels while it runs.

    The mount comes up in the background (the node does not wait for it; a kernel started
    meanwhile does, see :meth:`CS3KernelManager.start_kernel`). It never fails the node:
    whatever goes wrong is logged once and kernels fall back.
    """
    config, files = state.config, state.kernel_files
    if files is None:
        yield None
        return
    session = state.sessions.default
    files.session = session
    if not config.mount_kernels:
        files.reason = "disabled (MeshCollabApp.mount_kernels = False)"
    elif session is None or session.user is None:
        files.reason = "no default CS3 user to mount (multi-user mode without credentials)"
    else:
        files.reason = fuse_missing()
    if files.reason or session is None or session.user is None:
        _warn(state, files)
        files.settled.set()
        yield files
        return
    files.root = home_path(session, config.home_template)
    if config.cs3_username and config.cs3_password:
        secret, kind = config.cs3_password, "--password-env"
    else:
        secret, kind = await session.tokens.token(), "--token-env"
    command = [
        sys.executable, "-m", "mesh_collab", "mount", "--gateway", config.gateway,
        *(["--ca-file", config.gateway_ca] if config.gateway_ca else []),
        "--user", session.user.username, kind, _SECRET_ENV, "--root", files.root,
        # Its stdin is a pipe from the node: if the node dies (even kill -9), the pipe
        # closes and the mount goes with it.
        "--stop-on-stdin-eof", str(files.mountpoint),
    ]
    async with anyio.create_task_group() as tg:
        tg.start_soon(_run_mount, state, files, command, {**os.environ, _SECRET_ENV: secret})
        try:
            yield files
        finally:
            files.reason = "the node stopped"
            tg.cancel_scope.cancel()


async def _run_mount(
    state: MeshState, files: KernelFiles, command: list[str], env: dict[str, str]
) -> None:
    """Run the mount process until the node stops (then unmount), reporting its failures."""
    # The mount process logs to <data_dir>/mount.log; its last line explains a failure.
    log_path = Path(state.config.data_dir) / "mount.log"
    log_file = await anyio.to_thread.run_sync(log_path.open, "ab")
    try:
        process = await anyio.open_process(
            command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=log_file,
        )
    except OSError as exc:
        files.reason = f"cannot start the mount process: {exc}"
        _warn(state, files)
        files.settled.set()
        return
    finally:
        log_file.close()
    async with process:
        try:
            if not await _wait_mounted(process, files):
                await _unmount(process)
                tail = await anyio.to_thread.run_sync(_last_line, log_path)
                files.reason = f"the mount failed (exit code {process.returncode}): {tail}"
                _warn(state, files)
                return
            files.mounted = True
            files.settled.set()
            state.config.log.info(
                "mesh_collab: kernels see CS3 %s at %s", files.root, files.mountpoint
            )
            code = await process.wait()
            files.mounted = False
            files.reason = f"the mount process exited (code {code}); see {log_path}"
            _warn(state, files)
        finally:
            files.mounted = False
            files.settled.set()
            await _unmount(process)


async def _wait_mounted(process: anyio.abc.Process, files: KernelFiles) -> bool:
    """Wait for the mount process's ready line; False if it failed or took too long."""
    assert process.stdout is not None
    line = b""
    with anyio.move_on_after(MOUNT_TIMEOUT):
        async for chunk in process.stdout:
            line += chunk
            if b"\n" in line:
                break
    try:
        ready = json.loads(line.decode())
    except ValueError:
        return False
    return isinstance(ready, dict) and ready.get("mountpoint") == str(files.mountpoint)


async def _unmount(process: anyio.abc.Process) -> None:
    """Ask the mount process to unmount (SIGTERM); kill it if it does not in time."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(UNMOUNT_TIMEOUT):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


def _warn(state: MeshState, files: KernelFiles) -> None:
    state.config.log.warning(
        "mesh_collab: kernels will not see CS3 files: %s; they start in %s instead",
        files.reason, files.fallback,
    )


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    # Drop the log line's "<time> <level> <logger>: " prefix.
    return lines[-1].split(": ", 1)[-1] if lines else ""
