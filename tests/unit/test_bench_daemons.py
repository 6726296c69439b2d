"""`free_port`: ports for test daemons that no outgoing connection can take before the daemon binds them."""

from __future__ import annotations

import socket

import pytest

from benchmark import daemons


def test_free_ports_lie_below_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    low = daemons._ephemeral_low()
    ports = [daemons.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= port < low for port in ports)


def _listening_port_with_a_free_neighbour() -> tuple[socket.socket, int]:
    """A socket listening on some port P below the ephemeral range, where P + 1 binds right now.

    Below that range no outgoing connection takes P + 1 between this check and the test's pick; a port the
    kernel handed out (or one an earlier test left in TIME_WAIT) would make the pick fail for reasons outside
    `free_port`."""
    low = daemons._ephemeral_low()
    for port in range(low - 4000, low - 2, 2):
        taken = socket.socket()
        try:
            taken.bind(("127.0.0.1", port))
            taken.listen()
            with socket.socket() as neighbour:
                neighbour.bind(("127.0.0.1", port + 1))
        except OSError:
            taken.close()
            continue
        return taken, port
    pytest.fail("no pair of adjacent free ports below the ephemeral range")


def test_a_port_someone_listens_on_is_not_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    taken, busy = _listening_port_with_a_free_neighbour()
    with taken:
        # the pick range is narrowed to two ports, one of them busy: only the other can come back
        monkeypatch.setattr(daemons, "_ephemeral_low", lambda: busy + 2)
        monkeypatch.setattr(daemons, "_PICK_SPAN", 2)
        monkeypatch.setattr(daemons, "_handed_out", set())
        assert daemons.free_port() == busy + 1


def test_the_ephemeral_range_falls_back_to_linuxs_default_when_unreadable(tmp_path) -> None:
    assert daemons._ephemeral_low(str(tmp_path / "missing")) == 32768
    (tmp_path / "range").write_text("40000\t60999\n")
    assert daemons._ephemeral_low(str(tmp_path / "range")) == 40000
