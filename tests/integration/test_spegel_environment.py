"""A Spegel user's configuration works unchanged: `spegel registry` and `spegel configuration`, run as real
processes configured ONLY by the environment variables Spegel reads for the values its Helm chart sets (no flag
but the command name, an otherwise empty environment), do their job against a real containerd."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
from containerd_harness import plain_http_upstream, pushed

from benchmark.daemons import Containerd, Registry, Spegel, free_address, spegel_command
from benchmark.images import ImageSpec
from spegel.store.containerd.client import ContainerdClient


def clean_environment(variables: Mapping[str, str]) -> dict[str, str]:
    """`variables` and PATH, nothing else (no SPEGEL_*, no leftovers of the test runner)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **variables}


class EnvironmentSpegel(Spegel):
    """`spegel registry` with no flag at all: everything comes from `environ`."""

    def __init__(self, environ: Mapping[str, str], log_path: Path) -> None:
        super().__init__(["registry"], log_path, ready_url=f"http://{environ['REGISTRY_ADDR']}/readyz")
        self.environ = clean_environment(environ)
        self.registry_addr, self.metrics_addr = environ["REGISTRY_ADDR"], environ["METRICS_ADDR"]

    def command(self) -> list[str]:
        return ["env", "-i", *(f"{k}={v}" for k, v in self.environ.items()), *spegel_command(), "registry"]


async def test_registry_runs_on_spegels_helm_environment(
    tmp_path: Path, upstream_registry: Registry, containerd_factory: Callable[..., Containerd]
) -> None:
    image, name = await pushed(upstream_registry, ImageSpec((300_000,), seed=1301), "helm/app", "v1")
    containerd = containerd_factory()
    plain_http_upstream(containerd, upstream_registry)
    async with ContainerdClient(str(containerd.socket)) as client:
        await client.pull_image(name, timeout=120)
    # The values of Spegel's chart (charts/spegel/values.yaml defaults), on loopback ports and test paths.
    environ = {
        "LOG_LEVEL": "INFO",
        "MIRROR_RESOLVE_RETRIES": "3",
        "MIRROR_RESOLVE_TIMEOUT": "20ms",
        "REGISTRY_ADDR": free_address(),
        "ROUTER_ADDR": free_address(),
        "METRICS_ADDR": free_address(),
        "MIRRORED_REGISTRIES": f"{upstream_registry.address},docker.io",
        "CONTAINERD_SOCK": str(containerd.socket),
        "CONTAINERD_NAMESPACE": "k8s.io",
        "BOOTSTRAP_KIND": "dns",
        "DNS_BOOTSTRAP_DOMAIN": "localhost",
        "CONTAINERD_CONTENT_PATH": str(containerd.content_root),
        "DEBUG_WEB_ENABLED": "true",
        "DATA_DIR": str(tmp_path / "spegel-data"),
    }
    with EnvironmentSpegel(environ, tmp_path / "spegel.log") as mirror:
        base = f"{mirror.url}/v2/helm/app"
        layer = image.platforms[0].layers[0]
        async with httpx.AsyncClient(timeout=30) as http:
            top = (image.index or image.platforms[0].manifest).digest
            tag = await http.get(f"{base}/manifests/v1?ns={upstream_registry.address}", headers={"Accept": "*/*"})
            assert tag.status_code == 200 and tag.content == image.read_blob(top)
            blob = await http.get(f"{base}/blobs/{layer.digest}?ns={upstream_registry.address}")
            assert blob.status_code == 200 and blob.content == image.read_blob(layer.digest)
            metrics = (await http.get(f"http://{mirror.metrics_addr}/metrics")).text
        records = mirror.log_records()
    assert any((tmp_path / "spegel-data").iterdir())  # DATA_DIR: the node's identity was written there
    assert "spegel_mirror_requests_total" in metrics
    serving = [r for r in records if r.get("msg") == "serving"]
    assert serving and serving[0]["registry"] == [f"http://{environ['REGISTRY_ADDR']}"]
    assert {r["level"] for r in records} <= {"info", "warning", "error"}  # INFO: no debug lines


def test_configuration_runs_on_spegels_helm_environment(tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    environ = {
        "LOG_LEVEL": "INFO",
        "CONTAINERD_REGISTRY_CONFIG_PATH": str(certs),
        "MIRRORED_REGISTRIES": "docker.io,ghcr.io",
        "MIRROR_TARGETS": "http://127.0.0.1:30020,http://127.0.0.1:30021",
        "RESOLVE_TAGS": "true",
        "PREPEND_EXISTING": "false",
    }
    argv = ["env", "-i", *(f"{k}={v}" for k, v in clean_environment(environ).items()), *spegel_command()]
    result = subprocess.run([*argv, "configuration"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stderr.splitlines()[-1])["msg"] == "containerd registry configuration written"
    for registry in ("docker.io", "ghcr.io"):
        hosts = (certs / registry / "hosts.toml").read_text()
        first, second = hosts.index("http://127.0.0.1:30020"), hosts.index("http://127.0.0.1:30021")
        assert first < second
        assert '"resolve"' in hosts  # RESOLVE_TAGS=true
    assert sorted(p.name for p in certs.iterdir() if not p.name.startswith("_")) == ["docker.io", "ghcr.io"]
