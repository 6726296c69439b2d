#!/usr/bin/env python3
"""A stand-in for the Spegel (Go) binary, for testing the `spegel-go` benchmark mode's plumbing without it.

`configuration`: writes a hosts.toml as Spegel's does (the mirror target first, the registry as server) and
records its arguments in `CONFIG_PATH/standin-configuration.json`.
`registry`: records its arguments in `DATA_DIR/standin-registry.json`, then serves `/readyz` (200),
`/metrics` (200, no samples) and 404 for everything else on the registry and metrics addresses, accepts TCP on
the router address and holds a connection to every bootstrap peer (so the router mesh is complete), until killed.
Standard library only: it runs with the system's Python.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


class Handler(BaseHTTPRequestHandler):
    def answer(self, body: bytes) -> None:
        if self.path in ("/readyz", "/metrics"):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        self.answer(b'{"errors":[{"code":"BLOB_UNKNOWN","message":"stand-in holds nothing"}]}')

    def do_HEAD(self) -> None:
        self.answer(b"")

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(address: str) -> ThreadingHTTPServer:
    host, port = address.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def join_peers(router_addr: str, peers: list[str]) -> None:
    """Listen on the router address and connect to every `/ip4/A/tcp/P/p2p/ID` peer (retrying while it starts)."""
    host, port = router_addr.rsplit(":", 1)
    listener = socket.create_server((host, int(port)))
    held = [listener]

    def accept() -> None:
        while True:
            held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    for peer in peers:
        parts = peer.split("/")
        for _ in range(300):
            try:
                held.append(socket.create_connection((parts[2], int(parts[4])), timeout=1))
                break
            except OSError:
                time.sleep(0.1)


def main(argv: list[str]) -> int:
    if argv[:1] == ["configuration"]:
        config = Path(flag(argv, "--containerd-registry-config-path"))
        registry, target = flag(argv, "--mirrored-registries"), flag(argv, "--mirror-targets")
        host_dir = config / urlsplit(registry).netloc
        host_dir.mkdir(parents=True, exist_ok=True)
        (host_dir / "hosts.toml").write_text(
            f'server = "{registry}"\n\n[host."{target}"]\n  capabilities = ["pull", "resolve"]\n'
        )
        (config / "standin-configuration.json").write_text(json.dumps(argv))
        return 0
    if argv[:1] == ["registry"]:
        (Path(flag(argv, "--data-dir")) / "standin-registry.json").write_text(json.dumps(argv))
        serve(flag(argv, "--metrics-addr"))
        serve(flag(argv, "--registry-addr"))
        join_peers(flag(argv, "--router-addr"), argv[argv.index("--static-bootstrap-peers") + 1 :])
        threading.Event().wait()
    sys.stderr.write(f"stand-in: unknown command {argv[:1]}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
