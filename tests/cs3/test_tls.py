"""Transport security of the CS3 connections (security review H4), on real loopback sockets.

A gateway serving a :class:`~mesh_collab.tls.LocalCA` certificate, clients that trust that
CA (or another one, or speak plaintext), the client's refusal of plaintext off loopback, and
the https URLs a TLS gateway hands out (transfers, OCM).
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from cryptography import x509

from mesh_collab import cli, errors
from mesh_collab.cs3.client import CS3Client
from mesh_collab.cs3.models import Role, UserId
from mesh_collab.jupyter.app import MeshCollabApp
from mesh_collab.tls import LocalCA, ServerTLS, client_context, is_loopback

#: Bound of every call expected to fail: a refused handshake must not hang.
FAIL_WITHIN = 15


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return LocalCA.create(tmp_path / "ca")


def test_local_ca_files(tmp_path: Path, ca: LocalCA) -> None:
    server = ca.issue("gateway", hosts=("127.0.0.1", "localhost", "::1"))
    assert server == ServerTLS(cert=ca.folder / "gateway.pem", key=ca.folder / "gateway.key")
    for private in (ca.folder / "ca.key", server.key):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(server.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert 29 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 31
    server.ssl_context()  # the key matches the certificate
    assert LocalCA.load(ca.folder).ca_file == ca.ca_file
    with pytest.raises(ValueError):
        ca.issue("../escape")


def test_is_loopback() -> None:
    for host in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost", "LocalHost."):
        assert is_loopback(host), host
    for host in ("10.0.0.1", "0.0.0.0", "::", "reva.example.org", "localhost.example.org", ""):
        assert not is_loopback(host), host


async def test_login_list_upload_download_over_tls(
    gateway_factory: Any, cs3_client_factory: Any, ca: LocalCA,
) -> None:
    gw = await gateway_factory(tls=ca.issue("gw"))
    assert gw.grpc_url == f"grpcs://{gw.grpc_address}" and gw.http_url.startswith("https://")
    client: CS3Client = await cs3_client_factory(gw.grpc_url, ca_file=ca.ca_file)
    endpoints: list[str] = []
    transfer = client.transfer

    async def recording(method: str, endpoint: str, **kwargs: Any) -> httpx.Response:
        endpoints.append(endpoint)
        return await transfer(method, endpoint, **kwargs)

    client.transfer = recording  # type: ignore[method-assign]
    einstein = await client.login("einstein", "relativity")
    await einstein.files.write("/home/einstein/tls.txt", b"over TLS")
    names = [info.path.rsplit("/", 1)[-1] for info in await einstein.files.list("/home/einstein")]
    assert "tls.txt" in names
    assert await einstein.files.read("/home/einstein/tls.txt") == b"over TLS"
    assert len(endpoints) == 2  # one upload, one download, both https to the gateway
    assert all(e.startswith(f"{gw.http_url}/datagateway/") for e in endpoints)


async def test_tls_flag_and_ca_file_without_scheme(
    gateway_factory: Any, cs3_client_factory: Any, ca: LocalCA,
) -> None:
    gw = await gateway_factory(tls=ca.issue("gw"))
    for kwargs in ({"ca_file": ca.ca_file}, {"tls": True, "ca_file": ca.ca_file}):
        client = await cs3_client_factory(gw.grpc_address, **kwargs)
        assert client.tls
        assert (await client.login("einstein", "relativity")).user.username == "einstein"


async def test_client_with_another_ca_is_refused(
    gateway_factory: Any, cs3_client_factory: Any, ca: LocalCA, tmp_path: Path,
) -> None:
    gw = await gateway_factory(tls=ca.issue("gw"))
    other = LocalCA.create(tmp_path / "other-ca")
    client = await cs3_client_factory(gw.grpc_url, ca_file=other.ca_file, rpc_timeout=5)
    with anyio.fail_after(FAIL_WITHIN), pytest.raises(errors.StorageUnavailable) as failure:
        await client.login("einstein", "relativity")
    text = str(failure.value).lower()
    assert "ssl" in text or "certificate" in text or "handshake" in text, text
    assert "relativity" not in text


async def test_plaintext_client_to_tls_gateway_fails(
    gateway_factory: Any, cs3_client_factory: Any, ca: LocalCA,
) -> None:
    gw = await gateway_factory(tls=ca.issue("gw"))
    client = await cs3_client_factory(gw.grpc_address, rpc_timeout=5)  # loopback plaintext
    assert not client.tls
    with anyio.fail_after(FAIL_WITHIN), pytest.raises(errors.StorageError):
        await client.login("einstein", "relativity")


def test_plaintext_off_loopback_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="allow_insecure") as refused:
        CS3Client("reva.example.org:19000")
    assert "grpcs://reva.example.org:19000" in str(refused.value)
    with pytest.raises(ValueError, match="allow_insecure"):
        CS3Client("grpc://10.1.2.3:19000")
    assert not CS3Client("reva.example.org:19000", allow_insecure=True).tls
    assert CS3Client("grpcs://reva.example.org:19000").tls
    assert CS3Client("reva.example.org:19000", tls=True).target == "reva.example.org:19000"
    for local in ("127.0.0.1:19000", "localhost:19000", "[::1]:19000", "grpc://127.0.0.2:1"):
        assert not CS3Client(local).tls
    with pytest.raises(ValueError):
        CS3Client("grpcs://reva.example.org:19000", tls=False)
    with pytest.raises(ValueError):
        CS3Client("https://reva.example.org:19000")


def test_missing_ca_file_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        CS3Client("grpcs://reva.example.org:19000", ca_file=tmp_path / "missing.pem")


async def test_plain_http_transfer_url_off_loopback_is_refused() -> None:
    client = CS3Client("grpcs://reva.example.org:19000")
    with pytest.raises(errors.StorageInternal) as refused:
        await client.transfer("GET", "http://reva.example.org:8080/datagateway/TRANSFER-TOKEN",
                              transfer_token="TRANSFER-TOKEN", token="ACCESS-TOKEN")
    assert "TOKEN" not in str(refused.value) and "reva.example.org" in str(refused.value)


async def test_ocm_discovery_document_of_a_tls_gateway(
    gateway_factory: Any, ca: LocalCA,
) -> None:
    gw = await gateway_factory(tls=ca.issue("gw"))
    assert gw.domain == gw.http_url.removeprefix("https://")
    async with httpx.AsyncClient(verify=client_context(ca.ca_file), timeout=10) as http:
        doc = (await http.get(f"https://{gw.domain}/.well-known/ocm")).json()
    assert doc["endPoint"] == f"{gw.http_url}/ocm" and doc["endPoint"].startswith("https://")
    assert doc["publicKey"]["keyId"].startswith("https://")
    webdav = doc["resourceTypes"][0]["protocols"]["webdav"]
    assert webdav.startswith("/")  # a path on the endPoint's https origin
    async with httpx.AsyncClient(timeout=10) as http:
        with anyio.fail_after(FAIL_WITHIN), pytest.raises(httpx.TransportError):
            await http.get(f"http://{gw.domain}/.well-known/ocm")  # no plaintext beside TLS


async def test_ocm_share_between_tls_gateways(
    gateway_factory: Any, cs3_client_factory: Any, ca: LocalCA,
) -> None:
    a = await gateway_factory(site="site-a", tls=ca.issue("a"), ca_file=ca.ca_file)
    b = await gateway_factory(site="site-b", tls=ca.issue("b"), ca_file=ca.ca_file)
    a.trusted_providers, b.trusted_providers = [b.domain], [a.domain]
    einstein = await (await cs3_client_factory(a.grpc_url, ca_file=ca.ca_file)).login(
        "einstein", "relativity")
    marie = await (await cs3_client_factory(b.grpc_url, ca_file=ca.ca_file)).login(
        "marie", "radioactivity")
    assert (await einstein.ocm.provider(b.domain)).ocm_endpoint == f"{b.http_url}/ocm"
    nb = await einstein.files.write("/home/einstein/tls.ipynb", b'{"cells": []}')
    await einstein.ocm.create(nb.id, UserId(idp=b.domain, opaque_id="marie"), Role.EDITOR)
    (received,) = await marie.ocm.received()
    assert received.webdav_uri.startswith(f"{a.http_url}/")
    async with httpx.AsyncClient(verify=client_context(ca.ca_file), timeout=10) as http:
        response = await http.get(
            received.webdav_uri, headers={"Authorization": f"Bearer {received.shared_secret}"})
    assert response.status_code == 200 and response.content == b'{"cells": []}'


async def test_gateway_verifies_other_gateways(
    gateway_factory: Any, cs3_client_factory: Any, ca: LocalCA,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gateway without the CA (the system's trust store) cannot discover a TLS peer."""
    caplog.set_level(logging.WARNING, logger="mesh_collab.cs3.gateway")
    a = await gateway_factory(site="site-a")
    b = await gateway_factory(site="site-b", tls=ca.issue("b"))
    a.trusted_providers = [b.domain]
    einstein = await (await cs3_client_factory(a.grpc_address)).login("einstein", "relativity")
    with anyio.fail_after(FAIL_WITHIN), pytest.raises(errors.StorageInternal):
        await einstein.ocm.provider(b.domain)
    assert f"domain={b.domain} discovery failed" in caplog.text


