"""Preflight checks: is this node's containerd set up so that a mirror can work?

The core, `check_containerd`, is pure: it takes the text of containerd's `config.toml` (None when the file does
not exist: containerd then runs on its defaults) and the version string containerd reports, and returns
`Finding`s with messages that say what is wrong and how to fix it. `run_preflight` adds the one piece of I/O
(reading the file). Call it at start; refuse to run when `has_errors(findings)`, log warnings.

What is checked, and why:
- containerd >= 2.1: content events (`/content/create`) and parallel layer fetch arrive with it.
- The CRI image service reads registry hosts from `config_path`: without it containerd never reads the
  `hosts.toml` files that `spegel configuration` writes, and pulls bypass the mirror. It must include the
  directory the mirror configuration is written to, and `mirrors` must not be set beside it (containerd
  refuses to start with both).
- `discard_unpacked_layers` is off: otherwise containerd garbage-collects layers right after unpacking them
  and a node has nothing to share.
- `imports` are reported: settings in imported files override the main file and are not checked here.
"""

from __future__ import annotations

import enum
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spegel.store.containerd.watcher import CONTENT_EVENTS_SINCE

MINIMUM_VERSION = CONTENT_EVENTS_SINCE
DEFAULT_CONFIG_FILE = "/etc/containerd/config.toml"
DEFAULT_HOSTS_DIR = "/etc/containerd/certs.d"

_VERSION = re.compile(r"(?<![\w.])v?(\d+)\.(\d+)(?:\.(\d+))?")

# Where the CRI image settings live, by config file version: (registry table, table holding
# discard_unpacked_layers). A file without `version` is version 1.
_CRI_TABLES: Mapping[int, tuple[tuple[str, ...], tuple[str, ...]]] = {
    1: (("plugins", "cri", "registry"), ("plugins", "cri", "containerd")),
    2: (
        ("plugins", "io.containerd.grpc.v1.cri", "registry"),
        ("plugins", "io.containerd.grpc.v1.cri", "containerd"),
    ),
    3: (("plugins", "io.containerd.cri.v1.images", "registry"), ("plugins", "io.containerd.cri.v1.images")),
}


class Severity(enum.Enum):
    ERROR = "error"  # the mirror cannot work: refuse to start
    WARNING = "warning"  # it works, with a limitation the operator should know about


@dataclass(frozen=True)
class Finding:
    """One problem found. `check` is a stable identifier; `message` says what is wrong and what to do."""

    check: str
    severity: Severity
    message: str

    def __str__(self) -> str:
        return f"{self.severity.value}: {self.check}: {self.message}"


def parse_version(text: str) -> tuple[int, int, int] | None:
    """The first `MAJOR.MINOR[.PATCH]` in `text` (`v2.1.9`, `2.1.9+unknown`, or the whole line of
    `containerd --version`), or None if there is none."""
    match = _VERSION.search(text)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def check_version(version: str) -> list[Finding]:
    """containerd must be at least `MINIMUM_VERSION`."""
    parsed = parse_version(version)
    want = ".".join(map(str, MINIMUM_VERSION))
    if parsed is None:
        return [Finding("containerd-version", Severity.ERROR, f"cannot read a version from {version!r}")]
    if parsed[:2] < MINIMUM_VERSION:
        have = ".".join(map(str, parsed))
        return [
            Finding(
                "containerd-version",
                Severity.ERROR,
                f"containerd {have} is too old: content events and parallel layer fetch need containerd >= {want}",
            )
        ]
    return []


