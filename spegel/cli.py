"""The `spegel` command line: `registry`, `configuration`, `cleanup` and `version`.

Flags are parsed here, once, into typed settings (`RegistrySettings`, `RouterOptions`, ...) that the rest of the
package takes. Every flag also reads the environment variable Spegel uses for it (`--mirror-targets` from
`MIRROR_TARGETS`, `--log-level` from `LOG_LEVEL`; see `spegel.flags` for the value grammars). Bad flags print one
line (`spegel: error: ...`) and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from spegel import __version__, hostsconfig, logs, preflight
from spegel.flags import FlagParser, address, duration, log_level, positive_int, regex
from spegel.mirror.backend import MirrorOptions
from spegel.mirror.peers import Timeouts
from spegel.mirror.policy import RegistryFilters
from spegel.registry.http11 import Limits, connection_bound
from spegel.routing.config import RouterOptions
from spegel.store.containerd.store import DEFAULT_CONTENT_PATH, DEFAULT_NAMESPACE, DEFAULT_SOCKET
from spegel.store.containerd.watcher import DEFAULT_RELIST_INTERVAL, Mode

if TYPE_CHECKING:
    from spegel.app import RegistrySettings

log = logging.getLogger("spegel")


def add_http_flags(parser: FlagParser) -> None:
    group = parser.add_argument_group("HTTP connections (registry port)")
    parser.flag(
        "--http-keep-alive-timeout",
        group=group,
        type=duration,
        default=30.0,
        help="an idle connection, or one that has not sent a whole request head, is closed after it (default: 30s)",
    )
    parser.flag(
        "--http-send-timeout",
        group=group,
        type=duration,
        default=30.0,
        help="a client that reads nothing of a response for this long is dropped (default: 30s)",
    )
    parser.flag(
        "--http-max-connections",
        group=group,
        type=positive_int,
        help="most open connections (default: from the file-descriptor limit, at most 1024)",
    )


def add_mirror_flags(parser: FlagParser) -> None:
    group = parser.add_argument_group("mirror")
    parser.flag(
        "--router",
        group=group,
        choices=("libp2p", "none"),
        default="libp2p",
        help="libp2p (default): find and serve peers' content; none: serve local content only",
    )
    parser.flag(
        "--mirror-resolve-timeout",
        group=group,
        type=duration,
        default=0.02,
        help="how long to look for peers before answering 404 (default: 20ms)",
    )
    parser.flag(
        "--mirror-resolve-retries",
        group=group,
        type=positive_int,
        default=3,
        help="how many holders to try (default: 3)",
    )
    parser.flag(
        "--resolve-tags",
        group=group,
        boolean_flag=True,
        default=True,
        help="resolve tags through peers (default: true)",
    )
    parser.flag(
        "--registry-filters",
        group=group,
        type=regex,
        many=True,
        commas=False,
        default=[],
        metavar="REGEX",
        help="tags (registry/repository:tag) matching any of these are neither advertised nor resolved through "
        "peers, e.g. ':latest$' (space-separated or repeated)",
    )
    parser.flag(
        "--resolve-latest-tag",
        group=group,
        boolean_flag=True,
        default=True,
        help="Spegel before v0.6: false is --registry-filters ':latest$' (default: true)",
    )
    parser.flag(
        "--mirrored-registries",
        group=group,
        type=_checked(hostsconfig.MirroredRegistry.parse),
        many=True,
        default=[],
        metavar="REGISTRY",
        help="with any given, only these registries' tags are advertised and resolved through peers, and "
        "metrics name only these registries (others count as `other`); default: every registry",
    )
    parser.flag("--mirror-peer-connect-timeout", group=group, type=duration, default=0.5, help="default: 500ms")
    parser.flag(
        "--mirror-peer-first-byte-timeout",
        group=group,
        type=duration,
        default=2.0,
        help="time a peer has to answer with headers (default: 2s)",
    )
    parser.flag(
        "--mirror-peer-read-timeout",
        group=group,
        type=duration,
        default=5.0,
        help="longest pause in a peer's body before the transfer moves to another holder (default: 5s)",
    )
    parser.flag(
        "--mirror-miss-settle",
        group=group,
        type=duration,
        default=0.1,
        help="with --advertise inflight, a blob no peer holds complete is claimed (announced as this node's "
        "download), then looked up again after this long (keep it above the announce -> visible p99.9): the "
        "first claimant goes upstream, the later ones follow earlier ones (default: 100ms)",
    )
    parser.flag(
        "--mirror-inflight-wait",
        group=group,
        type=duration,
        default=30.0,
        help="longest wait for the first bytes, or the next bytes, of a download in progress on a peer (a "
        "download that has not begun after 1s is not waited for; default: 30s)",
    )


def add_containerd_flags(parser: FlagParser) -> None:
    group = parser.add_argument_group("containerd store")
    parser.flag("--containerd-sock", group=group, default=DEFAULT_SOCKET, help=f"default: {DEFAULT_SOCKET}")
    parser.flag("--containerd-namespace", group=group, default=DEFAULT_NAMESPACE, help=f"default: {DEFAULT_NAMESPACE}")
    parser.flag(
        "--containerd-content-path",
        group=group,
        default=DEFAULT_CONTENT_PATH,
        help=f"containerd's content root, read directly when mounted (default: {DEFAULT_CONTENT_PATH})",
    )
    parser.flag(
        "--advertise",
        group=group,
        type=Mode,
        choices=list(Mode),
        default=Mode.INFLIGHT,
        metavar="{" + ",".join(m.value for m in Mode) + "}",
        help="what to advertise: whole images once pulled, each blob once committed, or also blobs still "
        "downloading (default: inflight; layer and inflight need containerd >= 2.1)",
    )
    parser.flag(
        "--containerd-relist-interval",
        group=group,
        type=duration,
        default=DEFAULT_RELIST_INTERVAL,
        help="time between full re-lists of containerd's content (default: 1m)",
    )
    parser.flag(
        "--containerd-config-path",
        group=group,
        default=preflight.DEFAULT_CONFIG_FILE,
        help=f"containerd's config.toml, checked at start (default: {preflight.DEFAULT_CONFIG_FILE})",
    )
    parser.flag(
        "--containerd-registry-config-path",
        group=group,
        default=hostsconfig.DEFAULT_CONFIG_PATH,
        help="the hosts.toml directory containerd must read, checked at start "
        f"(default: {hostsconfig.DEFAULT_CONFIG_PATH})",
    )


def add_router_flags(parser: FlagParser) -> None:
    """The libp2p router's flags (the `registry` command's, and the test node driver's)."""
    group = parser.add_argument_group("router (libp2p)")
    parser.flag(
        "--router-addr",
        group=group,
        default=":5001",
        help="HOST:PORT the libp2p router listens on (default: :5001, all IPv4)",
    )
    parser.flag(
        "--data-dir",
        group=group,
        default="/var/lib/spegel",
        help="directory for the node's persistent Ed25519 identity (default: /var/lib/spegel)",
    )
    parser.flag(
        "--bootstrap-kind",
        group=group,
        choices=["static", "dns", "http"],
        default="static",
        help="how to find the cluster: static multiaddrs, a DNS name's A/AAAA records, or a node's /id over HTTP",
    )
    parser.flag(
        "--static-bootstrap-peers",
        group=group,
        many=True,
        default=[],
        metavar="MULTIADDR",
        help="bootstrap multiaddrs (space- or comma-separated, or repeated); /p2p/<id> optional, learned on connect",
    )
    parser.flag(
        "--dns-bootstrap-domain",
        group=group,
        help="name whose A/AAAA records are the nodes (e.g. a headless Service)",
    )
    parser.flag("--http-bootstrap-addr", group=group, help="HOST:PORT to serve this node's multiaddrs on at GET /id")
    parser.flag("--http-bootstrap-url", group=group, help="URL of another node's /id to bootstrap from")
    parser.flag(
        "--http-bootstrap-peer",
        group=group,
        help="base URL of another node's HTTP bootstrap address (/id is appended; Spegel's name, instead of "
        "--http-bootstrap-url)",
    )
    parser.flag(
        "--router-psk-file",
        group=group,
        help="private network key file (libp2p /key/swarm/psk/1.0.0/ format or 64 hex digits, e.g. from "
        "`openssl rand -hex 32`): only nodes with the same key can connect. Required unless every listen and "
        "bootstrap address is loopback or --insecure-no-psk is given",
    )
    parser.flag(
        "--insecure-no-psk",
        group=group,
        boolean_flag=True,
        default=False,
        help="join a cluster without a private network key: any host that reaches the router port can announce "
        "content to this node (see docs/operations.md, Security)",
    )
    parser.flag(
        "--router-peer-networks",
        group=group,
        many=True,
        default=[],
        metavar="CIDR",
        help="networks (e.g. the pod CIDR) peers may name as registry or router hosts besides their own address "
        "(space- or comma-separated, or repeated; default: a peer's own host only, and hosts already known)",
    )
    parser.flag(
        "--router-max-keys-per-peer",
        group=group,
        type=positive_int,
        default=50_000,
        help="keys one peer may announce; further ones are refused (default: 50000)",
    )
    parser.flag(
        "--router-peer-grace",
        group=group,
        type=duration,
        default=10.0,
        help="how long a disconnected peer's announcements are kept for it to come back (default: 10s)",
    )
    parser.flag(
        "--router-degree",
        group=group,
        type=positive_int,
        default=8,
        help="how many peers each node picks to link to; announcements are passed on over these links, so a "
        "cluster of up to degree + 1 nodes is a full mesh (default: 8)",
    )
    parser.flag(
        "--router-record-ttl",
        group=group,
        type=duration,
        default=600.0,
        help="how long a node's advertisements count after it was last heard from, and DHT records live (default: 10m)",
    )
    parser.flag(
        "--router-refresh",
        group=group,
        type=duration,
        help="time between full-state announcements to every peer (default: a third of the TTL); "
        "DHT records are republished at half the TTL",
    )
    parser.flag(
        "--router-rejoin",
        group=group,
        type=duration,
        default=60.0,
        help="time between bootstrap rounds once connected (default: 1m)",
    )
    parser.flag(
        "--router-dht-provide-rate",
        group=group,
        type=_positive_number,
        default=1.0,
        metavar="KEYS_PER_SECOND",
        help="at most this many DHT provides a second (each walks the DHT and costs every peer it reaches CPU; "
        "default: 1)",
    )
    parser.flag(
        "--router-dht-provide-delay",
        group=group,
        type=duration,
        default=120.0,
        help="how long after a key is advertised it is provided in the DHT (connected peers have it from the "
        "announcement at once; deferring the DHT walk keeps it out of pull storms; default: 120s)",
    )
    parser.flag(
        "--router-dht",
        group=group,
        boolean_flag=True,
        default=True,
        help="provide keys in the Kademlia DHT and fall back to it on index misses (default: true)",
    )


