"""Fixtures of tests/integration: a real `spegel registry` serving the test layout (see registry_harness.py)."""

from collections.abc import Iterator

import pytest
from registry_harness import ServedRegistry, serve_test_registry


@pytest.fixture(scope="module")
def served_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedRegistry]:
    with serve_test_registry(tmp_path_factory.mktemp("registry")) as served:
        yield served
