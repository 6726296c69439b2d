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


def test_a_port_someone_listens_on_is_not_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        # the pick range is narrowed to two ports, one of them busy: only the other can come back
        monkeypatch.setattr(daemons, "_ephemeral_low", lambda: busy + 2)
        monkeypatch.setattr(daemons, "_PICK_SPAN", 2)
        monkeypatch.setattr(daemons, "_handed_out", set())
        assert daemons.free_port() == busy + 1


def test_the_ephemeral_range_falls_back_to_linuxs_default_when_unreadable(tmp_path) -> None:
    assert daemons._ephemeral_low(str(tmp_path / "missing")) == 32768
    (tmp_path / "range").write_text("40000\t60999\n")
    assert daemons._ephemeral_low(str(tmp_path / "range")) == 40000
