"""Rendering of containerd's hosts.toml, and apply/restore round trips on a real directory."""

from __future__ import annotations

import datetime
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spegel.cli import main
from spegel.hostsconfig import (
    BACKUP_DIR,
    HEADER,
    HostsConfigError,
    MirroredRegistry,
    apply,
    parse_duration,
    parse_mirror_target,
    render_configuration,
    render_hosts,
    render_toml,
    restore,
)

MIRROR = "http://127.0.0.1:5000"


def test_mirror_targets_first_with_pull_and_resolve() -> None:
    text = render_hosts("https://ghcr.io", [MIRROR, "http://10.0.0.2:5000"])
    assert text.startswith(HEADER)
    doc = tomllib.loads(text)
    assert doc["server"] == "https://ghcr.io"
    assert list(doc["host"]) == [MIRROR, "http://10.0.0.2:5000"]
    for settings in doc["host"].values():
        assert settings == {"capabilities": ["pull", "resolve"], "dial_timeout": "1s"}
    # containerd reads hosts in file order: the mirror's table comes before anything else
    assert text.index(f'[host."{MIRROR}"]') < text.index('[host."http://10.0.0.2:5000"]')


def test_no_resolve_tags_and_dial_timeout() -> None:
    doc = tomllib.loads(render_hosts(None, [MIRROR], resolve_tags=False, dial_timeout="250ms"))
    assert "server" not in doc
    assert doc["host"][MIRROR] == {"capabilities": ["pull"], "dial_timeout": "250ms"}


def test_default_when_no_registries() -> None:
    files = render_configuration([], [MIRROR])
    assert list(files) == ["_default"]
    assert "server" not in tomllib.loads(files["_default"])


def test_one_file_per_registry_with_its_server() -> None:
    registries = [MirroredRegistry.parse(r) for r in ("docker.io", "ghcr.io", "http://127.0.0.1:5001")]
    files = render_configuration(registries, [MIRROR])
    assert list(files) == ["docker.io", "ghcr.io", "127.0.0.1:5001"]
    servers = [tomllib.loads(text)["server"] for text in files.values()]
    assert servers == ["https://registry-1.docker.io", "https://ghcr.io", "http://127.0.0.1:5001"]


def test_prepend_existing_keeps_old_hosts_after_ours() -> None:
    existing = tomllib.loads(
        'server = "https://internal.example"\nskip_verify = true\n'
        '[host."https://cache.example"]\ncapabilities = ["pull"]\n[host."https://cache.example".header]\nx = ["1"]\n'
        f'[host."{MIRROR}"]\ncapabilities = ["push"]\n'
    )
    doc = tomllib.loads(render_hosts("https://ghcr.io", [MIRROR], existing=existing))
    assert doc["server"] == "https://internal.example"
    assert doc["skip_verify"] is True
    assert list(doc["host"]) == [MIRROR, "https://cache.example"]
    assert doc["host"][MIRROR]["capabilities"] == ["pull", "resolve"]
    assert doc["host"]["https://cache.example"] == {"capabilities": ["pull"], "header": {"x": ["1"]}}


@pytest.mark.parametrize(
    ("text", "seconds"), [("1s", 1.0), ("500ms", 0.5), ("1m30s", 90.0), ("1.5h", 5400.0), ("20us", 2e-5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "0s", "-1s", "1 s", "1sec", "s", "1s2"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(HostsConfigError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    "text", ["127.0.0.1:5000", "ftp://x", "http://", "http://h/path", "http://h?q=1", "http://h:x"]
)
def test_bad_mirror_targets(text: str) -> None:
    with pytest.raises(HostsConfigError, match="invalid mirror target"):
        parse_mirror_target(text)


def test_mirror_target_normalised() -> None:
    assert parse_mirror_target("http://127.0.0.1:5000/") == MIRROR


@pytest.mark.parametrize("text", ["UPPER_case!", "https://", "a b", "https://x/y"])
def test_bad_registries(text: str) -> None:
    with pytest.raises(HostsConfigError, match="invalid mirrored registry"):
        MirroredRegistry.parse(text)


def test_no_mirror_targets_is_an_error() -> None:
    with pytest.raises(HostsConfigError, match="mirror target"):
        render_hosts(None, [])


_keys = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=8)
_scalars = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(st.characters(codec="utf-8"), max_size=12)
    | st.datetimes(timezones=st.just(datetime.UTC))
    | st.dates()
)
_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3), max_leaves=8
)


@given(st.dictionaries(_keys, _values, max_size=5))
def test_render_toml_round_trips(document: dict) -> None:
    assert tomllib.loads(render_toml(document)) == document


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and BACKUP_DIR not in p.relative_to(root).parts[:1]
    }


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    root = tmp_path / "certs.d"
    (root / "ghcr.io").mkdir(parents=True)
    (root / "ghcr.io" / "hosts.toml").write_text('server = "https://ghcr.io"\n[host."https://old.example"]\n')
    (root / "ghcr.io" / "ca.crt").write_text("CERT")
    (root / "quay.io").mkdir()
    (root / "quay.io" / "hosts.toml").write_text('server = "https://quay.io"\n')
    return root


