"""The test fixture's free port: below the kernel's ephemeral range, so that
no outgoing connection of any process takes it between the pick and the
node's bind (a fresh-clone run once failed that way: a node could not
listen on the port the test had just found free)."""

from __future__ import annotations

import socket

from peercrypt.testing.nodes import EPHEMERAL_RANGE, FREE_PORTS, LOCALHOST, free_port


def test_a_free_port_is_bindable_and_below_the_ephemeral_range() -> None:
    low = int(EPHEMERAL_RANGE.read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(low - FREE_PORTS <= port < low for port in ports), ports
    assert len(ports) > 1  # picked at random, not one port for every test
    for port in ports:
        with socket.socket() as s:
            s.bind((LOCALHOST, port))  # nothing holds it


def test_a_free_port_is_never_one_that_is_bound() -> None:
    """Every free port of the range held: the pick is none of them (it falls
    back to one the kernel gives)."""
    held = []
    try:
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
        for port in range(low - FREE_PORTS, low):
            s = socket.socket()
            try:
                s.bind((LOCALHOST, port))
            except OSError:
                s.close()
                continue
            held.append(s)
        taken = {s.getsockname()[1] for s in held}
        for _ in range(5):
            assert free_port() not in taken
    finally:
        for s in held:
            s.close()
