"""Routing: which peers hold which content. The interface, keys, an in-memory router and the libp2p one."""
