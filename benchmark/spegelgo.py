"""The real Spegel (Go, github.com/spegel-org/spegel) as the `spegel-go` benchmark mode.

The harness never downloads or builds it: the user builds the binary (benchmark/README.md says how) and names
it with `--spegel-go-binary` or `$SPEGEL_GO_BINARY`. Without it the mode is left out of the run with a one-line
note (`select_modes`).

Spegel's static bootstrap needs each peer's libp2p id (`/ip4/A/tcp/P/p2p/ID`), and Spegel keeps its key in
`DATA_DIR/private.key` (Ed25519, PKCS#8 PEM), so the harness makes every node's key before starting it
(`write_identity`) and gives every node the others' ids. The flag names are Spegel's own (`main.go`:
`RegistryCmd`, `ConfigurationCmd`).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from benchmark.scenario import Scenario

MODE = "spegel-go"
ENVIRONMENT = "SPEGEL_GO_BINARY"
KEY_FILE = "private.key"
# DER of PKCS#8 PrivateKeyInfo for Ed25519 (RFC 8410) up to the 32-byte seed
_PKCS8_ED25519_PREFIX = bytes.fromhex("302e020100300506032b657004220420")


class SpegelGoError(ValueError):
    """The binary given for `spegel-go` cannot be used; the message says why."""


def find_binary(flag: str | None) -> Path | None:
    """The Spegel binary from the flag, else `$SPEGEL_GO_BINARY`, else None. A path given that is not an
    executable file raises `SpegelGoError`."""
    given = flag or os.environ.get(ENVIRONMENT)
    if not given:
        return None
    path = Path(given)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise SpegelGoError(f"spegel-go binary {path} is not an executable file")
    return path.resolve()


def select_modes(scenario: Scenario, binary: Path | None) -> tuple[Scenario, str]:
    """The scenario to run, and a one-line note when `spegel-go` had to be left out (no binary, or a backend
    that cannot run it); empty note when nothing changed."""
    if MODE not in scenario.modes:
        return scenario, ""
    if binary is not None and scenario.cluster.backend == "netns":
        return scenario, ""
    why = (
        f"no binary (give --spegel-go-binary or ${ENVIRONMENT})"
        if binary is None
        else f"the {scenario.cluster.backend} backend cannot run it"
    )
    modes = tuple(m for m in scenario.modes if m != MODE)
    if not modes:
        raise SpegelGoError(f"{MODE} is the scenario's only mode and is skipped: {why}")
    return dataclasses.replace(scenario, modes=modes), f"{MODE} skipped: {why}"


def pem_private_key(seed: bytes) -> bytes:
    """The Ed25519 private key with this 32-byte seed as PKCS#8 PEM, the form Spegel reads."""
    if len(seed) != 32:
        raise ValueError("an Ed25519 seed is 32 bytes")
    body = base64.encodebytes(_PKCS8_ED25519_PREFIX + seed).decode().replace("\n", "")
    return f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n".encode()


def peer_id(seed: bytes) -> str:
    """The libp2p peer id (base58) of the Ed25519 key with this seed."""
    from libp2p.crypto.ed25519 import Ed25519PrivateKey  # libp2p is slow to import: only runs need it
    from libp2p.peer.id import ID

    return ID.from_pubkey(Ed25519PrivateKey.from_bytes(seed).get_public_key()).to_base58()


def write_identity(data_dir: Path) -> str:
    """Write a fresh key to `data_dir/private.key` (mode 0600) and return its peer id."""
    seed = secrets.token_bytes(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem_private_key(seed))
    return peer_id(seed)


@dataclasses.dataclass(frozen=True)
class NodeAddresses:
    """Where one node's Spegel listens, and its libp2p id."""

    registry_addr: str  # HOST:PORT
    metrics_addr: str
    router_addr: str
    peer_id: str

    @property
    def bootstrap(self) -> str:
        host, port = self.router_addr.rsplit(":", 1)
        return f"/ip4/{host}/tcp/{port}/p2p/{self.peer_id}"


def registry_args(
    node: NodeAddresses,
    peers: Sequence[NodeAddresses],
    *,
    containerd_sock: Path,
    content_path: Path,
    data_dir: Path,
    registry_url: str,
) -> list[str]:
    """`spegel registry` arguments for `node`: static bootstrap to `peers`, its containerd, mirroring only
    `registry_url`; everything else at Spegel's defaults (resolve timeout, retries, debug web)."""
    args = [
        "registry",
        "--registry-addr",
        node.registry_addr,
        "--metrics-addr",
        node.metrics_addr,
        "--router-addr",
        node.router_addr,
        "--data-dir",
        str(data_dir),
        "--containerd-sock",
        str(containerd_sock),
        "--containerd-content-path",
        str(content_path),
        "--mirrored-registries",
        registry_url,
        "--bootstrap-kind",
        "static",
    ]
    if peers:
        args += ["--static-bootstrap-peers", *(p.bootstrap for p in peers)]
    return args
