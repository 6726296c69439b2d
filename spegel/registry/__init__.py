"""The pull-only OCI registry HTTP server: quart-trio apps served by our HTTP/1.1 server (http11.py)."""