def test_apply_then_restore_round_trip(certs: Path) -> None:
    before = _tree(certs)
    registries = [MirroredRegistry.parse("ghcr.io"), MirroredRegistry.parse("docker.io")]
    written = apply(certs, registries, [MIRROR])
    assert written == [certs / "ghcr.io" / "hosts.toml", certs / "docker.io" / "hosts.toml"]
    assert MIRROR in (certs / "ghcr.io" / "hosts.toml").read_text()
    assert "old.example" not in (certs / "ghcr.io" / "hosts.toml").read_text()
    assert (certs / "ghcr.io" / "ca.crt").read_text() == "CERT"
    assert (certs / "quay.io" / "hosts.toml").read_text() == before["quay.io/hosts.toml"].decode()
    assert _tree(certs / BACKUP_DIR) == before
    assert restore(certs) is True
    assert _tree(certs) == before
    assert not (certs / BACKUP_DIR).exists()
    assert restore(certs) is False


def test_backup_is_taken_once_and_reapply_starts_from_it(certs: Path) -> None:
    before = _tree(certs)
    apply(certs, [MirroredRegistry.parse("ghcr.io")], [MIRROR], prepend_existing=True)
    apply(certs, [MirroredRegistry.parse("docker.io")], ["http://127.0.0.1:6000"], prepend_existing=True)
    assert _tree(certs / BACKUP_DIR) == before
    # the second run's configuration only: ghcr.io is the user's again, docker.io points at the new target
    assert (certs / "ghcr.io" / "hosts.toml").read_bytes() == before["ghcr.io/hosts.toml"]
    assert list(tomllib.loads((certs / "docker.io" / "hosts.toml").read_text())["host"]) == ["http://127.0.0.1:6000"]
    restore(certs)
    assert _tree(certs) == before


def test_prepend_existing_reads_the_users_file_not_ours(certs: Path) -> None:
    for _ in range(3):
        apply(certs, [MirroredRegistry.parse("ghcr.io")], [MIRROR], prepend_existing=True)
    doc = tomllib.loads((certs / "ghcr.io" / "hosts.toml").read_text())
    assert list(doc["host"]) == [MIRROR, "https://old.example"]


def test_apply_to_missing_directory_and_default(tmp_path: Path) -> None:
    root = tmp_path / "new" / "certs.d"
    apply(root, [], [MIRROR], resolve_tags=False)
    assert tomllib.loads((root / "_default" / "hosts.toml").read_text())["host"][MIRROR]["capabilities"] == ["pull"]
    restore(root)
    assert list(root.iterdir()) == []


def test_invalid_existing_file_changes_nothing(certs: Path) -> None:
    (certs / "ghcr.io" / "hosts.toml").write_text("server = \n")
    before = _tree(certs)
    with pytest.raises(HostsConfigError, match="not valid TOML"):
        apply(certs, [MirroredRegistry.parse("ghcr.io")], [MIRROR], prepend_existing=True)
    assert _tree(certs) == before
    assert not (certs / BACKUP_DIR).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: --mirror-targets"),
        (["--mirror-targets", "127.0.0.1:5000"], "invalid mirror target"),
        (["--mirror-targets", MIRROR, "--dial-timeout", "5"], "invalid duration"),
        (["--mirror-targets", MIRROR, "--mirrored-registries", "bad!"], "invalid mirrored registry"),
    ],
)
def test_configuration_bad_flags_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["configuration", "--containerd-registry-config-path", str(tmp_path), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("spegel: error: ") and message in err
    assert list(tmp_path.iterdir()) == []


def test_configuration_and_cleanup_commands(certs: Path) -> None:
    before = _tree(certs)
    targets = f"{MIRROR},http://127.0.0.1:5001"
    common = ["--containerd-registry-config-path", str(certs)]
    args = ["--mirror-targets", targets, "--mirrored-registries", "ghcr.io", "--no-resolve-tags"]
    extra = ["--dial-timeout", "2s", "--mirrored-registries", "http://127.0.0.1:7000"]
    assert main(["configuration", *common, *args, *extra]) == 0
    doc = tomllib.loads((certs / "ghcr.io" / "hosts.toml").read_text())
    assert doc["host"] == {t: {"capabilities": ["pull"], "dial_timeout": "2s"} for t in targets.split(",")}
    assert tomllib.loads((certs / "127.0.0.1:7000" / "hosts.toml").read_text())["server"] == "http://127.0.0.1:7000"
    assert main(["cleanup", *common]) == 0
    assert _tree(certs) == before
    assert main(["cleanup", *common]) == 0  # nothing to restore is not an error


def test_configuration_reports_an_unreadable_existing_file(certs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (certs / "ghcr.io" / "hosts.toml").write_text("[[[")
    args = ["--mirror-targets", MIRROR, "--mirrored-registries", "ghcr.io", "--prepend-existing"]
    assert main(["configuration", "--containerd-registry-config-path", str(certs), *args]) == 1
    assert "not valid TOML" in capsys.readouterr().err
