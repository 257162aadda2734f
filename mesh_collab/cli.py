"""The ``mesh-collab`` command line.

Subcommands live in :data:`SUBCOMMANDS` (name → (configure parser, run)); today:

``mesh-collab gateway``
    Run the embedded CS3 gateway. Prints one JSON line on stdout once both servers listen::

        {"grpc": "127.0.0.1:19000", "http": "http://127.0.0.1:40124", "site": "site-a",
         "domain": "127.0.0.1:40124"}

    and stops cleanly on SIGINT or SIGTERM (exit code 0). Logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

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
    parser.add_argument("--users", type=Path, default=None,
                        help="Reva-style users.json (default: demo users einstein, marie, "
                             "richard)")
    parser.add_argument("--site", default="site-a", help="site name (default %(default)s)")
    parser.add_argument("--lock-profile", choices=("eos", "edge"), default="eos",
                        help="lock rules of Reva master/EOS or edge (default %(default)s)")
    parser.add_argument("--domain", default=None,
                        help="OCM domain (default: the HTTP host:port)")


async def _run_gateway(args: argparse.Namespace) -> int:
    from mesh_collab.cs3.gateway import EmbeddedGateway

    gateway = EmbeddedGateway(
        root=args.root, site=args.site, host=args.host, port=args.port,
        data_port=args.data_port, users=args.users, lock_profile=args.lock_profile,
        domain=args.domain,
    )
    # Receive signals before announcing readiness: a supervisor may signal at once.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with gateway:
            line = {"grpc": gateway.grpc_address, "http": gateway.http_url,
                    "site": gateway.site, "domain": gateway.domain}
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
            async for signum in signals:
                log.info("received %s, stopping", signal.Signals(signum).name)
                break
    return 0


def _demo():  # type: ignore[no-untyped-def]
    # Imported on use: the demo pulls in Jupyter, which the gateway alone does not need.
    from mesh_collab import demo

    return demo


@dataclass(frozen=True, slots=True)
class Subcommand:
    """One ``mesh-collab`` subcommand."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Awaitable[int]]


#: Every subcommand by name; ``serve`` and ``demo`` are added here.
SUBCOMMANDS: dict[str, Subcommand] = {
    "gateway": Subcommand("run the embedded CS3 gateway", _gateway_args, _run_gateway),
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
