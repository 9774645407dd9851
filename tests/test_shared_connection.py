"""A sender's transfers to one receiver share one data connection
(actors/data_pipes.py), with real node processes: each transfer attaches
to it with its own sealed Attach, a cancel of one ends only that one, and
the connection (and the send's control link) waits a while after its last
transfer for the next send there (actors/sender.py, ``IDLE_KEEP``), but is
not taken again once it dropped."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from peercrypt.testing.nodes import (
    BackgroundSend,
    NodeProcess,
    NodeStartError,
    assert_sent,
    start_cli,
    wait_until,
)

MiB = 1024 * 1024


def _restarted_at(node_factory: Callable[..., NodeProcess], ports: tuple[str, ...]) -> NodeProcess:
    """The receiver started again at its ports. The sender's kept data
    connection redials the data port meanwhile; on loopback the kernel can
    give such a dial that very port as its own (a port of the ephemeral
    range connecting to itself), which holds it until the dial's handshake
    fails: a start refused for the address in use is tried again."""

    def start() -> NodeProcess | None:
        try:
            return node_factory(*ports, name="receiver")
        except NodeStartError as exc:
            if "Address already in use" not in str(exc):
                raise
            return None

    return wait_until(start, 30.0, "the receiver started again at its ports")


def test_transfers_to_one_peer_share_a_connection_and_a_cancel_spares_the_others(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    sender, receiver = node_factory(), node_factory()
    slow = make_file(32 * MiB)  # 16 s at -r 2 MiB: cancelled while the others run
    args = ["send", slow, receiver.host, str(receiver.port), "-r", str(2 * MiB), "--json"]
    with start_cli(*args, data_dir=sender.data_dir, env=sender.env) as cli:
        try:

            def sending() -> str | None:
                rows = json.loads(sender.cli("transfers", "--json").stdout)
                return next((str(r["id"]) for r in rows if r["state"] == "sending"), None)

            ident = wait_until(sending, 15.0, "the first send to start")
            files = [make_file(4 * MiB + 5), make_file(3 * MiB + 1)]
            others = [BackgroundSend(sender, f, receiver, "-r", str(2 * MiB)) for f in files]
            # All three attached to one connection: the receiver took each one's Attach.
            receiver.wait_for_counter("receiver.data-attached", 3, timeout=20.0)
            done = sender.cli("cancel", ident)
            assert done.returncode == 0, done.describe()
            out, _ = cli.communicate(timeout=15)
            assert json.loads(out.strip().splitlines()[-1])["code"] == "cancelled"
            for path, send in zip(files, others, strict=True):
                assert_sent(receiver, send.join(), path)  # stored, the source's BLAKE3
        finally:
            cli.kill()
    assert not (receiver.inbox / slow.name).exists()
    # The connection waited after its last transfer: the next send takes it.
    last = make_file(MiB + 3)
    assert_sent(receiver, sender.send_to(last, receiver), last)
    assert receiver.wait_for_counter("receiver.data-attached", 4) == 4
    counters = sender.counters_when("sender.data-connections-reused", 1)
    assert counters["sender.data-connections"] == 1


def test_a_kept_connection_that_dropped_is_not_taken_again(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """The second send takes the first one's control link and data
    connection; the receiver restarts at the same ports (the same identity);
    the third send dials a new control link (the kept one was closed when
    it dropped: a peer gone for good is told as unreachable, not as silent)
    and arrives (its data connection is the kept one if libzmq connected it
    again, else new)."""
    sender, receiver = node_factory(), node_factory(name="receiver")
    first, second, third = (make_file(MiB + n) for n in range(3))
    assert_sent(receiver, sender.send_to(first, receiver), first)
    assert_sent(receiver, sender.send_to(second, receiver), second)
    counters = sender.counters_when("sender.data-connections-reused", 1)
    assert counters["sender.links-reused"] == 1
    assert counters["sender.data-connections"] == 1
    ports = ("--port", str(receiver.port), "--data-port", str(receiver.data_port))
    receiver.stop()
    # The sender's kept link and connection see the drop (a monitor event);
    # the link is closed at once, not redialled while kept.
    sender.wait_for_counter("sender.data-disconnects", 1)
    sender.wait_for_counter("sender.kept-links-dropped", 1)
    again = _restarted_at(node_factory, ports)
    assert (again.port, again.data_port) == (receiver.port, receiver.data_port)
    assert_sent(again, sender.send_to(third, again), third)
    counters = sender.counters_when("sender.sent", 3)
    assert counters["sender.links-reused"] == 1  # the dropped link was closed, not taken


def test_a_kept_connection_that_broke_is_closed_at_once(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """The receiver is killed after a send: the sender's kept data
    connection sees it break and is closed then, not redialled every
    DATA_RECONNECT_MS until IDLE_KEEP (30 s); the next send, to the
    receiver restarted at the same ports, connects afresh and arrives."""
    sender, receiver = node_factory(), node_factory(name="receiver")
    first, second = make_file(MiB + 1), make_file(MiB + 2)
    assert_sent(receiver, sender.send_to(first, receiver), first)
    ports = ("--port", str(receiver.port), "--data-port", str(receiver.data_port))
    receiver.kill()
    # Well before IDLE_KEEP (10 s, not less: a loaded machine); without the
    # close the counter never moves.
    counters = sender.counters_when("sender.data-idle-dropped", 1, timeout=10.0)
    assert counters["sender.data-connections"] == 1
    assert "sender.data-reconnects" not in counters  # it was not redialled
    again = _restarted_at(node_factory, ports)
    assert (again.port, again.data_port) == (receiver.port, receiver.data_port)
    assert_sent(again, sender.send_to(second, again), second)
    counters = sender.counters_when("sender.sent", 2)
    assert counters["sender.data-connections"] == 2  # a new one, not the kept one
    assert "sender.data-connections-reused" not in counters
