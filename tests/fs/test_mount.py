"""The FUSE mount (``mesh-collab mount``): real libfuse, real gateway, files seen both ways.

The mount runs as the command line runs it, in a process of its own; the tests touch its
files from worker threads (blocking calls that the mount answers), never from the event loop
that serves the embedded gateway.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from mesh_collab.cs3.client import Session
from mesh_collab.cs3.gateway import EmbeddedGateway
from mesh_collab.cs3.models import Lock
from mesh_collab.jupyter.kernels import fuse_missing
from tests.fs.conftest import first_json_line, in_thread

pytestmark = pytest.mark.skipif(bool(fuse_missing()), reason=f"no FUSE here: {fuse_missing()}")

HOME = "/home/einstein"


@asynccontextmanager
async def mount_process(
    gateway: EmbeddedGateway, mountpoint: Path, *args: str
) -> AsyncIterator[anyio.abc.Process]:
    """Run ``mesh-collab mount`` for einstein until the block ends; wait for its ready line."""
    command = [
        sys.executable, "-m", "mesh_collab", "mount", "--gateway", gateway.grpc_address,
        "--user", "einstein", "--password-env", "TEST_CS3_PASSWORD", *args, str(mountpoint),
    ]
    env = {**os.environ, "TEST_CS3_PASSWORD": "relativity"}
    async with await anyio.open_process(
        command, env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        try:
            ready = await first_json_line(process)
            assert ready == {"mountpoint": str(mountpoint), "root": HOME, "user": "einstein"}
            yield process
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with anyio.fail_after(30):
                    await process.wait()


def _read(path: Path, start: int = 0, size: int = -1) -> bytes:
    with path.open("rb") as f:
        f.seek(start)
        return f.read(size)


def _write(path: Path, data: bytes, mode: str = "wb") -> None:
    with path.open(mode) as f:
        f.write(data)


async def test_files_through_the_mount(
    gateway_a: EmbeddedGateway, einstein_a: Session, tmp_path: Path
) -> None:
    mnt = tmp_path / "mnt"
    blob = bytes(range(256)) * 2048  # 512 KiB: several FUSE reads
    await einstein_a.files.write(f"{HOME}/data.txt", b"written through CS3\n")
    await einstein_a.files.write(f"{HOME}/blob.bin", blob)

    async with mount_process(gateway_a, mnt) as process:
        assert await in_thread(os.path.ismount, mnt)
        assert sorted(await in_thread(os.listdir, mnt)) == ["blob.bin", "data.txt"]
        assert await in_thread(_read, mnt / "data.txt") == b"written through CS3\n"
        assert await in_thread(_read, mnt / "blob.bin") == blob
        assert await in_thread(_read, mnt / "blob.bin", 300_000, 1000) == blob[300_000:301_000]
        assert (await in_thread(os.stat, mnt / "blob.bin")).st_size == len(blob)

        # A new file written by a program: one upload on close, no empty first version.
        await in_thread(_write, mnt / "new.txt", b"from the kernel")
        assert await einstein_a.files.read(f"{HOME}/new.txt") == b"from the kernel"
        assert await einstein_a.versions.list(f"{HOME}/new.txt") == []

        # Overwriting a file through the mount makes a CS3 version of the old content.
        await in_thread(_write, mnt / "data.txt", b"rewritten\n")
        await in_thread(_write, mnt / "data.txt", b"and more\n", "ab")
        assert await einstein_a.files.read(f"{HOME}/data.txt") == b"rewritten\nand more\n"
        versions = await einstein_a.versions.list(f"{HOME}/data.txt")
        assert [await einstein_a.versions.read(f"{HOME}/data.txt", v.key) for v in versions] == [
            b"rewritten\n", b"written through CS3\n",
        ]
        await in_thread(os.truncate, mnt / "data.txt", 4)
        assert await einstein_a.files.read(f"{HOME}/data.txt") == b"rewr"

        # Folders, rename (the file keeps its CS3 id), delete.
        before = await einstein_a.files.stat(f"{HOME}/new.txt")
        await in_thread(os.mkdir, mnt / "sub")
        await in_thread(os.rename, mnt / "new.txt", mnt / "sub" / "moved.txt")
        after = await einstein_a.files.stat(f"{HOME}/sub/moved.txt")
        assert after.id == before.id
        assert await in_thread(_read, mnt / "sub" / "moved.txt") == b"from the kernel"
        assert not await in_thread(os.path.exists, mnt / "new.txt")
        with pytest.raises(OSError) as not_empty:
            await in_thread(os.rmdir, mnt / "sub")
        assert not_empty.value.errno == errno.ENOTEMPTY
        await in_thread(os.unlink, mnt / "sub" / "moved.txt")
        await in_thread(os.rmdir, mnt / "sub")
        assert sorted(await in_thread(os.listdir, mnt)) == ["blob.bin", "data.txt"]
        assert [i.name for i in await einstein_a.files.list(HOME)] == ["blob.bin", "data.txt"]
        with pytest.raises(FileNotFoundError):
            await in_thread(_read, mnt / "missing.txt")

        # A change made through CS3 shows once the attribute cache (1 s) expired.
        await einstein_a.files.write(f"{HOME}/blob.bin", b"small now")
        with anyio.fail_after(10):
            # The kernel's attribute cache expiring gives no event: poll, under the deadline.
            while (await in_thread(os.stat, mnt / "blob.bin")).st_size != 9:  # noqa: ASYNC110
                await anyio.sleep(0.1)
        assert await in_thread(_read, mnt / "blob.bin") == b"small now"

        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await process.wait() == 0
    assert not await in_thread(os.path.ismount, mnt)


async def test_a_locked_file_fails_the_close(
    gateway_a: EmbeddedGateway, einstein_a: Session, tmp_path: Path
) -> None:
    mnt = tmp_path / "mnt"
    await einstein_a.files.write(f"{HOME}/locked.txt", b"the editor's")
    await einstein_a.locks.set(f"{HOME}/locked.txt", Lock(lock_id="o-1", app_name="office"))
    async with mount_process(gateway_a, mnt) as process:
        with pytest.raises(OSError) as caught:
            await in_thread(_write, mnt / "locked.txt", b"mine")
        assert caught.value.errno == errno.EBUSY
        assert await einstein_a.files.read(f"{HOME}/locked.txt") == b"the editor's"
        assert await in_thread(_read, mnt / "locked.txt") == b"the editor's"
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            await process.wait()
        assert process.stderr is not None
        log = (await process.stderr.receive()).decode()
    assert "locked by office" in log
    assert "relativity" not in log


async def test_unmounts_when_its_parent_goes(
    gateway_a: EmbeddedGateway, tmp_path: Path
) -> None:
    """The node's mount child ends with the node, even a killed one: its stdin closes."""
    mnt = tmp_path / "mnt"
    async with mount_process(gateway_a, mnt, "--stop-on-stdin-eof") as process:
        assert await in_thread(os.path.ismount, mnt)
        assert process.stdin is not None
        await process.stdin.aclose()
        with anyio.fail_after(30):
            assert await process.wait() == 0
    assert not await in_thread(os.path.ismount, mnt)


async def test_refuses_a_bad_start(gateway_a: EmbeddedGateway, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "mesh_collab", "mount", "--gateway", gateway_a.grpc_address,
            "--user", "einstein"]
    env = {**os.environ, "WRONG": "not-the-password"}
    wrong = await anyio.run_process(
        [*base, "--password-env", "WRONG", str(tmp_path / "m")], env=env, check=False
    )
    assert wrong.returncode == 1
    assert b"cannot mount" in wrong.stderr
    assert b"not-the-password" not in wrong.stderr
