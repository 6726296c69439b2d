"""A cluster simulator, the benchmark's `sim` backend: N nodes, an upstream link and per-node links shared as
fluids, containerd's fetch behaviour, and the mirror's own decisions (`spegel.mirror.decide`).

Modules, from the core out: `events` (the event loop: pure), `network` (links and transfers: fluid sharing),
`routing` (when an announcement becomes visible where), `mirror` (one node's mirror: `decide` over simulated
I/O), `containerd` (one node's pull), `cluster` (a phase over all nodes, its records), `run` (a scenario: the
same tables and report as the netns backend).
"""
