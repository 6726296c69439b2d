"""The deploy/ manifests and container image definition, checked as far as this machine allows.

- Every kustomization renders with today's `kubectl kustomize` and with Debian's kubectl 1.20 (kustomize v2),
  identically, and every object validates against the Kubernetes JSON schemas (kubernetes-validate, offline).
- The objects hang together: Services select the mirror pods and name their ports, the mirror targets written
  by the init container are the hostPort and NodePort, every path a flag names is mounted, probes hit the
  registry port.
- The exact command lines of the containers (image ENTRYPOINT + args, `$(VAR)` expanded as the kubelet does)
  parse with the real CLI, and run: on a "node" made of a network namespace, real containerd 2.1 and host
  directories standing in for the hostPath volumes, the init container configures containerd, the registry
  container serves containerd's content and its probes answer, and the preStop hook restores the configuration.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import trio
import yaml

from benchmark.cluster import netplan
from benchmark.cluster.kindplan import ensure_router_psk
from benchmark.cluster.netns import _used_subnets as used_subnets
from benchmark.daemons import Containerd, Registry, Spegel, spegel_command
from benchmark.images import ImageSpec, build, push
from spegel.cli import build_parser
from spegel.preflight import check_containerd, run_preflight

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZATIONS = ("base", "overlays/k3s", "overlays/servicemonitor", "cleanup")
CACHE = Path(os.environ.get("SPEGEL_CACHE", "/var/cache/spegel-py"))
KUBECTL_1_20 = CACHE / "kubernetes-client-1.20" / "usr" / "bin" / "kubectl"
KUBERNETES_VERSIONS = ("1.26.0", kubernetes_validate.utils.latest_version())
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
NAMESPACE = "spegel"


# ---- reading the manifests -----------------------------------------------------------------------------------


@functools.cache
def render(kustomization: str, kubectl: str = "kubectl") -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize deploy/kustomize/<kustomization>`, parsed (with the cluster secret's file made first, as
    the docs' one-line step does; a Secret's base64 data without the line breaks kustomize v2 puts in)."""
    ensure_router_psk()
    result = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "kustomize" / kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{kubectl} kustomize {kustomization}: {result.stderr}"
    docs = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)
    for doc in docs:
        if doc["kind"] == "Secret":
            doc["data"] = {key: "".join(value.split()) for key, value in doc["data"].items()}
    return docs


def find(docs: Sequence[Mapping[str, Any]], kind: str, name: str | None = None) -> list[Mapping[str, Any]]:
    return [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]


def one(docs: Sequence[Mapping[str, Any]], kind: str, name: str) -> Mapping[str, Any]:
    [doc] = find(docs, kind, name)
    return doc


def pod_spec(daemonset: Mapping[str, Any]) -> Mapping[str, Any]:
    return daemonset["spec"]["template"]["spec"]


