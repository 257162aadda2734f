"""``cs3://`` through fsspec, against the real embedded gateway in both lock profiles."""

from __future__ import annotations

import io
import os
import pickle
import sys
import threading

import anyio
import fsspec
import pandas as pd
import pytest

from mesh_collab.cs3.client import Session
from mesh_collab.cs3.filesystem import CS3FileSystem
from mesh_collab.cs3.models import Lock
from mesh_collab.cs3.oserrors import FileLockedError
from mesh_collab.pytest_plugin import Site
from tests.fs.conftest import declared_entry_point, in_thread


def test_the_entry_point_names_the_filesystem() -> None:
    assert declared_entry_point().load() is CS3FileSystem
    assert fsspec.get_filesystem_class("cs3") is CS3FileSystem


def test_paths_map_to_cs3_paths() -> None:
    assert CS3FileSystem._strip_protocol("cs3://home/einstein/data.csv") == (
        "home/einstein/data.csv"
    )
    assert CS3FileSystem._strip_protocol("/home/einstein/") == "home/einstein"
    assert CS3FileSystem.cs3_path("cs3://home/einstein/data.csv") == "/home/einstein/data.csv"


async def test_ls_and_info(cs3fs: CS3FileSystem, einstein: Session, fsdir: str) -> None:
    await einstein.files.write(f"/{fsdir}/a.txt", b"hello")
    await einstein.files.mkdir(f"/{fsdir}/sub")

    names = await in_thread(cs3fs.ls, fsdir, detail=False)
    assert names == [f"{fsdir}/a.txt", f"{fsdir}/sub"]
    detail = {e["name"]: e for e in await in_thread(cs3fs.ls, f"cs3://{fsdir}", detail=True)}
    assert detail[f"{fsdir}/a.txt"]["type"] == "file"
    assert detail[f"{fsdir}/a.txt"]["size"] == 5
    assert detail[f"{fsdir}/sub"]["type"] == "directory"

    info = await in_thread(cs3fs.info, f"{fsdir}/a.txt")
    stat = await einstein.files.stat(f"/{fsdir}/a.txt")
    assert (info["size"], info["etag"], info["id"]) == (5, stat.etag, str(stat.id))
    assert info["locked_by"] == ""
    assert await in_thread(cs3fs.exists, f"{fsdir}/a.txt")
    assert not await in_thread(cs3fs.exists, f"{fsdir}/missing.txt")
    assert await in_thread(cs3fs.isdir, f"{fsdir}/sub")
    with pytest.raises(FileNotFoundError):
        await in_thread(cs3fs.info, f"{fsdir}/missing.txt")
    with pytest.raises(FileNotFoundError):
        await in_thread(cs3fs.cat_file, f"{fsdir}/missing.txt")


async def test_ranged_reads(cs3fs: CS3FileSystem, einstein: Session, fsdir: str) -> None:
    data = bytes(range(256)) * 40  # 10 KiB
    await einstein.files.write(f"/{fsdir}/blob.bin", data)
    path = f"{fsdir}/blob.bin"

    assert await in_thread(cs3fs.cat_file, path) == data
    assert await in_thread(cs3fs.cat_file, path, start=100, end=300) == data[100:300]
    assert await in_thread(cs3fs.cat_file, path, start=10_000) == data[10_000:]
    assert await in_thread(cs3fs.cat_file, path, start=-16) == data[-16:]
    assert await in_thread(cs3fs.cat_file, path, start=5, end=-5) == data[5:-5]
    assert await in_thread(cs3fs.cat_file, path, start=20_000) == b""
    assert await in_thread(cs3fs.cat_file, path, start=7, end=7) == b""

    def read_blocks() -> tuple[bytes, bytes]:
        with cs3fs.open(path, "rb", block_size=1024) as f:
            f.seek(5000)
            middle = f.read(100)
            f.seek(-10, io.SEEK_END)
            return middle, f.read()

    assert await in_thread(read_blocks) == (data[5000:5100], data[-10:])


async def test_the_data_gateway_answers_ranges(einstein: Session, fsdir: str) -> None:
    """A ranged read is an HTTP Range request, which the data gateway answers with 206."""
    await einstein.files.write(f"/{fsdir}/r.txt", b"0123456789")
    assert await einstein.files.read(f"/{fsdir}/r.txt", start=2, end=5) == b"234"
    assert await einstein.files.read(f"/{fsdir}/r.txt", start=8) == b"89"
    assert await einstein.files.read(f"/{fsdir}/r.txt", start=10) == b""


async def test_writes_are_one_upload_and_one_version_each(
    cs3fs: CS3FileSystem, einstein: Session, fsdir: str
) -> None:
    path = f"{fsdir}/out.txt"

    def write(content: bytes) -> None:
        with cs3fs.open(path, "wb", block_size=5 * 2**20) as f:
            for i in range(0, len(content), 3):  # many small writes, one upload on close
                f.write(content[i : i + 3])

    await in_thread(write, b"first version")
    assert await einstein.files.read(f"/{path}") == b"first version"
    assert await einstein.versions.list(f"/{path}") == []

    await in_thread(write, b"second version")
    await in_thread(cs3fs.pipe_file, path, b"third")
    assert await einstein.files.read(f"/{path}") == b"third"
    versions = await einstein.versions.list(f"/{path}")
    assert [await einstein.versions.read(f"/{path}", v.key) for v in versions] == [
        b"second version", b"first version",
    ]
    with pytest.raises(FileExistsError):
        await in_thread(cs3fs.pipe_file, path, b"x", mode="create")


