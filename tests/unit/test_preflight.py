"""Preflight checks of containerd's version and config.toml (pure)."""

from __future__ import annotations

import pytest

from spegel.preflight import (
    Finding,
    Severity,
    check_config,
    check_containerd,
    check_version,
    has_errors,
    main,
    parse_version,
    run_preflight,
)

HOSTS = "/etc/containerd/certs.d"

GOOD_V3 = """
version = 3
[plugins.'io.containerd.cri.v1.images']
  discard_unpacked_layers = false
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = '/etc/containerd/certs.d'
"""

GOOD_V2 = """
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  discard_unpacked_layers = false
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
"""

GOOD_V1 = """
[plugins.cri.registry]
  config_path = "/etc/containerd/certs.d"
"""


def checks(findings: list[Finding]) -> list[str]:
    return [finding.check for finding in findings]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v2.1.9", (2, 1, 9)),
        ("2.1.9+unknown", (2, 1, 9)),
        ("containerd github.com/containerd/containerd/v2 2.1.9+unknown ", (2, 1, 9)),
        ("containerd containerd.io 1.7.27 05044ec0a9a75232cad458027ca83437aae3f4da", (1, 7, 27)),
        ("1.6", (1, 6, 0)),
        ("containerd://2.1.9", (2, 1, 9)),
        ("", None),
        ("containerd dev", None),
    ],
)
def test_parse_version(text: str, expected: tuple[int, int, int] | None) -> None:
    assert parse_version(text) == expected


@pytest.mark.parametrize("version", ["2.1.0", "v2.1.9", "2.2.0", "3.0.0"])
def test_recent_versions_pass(version: str) -> None:
    assert check_version(version) == []


@pytest.mark.parametrize("version", ["1.6.20", "1.7.27", "v2.0.5"])
def test_old_versions_are_errors_that_name_the_minimum(version: str) -> None:
    [finding] = check_version(version)
    assert finding.severity is Severity.ERROR
    assert ">= 2.1" in finding.message
    assert version.lstrip("v") in finding.message


def test_unreadable_version_is_an_error() -> None:
    [finding] = check_version("garbage")
    assert finding.check == "containerd-version"
    assert "'garbage'" in finding.message


@pytest.mark.parametrize("text", [GOOD_V3, GOOD_V2, GOOD_V1])
def test_good_configs_of_every_version_pass(text: str) -> None:
    assert check_config(text, HOSTS) == []


def test_config_path_may_list_several_directories() -> None:
    text = GOOD_V3.replace("'/etc/containerd/certs.d'", "'/etc/docker/certs.d:/etc/containerd/certs.d/'")
    assert check_config(text, HOSTS) == []


def test_missing_file_means_defaults_which_lack_config_path() -> None:
    [finding] = check_config(None, HOSTS)
    assert finding.check == "config-path"
    assert finding.severity is Severity.ERROR
    assert "io.containerd.cri.v1.images" in finding.message and HOSTS in finding.message


@pytest.mark.parametrize(
    ("text", "table"),
    [
        ("version = 3\n", '"io.containerd.cri.v1.images".registry'),
        (
            'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = ""\n',
            '"io.containerd.grpc.v1.cri"',
        ),
        ("[plugins.cri]\n", "plugins.cri.registry"),
    ],
)
def test_empty_config_path_names_the_key_of_that_config_version(text: str, table: str) -> None:
    [finding] = check_config(text, HOSTS)
    assert finding.check == "config-path"
    assert table in finding.message


def test_config_path_elsewhere_is_an_error_naming_both_directories() -> None:
    text = GOOD_V3.replace("/etc/containerd/certs.d", "/etc/other")
    [finding] = check_config(text, HOSTS)
    assert finding.check == "config-path"
    assert "/etc/other" in finding.message and HOSTS in finding.message


def test_k3s_hosts_dir_is_accepted_when_it_matches() -> None:
    k3s_dir = "/var/lib/rancher/k3s/agent/etc/containerd/certs.d"
    text = GOOD_V3.replace("/etc/containerd/certs.d", k3s_dir)
    assert check_config(text, k3s_dir) == []
    assert checks(check_config(text, HOSTS)) == ["config-path"]


@pytest.mark.parametrize(
    "text",
    [
        GOOD_V3.replace("discard_unpacked_layers = false", "discard_unpacked_layers = true"),
        GOOD_V2.replace("discard_unpacked_layers = false", "discard_unpacked_layers = true"),
        GOOD_V1 + "[plugins.cri.containerd]\ndiscard_unpacked_layers = true\n",
    ],
)
def test_discard_unpacked_layers_is_an_error(text: str) -> None:
    [finding] = check_config(text, HOSTS)
    assert finding.check == "discard-unpacked-layers"
    assert finding.severity is Severity.ERROR
    assert "discard_unpacked_layers = false" in finding.message


def test_deprecated_mirrors_beside_config_path_is_an_error() -> None:
    text = GOOD_V3 + (
        "[plugins.'io.containerd.cri.v1.images'.registry.mirrors.'docker.io']\nendpoint = ['https://mirror']\n"
    )
    assert checks(check_config(text, HOSTS)) == ["registry-mirrors"]


def test_imports_are_a_warning_only() -> None:
    [finding] = check_config('imports = ["/etc/containerd/conf.d/*.toml"]\n' + GOOD_V3, HOSTS)
    assert finding.check == "config-imports"
    assert finding.severity is Severity.WARNING
    assert not has_errors([finding])


def test_several_problems_are_all_reported() -> None:
    text = 'version = 3\n[plugins."io.containerd.cri.v1.images"]\ndiscard_unpacked_layers = true\n'
    assert checks(check_containerd(text, "1.7.0")) == ["containerd-version", "config-path", "discard-unpacked-layers"]


@pytest.mark.parametrize("text", ["version = [", "version = 3\nversion = 3\n", 'version = "3"\n', "version = 4\n"])
def test_bad_config_text_is_one_clear_error(text: str) -> None:
    [finding] = check_config(text, HOSTS)
    assert finding.severity is Severity.ERROR
    assert finding.check in {"config-syntax", "config-version"}


def test_wrongly_typed_tables_do_not_crash() -> None:
    text = 'version = 3\nplugins = "oops"\n'
    assert checks(check_config(text, HOSTS)) == ["config-path"]


def test_finding_text_names_severity_and_check() -> None:
    assert str(Finding("config-path", Severity.ERROR, "msg")) == "error: config-path: msg"


def test_run_preflight_reads_the_file(tmp_path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(GOOD_V3)
    assert run_preflight("2.1.9", config) == []
    assert checks(run_preflight("2.1.9", tmp_path / "absent.toml")) == ["config-path"]
    assert checks(run_preflight("2.1.9", tmp_path)) == ["config-read"]
    config.write_bytes(b"\xff\xfe")
    assert checks(run_preflight("1.0", config)) == ["containerd-version", "config-read"]


def test_main_prints_findings_and_fails_on_errors(tmp_path, capsys) -> None:
    config = tmp_path / "config.toml"
    config.write_text(GOOD_V3)
    assert main(["--containerd-version", "containerd 2.1.9", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith("ok:")
    config.write_text('imports = ["x.toml"]\n' + GOOD_V3)
    assert main(["--containerd-version", "2.1.9", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith("warning: config-imports:")
    assert main(["--containerd-version", "2.1.9", "--config", str(config), "--hosts-dir", "/elsewhere"]) == 1
    assert "error: config-path:" in capsys.readouterr().out