def router_options(args: argparse.Namespace) -> RouterOptions:
    for name in ("router_record_ttl", "router_refresh", "router_rejoin"):
        if getattr(args, name) == 0:
            raise argparse.ArgumentTypeError(f"--{name.replace('_', '-')} must be longer than 0")
    url = args.http_bootstrap_url
    if args.http_bootstrap_peer:
        if url:
            raise argparse.ArgumentTypeError("--http-bootstrap-peer and --http-bootstrap-url are mutually exclusive")
        url = args.http_bootstrap_peer.rstrip("/") + "/id"
    return _options(
        RouterOptions,
        args,
        "router_",
        static_bootstrap_peers=tuple(args.static_bootstrap_peers),
        peer_networks=tuple(args.router_peer_networks),
        http_bootstrap_url=url,
    )


T = TypeVar("T")


def _options(cls: type[T], args: argparse.Namespace, prefix: str, **given: Any) -> T:
    """The dataclass `cls` from the flags named `<prefix><field>`, else `<field>`; `given` values win."""
    values = {}
    for name in (f.name for f in dataclasses.fields(cls)):  # type: ignore[arg-type]
        flag = prefix + name if hasattr(args, prefix + name) else name
        values[name] = given[name] if name in given else getattr(args, flag)
    return cls(**values)


