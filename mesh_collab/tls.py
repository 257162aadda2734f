"""Certificates and TLS contexts for the connections to and from the CS3 gateway.

Passwords, access tokens and transfer tokens travel on these connections (the gRPC
``Authenticate`` call, every ``x-access-token``, the data gateway URLs), so off loopback
they need TLS (security review H4). This module holds what the gateway, the CS3 client and
the demo share:

* :class:`ServerTLS`: a server's certificate and key files, as an ``ssl`` context (aiohttp)
  or as the PEM bytes that ``grpc.ssl_server_credentials`` takes.
* :func:`client_context`: a verifying client context, against a CA bundle or the system's
  trust store. Verification is never turned off.
* :class:`LocalCA`: a throw-away certificate authority in a folder, for ``mesh-collab
  demo`` and tests, which issues short-lived server certificates for loopback names.
* :func:`is_loopback`: whether a host is loopback only, where plaintext is acceptable.

Usage::

    ca = LocalCA.create(tmp_path / "ca")
    server = ca.issue("gateway")               # gateway.pem / gateway.key, for 127.0.0.1
    context = client_context(ca.ca_file)       # trusts that CA only
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Days a :meth:`LocalCA.issue` certificate is valid (a demo or a test run, not a service).
CERT_DAYS = 30
#: Days the :class:`LocalCA` itself is valid.
CA_DAYS = 365
#: Backdating of ``notBefore``, for a peer whose clock is a little behind.
_CLOCK_SKEW = datetime.timedelta(minutes=5)
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name, brackets allowed) is loopback only.

    True for 127.0.0.0/8, ``::1`` and ``localhost``: traffic to them never leaves the
    machine, so plaintext there exposes nothing to the network.
    """
    host = host.strip().strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_context(ca_file: Path | str | None = None) -> ssl.SSLContext:
    """Return a client TLS context that verifies the server's certificate and name.

    Args:
        ca_file: a PEM bundle of the CAs to trust; None for the system's trust store.

    Raises:
        OSError: ``ca_file`` cannot be read; ``ssl.SSLError`` (an OSError) when it holds no
            usable certificate.
    """
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """A server's certificate (PEM, with its chain) and private key (PEM) files.

    The files are read on each call, so a renewed certificate is used by the next server
    started with it.
    """

    cert: Path
    key: Path

    def ssl_context(self) -> ssl.SSLContext:
        """Return a server context (TLS 1.2 or later) serving this certificate.

        Raises:
            OSError: a file cannot be read; ``ssl.SSLError`` when they do not hold a
                matching certificate and key.
        """
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        return context

    def cert_bytes(self) -> bytes:
        """The certificate chain, PEM (for ``grpc.ssl_server_credentials``)."""
        return Path(self.cert).read_bytes()

    def key_bytes(self) -> bytes:
        """The private key, PEM (for ``grpc.ssl_server_credentials``)."""
        return Path(self.key).read_bytes()


class LocalCA:
    """A certificate authority kept in one folder, for the demo and tests.

    ``ca.pem`` is its certificate (the bundle clients trust, :attr:`ca_file`), ``ca.key``
    its private key (mode 0600). :meth:`issue` writes server certificates beside them.
    It is not meant for production: use certificates of the site's own CA there.
    """

    def __init__(self, folder: Path, cert: x509.Certificate,
                 key: ec.EllipticCurvePrivateKey) -> None:
        self._folder = Path(folder)
        self._cert = cert
        self._key = key

    @classmethod
    def create(cls, folder: Path, *, name: str = "mesh_collab local CA") -> LocalCA:
        """Make a new CA in ``folder`` (created, mode 0700), replacing any CA there.

        Raises:
            OSError: the folder or its files cannot be written.
        """
        folder = Path(folder)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        _write(folder / "ca.key", _key_pem(key), private=True)
        _write(folder / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
        return cls(folder, cert, key)

    @classmethod
    def load(cls, folder: Path) -> LocalCA:
        """Open the CA that :meth:`create` made in ``folder``.

        Raises:
            OSError: ``ca.pem`` or ``ca.key`` cannot be read.
            ValueError: they do not hold a certificate and its EC private key.
        """
        folder = Path(folder)
        cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) \
                or key.public_key() != cert.public_key():
            raise ValueError(f"{folder / 'ca.key'} is not the key of {folder / 'ca.pem'}")
        return cls(folder, cert, key)

    @property
    def folder(self) -> Path:
        """The CA's folder."""
        return self._folder

    @property
    def ca_file(self) -> Path:
        """The CA certificate (PEM): what clients pass as their CA bundle."""
        return self._folder / "ca.pem"

    def issue(self, name: str, hosts: Iterable[str] = ("127.0.0.1", "localhost"), *,
              days: int = CERT_DAYS) -> ServerTLS:
        """Issue a server certificate for ``hosts``, as ``<name>.pem`` and ``<name>.key``.

        Args:
            name: the files' base name (letters, digits, ``.``, ``_``, ``-``).
            hosts: the names and addresses the certificate is valid for (its subject
                alternative names: IP addresses as such, anything else as a DNS name).
            days: validity in days.

        Raises:
            ValueError: a bad ``name``, or no hosts.
            OSError: the files cannot be written.
        """
        if not _NAME.fullmatch(name) or name == "ca":
            raise ValueError(f"certificate name must be a plain file name, not 'ca': {name!r}")
        sans = [_san(host) for host in hosts]
        if not sans:
            raise ValueError("a certificate needs at least one host")
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        ca_ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        tls = ServerTLS(cert=self._folder / f"{name}.pem", key=self._folder / f"{name}.key")
        _write(tls.key, _key_pem(key), private=True)
        _write(tls.cert, cert.public_bytes(serialization.Encoding.PEM))
        return tls

    def __repr__(self) -> str:
        return f"LocalCA({str(self._folder)!r})"


def _san(host: str) -> x509.GeneralName:
    host = host.strip().strip("[]")
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not host:
            raise ValueError("empty host name") from None
        return x509.DNSName(host)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``data`` to ``path``; a private file is 0600 from its creation on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as file:
        if private:
            os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        file.write(data)
