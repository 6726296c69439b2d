"""containerd's registry host configuration: `<config path>/<registry>/hosts.toml` sending pulls to the mirror.

The pure part renders one `hosts.toml`: the `server` line for the real registry, then one `[host."URL"]` per
mirror target in the order given (containerd tries hosts in file order, then `server`), each with
`capabilities = ["pull", "resolve"]` (or only `"pull"` when tags must not be resolved by the mirror) and a
`dial_timeout`. With `prepend_existing` the hosts and settings of the registry's previous `hosts.toml` follow
ours. Without mirrored registries one `_default` file covers every registry that has no directory of its own.

The I/O part applies and restores a configuration directory:
- `apply` backs up the directory once (to `<config path>/_backup`, which containerd never reads: it is not a
  host name), then makes the directory the backup's content plus our files. Applying again, with other
  registries or targets, starts from the backup again: nothing of an earlier run is left, and the previous
  `hosts.toml` that `prepend_existing` keeps is always the user's, never ours.
- `restore` (`spegel cleanup`) puts the backup's content back and removes the backup.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import shutil
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from spegel import duration
from spegel.oci.reference import InvalidReference, validate_registry

DEFAULT_CONFIG_PATH = "/etc/containerd/certs.d"
DEFAULT_DIAL_TIMEOUT = "1s"
DEFAULT_HOST = "_default"
BACKUP_DIR = "_backup"
HOSTS_FILE = "hosts.toml"
# Docker Hub's images are named docker.io/..., its registry API is served by another host
DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://registry-1.docker.io"
HEADER = "# Written by `spegel configuration`; `spegel cleanup` restores the previous configuration.\n"

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class HostsConfigError(ValueError):
    """An unusable registry, mirror target, duration, or existing configuration file."""


@dataclass(frozen=True)
class MirroredRegistry:
    """A registry whose pulls go to the mirror: its directory name (`host[:port]`) and its real server URL."""

    name: str
    server: str

    @classmethod
    def parse(cls, text: str) -> MirroredRegistry:
        """`host[:port]` (served over HTTPS) or `http[s]://host[:port]`; `docker.io` is served by registry-1."""
        if "://" in text:
            url = _parse_url(text, "mirrored registry")
            name, server = url.netloc, f"{url.scheme}://{url.netloc}"
        else:
            name, server = text, f"https://{text}"
        try:
            validate_registry(name)
        except InvalidReference:
            raise HostsConfigError(f"invalid mirrored registry {text!r}: want HOST[:PORT] or a URL") from None
        if name == DOCKER_HUB:
            server = DOCKER_HUB_SERVER
        return cls(name, server)


def parse_mirror_target(text: str) -> str:
    """A mirror target URL `http[s]://host[:port]`, normalised without a trailing slash."""
    url = _parse_url(text, "mirror target")
    return f"{url.scheme}://{url.netloc}"


def _parse_url(text: str, what: str) -> SplitResult:
    try:
        url = urlsplit(text)
        url.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise HostsConfigError(f"invalid {what} {text!r}: want http(s)://HOST[:PORT]") from None
    if url.scheme not in ("http", "https") or not url.hostname or url.path.strip("/") or url.query or url.fragment:
        raise HostsConfigError(f"invalid {what} {text!r}: want http(s)://HOST[:PORT]")
    return url


def parse_duration(text: str) -> float:
    """Seconds of a positive Go duration (`1s`, `500ms`, `1m30s`); `HostsConfigError` otherwise."""
    try:
        seconds = duration.parse_duration(text)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise HostsConfigError(f"invalid duration {text!r}: want a positive Go duration such as 1s or 500ms")
    return seconds


def validate_duration(text: str) -> str:
    """`text` if it is a positive Go duration, else `HostsConfigError`."""
    parse_duration(text)
    return text


def render_hosts(
    server: str | None,
    mirror_targets: Sequence[str],
    *,
    resolve_tags: bool = True,
    dial_timeout: str = DEFAULT_DIAL_TIMEOUT,
    existing: Mapping[str, Any] | None = None,
) -> str:
    """The text of one `hosts.toml`: `server` (None for `_default`), then the mirror targets, then `existing`.

    `existing` is the parsed previous `hosts.toml` to keep after ours (`--prepend-existing`): its `server` and
    other top-level settings replace ours, its hosts follow ours in their order (a host that is one of our
    mirror targets is dropped: ours comes first with our settings).
    """
    if not mirror_targets:
        raise HostsConfigError("at least one mirror target is needed")
    validate_duration(dial_timeout)
    top: dict[str, Any] = {} if server is None else {"server": server}
    hosts: dict[str, Any] = {}
    capabilities = ["pull", "resolve"] if resolve_tags else ["pull"]
    for target in mirror_targets:
        hosts[target] = {"capabilities": capabilities, "dial_timeout": dial_timeout}
    if existing is not None:
        old_hosts = existing.get("host", {})
        if not isinstance(old_hosts, Mapping):
            raise HostsConfigError("the existing hosts.toml has a `host` that is not a table")
        top.update((key, value) for key, value in existing.items() if key != "host")
        for url, settings in old_hosts.items():
            hosts.setdefault(url, settings)
    return HEADER + render_toml({**top, "host": hosts})


def render_toml(document: Mapping[str, Any]) -> str:
    """TOML text for a document of the kinds `tomllib` returns (`tomllib.loads(render_toml(d)) == d`)."""
    lines: list[str] = []
    _emit_table(lines, (), document)
    return "\n".join(lines).strip("\n") + "\n"


def _emit_table(lines: list[str], path: tuple[str, ...], table: Mapping[str, Any]) -> None:
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
    if path and (scalars or not tables):
        lines.extend(["", "[" + ".".join(_key(k) for k in path) + "]"])
    indent = "  " if path else ""
    lines.extend(f"{indent}{_key(k)} = {_value(v)}" for k, v in scalars)
    for key, sub in tables:
        _emit_table(lines, (*path, key), sub)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    escaped = []
    for char in text:
        if char in ('"', "\\"):
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)  # str gives TOML's inf, -inf, nan
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise HostsConfigError(f"cannot write {type(value).__name__} to TOML")


def parse_hosts(text: str, source: str = HOSTS_FILE) -> dict[str, Any]:
    """A parsed `hosts.toml`; `HostsConfigError` naming `source` when it is not TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HostsConfigError(f"{source} is not valid TOML: {exc}") from None


