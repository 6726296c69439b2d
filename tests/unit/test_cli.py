"""The `spegel` command line: flags, environment variables and value grammars, parsed in-process; plus two
real-process runs (a taken address: one line on stderr, exit 2, no traceback)."""

from __future__ import annotations

import logging
import socket
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from benchmark.daemons import spegel_command
from spegel import __version__
from spegel.cli import build_parser, main, registry_settings, router_options
from spegel.flags import duration, env_name
from spegel.store.containerd.watcher import Mode

TIMEOUT = 30  # seconds; a command that should fail at once but starts serving is killed by then


@pytest.fixture(autouse=True)
def _keep_root_logger() -> Iterator[None]:
    """`main` points the root logger at this test's stderr; give later tests theirs back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def parse(*argv: str, environ: Mapping[str, str] | None = None) -> Any:
    return build_parser(environ or {}).parse_args(list(argv))


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str, environ: Mapping[str, str] | None = None) -> str:
    """The one line `spegel` prints for a usage error (and asserts exit status 2 and nothing else)."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv), environ or {})
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("spegel: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ((), "required"),
        (("--nope", "registry"), "--nope"),
        (("frobnicate",), "frobnicate"),
        (("registry", "--nope"), "--nope"),
        (("registry", "--registry-addr", "nonsense"), "nonsense"),
        (("registry", "--registry-addr", "127.0.0.1:99999"), "99999"),
        (("registry", "--registry-addr", "127.0.0.1:"), "127.0.0.1:"),
        (("registry", "--metrics-addr", "localhost"), "localhost"),
        (("registry", "--registry-addr"), "--registry-addr"),
        (("--log-level", "loud", "registry"), "loud"),
        (("registry", "--log-level", "loud"), "loud"),
        (("registry", "--mirror-resolve-timeout", "soon"), "soon"),
        (("registry", "--mirror-resolve-timeout", "5"), "'5'"),
        (("registry", "--mirror-resolve-timeout=-1s"), "-1s"),
        (("registry", "--mirror-resolve-retries", "0"), "0"),
        (("registry", "--router-record-ttl", "0"), "--router-record-ttl"),
        (("registry", "--resolve-tags=maybe"), "maybe"),
        (("registry", "--advertise", "everything"), "everything"),
        (("registry", "--registry-filters", "("), "regular expression"),
        (("configuration",), "--mirror-targets (or MIRROR_TARGETS)"),
        (("configuration", "--mirror-targets", "ftp://x"), "ftp://x"),
    ],
)
def test_bad_flags(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], fragment: str) -> None:
    assert fragment in usage_error(capsys, *argv)


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL (for --log-level)"),
        ({"MIRROR_RESOLVE_TIMEOUT": "20"}, "MIRROR_RESOLVE_TIMEOUT"),
        ({"RESOLVE_TAGS": "perhaps"}, "RESOLVE_TAGS"),
        ({"ROUTER": "carrier-pigeon"}, "ROUTER (for --router): invalid choice"),
        ({"ADVERTISE": "all"}, "ADVERTISE"),
        ({"REGISTRY_ADDR": "nowhere"}, "REGISTRY_ADDR"),
    ],
)
def test_bad_environment(capsys: pytest.CaptureFixture[str], environ: dict[str, str], fragment: str) -> None:
    assert fragment in usage_error(capsys, "registry", environ=environ)


def test_an_unused_commands_environment_is_not_read(tmp_path: Path) -> None:
    args = parse("configuration", "--mirror-targets", "http://127.0.0.1:5000", environ={"REGISTRY_ADDR": "junk"})
    assert args.mirror_targets == ["http://127.0.0.1:5000"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("20ms", 0.02), ("1.5s", 1.5), ("1m30s", 90.0), ("2h", 7200.0), ("1h1m1s", 3661.0), ("500us", 5e-4)],
)
def test_one_duration_grammar(text: str, seconds: float) -> None:
    assert duration(text) == pytest.approx(seconds)
    args = parse(
        "registry",
        *("--mirror-resolve-timeout", text, "--containerd-relist-interval", text),
        *("--router-rejoin", text, "--mirror-inflight-wait", text),
    )
    assert args.mirror_resolve_timeout == args.containerd_relist_interval == pytest.approx(seconds)
    assert args.router_rejoin == args.mirror_inflight_wait == pytest.approx(seconds)


