"""The pull-only OCI registry HTTP server (hypercorn + quart-trio)."""
