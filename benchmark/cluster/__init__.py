"""Cluster backends: `netns` (network namespaces on this machine) and `kind` (a kind cluster in Docker)."""