async def test_gateway_with_unusable_certificate_fails_to_start(
    gateway_factory: Any, tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(OSError):
        await gateway_factory(tls=ServerTLS(cert=bad, key=bad))


def test_cli_tls_cert_needs_its_key(tmp_path: Path) -> None:
    args = ["gateway", "--demo-users", "--root", str(tmp_path / "gw"), "--port", "0",
            "--tls-cert", str(tmp_path / "gw.pem")]
    assert cli.main(args) == 2
    parsed = cli.build_parser().parse_args(
        ["gateway", "--tls-cert", "c.pem", "--tls-key", "k.pem", "--ca-file", "ca.pem"])
    assert (parsed.tls_cert, parsed.tls_key, parsed.ca_file) == (
        Path("c.pem"), Path("k.pem"), Path("ca.pem"))


def test_jupyter_traits() -> None:
    app = MeshCollabApp()
    assert app.gateway_ca == "" and app.allow_insecure_gateway is False
    for name in ("gateway_ca", "allow_insecure_gateway"):
        assert app.traits()[name].metadata.get("config") is True
    app.gateway = "grpcs://reva.example.org:19000"
    app.gateway = "[::1]:19000"
    with pytest.raises(Exception, match="gateway must be"):
        app.gateway = "https://reva.example.org:19000"
