"""The `spegel` command line, run as a user runs it: a bad flag or store is one line on stderr and exit 2."""

import socket
import subprocess
from pathlib import Path

import pytest

from benchmark.daemons import spegel_command

TIMEOUT = 30  # seconds; a command that should fail at once but starts serving is killed by then


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*spegel_command(), *args], capture_output=True, text=True, timeout=TIMEOUT, check=False)


def assert_one_line_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("spegel: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """A valid, empty OCI layout."""
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (tmp_path / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    return tmp_path


@pytest.mark.parametrize(
    ("args", "fragment"),
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
        (("registry", "--mirror-resolve-retries", "0"), "0"),
    ],
)
def test_bad_flags(args: tuple[str, ...], fragment: str) -> None:
    assert_one_line_usage_error(run_cli(*args), fragment)


def test_unknown_store_kind(layout: Path) -> None:
    assert_one_line_usage_error(run_cli("registry", "--store", f"tarball:{layout}"), "unknown store")


def test_store_directory_that_is_not_a_layout(tmp_path: Path) -> None:
    assert_one_line_usage_error(run_cli("registry", "--store", f"oci-layout:{tmp_path / 'missing'}"), "missing")
    assert_one_line_usage_error(run_cli("registry", "--store", f"oci-layout:{tmp_path}"), "not an OCI image layout")


@pytest.mark.parametrize("index", ["not json", "[]", '{"manifests": 5}', '{"manifests": [{"digest": "x"}]}'])
def test_store_with_a_broken_index(layout: Path, index: str) -> None:
    (layout / "index.json").write_text(index)
    assert_one_line_usage_error(run_cli("registry", "--store", f"oci-layout:{layout}"), "index.json")


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


def test_help_is_not_an_error() -> None:
    result = run_cli("registry", "--help")
    assert result.returncode == 0
    assert "--store" in result.stdout
    assert result.stderr == ""
