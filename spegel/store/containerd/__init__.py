"""The containerd content store: gRPC client, store, ingest reader and event watcher."""
