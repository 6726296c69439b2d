"""Sessions: `tests` (everything CI runs), `lint`, `proto` (regenerate containerd stubs),
`benchmark` (the main job: the default scenario on the netns cluster) and `report` (rebuild a report)."""

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    """All tests, the slow end-to-end ones included (select fewer with `-- -m 'not slow'`)."""
    session.install("-q", "-e", ".[test,bench]")
    session.run("pytest", "-ra", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("-q", "ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def benchmark(session: nox.Session) -> None:
    """Run a scenario (default: scenarios/default.toml) on the netns cluster and write reports/<run>/."""
    session.install("-q", "-e", ".[bench]")
    session.run("python", "-m", "benchmark", "run", *(session.posargs or ["scenarios/default.toml"]))


@nox.session
def report(session: nox.Session) -> None:
    """Rebuild the report of a kept run: `nox -s report -- reports/<run>`."""
    session.install("-q", "-e", ".[bench]")
    session.run("python", "-m", "benchmark", "report", *session.posargs)
