"""Sessions: `tests` (everything CI runs), `lint`, `typecheck` (mypy, strict, on spegel/), `proto` (regenerate the
containerd stubs), `benchmark` (the main job: the default scenario on the netns cluster), `report` (rebuild a
report) and `lock` (re-resolve constraints.txt).

Every session installs under constraints.txt (`pip install -c`): the exact version of every package any session,
scripts/bootstrap.sh or deploy/Containerfile installs, so that installs are the same on every machine and day."""

from pathlib import Path

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests"]

CONSTRAINTS = "constraints.txt"
# The tools the sessions install besides the package and its extras (their pins live in constraints.txt too).
TOOLS = ("nox", "ruff", "mypy", "types-protobuf", "grpcio-tools", "grpclib", "mypy-protobuf")


def install(session: nox.Session, *packages: str) -> None:
    session.install("-q", "-c", CONSTRAINTS, *packages)


@nox.session
def tests(session: nox.Session) -> None:
    """All tests, the slow end-to-end ones included (select fewer with `-- -m 'not slow'`)."""
    install(session, "-e", ".[test,bench]")
    session.run("pytest", "-ra", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    install(session, "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy, strict, on the `spegel` package (settings in pyproject.toml's [tool.mypy])."""
    install(session, "-e", ".", "mypy", "types-protobuf")
    # trio-typing (a dependency of libp2p) ships old `trio-stubs` that would shadow trio's own, newer inline types.
    session.run("pip", "uninstall", "-q", "-y", "trio-typing")
    session.run("mypy", *session.posargs)


@nox.session
def benchmark(session: nox.Session) -> None:
    """Run a scenario (default: scenarios/default.toml) on the netns cluster and write reports/<run>/."""
    install(session, "-e", ".[bench]")
    session.run("python", "-m", "benchmark", "run", *(session.posargs or ["scenarios/default.toml"]))


@nox.session
def report(session: nox.Session) -> None:
    """Rebuild the report of a kept run: `nox -s report -- reports/<run>`."""
    install(session, "-e", ".[bench]")
    session.run("python", "-m", "benchmark", "report", *session.posargs)


@nox.session
def proto(session: nox.Session) -> None:
    """Regenerate the containerd gRPC stubs (spegel/store/containerd/proto/*_pb2.py, *_pb2.pyi, *_grpc.py) from our
    .proto files.

    The generator versions are pinned (constraints.txt) so that the committed code is reproducible; grpcio-tools
    1.81.1 bundles protoc 33.5, whose code needs the protobuf runtime >= 6.33.5 (libp2p keeps it < 7). mypy-protobuf
    writes the type stubs (`.pyi`) that `typecheck` reads.
    """
    install(session, "grpcio-tools", "grpclib", "mypy-protobuf")
    protos = sorted(str(p) for p in Path("spegel/store/containerd/proto").glob("*.proto"))
    outputs = ["--python_out=.", "--grpclib_python_out=.", "--mypy_out=."]
    session.run("python", "-m", "grpc_tools.protoc", "-I", ".", *outputs, *protos)


@nox.session(python=False)
def image(session: nox.Session) -> None:
    """Build the mirror's container image (deploy/Containerfile) as spegel:<version>, or as `-- NAME:TAG`.

    Uses docker when its daemon answers, else buildah; fails with a message saying so when neither can build.
    """
    import shutil
    import subprocess
    import tomllib

    version = tomllib.loads(Path("pyproject.toml").read_text())["project"]["version"]
    tag = session.posargs[0] if session.posargs else f"spegel:{version}"
    build = ["-f", "deploy/Containerfile", "-t", tag, "."]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True, timeout=60).returncode == 0:
        session.run(docker, "build", *build, external=True)
    elif buildah := shutil.which("buildah"):
        session.run(buildah, "build", "--ignorefile", "deploy/Containerfile.dockerignore", *build, external=True)
    else:
        why = "the docker CLI cannot reach a Docker daemon (`docker info` failed)" if docker else "docker is missing"
        session.error(f"cannot build the image: {why}, and buildah is not installed (apt-get install buildah)")


@nox.session
def lock(session: nox.Session) -> None:
    """Re-resolve constraints.txt from pyproject.toml and the tools' own pins below (the one session that installs
    without it): the newest versions that fit, then `pip freeze`. Run it to upgrade, and commit the result."""
    pins = {"ruff": "ruff==0.17.6", "mypy": "mypy==2.4.1", "types-protobuf": "types-protobuf==6.32.1.20260221"}
    pins |= {
        "grpcio-tools": "grpcio-tools==1.81.1",
        "grpclib": "grpclib==0.4.9",
        "mypy-protobuf": "mypy-protobuf==5.1.0",
    }
    session.install("-q", "-e", ".[test,bench]", *(pins.get(tool, tool) for tool in TOOLS), "setuptools")
    frozen = session.run("pip", "freeze", "--all", "--exclude-editable", silent=True)
    assert isinstance(frozen, str)
    lines = sorted((line for line in frozen.splitlines() if "==" in line), key=str.lower)
    header = "# Every package's exact version, for `pip install -c constraints.txt`. Regenerate: nox -s lock\n"
    Path(CONSTRAINTS).write_text(header + "\n".join(lines) + "\n")
