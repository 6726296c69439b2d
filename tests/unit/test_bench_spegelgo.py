"""The `spegel-go` mode's pure parts: which modes run, the node keys Spegel (Go) reads, its command lines."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID

from benchmark import spegelgo
from benchmark.scenario import from_dict

BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _scenario(modes: list[str], backend: str = "netns"):  # type: ignore[no-untyped-def]
    return from_dict(
        {
            "name": "t",
            "modes": modes,
            "cluster": {"nodes": 2, "backend": backend},
            "images": [{"name": "i", "size": "1MiB"}],
        }
    )


def test_without_a_binary_the_mode_is_left_out_with_a_note() -> None:
    scenario, note = spegelgo.select_modes(_scenario(["upstream", "spegel-go", "inflight"]), None)
    assert scenario.modes == ("upstream", "inflight")
    assert note == "spegel-go skipped: no binary (give --spegel-go-binary or $SPEGEL_GO_BINARY)"
    kept, note = spegelgo.select_modes(_scenario(["upstream", "spegel-go"]), Path("/bin/true"))
    assert kept.modes == ("upstream", "spegel-go") and note == ""
    on_kind, note = spegelgo.select_modes(_scenario(["upstream", "spegel-go"], "kind"), Path("/bin/true"))
    assert on_kind.modes == ("upstream",) and "kind backend" in note
    with pytest.raises(spegelgo.SpegelGoError, match="only mode"):
        spegelgo.select_modes(_scenario(["spegel-go"]), None)


def test_the_binary_comes_from_the_flag_then_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(spegelgo.ENVIRONMENT, raising=False)
    assert spegelgo.find_binary(None) is None
    monkeypatch.setenv(spegelgo.ENVIRONMENT, "/bin/true")
    assert spegelgo.find_binary(None) == Path("/bin/true").resolve()
    plain = tmp_path / "spegel"
    plain.write_text("not executable")
    with pytest.raises(spegelgo.SpegelGoError, match="not an executable file"):
        spegelgo.find_binary(str(plain))


def _base58_decode(text: str) -> bytes:
    number = 0
    for char in text:
        number = number * 58 + BASE58.index(char)
    zeros = len(text) - len(text.lstrip("1"))  # each leading "1" is a zero byte
    return bytes(zeros) + number.to_bytes((number.bit_length() + 7) // 8, "big")


def test_the_key_is_pkcs8_pem_and_the_peer_id_is_the_identity_hash_of_its_public_key() -> None:
    seed = bytes(range(32))
    pem = spegelgo.pem_private_key(seed).decode()
    lines = pem.splitlines()
    assert lines[0] == "-----BEGIN PRIVATE KEY-----" and lines[-1] == "-----END PRIVATE KEY-----"
    der = base64.b64decode("".join(lines[1:-1]))
    assert der == bytes.fromhex("302e020100300506032b657004220420") + seed  # RFC 8410 PrivateKeyInfo
    public = Ed25519PrivateKey.from_bytes(seed).get_public_key().to_bytes()
    peer = spegelgo.peer_id(seed)
    # identity multihash (0x00, length 36) of the protobuf PublicKey {Type: Ed25519 (1), Data: 32 bytes}
    assert _base58_decode(peer) == bytes.fromhex("002408011220") + public
    assert peer.startswith("12D3KooW") and ID.from_base58(peer).to_base58() == peer
    with pytest.raises(ValueError):
        spegelgo.pem_private_key(b"short")


def test_write_identity_keeps_the_key_private(tmp_path: Path) -> None:
    peer = spegelgo.write_identity(tmp_path / "data")
    key = tmp_path / "data" / spegelgo.KEY_FILE
    assert (key.stat().st_mode & 0o777) == 0o600
    seed = base64.b64decode("".join(key.read_text().splitlines()[1:-1]))[-32:]
    assert spegelgo.peer_id(seed) == peer


def test_registry_args_bootstrap_from_every_other_node_by_id() -> None:
    nodes = [
        spegelgo.NodeAddresses(f"198.18.0.{i}:5000", f"198.18.0.{i}:9090", f"198.18.0.{i}:5001", f"id{i}")
        for i in (2, 3, 4)
    ]
    args = spegelgo.registry_args(
        nodes[0],
        nodes[1:],
        containerd_sock=Path("/run/c.sock"),
        content_path=Path("/c"),
        data_dir=Path("/d"),
        registry_url="http://198.18.0.1:5000",
    )
    assert args[0] == "registry"
    flags = dict(zip(args[1:-3:2], args[2:-3:2], strict=True))
    assert flags == {
        "--registry-addr": "198.18.0.2:5000",
        "--metrics-addr": "198.18.0.2:9090",
        "--router-addr": "198.18.0.2:5001",
        "--data-dir": "/d",
        "--containerd-sock": "/run/c.sock",
        "--containerd-content-path": "/c",
        "--mirrored-registries": "http://198.18.0.1:5000",
        "--bootstrap-kind": "static",
    }
    assert args[-3:] == [
        "--static-bootstrap-peers",
        "/ip4/198.18.0.3/tcp/5001/p2p/id3",
        "/ip4/198.18.0.4/tcp/5001/p2p/id4",
    ]


def test_a_binary_that_is_not_executable_is_refused_in_one_line(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        'name = "s"\nmodes = ["spegel-go"]\n[cluster]\nnodes = 2\n[[images]]\nname = "i"\nsize = "1MiB"\n'
    )
    missing = tmp_path / "no-such-spegel"
    argv = [sys.executable, "-m", "benchmark", "run", str(scenario), "--spegel-go-binary", str(missing)]
    env = {k: v for k, v in os.environ.items() if k != spegelgo.ENVIRONMENT}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert result.returncode == 2
    assert result.stderr == f"benchmark: error: spegel-go binary {missing} is not an executable file\n"


def test_the_mode_is_a_scenario_mode() -> None:
    assert _scenario(["spegel-go", "layer"]).modes == ("spegel-go", "layer")