def test_defaults_become_typed_settings() -> None:
    settings = registry_settings(parse("registry"))
    assert (settings.registry_addr, settings.metrics_addr) == ("0.0.0.0:5000", "0.0.0.0:9090")
    assert settings.mirror.resolve_timeout == 0.02 and settings.mirror.resolve_retries == 3
    assert settings.mirror.resolve_tags is True
    assert settings.containerd.advertise is Mode.INFLIGHT and settings.containerd.relist_interval == 60
    assert settings.containerd.namespace == "k8s.io"
    assert settings.router is not None and settings.router.record_ttl == 600 and settings.router.dht is True
    assert settings.debug_web is True
    assert registry_settings(parse("registry", "--router", "none")).router is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("--resolve-tags",), True),
        (("--resolve-tags=false",), False),
        (("--resolve-tags=FALSE",), False),
        (("--resolve-tags", "0"), False),
        (("--resolve-tags=true",), True),
        (("--no-resolve-tags",), False),
        ((), True),
    ],
)
def test_booleans(argv: tuple[str, ...], expected: bool) -> None:
    assert parse("registry", *argv).resolve_tags is expected


@pytest.mark.parametrize("level", ["DEBUG", "info", "Warn", "WARNING", "error"])
def test_log_levels_in_any_case(level: str) -> None:
    expected = {"warn": "warning"}.get(level.lower(), level.lower())
    assert parse("--log-level", level, "registry").log_level == expected
    assert parse("registry", f"--log-level={level}").log_level == expected
    assert parse("registry", environ={"LOG_LEVEL": level}).log_level == expected


@pytest.mark.parametrize(
    "argv",
    [
        ("--mirror-targets", "http://a:1", "http://b:2"),
        ("--mirror-targets", "http://a:1,http://b:2"),
        ("--mirror-targets", "http://a:1", "--mirror-targets", "http://b:2"),
    ],
)
def test_lists_space_comma_or_repeated(argv: tuple[str, ...]) -> None:
    args = parse("configuration", *argv, "--mirrored-registries", "docker.io", "ghcr.io")
    assert args.mirror_targets == ["http://a:1", "http://b:2"]
    assert [r.name for r in args.mirrored_registries] == ["docker.io", "ghcr.io"]


def test_regular_expressions_keep_their_commas() -> None:
    assert parse("registry", "--registry-filters", "a{1,3}", ":latest$").registry_filters == ["a{1,3}", ":latest$"]
    from_env = parse("registry", environ={"REGISTRY_FILTERS": '"a{1,3}",:latest$'}).registry_filters
    assert from_env == ["a{1,3}", ":latest$"]


def test_every_flag_reads_its_environment_variable() -> None:
    """Each flag's variable is its name in upper snake case (Spegel's rule) and is read when the flag is absent."""
    parser = build_parser({})
    for command in ("registry", "configuration", "cleanup"):
        flags = parser._commands[command]._flags
        assert {f.env for f in flags} == {env_name(f.option) for f in flags}
    environ = {"MIRROR_RESOLVE_RETRIES": "7", "DATA_DIR": "/d", "ROUTER_DHT": "false", "ADVERTISE": "layer"}
    args = parse("registry", environ=environ)
    assert (args.mirror_resolve_retries, args.data_dir, args.router_dht, args.advertise) == (7, "/d", False, Mode.LAYER)
    # the command line wins over the environment
    assert parse("registry", "--mirror-resolve-retries", "2", environ=environ).mirror_resolve_retries == 2


def test_mirrored_registries_filter_other_registries_tags() -> None:
    settings = registry_settings(parse("registry", "--mirrored-registries", "docker.io", "ghcr.io"))
    assert settings.mirrored_registries == ("docker.io", "ghcr.io")
    excludes = settings.mirror.filters.excludes
    assert not excludes("docker.io/library/nginx:1") and not excludes("ghcr.io/a/b:1")
    assert excludes("quay.io/a/b:1") and excludes("docker.io.evil/a:1")


def test_spegels_old_resolve_latest_tag_is_a_filter() -> None:
    assert not registry_settings(parse("registry")).mirror.filters.excludes("docker.io/library/nginx:latest")
    for settings in (
        registry_settings(parse("registry", "--resolve-latest-tag=false")),
        registry_settings(parse("registry", environ={"RESOLVE_LATEST_TAG": "false"})),
    ):
        assert settings.mirror.filters.excludes("docker.io/library/nginx:latest")
        assert not settings.mirror.filters.excludes("docker.io/library/nginx:1.27")


