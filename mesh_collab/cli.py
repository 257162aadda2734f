"""The ``mesh-collab`` command line.

Subcommands live in :data:`SUBCOMMANDS` (name → (configure parser, run)); today:

``mesh-collab gateway (--users FILE | --demo-users) [--tls-cert PEM --tls-key PEM]
[--trusted-providers DOMAINS]``
    Run the embedded CS3 gateway. Without ``--users`` or ``--demo-users`` it refuses to start
    (exit code 2): the demo users' passwords are public. With ``--tls-cert``/``--tls-key``
    it serves gRPC over TLS and https (clients use ``grpcs://HOST:PORT``; ``"http"`` below
    then says ``https://``). Prints one JSON line on stdout once both servers listen::

        {"grpc": "127.0.0.1:19000", "http": "http://127.0.0.1:40124", "site": "site-a",
         "domain": "127.0.0.1:40124"}

    and stops cleanly on SIGINT or SIGTERM (exit code 0). Logs go to stderr.

``mesh-collab mount --gateway ADDR --user NAME (--password-env VAR | --token-env VAR) DIR``
    Mount the user's CS3 home (or ``--root``) at ``DIR`` with FUSE (:mod:`mesh_collab.mount`).
    The secret is read from the named environment variable, never from the command line.
    Prints one JSON line once mounted::

        {"mountpoint": "/mnt/cs3", "root": "/home/einstein", "user": "einstein"}

    and unmounts cleanly on SIGINT or SIGTERM (exit code 0). Exit code 1 when the mount
    cannot be set up (no FUSE, mount point in use, login refused).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

log = logging.getLogger("mesh_collab.cli")


def _gateway_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=19000,
                        help="gRPC port, 0 for a free one (default %(default)s)")
    parser.add_argument("--data-port", type=int, default=0,
                        help="HTTP port (data gateway, OCM), 0 for a free one (default 0)")
    parser.add_argument("--root", type=Path, default=Path("mesh-collab-data"),
                        help="folder for files and metadata (default ./%(default)s)")
    users = parser.add_mutually_exclusive_group()
    users.add_argument("--users", type=Path, default=None,
                       help="Reva-style users.json (secrets in clear or 'argon2:' hashes)")
    users.add_argument("--demo-users", action="store_true",
                       help="serve the demo users einstein, marie and richard, whose "
                            "passwords are public (relativity, radioactivity, superfluidity)")
    parser.add_argument("--site", default="site-a", help="site name (default %(default)s)")
    parser.add_argument("--lock-profile", choices=("eos", "edge"), default="eos",
                        help="lock rules of Reva master/EOS or edge (default %(default)s)")
    parser.add_argument("--domain", default=None,
                        help="OCM domain (default: the HTTP host:port)")
    parser.add_argument("--tls-cert", type=Path, default=None,
                        help="certificate (PEM, with its chain) that gRPC and HTTP serve "
                             "(with --tls-key); default: plaintext")
    parser.add_argument("--tls-key", type=Path, default=None,
                        help="private key (PEM) of --tls-cert")
    parser.add_argument("--ca-file", type=Path, default=None,
                        help="CA bundle (PEM) that other gateways' https is verified with "
                             "(OCM); default: the system's trust store")
    parser.add_argument("--trusted-providers", default="", metavar="DOMAINS",
                        help="comma-separated OCM domains (host:port) this gateway exchanges "
                             "shares with; default: none")


async def _run_gateway(args: argparse.Namespace) -> int:
    from mesh_collab.cs3.gateway import EmbeddedGateway
    from mesh_collab.cs3.gateway.users import UsersFileError
    from mesh_collab.tls import ServerTLS

    if args.users is None and not args.demo_users:
        log.error("no users: pass --users FILE (a Reva-style users.json), or --demo-users "
                  "for the demo users, whose passwords are public")
        return 2
    if (args.tls_cert is None) != (args.tls_key is None):
        log.error("--tls-cert and --tls-key go together")
        return 2
    tls = None if args.tls_cert is None else ServerTLS(cert=args.tls_cert, key=args.tls_key)
    try:
        gateway = EmbeddedGateway(
            root=args.root, site=args.site, host=args.host, port=args.port,
            data_port=args.data_port, users=args.users, lock_profile=args.lock_profile,
            domain=args.domain, tls=tls, ca_file=args.ca_file,
            trusted_providers=[d for d in args.trusted_providers.split(",") if d.strip()],
        )
    except ValueError as exc:
        log.error("cannot start gateway: %s", exc)
        return 2
    # Receive signals before announcing readiness: a supervisor may signal at once.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with gateway:
                line = {"grpc": gateway.grpc_address, "http": gateway.http_url,
                        "site": gateway.site, "domain": gateway.domain}
                sys.stdout.write(json.dumps(line) + "\n")
                sys.stdout.flush()
                async for signum in signals:
                    log.info("received %s, stopping", signal.Signals(signum).name)
                    break
        except UsersFileError as exc:
            log.error("cannot start gateway: %s", exc)
            return 1
    return 0


def _mount_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", default=os.environ.get("MESH_COLLAB_GATEWAY")
                        or "127.0.0.1:19000",
                        help="gRPC address of the CS3 gateway (default $MESH_COLLAB_GATEWAY, "
                             "else %(default)s)")
    parser.add_argument("--ca-file", type=Path,
                        default=os.environ.get("MESH_COLLAB_GATEWAY_CA") or None,
                        help="CA bundle (PEM) of a grpcs:// gateway (default "
                             "$MESH_COLLAB_GATEWAY_CA, else the system's trust store)")
    parser.add_argument("--user", required=True, help="CS3 user name")
    secret = parser.add_mutually_exclusive_group(required=True)
    secret.add_argument("--password-env", metavar="VAR",
                        help="environment variable holding the user's password")
    secret.add_argument("--token-env", metavar="VAR",
                        help="environment variable holding a CS3 access token of the user")
    parser.add_argument("--root", default=None,
                        help="CS3 folder to mount (default /home/<user>)")
    parser.add_argument("--attr-timeout", type=float, default=1.0,
                        help="seconds the kernel may cache names and attributes "
                             "(default %(default)s)")
    parser.add_argument("--stop-on-stdin-eof", action="store_true",
                        help="also unmount when standard input closes (a parent process "
                             "that dies closes it)")
    parser.add_argument("mountpoint", type=Path, help="folder to mount at (created if missing)")


async def _run_mount(args: argparse.Namespace) -> int:
    from mesh_collab import errors
    from mesh_collab.cs3.client import CS3Client

    try:
        from mesh_collab import mount
    except ImportError as exc:
        log.error("the FUSE mount needs pyfuse3 (pip install 'mesh_collab[mount]'): %s", exc)
        return 1
    var = args.password_env or args.token_env
    secret = os.environ.get(var, "")
    if not secret:
        log.error("environment variable %s is empty or not set", var)
        return 1
    root = args.root or f"/home/{args.user}"
    # Receive signals before announcing readiness: a supervisor may signal at once.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with CS3Client(args.gateway, ca_file=args.ca_file) as cs3:
                if args.password_env:
                    # The mount holds the password for its life (the process environment):
                    # it logs in again when a login reaches its maximum age.
                    session = await cs3.login(args.user, secret, keep_password=True)
                else:
                    session = cs3.session(secret)
                    await session.whoami()
                async with mount.FuseMount(session, root=root, mountpoint=args.mountpoint,
                                           attr_timeout=args.attr_timeout, log=log) as fuse:
                    line = {"mountpoint": str(args.mountpoint.absolute()), "root": root,
                            "user": args.user}
                    sys.stdout.write(json.dumps(line) + "\n")
                    sys.stdout.flush()
                    await _until_signal_or(fuse.unmounted, signals,
                                           stdin_eof=args.stop_on_stdin_eof)
        except errors.MeshCollabError as exc:
            log.error("cannot mount: %s", exc)
            return 1
    return 0


async def _until_signal_or(event: anyio.Event, signals: Any, *, stdin_eof: bool) -> None:
    """Return on SIGINT/SIGTERM, once ``event`` is set, or (``stdin_eof``) once standard input
    closes, whichever comes first."""
    async with anyio.create_task_group() as tg:

        async def on_signal() -> None:
            async for signum in signals:
                log.info("received %s, stopping", signal.Signals(signum).name)
                break
            tg.cancel_scope.cancel()

        async def on_stdin_eof() -> None:
            # Reads until EOF: the parent holding the pipe's other end exited. A daemon
            # thread of its own: a worker thread left blocked in read() would keep the
            # process from exiting after a signal, until its parent closed the pipe.
            closed = anyio.Event()
            loop = asyncio.get_running_loop()  # the mount runs on asyncio (pyfuse3)

            def read_to_eof() -> None:
                while os.read(sys.stdin.fileno(), 65536):
                    pass
                try:
                    loop.call_soon_threadsafe(closed.set)
                except RuntimeError:
                    pass  # the loop has ended: the process is stopping anyway

            threading.Thread(target=read_to_eof, name="stdin-eof", daemon=True).start()
            await closed.wait()
            log.info("standard input closed, stopping")
            tg.cancel_scope.cancel()

        tg.start_soon(on_signal)
        if stdin_eof:
            tg.start_soon(on_stdin_eof)
        await event.wait()
        tg.cancel_scope.cancel()


def _demo():  # type: ignore[no-untyped-def]
    # Imported on use: the demo pulls in Jupyter, which the gateway alone does not need.
    from mesh_collab import demo

    return demo


def _node_key_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the node's private key file (made, mode 0600, if it "
                        "does not exist; MeshCollabApp.node_key)")


async def _run_node_key(args: argparse.Namespace) -> int:
    from mesh_collab.federation import keys

    try:
        key = keys.load_or_create(Path(args.file))
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    sys.stdout.write(keys.public_text(key) + "\n")  # for the node's entry in the directory
    return 0


@dataclass(frozen=True, slots=True)
class Subcommand:
    """One ``mesh-collab`` subcommand."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Awaitable[int]]


#: Every subcommand by name; ``serve`` and ``demo`` are added here.
SUBCOMMANDS: dict[str, Subcommand] = {
    "gateway": Subcommand("run the embedded CS3 gateway", _gateway_args, _run_gateway),
    "mount": Subcommand("mount a user's CS3 folder with FUSE", _mount_args, _run_mount),
    "node-key": Subcommand("print a node's public key (making its key file if needed)",
                           _node_key_args, _run_node_key),
    "demo": Subcommand(
        "run two sites (gateway + JupyterLab each) sharing a notebook",
        lambda parser: _demo().configure(parser),
        lambda args: _demo().run(args),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="mesh-collab", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="log level on stderr (default %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in SUBCOMMANDS.items():
        command.configure(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mesh-collab``; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return anyio.run(SUBCOMMANDS[args.command].run, args)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        log.error("cannot start %s: %s", args.command, exc)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