def build_parser(environ: Mapping[str, str] | None = None) -> FlagParser:
    """The `spegel` parser; flags not on the command line are read from `environ` (default: `os.environ`)."""
    parser = FlagParser(prog="spegel", description="A stateless, cluster-local OCI registry mirror.", environ=environ)
    parser.add_argument("--version", action="version", version=f"spegel {__version__}")
    parser.flag("--log-level", type=log_level, default="info", help="DEBUG, INFO (default), WARN or ERROR")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=FlagParser)

    registry = parser.command(commands, "registry", help="run the registry mirror")
    registry.flag("--store", default="containerd", help="containerd (default) or oci-layout:DIR")
    registry.flag("--registry-addr", type=address, default="0.0.0.0:5000", help="default: :5000")
    registry.flag("--metrics-addr", type=address, default="0.0.0.0:9090", help="default: :9090")
    registry.flag(
        "--default-registry",
        default="docker.io",
        help="the image registry of requests that carry no ?ns= (default: docker.io)",
    )
    registry.flag(
        "--debug-web-enabled",
        boolean_flag=True,
        default=True,
        help="serve the debug page /debug/web/ on the metrics address (default: true)",
    )
    add_http_flags(registry)
    add_mirror_flags(registry)
    add_containerd_flags(registry)
    add_router_flags(registry)
    add_configuration_commands(parser, commands)
    parser.command(commands, "version", help="print the version")
    for command in commands.choices.values():
        command.add_argument("--log-level", type=log_level, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a `hostsconfig` parser (its errors become one-line usage errors)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except hostsconfig.HostsConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: must be positive")
    return value


def add_configuration_commands(parser: FlagParser, commands: Any) -> None:
    """`spegel configuration` (write containerd's hosts.toml files) and `spegel cleanup` (restore the backup)."""
    config_path_help = f"containerd's registry config_path (default: {hostsconfig.DEFAULT_CONFIG_PATH})"
    configuration = parser.command(commands, "configuration", help="send containerd's pulls to the mirror first")
    cleanup = parser.command(commands, "cleanup", help="restore containerd's registry configuration from the backup")
    for sub in (configuration, cleanup):
        sub.flag("--containerd-registry-config-path", default=hostsconfig.DEFAULT_CONFIG_PATH, help=config_path_help)
    configuration.flag(
        "--mirrored-registries",
        type=_checked(hostsconfig.MirroredRegistry.parse),
        many=True,
        default=[],
        help="registries to mirror, HOST[:PORT] or URL, space- or comma-separated or repeated "
        "(default: all, via _default)",
    )
    configuration.flag(
        "--mirror-targets",
        type=_checked(hostsconfig.parse_mirror_target),
        many=True,
        required=True,
        help="mirror URLs http(s)://HOST:PORT, tried in order before the registry, space- or comma-separated "
        "or repeated",
    )
    configuration.flag(
        "--dial-timeout",
        type=_checked(hostsconfig.validate_duration),
        default=hostsconfig.DEFAULT_DIAL_TIMEOUT,
        help=f"containerd's connect timeout per mirror, a Go duration (default: {hostsconfig.DEFAULT_DIAL_TIMEOUT})",
    )
    configuration.flag(
        "--resolve-tags",
        boolean_flag=True,
        default=True,
        help="let the mirror resolve tags to digests (default: true)",
    )
    configuration.flag(
        "--prepend-existing",
        boolean_flag=True,
        default=False,
        help="keep the registry's existing hosts after the mirrors (default: false)",
    )


def registry_settings(args: argparse.Namespace) -> RegistrySettings:
    """The settings of `spegel registry` from its parsed flags."""
    from spegel.app import ContainerdOptions, RegistrySettings

    mirrored = tuple(dict.fromkeys(registry.name for registry in args.mirrored_registries))
    filters = list(args.registry_filters) + ([] if args.resolve_latest_tag else [":latest$"])
    if mirrored:  # tags of other registries are neither advertised nor resolved, as with Spegel
        filters.append("^(?!(?:" + "|".join(re.escape(name) for name in mirrored) + ")/)")
    return RegistrySettings(
        store=args.store,
        registry_addr=args.registry_addr,
        metrics_addr=args.metrics_addr,
        debug_web=args.debug_web_enabled,
        http=Limits(
            keep_alive_timeout=args.http_keep_alive_timeout,
            send_timeout=args.http_send_timeout,
            max_connections=args.http_max_connections or connection_bound(),
        ),
        default_registry=args.default_registry,
        mirrored_registries=mirrored,
        router=None if args.router == "none" else router_options(args),
        mirror=MirrorOptions(
            resolve_timeout=args.mirror_resolve_timeout,
            resolve_retries=args.mirror_resolve_retries,
            resolve_tags=args.resolve_tags,
            filters=RegistryFilters(filters),
            inflight_wait=args.mirror_inflight_wait,
            miss_settle=args.mirror_miss_settle,
        ),
        timeouts=Timeouts(
            connect=args.mirror_peer_connect_timeout,
            first_byte=args.mirror_peer_first_byte_timeout,
            read=args.mirror_peer_read_timeout,
            inflight_wait=args.mirror_inflight_wait,
        ),
        containerd=_options(ContainerdOptions, args, "containerd_"),
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


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    if args.command == "version":
        sys.stdout.write(f"spegel {__version__}\n")
        return 0
    logs.configure(args.log_level)
    if args.command == "registry":
        from spegel.app import run_registry

        try:
            settings = registry_settings(args)
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
        return run_registry(settings)
    if args.command == "configuration":
        return run_configuration(args)
    if args.command == "cleanup":
        return run_cleanup(args)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
