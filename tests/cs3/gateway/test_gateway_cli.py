"""``mesh-collab gateway`` as a subprocess: one JSON line, clean exit on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import grpc
import pytest
from cs3.gateway.v1beta1 import gateway_api_pb2 as gw
from cs3.gateway.v1beta1 import gateway_api_pb2_grpc as gw_grpc
from gateway_helpers import OK


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_cli_gateway(tmp_path: Path, signum: signal.Signals) -> None:
    args = [sys.executable, "-m", "mesh_collab", "gateway", "--port", "0",
            "--root", str(tmp_path / "data"), "--site", "site-x", "--lock-profile", "edge",
            "--demo-users"]
    async with await anyio.open_process(args, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        buffered = b""
        with anyio.fail_after(20):
            async for chunk in proc.stdout:
                buffered += chunk
                if b"\n" in buffered:
                    break
        line = json.loads(buffered.split(b"\n")[0])
        assert set(line) == {"grpc", "http", "site", "domain"}
        assert line["site"] == "site-x"
        assert line["grpc"].startswith("127.0.0.1:") and line["http"].startswith("http://")
        assert line["domain"] == line["http"].removeprefix("http://")
        async with grpc.aio.insecure_channel(line["grpc"]) as channel:
            stub = gw_grpc.GatewayAPIStub(channel)
            auth = await stub.Authenticate(gw.AuthenticateRequest(
                type="basic", client_id="einstein", client_secret="relativity"), timeout=10)
            assert auth.status.code == OK
        proc.send_signal(signum)
        with anyio.fail_after(20):
            assert await proc.wait() == 0
    assert (tmp_path / "data" / "meta.sqlite").exists()
