"""Code the tests share that is no part of the product: in-memory routers and the like (`pythonpath = ["."]`
in pyproject.toml makes `tests.support` importable)."""
