"""Code the tests share that is no part of the product (`pythonpath = ["."]` in pyproject.toml makes
`tests.support` importable)."""