def render_configuration(
    registries: Sequence[MirroredRegistry],
    mirror_targets: Sequence[str],
    *,
    resolve_tags: bool = True,
    dial_timeout: str = DEFAULT_DIAL_TIMEOUT,
    existing: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, str]:
    """Directory name → `hosts.toml` text for each registry, or for `_default` when `registries` is empty.

    `existing` maps a directory name to its previous parsed `hosts.toml` (given only with `prepend_existing`).
    """
    existing = existing or {}
    targets: list[tuple[str, str | None]] = [(r.name, r.server) for r in registries] or [(DEFAULT_HOST, None)]
    return {
        name: render_hosts(
            server, mirror_targets, resolve_tags=resolve_tags, dial_timeout=dial_timeout, existing=existing.get(name)
        )
        for name, server in targets
    }


def apply(
    config_path: Path,
    registries: Sequence[MirroredRegistry],
    mirror_targets: Sequence[str],
    *,
    resolve_tags: bool = True,
    dial_timeout: str = DEFAULT_DIAL_TIMEOUT,
    prepend_existing: bool = False,
) -> list[Path]:
    """Configure containerd's registry hosts under `config_path`; returns the files written.

    Everything is rendered (and checked) before anything on disk changes. The first run backs the directory up;
    every run rebuilds it as the backup's content plus our `hosts.toml` files, each replaced atomically.
    """
    config_path = Path(config_path)
    backup = config_path / BACKUP_DIR
    existing: dict[str, dict[str, Any]] = {}
    if prepend_existing:
        source = backup if backup.is_dir() else config_path
        for name in [r.name for r in registries] or [DEFAULT_HOST]:
            old = source / name / HOSTS_FILE
            if old.is_file():
                existing[name] = parse_hosts(old.read_text(), str(old))
    files = render_configuration(
        registries, mirror_targets, resolve_tags=resolve_tags, dial_timeout=dial_timeout, existing=existing
    )
    config_path.mkdir(parents=True, exist_ok=True)
    if not backup.is_dir():
        _back_up(config_path, backup)
    _copy_back(backup, config_path)
    written = []
    for name, text in files.items():
        path = config_path / name / HOSTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{HOSTS_FILE}.spegel-partial")
        partial.write_text(text)
        os.replace(partial, path)
        written.append(path)
    return written


def restore(config_path: Path) -> bool:
    """Put back the configuration `apply` backed up and remove the backup; False when there is no backup."""
    config_path = Path(config_path)
    backup = config_path / BACKUP_DIR
    if not backup.is_dir():
        return False
    _copy_back(backup, config_path)
    shutil.rmtree(backup)
    return True


def _back_up(config_path: Path, backup: Path) -> None:
    """Copy the directory's content to `backup`, made whole under another name first, then renamed."""
    partial = config_path / f"{BACKUP_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for entry in _entries(config_path):
        _copy(entry, partial / entry.name)
    partial.rename(backup)


def _copy_back(backup: Path, config_path: Path) -> None:
    """Make `config_path` (all but the backup) hold exactly the backup's content."""
    for entry in _entries(config_path):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in backup.iterdir():
        _copy(entry, config_path / entry.name)


def _entries(config_path: Path) -> list[Path]:
    return [e for e in config_path.iterdir() if e.name not in (BACKUP_DIR, f"{BACKUP_DIR}.partial")]


def _copy(source: Path, destination: Path) -> None:
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, destination, symlinks=True)
    else:
        shutil.copy2(source, destination, follow_symlinks=False)
