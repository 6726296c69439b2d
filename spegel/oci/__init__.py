"""The OCI core: references, digests, media types, manifests and error bodies. No I/O here."""