def containers(daemonset: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    spec = pod_spec(daemonset)
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def port_number(container: Mapping[str, Any], name: str, field: str = "containerPort") -> int:
    [port] = [p for p in container["ports"] if p["name"] == name]
    return port[field]


@functools.cache
def image_entrypoint() -> tuple[str, ...]:
    """The ENTRYPOINT of deploy/Containerfile's last stage (exec form)."""
    lines = (DEPLOY / "Containerfile").read_text().splitlines()
    stage = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    [entrypoint] = [json.loads(line.split(None, 1)[1]) for line in lines[stage:] if line.startswith("ENTRYPOINT ")]
    return tuple(entrypoint)


def container_argv(container: Mapping[str, Any]) -> list[str]:
    """What the container runs: its `command` (else the image's ENTRYPOINT) followed by its `args`."""
    return [*container.get("command", image_entrypoint()), *container.get("args", [])]


def prestop_argv(container: Mapping[str, Any]) -> list[str]:
    return list(container["lifecycle"]["preStop"]["exec"]["command"])


_VARIABLE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(args: Sequence[str], variables: Mapping[str, str]) -> list[str]:
    """Kubernetes' `$(NAME)` expansion in command and args: defined names are replaced, unknown ones kept
    verbatim, `$$` is a literal `$`."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return variables.get(match.group(1), match.group(0))

    return [_VARIABLE.sub(substitute, arg) for arg in args]


def environment(container: Mapping[str, Any], fields: Mapping[str, str]) -> dict[str, str]:
    """The container's env: literal values, and downward-API `fieldRef`s looked up in `fields`."""
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def mounts(daemonset: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """mountPath -> the volume mounted there (with `readOnly` of the mount)."""
    volumes = {v["name"]: v for v in pod_spec(daemonset)["volumes"]}
    return {
        m["mountPath"]: {**volumes[m["name"]], "readOnly": m.get("readOnly", False)} for m in container["volumeMounts"]
    }


def flag(argv: Sequence[str], name: str) -> str:
    [value] = [arg.split("=", 1)[1] for arg in argv if arg.startswith(f"{name}=")]
    return value


# ---- rendering and schemas ------------------------------------------------------------------------------------


def test_kubectl_1_20_is_installed_by_bootstrap() -> None:
    assert KUBECTL_1_20.exists(), f"{KUBECTL_1_20} is missing: run scripts/bootstrap.sh"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_identically_with_kustomize_v5_and_v2(kustomization: str) -> None:
    docs = render(kustomization)
    assert find(docs, "DaemonSet")
    if KUBECTL_1_20.exists():
        assert render(kustomization, str(KUBECTL_1_20)) == docs


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_objects_validate_against_the_kubernetes_schemas(kustomization: str, version: str) -> None:
    for doc in render(kustomization):
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)


def test_validation_would_catch_a_mistake() -> None:
    daemonset = json.loads(json.dumps(one(render("base"), "DaemonSet", "spegel")))
    pod_spec(daemonset)["containers"][0]["ports"][0]["containerPort"] = "5000"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_everything_is_in_the_spegel_namespace(kustomization: str) -> None:
    for doc in render(kustomization):
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


# ---- the objects hang together ---------------------------------------------------------------------------------


def test_services_select_the_mirror_pods_and_name_their_ports() -> None:
    docs = render("base")
    daemonset = one(docs, "DaemonSet", "spegel")
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    registry = containers(daemonset)["registry"]
    services = {s["metadata"]["name"]: s for s in find(docs, "Service")}
    assert set(services) == {"spegel-registry", "spegel-bootstrap", "spegel-metrics"}
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
        for port in service["spec"]["ports"]:
            assert port_number(registry, port["targetPort"]) == port["port"]
    assert services["spegel-bootstrap"]["spec"]["clusterIP"] == "None"
    assert services["spegel-bootstrap"]["spec"]["publishNotReadyAddresses"] is True
    assert [p["targetPort"] for p in services["spegel-registry"]["spec"]["ports"]] == ["registry"]


@pytest.mark.parametrize("kustomization", ["base", "overlays/k3s", "overlays/servicemonitor"])
def test_the_router_gets_the_cluster_secret_and_a_network_policy_guards_its_ports(kustomization: str) -> None:
    docs = render(kustomization)
    daemonset = one(docs, "DaemonSet", "spegel")
    registry = containers(daemonset)["registry"]
    key_file = Path(flag(container_argv(registry), "--router-psk-file"))
    volume = mounts(daemonset, registry)[str(key_file.parent)]
    assert volume["readOnly"] and volume["secret"]["secretName"] == "spegel-router-psk"
    secret = one(docs, "Secret", "spegel-router-psk")
    assert len(base64.b64decode(secret["data"][key_file.name]).strip()) == 64  # `openssl rand -hex 32`
    policy = one(docs, "NetworkPolicy", "spegel")
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    [peers, metrics] = policy["spec"]["ingress"]
    assert [p["port"] for p in peers["ports"]] == [port_number(registry, "registry"), port_number(registry, "router")]
    assert [f["podSelector"]["matchLabels"].items() <= pod_labels.items() for f in peers["from"]] == [True]
    assert [p["port"] for p in metrics["ports"]] == [port_number(registry, "metrics")]


def test_the_mirror_targets_are_this_nodes_hostport_then_the_nodeport() -> None:
    docs = render("base")
    daemonset = one(docs, "DaemonSet", "spegel")
    configuration, registry = containers(daemonset)["configuration"], containers(daemonset)["registry"]
    node_ip = "198.18.7.9"
    argv = expand(container_argv(configuration), environment(configuration, {"status.hostIP": node_ip}))
    [node_port] = one(docs, "Service", "spegel-registry")["spec"]["ports"]
    expected = [
        f"http://{node_ip}:{port_number(registry, 'registry', 'hostPort')}",
        f"http://{node_ip}:{node_port['nodePort']}",
    ]
    assert flag(argv, "--mirror-targets").split(",") == expected


def test_dns_bootstrap_names_the_headless_service() -> None:
    docs = render("base")
    registry = containers(one(docs, "DaemonSet", "spegel"))["registry"]
    argv = expand(container_argv(registry), environment(registry, {"metadata.namespace": NAMESPACE}))
    assert flag(argv, "--bootstrap-kind") == "dns"
    service, namespace, *_ = flag(argv, "--dns-bootstrap-domain").split(".")
    assert one(docs, "Service", service)["spec"]["clusterIP"] == "None"
    assert namespace == NAMESPACE


@pytest.mark.parametrize("kustomization", ["base", "overlays/k3s"])
def test_every_path_a_flag_names_is_mounted_from_the_host(kustomization: str) -> None:
    daemonset = one(render(kustomization), "DaemonSet", "spegel")
    configuration, registry = containers(daemonset)["configuration"], containers(daemonset)["registry"]
    init_mounts, registry_mounts = mounts(daemonset, configuration), mounts(daemonset, registry)
    argv = container_argv(registry)
    socket = registry_mounts[flag(argv, "--containerd-sock")]
    assert socket["hostPath"]["type"] == "Socket"
    content = registry_mounts[flag(argv, "--containerd-content-path")]
    assert content["readOnly"] and content["hostPath"]["path"].endswith("/io.containerd.content.v1.content")
    assert "hostPath" in registry_mounts[flag(argv, "--data-dir")]
    certs = flag(container_argv(configuration), "--containerd-registry-config-path")
    assert flag(prestop_argv(registry), "--containerd-registry-config-path") == certs
    assert init_mounts[certs]["hostPath"] == registry_mounts[certs]["hostPath"]
    assert not init_mounts[certs]["readOnly"] and not registry_mounts[certs]["readOnly"]


def test_k3s_overlay_changes_only_the_host_side_of_the_mounts() -> None:
    base = one(render("base"), "DaemonSet", "spegel")
    k3s = one(render("overlays/k3s"), "DaemonSet", "spegel")
    assert containers(k3s) == containers(base)
    paths = {v["name"]: v["hostPath"]["path"] for v in pod_spec(k3s)["volumes"] if "hostPath" in v}
    assert paths["containerd-sock"] == "/run/k3s/containerd/containerd.sock"
    assert paths["containerd-certs"] == "/var/lib/rancher/k3s/agent/etc/containerd/certs.d"
    assert paths["containerd-content"].startswith("/var/lib/rancher/k3s/agent/containerd/")


def test_probes_hit_livez_and_readyz_on_the_metrics_port() -> None:
    """Probes must not queue behind traffic: the registry port may be at its connection bound."""
    registry = containers(one(render("base"), "DaemonSet", "spegel"))["registry"]
    argv = container_argv(registry)
    assert flag(argv, "--registry-addr") == f":{port_number(registry, 'registry')}"
    assert flag(argv, "--router-addr") == f":{port_number(registry, 'router')}"
    assert flag(argv, "--metrics-addr") == f":{port_number(registry, 'metrics')}"
    probes = {name: registry[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {p["port"] for p in probes.values()} == {"metrics"}
    assert probes["livenessProbe"]["path"] == "/livez"
    assert probes["readinessProbe"]["path"] == "/readyz"


@pytest.mark.parametrize("kustomization", ["base", "cleanup"])
def test_every_container_has_requests_limits_and_no_capabilities(kustomization: str) -> None:
    for daemonset in find(render(kustomization), "DaemonSet"):
        for name, container in containers(daemonset).items():
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys(), name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name


def test_servicemonitor_scrapes_the_metrics_service() -> None:
    docs = render("overlays/servicemonitor")
    [monitor] = find(docs, "ServiceMonitor")
    selected = [
        s
        for s in find(docs, "Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["spegel-metrics"]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in selected[0]["spec"]["ports"]]
    assert find(render("base"), "ServiceMonitor") == []
    # the labels Prometheus selects ServiceMonitors by are the overlay's to set
    patch = yaml.safe_load(
        (DEPLOY / "kustomize" / "overlays" / "servicemonitor" / "servicemonitor-labels.yaml").read_text()
    )
    assert patch["metadata"]["labels"] and patch["metadata"]["labels"].items() <= monitor["metadata"]["labels"].items()


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_pods_run_on_linux_nodes_only(kustomization: str) -> None:
    for daemonset in find(render(kustomization), "DaemonSet"):
        assert pod_spec(daemonset)["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_image_is_the_project_version_and_runs_the_console_script() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for kustomization in ("base", "cleanup"):
        for daemonset in find(render(kustomization), "DaemonSet"):
            for container in containers(daemonset).values():
                assert container["image"] == f"spegel:{project['version']}"
    assert image_entrypoint()[0] in project["scripts"]
    containerfile = (DEPLOY / "Containerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", containerfile, re.MULTILINE)
    assert bases and all(re.fullmatch(r"python:3\.11[.\d]*-slim\S*@sha256:[0-9a-f]{64}", base) for base in bases), bases
    assert "ENV PIP_CONSTRAINT=/src/constraints.txt" in containerfile  # the build stage installs pinned versions
    [user] = re.findall(r"^USER (\S+)$", containerfile, re.MULTILINE)
    assert not user.startswith(("0", "root"))


def _build_stage_copies() -> list[tuple[str, str]]:
    """(source, destination) of each COPY from the build context in deploy/Containerfile."""
    copies = []
    for line in (DEPLOY / "Containerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            *sources, destination = line.split()[1:]
            copies += [(source, destination) for source in sources]
    return copies


def test_the_build_context_lets_through_what_the_containerfile_copies() -> None:
    ignore = [
        line for line in (DEPLOY / "Containerfile.dockerignore").read_text().splitlines() if line[:1] not in ("", "#")
    ]
    assert ignore[0] == "*"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copies = _build_stage_copies()
    assert {source for source, _ in copies} == allowed
    assert all((REPO / source).exists() for source in allowed)


@pytest.mark.slow
def test_the_copied_files_build_and_install_the_package(tmp_path: Path) -> None:
    """Exactly what the image's build stage copies is enough to build the package: the wheel holds every module
    of the repository's package and the `spegel` console script the ENTRYPOINT runs."""
    context = tmp_path / "context"
    for source, destination in _build_stage_copies():
        target = context / destination.lstrip("/").removeprefix("src").lstrip("/")
        if destination.endswith("/"):
            target = target / Path(source).name
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / source, target)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [wheel] = tmp_path.glob("spegel-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    modules = {str(p.relative_to(REPO)) for p in (REPO / "spegel").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= names, sorted(modules - names)[:5]
    assert re.search(rf"^{image_entrypoint()[0]} = spegel\.cli:main$", scripts, re.MULTILINE)


def _nox_image(path: Path) -> subprocess.CompletedProcess[str]:
    nox = REPO / ".venv" / "bin" / "nox"  # installed by scripts/bootstrap.sh
    argv = [str(nox), "-f", str(REPO / "noxfile.py"), "-s", "image"]
    return subprocess.run(argv, env={**os.environ, "PATH": str(path)}, capture_output=True, text=True, timeout=120)


def test_image_session_says_why_it_cannot_build_without_docker_or_buildah(tmp_path: Path) -> None:
    result = _nox_image(tmp_path)
    assert result.returncode != 0
    assert "cannot build the image: docker is missing, and buildah is not installed" in result.stderr


def test_image_session_says_why_it_cannot_build_without_a_docker_daemon(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True, timeout=60).returncode == 0:
        pytest.skip("needs the docker CLI without a running daemon (as on this project's machines)")
    (tmp_path / "docker").symlink_to(docker)
    result = _nox_image(tmp_path)
    assert result.returncode != 0
    assert "the docker CLI cannot reach a Docker daemon" in result.stderr


# ---- the command lines run -------------------------------------------------------------------------------------


def deployed_command_lines() -> dict[str, list[str]]:
    """Every command a container or hook of the base and cleanup runs, with `$(VAR)`s expanded."""
    fields = {"status.hostIP": "198.18.7.9", "status.podIP": "10.0.0.7", "metadata.namespace": NAMESPACE}
    lines = {}
    for kustomization in ("base", "cleanup"):
        for daemonset in find(render(kustomization), "DaemonSet"):
            for name, container in containers(daemonset).items():
                env = environment(container, fields)
                lines[f"{kustomization}/{name}"] = expand(container_argv(container), env)
                if "lifecycle" in container:
                    lines[f"{kustomization}/{name}/preStop"] = expand(prestop_argv(container), env)
    return lines


@pytest.mark.parametrize("name", sorted(deployed_command_lines()))
def test_command_lines_parse_with_the_real_cli(name: str) -> None:
    argv = deployed_command_lines()[name]
    if argv[0] != "spegel":
        assert shutil.which(argv[0]), f"{name}: {argv[0]} is not a program"
        return
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{name}: the CLI rejects {argv} (its message is on stderr)")
    assert args.command == argv[1]
    unexpanded = [arg for arg in argv if "$(" in arg]
    assert not unexpanded, f"{name}: variables without a definition: {unexpanded}"


# ---- preflight against real containerd configurations ----------------------------------------------------------


def test_preflight_rejects_containerds_default_config_and_accepts_the_test_instances(tmp_path: Path) -> None:
    binary = Path(os.environ.get("SPEGEL_CONTAINERD_BIN") or CACHE / "containerd/usr/bin/containerd")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True, timeout=30).stdout
    default = subprocess.run([binary, "config", "default"], capture_output=True, text=True, check=True, timeout=30)
    assert [f.check for f in check_containerd(default.stdout, version)] == ["config-path"]
    instance = Containerd(tmp_path / "node", tmp_path / "certs.d")
    instance._state = tmp_path / "state"  # render_config needs a state path; nothing is started
    config = tmp_path / "config.toml"
    config.write_text(instance.render_config())
    assert run_preflight(version, config, str(tmp_path / "certs.d")) == []


# ---- a cluster of nodes: network namespaces + containerd + host directories -------------------------------------


def _run(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def netns_nodes(count: int, hostports: Mapping[int, int], names: Sequence[str]) -> Iterator[list[tuple[str, str]]]:
    """`count` network namespaces on one bridge, reachable from here: yields [(netns name, node IP)].

    The network is the benchmark's netns cluster plan (a free /24 of 198.18.0.0/15, unshaped in practice: 10
    Gbit/s). In each node, `hostports` (host port -> container port) are redirected as a CNI's portmap and
    kube-proxy do for hostPort and NodePort; each of `names` resolves to every node's IP (as a headless
    Service's DNS name does), and other names fail at once (the resolver is 127.0.0.1, where nothing answers).
    Everything is removed on exit.
    """
    used = used_subnets()
    free = [subnet for subnet in netplan.subnets() if subnet not in used]
    plan = netplan.make_plan(f"dpl{os.getpid() % 1000}", free[-1], count, 10e9, 10e9)
    nodes = [(node.netns, node.address) for node in plan.nodes]
    rules = "".join(f"    tcp dport {h} redirect to :{c}\n" for h, c in hostports.items())
    ruleset = (
        f"table ip hostports {{\n  chain prerouting {{\n    type nat hook prerouting priority -100;\n{rules}  }}\n}}\n"
    )
    hosts = "127.0.0.1 localhost\n" + "".join(f"{ip} {' '.join(names)}\n" for _, ip in nodes)
    try:
        for argv in netplan.setup_commands(plan):
            _run(*argv)
        for netns, _ in nodes:
            etc = Path("/etc/netns") / netns  # `ip netns exec` mounts these over /etc/<name>
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
            (etc / "hosts").write_text(hosts)
            (etc / "host.conf").write_text("multi on\n")
            _run("ip", "netns", "exec", netns, "nft", "-f", "-", stdin=ruleset)
        yield nodes
    finally:
        for argv in netplan.teardown_commands(plan):
            subprocess.run(argv, capture_output=True, timeout=30, check=False)
        for netns, _ in nodes:
            shutil.rmtree(Path("/etc/netns") / netns, ignore_errors=True)


def on_node(argv: Sequence[str], host_paths: Mapping[str, Path]) -> list[str]:
    """The container's argv as it runs on the node: container paths replaced by the host paths mounted there."""
    result = []
    for arg in argv:
        name, equals, value = arg.rpartition("=")
        for container_path in sorted(host_paths, key=len, reverse=True):
            if value == container_path or value.startswith(container_path + "/"):
                value = str(host_paths[container_path]) + value[len(container_path) :]
                break
        result.append(name + equals + value)
    return result


def secret_volume(docs: Sequence[Mapping[str, Any]], name: str, directory: Path) -> Path:
    """The files the kubelet puts in a volume of Secret `name`, written to `directory`."""
    directory.mkdir()
    for key, value in one(docs, "Secret", name)["data"].items():
        (directory / key).write_bytes(base64.b64decode(value))
    return directory


def run_spegel(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "spegel"
    return subprocess.run([*spegel_command(), *argv[1:]], capture_output=True, text=True, timeout=60, check=False)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


async def wait_for_200(client: httpx.AsyncClient, url: str, params: Mapping[str, str] | None = None) -> None:
    """GET `url` until it answers 200; fails the test after 30 s, naming the URL and the last answer."""
    status: int | str = "no answer"
    for _ in range(300):
        with contextlib.suppress(httpx.TransportError):
            status = (await client.get(url, params=params)).status_code
            if status == 200:
                return
        await trio.sleep(0.1)
    pytest.fail(f"GET {url} {params or ''}: {status} after 30 s")


@pytest.mark.slow
@pytest.mark.root
async def test_deployed_commands_run_a_two_node_cluster(tmp_path: Path, upstream_registry: Registry) -> None:
    """Node A pulls from the registry; node B then pulls the same image from A, both through the mirrors that
    the DaemonSet's exact command lines configured and started; the preStop hook restores each node."""
    docs = render("base")
    daemonset = one(docs, "DaemonSet", "spegel")
    configuration, registry = containers(daemonset)["configuration"], containers(daemonset)["registry"]
    [node_port] = one(docs, "Service", "spegel-registry")["spec"]["ports"]
    registry_port = port_number(registry, "registry")
    hostports = {port_number(registry, "registry", "hostPort"): registry_port, node_port["nodePort"]: registry_port}
    registry_env = environment(registry, {"metadata.namespace": NAMESPACE})
    bootstrap_name = flag(expand(container_argv(registry), registry_env), "--dns-bootstrap-domain")
    image, repository = f"{upstream_registry.address}/team/app:v1", "/v2/team/app/"
    async with httpx.AsyncClient() as client:
        await push(build(ImageSpec((300_000, 120_000), seed=707)), client, upstream_registry.url, "team/app", "v1")

    with contextlib.ExitStack() as stack:
        nodes = stack.enter_context(netns_nodes(2, hostports, [bootstrap_name]))
        cluster = []
        for index, (netns, node_ip) in enumerate(nodes):
            base = tmp_path / f"node{index}"
            certs = base / "certs.d"  # the user's configuration for another registry is already there
            (certs / "ghcr.io").mkdir(parents=True)
            (certs / "ghcr.io" / "hosts.toml").write_text('server = "https://ghcr.io"\n')
            before = _tree(certs)
            containerd = stack.enter_context(Containerd(base / "containerd", certs))
            host_paths = {
                "/etc/containerd/certs.d": certs,
                "/run/containerd/containerd.sock": containerd.socket,
                "/var/lib/containerd/io.containerd.content.v1.content": containerd.content_root,
                "/var/lib/spegel": base / "spegel-data",
                "/tmp": base / "tmp",
                "/etc/spegel/router": secret_volume(docs, "spegel-router-psk", base / "router-psk"),
            }
            assert set(host_paths) == set(mounts(daemonset, registry)) | set(mounts(daemonset, configuration))
            for path in (base / "spegel-data", base / "tmp"):
                path.mkdir()
            fields = {"status.hostIP": node_ip, "status.podIP": node_ip, "metadata.namespace": NAMESPACE}

            # init container: containerd now tries this node's mirror first, via the hostPort then the NodePort
            result = run_spegel(
                on_node(expand(container_argv(configuration), environment(configuration, fields)), host_paths)
            )
            assert result.returncode == 0, result.stderr
            default_hosts = (certs / "_default" / "hosts.toml").read_text()
            assert default_hosts.index(f"http://{node_ip}:30020") < default_hosts.index(f"http://{node_ip}:30021")

            # registry container, in the node's network namespace, on the manifest's fixed ports; started when
            # its startup probe answers
            argv = on_node(expand(container_argv(registry), environment(registry, fields)), host_paths)
            probe = registry["startupProbe"]["httpGet"]
            probe_url = f"http://{node_ip}:{port_number(registry, probe['port'])}{probe['path']}"
            mirror = Spegel(argv[1:], base / "registry.log", ready_url=probe_url, netns=netns)
            mirror.registry_addr = f"{node_ip}:{registry_port}"
            stack.enter_context(mirror)
            cluster.append((containerd, mirror, certs, host_paths, before))

        async with httpx.AsyncClient(timeout=10) as client:
            ready = registry["readinessProbe"]["httpGet"]
            for _, node_ip in nodes:  # ready once each has found the other through the bootstrap name
                url = f"http://{node_ip}:{port_number(registry, ready['port'])}{ready['path']}"
                await wait_for_200(client, url)
                metrics = await client.get(f"http://{node_ip}:{port_number(registry, 'metrics')}/metrics")
                assert metrics.status_code == 200 and "spegel_mirror_requests_total" in metrics.text

            # node A: its mirror is asked first (once per target), has nothing, containerd goes to the registry
            (containerd_a, mirror_a, *_), (containerd_b, mirror_b, *_) = cluster
            containerd_a.ctr("images", "pull", "--hosts-dir", str(cluster[0][2]), image)
            asked = [r for r in mirror_a.access_log() if r["path"] == f"{repository}manifests/v1"]
            assert [(r["method"], r["status"]) for r in asked] == [("HEAD", 404), ("HEAD", 404)]
            # ... and now serves it from containerd's content store, also to node B's mirror
            ns = {"ns": upstream_registry.address}
            assert (await client.get(f"{mirror_a.url}{repository}manifests/v1", params=ns)).status_code == 200
            await wait_for_200(client, f"{mirror_b.url}{repository}manifests/v1", ns)

        # node B pulls it through its mirror, which fetches from node A: the registry serves no blob again
        upstream_blobs = [e for e in upstream_registry.access_log() if e.path.startswith(f"{repository}blobs/")]
        containerd_b.ctr("images", "pull", "--hosts-dir", str(cluster[1][2]), image)
        assert [e for e in upstream_registry.access_log() if e.path.startswith(f"{repository}blobs/")] == upstream_blobs
        served_b = [r for r in mirror_b.access_log() if r["path"].startswith(f"{repository}blobs/")]
        assert served_b and all(r["status"] in (200, 206) for r in served_b)
        assert any(r.get("mirrored") for r in mirror_a.access_log() if r["path"].startswith(f"{repository}blobs/"))

        # preStop hook on every node: the user's configuration is back, exactly
        for _, _, certs, host_paths, before in cluster:
            result = run_spegel(on_node(prestop_argv(registry), host_paths))
            assert result.returncode == 0, result.stderr
            assert _tree(certs) == before

        # then the kubelet stops the registry container with SIGTERM: it exits cleanly
        for _, mirror, *_ in cluster:
            assert mirror.stop() == 0, mirror.log_tail()
            assert "Traceback" not in mirror.log_path.read_text(), mirror.log_tail(40)