async def test_rm_mv_mkdir(cs3fs: CS3FileSystem, einstein: Session, fsdir: str) -> None:
    await in_thread(cs3fs.pipe_file, f"{fsdir}/a.txt", b"a")
    before = await einstein.files.stat(f"/{fsdir}/a.txt")

    await in_thread(cs3fs.mv, f"{fsdir}/a.txt", f"{fsdir}/b.txt")
    after = await einstein.files.stat(f"/{fsdir}/b.txt")
    assert after.id == before.id  # one CS3 Move, not a copy
    assert not await in_thread(cs3fs.exists, f"{fsdir}/a.txt")

    await in_thread(cs3fs.makedirs, f"{fsdir}/x/y/z", exist_ok=True)
    assert (await einstein.files.stat(f"/{fsdir}/x/y/z")).is_dir
    with pytest.raises(FileExistsError):
        await in_thread(cs3fs.makedirs, f"{fsdir}/x/y/z")
    await in_thread(cs3fs.mkdir, f"{fsdir}/m", create_parents=False)
    await in_thread(cs3fs.pipe_file, f"{fsdir}/x/y/z/f.txt", b"f")

    with pytest.raises(OSError, match="not empty"):
        await in_thread(cs3fs.rm, f"{fsdir}/x")
    await in_thread(cs3fs.rm, f"{fsdir}/x", recursive=True)
    await in_thread(cs3fs.rm, f"{fsdir}/b.txt")
    await in_thread(cs3fs.rmdir, f"{fsdir}/m")
    assert await in_thread(cs3fs.ls, fsdir, detail=False) == []
    with pytest.raises(FileNotFoundError):
        await in_thread(cs3fs.rm_file, f"{fsdir}/b.txt")


async def test_a_locked_file_refuses_the_write(
    cs3fs: CS3FileSystem, einstein: Session, fsdir: str
) -> None:
    path = f"{fsdir}/locked.txt"
    await einstein.files.write(f"/{path}", b"owned by the editor")
    await einstein.locks.set(f"/{path}", Lock(lock_id="office-1", app_name="office-editor"))

    with pytest.raises(FileLockedError, match="locked by office-editor") as caught:
        await in_thread(cs3fs.pipe_file, path, b"overwrite")
    assert caught.value.holder == "office-editor"
    assert isinstance(caught.value, OSError)

    def write_through_open() -> None:
        with cs3fs.open(path, "wb") as f:
            f.write(b"overwrite")

    with pytest.raises(FileLockedError):
        await in_thread(write_through_open)
    assert await einstein.files.read(f"/{path}") == b"owned by the editor"
    assert (await in_thread(cs3fs.info, path))["locked_by"] == "office-editor"


async def test_pickled_filesystem_carries_the_token_not_the_password(
    site: Site, cs3fs: CS3FileSystem, einstein: Session, fsdir: str
) -> None:
    await einstein.files.write(f"/{fsdir}/shared.txt", b"for the workers")
    blob = await in_thread(pickle.dumps, cs3fs)
    assert site.users["einstein"].encode() not in blob

    # A worker thread: the unpickled instance opens its own connection.
    result: list[bytes] = []

    def worker() -> None:
        fs = pickle.loads(blob)
        result.append(fs.cat_file(f"{fsdir}/shared.txt"))
        fs.close_session()

    thread = threading.Thread(target=worker)
    await in_thread(thread.start)
    await in_thread(thread.join, 30)
    assert result == [b"for the workers"]

    # A worker process, as dask would run one.
    script = (
        "import pickle, sys\n"
        "fs = pickle.loads(sys.stdin.buffer.read())\n"
        f"sys.stdout.buffer.write(fs.cat_file({fsdir + '/shared.txt'!r}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_COLLAB_")}
    done = await anyio.run_process([sys.executable, "-c", script], input=blob, env=env)
    assert done.stdout == b"for the workers"


async def test_token_from_the_environment(
    site: Site, einstein: Session, fsdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESH_COLLAB_GATEWAY", site.grpc_address)
    monkeypatch.setenv("MESH_COLLAB_CS3_TOKEN", await einstein.tokens.token())
    await einstein.files.write(f"/{fsdir}/env.txt", b"from env")
    fs = fsspec.filesystem("cs3", skip_instance_cache=True)
    try:
        assert await in_thread(fs.cat_file, f"cs3://{fsdir}/env.txt") == b"from env"
        assert "eyJ" not in repr(fs)  # no token in the repr
    finally:
        await in_thread(fs.close_session)


async def test_pandas_reads_a_csv(site: Site, einstein: Session, fsdir: str) -> None:
    await einstein.files.write(f"/{fsdir}/data.csv", b"x,y\n1,2\n3,4\n")
    options = {"gateway": site.grpc_address, "username": "einstein",
               "password": site.users["einstein"]}
    frame = await in_thread(pd.read_csv, f"cs3://{fsdir}/data.csv", storage_options=options)
    assert frame.to_dict("list") == {"x": [1, 3], "y": [2, 4]}

    out = pd.DataFrame({"a": [1, 2]})
    await in_thread(out.to_csv, f"cs3://{fsdir}/out.csv", index=False, storage_options=options)
    assert await einstein.files.read(f"/{fsdir}/out.csv") == b"a\n1\n2\n"
    await in_thread(fsspec.filesystem("cs3", **options).close_session)
