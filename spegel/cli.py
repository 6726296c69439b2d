"""The `spegel` command line: `registry`, plus containerd configuration commands.

Bad flags print one line (`spegel: error: ...`) and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spegel import logs


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"spegel: error: {message}\n")
        sys.exit(2)


def address(text: str) -> str:
    """`HOST:PORT`, `:PORT` (all interfaces) or `[V6]:PORT`, normalised to what the server binds."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: want HOST:PORT")
    return f"{host or '0.0.0.0'}:{port}"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="spegel", description="A stateless, cluster-local OCI registry mirror.")
    parser.add_argument("--log-level", choices=logs.LEVELS, default="info", help="default: info")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    registry = commands.add_parser("registry", help="run the registry mirror")
    registry.add_argument("--store", default="containerd", help="containerd (default) or oci-layout:DIR")
    registry.add_argument("--registry-addr", type=address, default=":5000", help="default: :5000")
    registry.add_argument("--metrics-addr", type=address, default=":9090", help="default: :9090")
    registry.add_argument(
        "--default-registry",
        default="docker.io",
        help="the image registry of requests that carry no ?ns= (default: docker.io)",
    )
    registry.add_argument("--log-level", choices=logs.LEVELS, default=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    if args.command == "registry":
        from spegel.app import run_registry

        return run_registry(args)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