def check_config(config_text: str | None, hosts_dir: str) -> list[Finding]:
    """Check containerd's config.toml text (None: no file, containerd's defaults apply).

    `hosts_dir` is the directory `spegel configuration` writes `hosts.toml` files to; the CRI `config_path`
    must include it (it may list several directories separated by `:`).
    """
    if config_text is None:
        return [
            _missing_config_path(_CRI_TABLES[3][0], hosts_dir, "there is no config.toml, and it is empty by default")
        ]
    try:
        config = tomllib.loads(config_text)
    except tomllib.TOMLDecodeError as exc:
        return [Finding("config-syntax", Severity.ERROR, f"config.toml is not valid TOML: {exc}")]
    version = config.get("version", 1)
    if version not in _CRI_TABLES:
        return [Finding("config-version", Severity.ERROR, f"unknown config.toml version {version!r}: want 1, 2 or 3")]
    registry_path, images_path = _CRI_TABLES[version]
    registry = _table(config, registry_path)
    images = _table(config, images_path)
    findings: list[Finding] = []

    config_path = registry.get("config_path", "")
    if not isinstance(config_path, str) or not config_path:
        findings.append(_missing_config_path(registry_path, hosts_dir, "in config.toml"))
    elif hosts_dir.rstrip("/") not in [part.rstrip("/") for part in config_path.split(":")]:
        findings.append(
            Finding(
                "config-path",
                Severity.ERROR,
                f"containerd reads registry hosts from {config_path!r}, not from {hosts_dir!r} where the mirror "
                f"configuration is written: set {_key(registry_path, 'config_path')} = {hosts_dir!r}, or point "
                "`spegel configuration --containerd-registry-config-path` at containerd's directory",
            )
        )
    if registry.get("mirrors"):
        findings.append(
            Finding(
                "registry-mirrors",
                Severity.ERROR,
                f"remove {_key(registry_path, 'mirrors')}: it is deprecated, cannot be combined with config_path "
                "(containerd refuses to start), and bypasses hosts.toml",
            )
        )
    if images.get("discard_unpacked_layers") is True:
        findings.append(
            Finding(
                "discard-unpacked-layers",
                Severity.ERROR,
                f"set {_key(images_path, 'discard_unpacked_layers')} = false: with it on, containerd deletes layers "
                "after unpacking them, so this node has no content to share",
            )
        )
    imports = config.get("imports") or []
    if imports:
        findings.append(
            Finding(
                "config-imports",
                Severity.WARNING,
                f"config.toml imports {', '.join(map(str, imports))}: settings there override the main file "
                "and were not checked",
            )
        )
    return findings


def check_containerd(config_text: str | None, version: str, hosts_dir: str = DEFAULT_HOSTS_DIR) -> list[Finding]:
    """All checks: the version, then the configuration. An empty list means all is well."""
    return check_version(version) + check_config(config_text, hosts_dir)


def run_preflight(
    version: str, config_file: str | Path = DEFAULT_CONFIG_FILE, hosts_dir: str = DEFAULT_HOSTS_DIR
) -> list[Finding]:
    """Read `config_file` (a missing file means containerd's defaults) and check it with `version`.

    An unreadable file (permissions, a directory) is reported as a finding, not raised.
    """
    try:
        text: str | None = Path(config_file).read_text(encoding="utf-8")
    except FileNotFoundError:
        text = None
    except (OSError, UnicodeDecodeError) as exc:
        return [*check_version(version), Finding("config-read", Severity.ERROR, f"cannot read {config_file}: {exc}")]
    return check_containerd(text, version, hosts_dir)


def has_errors(findings: Sequence[Finding]) -> bool:
    """True if any finding means the mirror cannot work."""
    return any(finding.severity is Severity.ERROR for finding in findings)


def _missing_config_path(table: Sequence[str], hosts_dir: str, why: str) -> Finding:
    return Finding(
        "config-path",
        Severity.ERROR,
        f"containerd does not read hosts.toml files: {_key(table, 'config_path')} is empty ({why}); "
        f"set it to {hosts_dir!r} and restart containerd",
    )


def _table(config: Mapping[str, Any], path: Sequence[str]) -> Mapping[str, Any]:
    node: Any = config
    for name in path:
        node = node.get(name) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def _key(table: Sequence[str], name: str) -> str:
    return "[" + ".".join(f'"{part}"' if "." in part else part for part in table) + f"] {name}"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m spegel.preflight --containerd-version "$(containerd --version)" [--config FILE] [--hosts-dir DIR]`:
    prints one line per finding; exit status 1 when any is an error, 0 otherwise."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m spegel.preflight", description="Check a node's containerd.")
    parser.add_argument("--containerd-version", required=True, help="e.g. the output of `containerd --version`")
    parser.add_argument("--config", default=DEFAULT_CONFIG_FILE, help=f"default: {DEFAULT_CONFIG_FILE}")
    parser.add_argument(
        "--hosts-dir", default=DEFAULT_HOSTS_DIR, help=f"containerd's view (default: {DEFAULT_HOSTS_DIR})"
    )
    args = parser.parse_args(argv)
    findings = run_preflight(args.containerd_version, args.config, args.hosts_dir)
    for finding in findings:
        print(finding)
    if not findings:
        print("ok: containerd is ready for the mirror")
    return 1 if has_errors(findings) else 0


if __name__ == "__main__":
    raise SystemExit(main())
