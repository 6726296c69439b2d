"""The `spegel` command line: `registry`, plus containerd configuration commands.

Bad flags print one line (`spegel: error: ...`) and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from spegel import hostsconfig, logs, preflight
from spegel.routing.config import add_router_arguments
from spegel.store.containerd.store import add_containerd_arguments
from spegel.store.containerd.watcher import add_watcher_arguments

log = logging.getLogger("spegel")


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"spegel: error: {message}\n")
        sys.exit(2)


def address(text: str) -> str:
    """`HOST:PORT`, `:PORT` (all interfaces) or `[V6]:PORT`, normalised to what the server binds."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: want HOST:PORT")
    return f"{host or '0.0.0.0'}:{port}"


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """A Go-style duration (`20ms`, `1.5s`, `2m`) or plain seconds, as seconds (>= 0)."""
    number, unit = text, "s"
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            number, unit = text[: -len(suffix)], suffix
            break
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: want e.g. 20ms, 1s, 2m") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be finite and >= 0")
    return seconds


def regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"invalid regular expression {text!r}: {exc}") from None
    return text


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: want an integer >= 1")
    return int(text)


def add_mirror_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("mirror")
    group.add_argument(
        "--router",
        choices=("libp2p", "none"),
        default="libp2p",
        help="libp2p (default): find and serve peers' content; none: serve local content only",
    )
    group.add_argument(
        "--mirror-resolve-timeout",
        type=duration,
        default=0.02,
        help="how long to look for peers before answering 404 (default: 20ms)",
    )
    group.add_argument(
        "--mirror-resolve-retries", type=positive_int, default=3, help="how many holders to try (default: 3)"
    )
    group.add_argument(
        "--resolve-tags",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="resolve tags through peers (default: on)",
    )
    group.add_argument(
        "--registry-filters",
        type=regex,
        nargs="*",
        default=[],
        metavar="REGEX",
        help="tags (registry/repository:tag) matching any of these are neither advertised nor "
        "resolved through peers, e.g. ':latest$'",
    )
    group.add_argument("--mirror-peer-connect-timeout", type=duration, default=0.5, help="default: 500ms")
    group.add_argument(
        "--mirror-peer-first-byte-timeout",
        type=duration,
        default=2.0,
        help="time a peer has to answer with headers (default: 2s)",
    )
    group.add_argument(
        "--mirror-peer-read-timeout",
        type=duration,
        default=5.0,
        help="longest pause in a peer's body before the transfer moves to another holder (default: 5s)",
    )
    group.add_argument(
        "--mirror-miss-settle",
        type=duration,
        default=0.02,
        help="with --advertise inflight, a blob no peer holds complete is claimed (announced as this node's "
        "download), then looked up again after this long: the first claimant goes upstream, each later one "
        "follows the claimant before it (default: 20ms)",
    )
    group.add_argument(
        "--mirror-inflight-wait",
        type=duration,
        default=10.0,
        help="longest wait for the first bytes, or the next bytes, of a download in progress on a peer (a "
        "download that has not begun after 1s is not waited for; default: 10s)",
    )


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
    add_mirror_arguments(registry)
    containerd = registry.add_argument_group("containerd store")
    add_containerd_arguments(containerd)
    add_watcher_arguments(containerd)
    containerd.add_argument(
        "--containerd-config-path",
        default=preflight.DEFAULT_CONFIG_FILE,
        help=f"containerd's config.toml, checked at start (default: {preflight.DEFAULT_CONFIG_FILE})",
    )
    containerd.add_argument(
        "--containerd-registry-config-path",
        default=hostsconfig.DEFAULT_CONFIG_PATH,
        help="the hosts.toml directory containerd must read, checked at start "
        f"(default: {hostsconfig.DEFAULT_CONFIG_PATH})",
    )
    add_router_arguments(registry)
    add_configuration_commands(commands)
    return parser


def _checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a `hostsconfig` parser (its errors become one-line usage errors)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except hostsconfig.HostsConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _comma_list(parse: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return _checked(lambda text: [parse(item.strip()) for item in text.split(",") if item.strip()])


def add_configuration_commands(commands: Any) -> None:
    """`spegel configuration` (write containerd's hosts.toml files) and `spegel cleanup` (restore the backup)."""
    config_path_help = f"containerd's registry config_path (default: {hostsconfig.DEFAULT_CONFIG_PATH})"
    configuration = commands.add_parser("configuration", help="send containerd's pulls to the mirror first")
    cleanup = commands.add_parser("cleanup", help="restore containerd's registry configuration from the backup")
    for sub in (configuration, cleanup):
        sub.add_argument(
            "--containerd-registry-config-path", default=hostsconfig.DEFAULT_CONFIG_PATH, help=config_path_help
        )
        sub.add_argument("--log-level", choices=logs.LEVELS, default=argparse.SUPPRESS)
    configuration.add_argument(
        "--mirrored-registries",
        type=_comma_list(hostsconfig.MirroredRegistry.parse),
        action="extend",
        default=[],
        help="registries to mirror, HOST[:PORT] or URL, comma-separated or repeated (default: all, via _default)",
    )
    configuration.add_argument(
        "--mirror-targets",
        type=_comma_list(hostsconfig.parse_mirror_target),
        action="extend",
        required=True,
        help="mirror URLs http(s)://HOST:PORT, tried in order before the registry, comma-separated or repeated",
    )
    configuration.add_argument(
        "--dial-timeout",
        type=_checked(hostsconfig.validate_duration),
        default=hostsconfig.DEFAULT_DIAL_TIMEOUT,
        help=f"containerd's connect timeout per mirror, a Go duration (default: {hostsconfig.DEFAULT_DIAL_TIMEOUT})",
    )
    configuration.add_argument(
        "--resolve-tags",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let the mirror resolve tags to digests (default: yes)",
    )
    configuration.add_argument(
        "--prepend-existing", action="store_true", help="keep the registry's existing hosts after the mirrors"
    )


def run_configuration(args: argparse.Namespace) -> int:
    try:
        written = hostsconfig.apply(
            args.containerd_registry_config_path,
            args.mirrored_registries,
            args.mirror_targets,
            resolve_tags=args.resolve_tags,
            dial_timeout=args.dial_timeout,
            prepend_existing=args.prepend_existing,
        )
    except (hostsconfig.HostsConfigError, OSError) as exc:
        sys.stderr.write(f"spegel: error: {exc}\n")
        return 1
    log.info("containerd registry configuration written", extra={"files": [str(p) for p in written]})
    return 0


def run_cleanup(args: argparse.Namespace) -> int:
    try:
        restored = hostsconfig.restore(args.containerd_registry_config_path)
    except OSError as exc:
        sys.stderr.write(f"spegel: error: {exc}\n")
        return 1
    message = "containerd registry configuration restored" if restored else "no backup to restore: nothing done"
    log.info(message, extra={"path": args.containerd_registry_config_path})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    if args.command == "registry":
        from spegel.app import run_registry

        return run_registry(args)
    if args.command == "configuration":
        return run_configuration(args)
    if args.command == "cleanup":
        return run_cleanup(args)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