def test_http_bootstrap_peer_is_a_base_url(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("registry", "--bootstrap-kind", "http", "--http-bootstrap-peer", "http://10.0.0.1:5002/")
    assert router_options(args).http_bootstrap_url == "http://10.0.0.1:5002/id"
    args = parse("registry", environ={"HTTP_BOOTSTRAP_PEER": "http://10.0.0.1:5002"})
    assert router_options(args).http_bootstrap_url == "http://10.0.0.1:5002/id"
    argv = ("registry", "--http-bootstrap-peer", "http://a:1", "--http-bootstrap-url", "http://b:2/id")
    assert "mutually exclusive" in usage_error(capsys, *argv)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"], {})
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"spegel {__version__}\n"
    assert main(["version"], {}) == 0
    assert capsys.readouterr().out == f"spegel {__version__}\n"


def test_help_is_not_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["registry", "--help"], {})
    assert exited.value.code == 0
    out, err = capsys.readouterr()
    assert "--store" in out and "--mirror-resolve-timeout" in out and err == ""


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """A valid, empty OCI layout."""
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (tmp_path / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    return tmp_path


def test_unknown_store_kind(capsys: pytest.CaptureFixture[str], layout: Path) -> None:
    assert main(["registry", "--store", f"tarball:{layout}"], {}) == 2
    expected = f"spegel: error: unknown store 'tarball:{layout}': want containerd or oci-layout:DIR\n"
    assert capsys.readouterr().err == expected


def test_store_directory_that_is_not_a_layout(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["registry", "--store", f"oci-layout:{tmp_path / 'missing'}"], {}) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["registry", "--store", f"oci-layout:{tmp_path}"], {}) == 2
    assert "not an OCI image layout" in capsys.readouterr().err


@pytest.mark.parametrize("index", ["not json", "[]", '{"manifests": 5}', '{"manifests": [{"digest": "x"}]}'])
def test_store_with_a_broken_index(capsys: pytest.CaptureFixture[str], layout: Path, index: str) -> None:
    (layout / "index.json").write_text(index)
    assert main(["registry", "--store", f"oci-layout:{layout}"], {}) == 2
    err = capsys.readouterr().err
    assert err.startswith("spegel: error: ") and "index.json" in err and err.count("\n") == 1


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*spegel_command(), *args], capture_output=True, text=True, timeout=TIMEOUT, check=False)


@pytest.mark.parametrize("flag", ["--registry-addr", "--metrics-addr"])
def test_address_in_use(layout: Path, flag: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = {"--registry-addr": "127.0.0.1:0", "--metrics-addr": "127.0.0.1:0", flag: f"127.0.0.1:{port}"}
        flags = [x for kv in args.items() for x in kv]
        result = run_cli("registry", "--router", "none", "--store", f"oci-layout:{layout}", *flags)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("spegel: error: ")]
    assert errors == [f"spegel: error: cannot listen on 127.0.0.1:{port}: Address already in use"], result.stderr
    assert "Traceback" not in result.stderr


# Spegel's flags (main.go of spegel-org/spegel, v0.7) that this CLI accepts under the same name and variable.
SPEGEL_FLAGS = {
    "registry": [
        "--metrics-addr",
        "--containerd-sock",
        "--containerd-namespace",
        "--containerd-content-path",
        "--data-dir",
        "--router-addr",
        "--registry-addr",
        "--mirrored-registries",
        "--registry-filters",
        "--mirror-resolve-timeout",
        "--mirror-resolve-retries",
        "--debug-web-enabled",
        "--bootstrap-kind",
        "--http-bootstrap-peer",
        "--dns-bootstrap-domain",
        "--http-bootstrap-addr",
        "--http-bootstrap-url",
        "--static-bootstrap-peers",
    ],
    "configuration": [
        "--containerd-registry-config-path",
        "--mirrored-registries",
        "--mirror-targets",
        "--resolve-tags",
        "--prepend-existing",
    ],
    "cleanup": ["--containerd-registry-config-path"],
}


def test_spegels_flags_are_accepted_and_in_the_migration_table() -> None:
    parser = build_parser({})
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    migration = doc[doc.index("## Migrating from Spegel") :]
    migration = migration[: migration.index("\n## ")]
    for command, flags in SPEGEL_FLAGS.items():
        options = {o for action in parser._commands[command]._actions for o in action.option_strings}
        assert not set(flags) - options, command
        assert not [f for f in flags if f"`{f}`" not in migration and f"{command} {f}`" not in migration]
