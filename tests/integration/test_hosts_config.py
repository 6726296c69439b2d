"""containerd 2.1 honours the hosts.toml that `spegel configuration` writes, and `spegel cleanup` undoes it.

Real parts only: a CNCF distribution registry as the upstream, `spegel registry` (CLI process) as the mirror,
containerd 2.1.9 pulling as the kubelet does (CRI `PullImage`, which reads the `config_path` of containerd's
configuration) and with `ctr images pull --hosts-dir` (transfer service), and the `spegel` CLI itself.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from benchmark.daemons import Containerd, Registry, Spegel, spegel_command
from benchmark.images import ImageSpec, build, push
from spegel.store.containerd.client import ContainerdClient

pytestmark = pytest.mark.slow


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _spegel(*args: str) -> None:
    result = subprocess.run([*spegel_command(), *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def _manifest_requests(records: list[dict], repository: str) -> list[tuple[str, int]]:
    return [(r["method"], r["status"]) for r in records if r["path"].startswith(f"/v2/{repository}/manifests/")]


class Puller:
    """Pulls and removes images in a containerd instance, through CRI or through `ctr`."""

    def __init__(self, kind: str, containerd: Containerd) -> None:
        self.kind, self.containerd = kind, containerd

    async def pull(self, reference: str) -> None:
        if self.kind == "cri":
            async with ContainerdClient(str(self.containerd.socket)) as client:
                await client.pull_image(reference, timeout=60)
        else:
            self.containerd.ctr("images", "pull", "--hosts-dir", str(self.containerd.hosts_dir), reference)

    async def remove(self, reference: str) -> None:
        if self.kind == "cri":
            async with ContainerdClient(str(self.containerd.socket)) as client:
                await client.remove_image(reference)
        else:
            self.containerd.ctr("images", "rm", reference)


@pytest.mark.parametrize("puller", ["cri", "ctr"])
async def test_pull_goes_to_mirror_first_falls_back_and_cleanup_restores(
    puller: str,
    tmp_path: Path,
    upstream_registry: Registry,
    spegel_registry_factory: Callable[..., Spegel],
    containerd_factory: Callable[..., Containerd],
) -> None:
    upstream = upstream_registry
    # the upstream holds up/only; the mirror holds mirror/only under the upstream's name
    async with httpx.AsyncClient() as client:
        await push(build(ImageSpec((200_000,), seed=301)), client, upstream.url, "up/only", "v1")
    build(ImageSpec((300_000,), seed=302)).to_layout(tmp_path / "layout", f"{upstream.address}/mirror/only:v1")
    mirror = spegel_registry_factory(f"oci-layout:{tmp_path / 'layout'}")

    containerd = containerd_factory()
    pulls = Puller(puller, containerd)

    # the user's configuration before spegel: a hosts.toml for the upstream, and another registry's directory
    certs = containerd.hosts_dir
    (certs / upstream.address).mkdir(parents=True)
    (certs / upstream.address / "hosts.toml").write_text(f'server = "{upstream.url}"\n')
    (certs / "ghcr.io").mkdir()
    (certs / "ghcr.io" / "hosts.toml").write_text('server = "https://ghcr.io"\n')
    before = _tree(certs)

    _spegel(
        "configuration",
        "--containerd-registry-config-path",
        str(certs),
        "--mirrored-registries",
        upstream.url,
        "--mirror-targets",
        mirror.url,
    )

    # only the mirror has this image: the pull succeeds only if containerd asked the mirror
    await pulls.pull(f"{upstream.address}/mirror/only:v1")
    assert ("HEAD", 200) in _manifest_requests(mirror.access_log(), "mirror/only")
    assert all("/v2/mirror/only/" not in e.path for e in upstream.access_log())
    ns = f"ns={upstream.address.replace(':', '%3A')}"
    assert all(r["query"] == ns for r in mirror.access_log() if r["path"].startswith("/v2/"))

    # the mirror answers 404 for this one: containerd falls back to the upstream
    await pulls.pull(f"{upstream.address}/up/only:v1")
    assert ("HEAD", 404) in _manifest_requests(mirror.access_log(), "up/only")
    upstream_pulls = [
        (e.method, e.status) for e in upstream.access_log() if e.path.startswith("/v2/up/only/manifests/")
    ]
    assert ("HEAD", 200) in upstream_pulls

    _spegel("cleanup", "--containerd-registry-config-path", str(certs))
    assert _tree(certs) == before

    # restored: a new pull resolves at the upstream only, the mirror sees nothing more
    mirror_seen = len(mirror.access_log())
    await pulls.remove(f"{upstream.address}/up/only:v1")
    await pulls.pull(f"{upstream.address}/up/only:v1")
    assert len(mirror.access_log()) == mirror_seen
    assert len([e for e in upstream.access_log() if "/up/only/manifests/" in e.path]) > len(upstream_pulls)
