"""The mirror: containerd's requests served locally when possible, else from peers, chunk by chunk."""
