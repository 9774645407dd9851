"""CongestionManager: one window per destination peer, shared by weight."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.scheduler import SchedulerActor
from peercrypt.core.congestion_manager import CongestionManager
from peercrypt.core.modes import Policy
from peercrypt.crypto.identity import load_or_create_identity, network_server_keys, new_network_key
from peercrypt.runtime.actor import ActorEnv
from peercrypt.settings import NodeSettings
from peercrypt.wire import codec
from peercrypt.wire.messages import FlowEnd, FlowReport, FlowStart, FlowWindow

KB = 1024
POLICY = Policy(mode="aimd", window_kb=1200, min_window_kb=60, max_window_kb=2400)


def test_flows_to_one_peer_share_one_window_by_weight() -> None:
    m: CongestionManager[int] = CongestionManager()
    for flow, weight in ((1, 1), (2, 2), (3, 3)):
        m.add(flow, "p:1", weight, POLICY)
    m.add(9, "q:1", 1, POLICY)
    peer = m.peer("p:1")
    assert peer is not None and peer.window == 1200 * KB
    assert [m.share(f) for f in (1, 2, 3)] == [200 * KB, 400 * KB, 600 * KB]
    assert m.share(9) == 1200 * KB  # another peer: its own window
    assert m.changed() == {1: 200 * KB, 2: 400 * KB, 3: 600 * KB, 9: 1200 * KB}
    assert m.changed() == {}  # told once
    m.remove(2)
    assert m.changed() == {1: 300 * KB, 3: 900 * KB}


def test_a_loss_seen_by_any_flow_shrinks_every_share_once_per_round_trip() -> None:
    m: CongestionManager[int] = CongestionManager()
    m.add(1, "p", 1, POLICY)
    m.add(2, "p", 1, POLICY)
    m.report(1, sent=600 * KB, acked=0, losses=0, timeouts=0, in_flight=600 * KB, now=0.0)
    m.report(2, sent=600 * KB, acked=0, losses=1, timeouts=0, in_flight=600 * KB, now=0.1)
    assert m.share(1) == m.share(2) == 300 * KB
    # the other flow's loss in the same round trip: no second decrease
    m.report(1, sent=0, acked=100 * KB, losses=1, timeouts=1, in_flight=500 * KB, now=0.2)
    peer = m.peer("p")
    assert peer is not None and peer.window == 600 * KB and peer.control.decreases == 1
    # everything sent before the decrease acked (by both flows): recovery over, growth again
    m.report(1, sent=0, acked=500 * KB, losses=0, timeouts=0, in_flight=0, now=0.3)
    m.report(2, sent=0, acked=600 * KB, losses=0, timeouts=0, in_flight=0, now=0.3)
    m.report(2, sent=100 * KB, acked=100 * KB, losses=0, timeouts=0, in_flight=0, now=0.4)
    assert peer.window > 600 * KB
    flows = m.flows("p")
    assert flows[1].losses == 1 and flows[2].losses == 1 and flows[1].timeouts == 1


def test_detectors_off_keep_the_window() -> None:
    m: CongestionManager[int] = CongestionManager()
    quiet = Policy(mode="aimd", timeout_detect=False, dupack_detect=False)
    m.add(1, "p", 1, quiet)
    m.report(1, sent=10**6, acked=0, losses=5, timeouts=5, in_flight=10**6, now=0.0)
    peer = m.peer("p")
    assert peer is not None and peer.control.decreases == 0
    assert peer.window == quiet.window_kb * KB


def test_unknown_flows_and_bad_numbers_are_harmless() -> None:
    m: CongestionManager[int] = CongestionManager()
    m.report(7, sent=1, acked=1, losses=1, timeouts=1, in_flight=1, now=0.0)
    m.remove(7)
    m.add(1, "p", 1, POLICY)
    m.report(1, sent=-5, acked=10**12, losses=-1, timeouts=-1, in_flight=-1, now=0.0)
    peer = m.peer("p")
    assert peer is not None and peer.acked == peer.sent == 0
    m.remove(1)
    assert m.peer("p") is None and m.peers() == []


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(1, 3), min_size=1, max_size=8),
    events=st.lists(
        st.tuples(st.integers(0, 7), st.integers(0, 10**6), st.integers(0, 10**6), st.booleans()),
        max_size=50,
    ),
)
def test_shares_always_add_up_to_the_window_in_proportion(
    weights: list[int], events: list[tuple[int, int, int, bool]]
) -> None:
    m: CongestionManager[int] = CongestionManager()
    for flow, weight in enumerate(weights):
        m.add(flow, "p", weight, POLICY)
    for now, (flow, sent, acked, loss) in enumerate(events):
        m.report(flow % len(weights), sent, acked, int(loss), 0, sent, float(now))
        peer = m.peer("p")
        assert peer is not None
        assert 60 * KB <= peer.window <= 2400 * KB
        assert peer.acked <= peer.sent
        shares = [m.share(f) or 0 for f in range(len(weights))]
        assert peer.window - len(weights) < sum(shares) <= peer.window
        for f, w in enumerate(weights):
            assert abs(shares[f] - peer.window * w / sum(weights)) < 1


# -- the scheduler actor keeps it (driven by its handlers, in this thread) -------------


def test_scheduler_shares_one_window_per_peer_and_forgets_a_restarted_senders_flows(
    tmp_path: Path,
) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    env = ActorEnv(context=ctx, node_uid=f"cm{time.monotonic_ns()}")
    inbox = ctx.socket(zmq.PULL)  # the sender's mailbox: what the scheduler tells it
    inbox.linger = 0
    inbox.bind(env.address("sender"))
    settings = NodeSettings(
        data_dir=tmp_path,
        inbox=tmp_path / "inbox",
        identity=load_or_create_identity(tmp_path),
        server_keys=network_server_keys(new_network_key()),
    )
    scheduler = SchedulerActor(env, settings)

    def start(request: int, priority: int, peer: str) -> FlowStart:
        return FlowStart(
            request=request, priority=priority, rate=0, burst=0, peer=peer, congestion=True,
            window_kb=1200, min_window_kb=60, max_window_kb=2400,
        )  # fmt: skip

    def told() -> dict[int, int]:
        shares = {}
        while inbox.poll(200):
            msg = codec.decode(inbox.recv())
            assert isinstance(msg, FlowWindow)
            shares[msg.request] = msg.nbytes
        return shares

    try:
        scheduler.on_mail(start(1, 1, "a:1"))
        scheduler.on_mail(start(2, 2, "a:1"))
        scheduler.on_mail(start(3, 3, "a:1"))
        scheduler.on_mail(start(4, 1, "b:1"))
        assert told() == {1: 200 * KB, 2: 400 * KB, 3: 600 * KB, 4: 1200 * KB}
        facts = json.loads(scheduler._congestion_facts())
        assert facts["a:1"]["window"] == 1200 * KB and len(facts["a:1"]["flows"]) == 3
        scheduler.on_mail(
            FlowReport(request=2, sent=10**6, acked=0, losses=1, timeouts=0, in_flight=10**6)
        )
        assert told() == {1: 100 * KB, 2: 200 * KB, 3: 300 * KB}  # one window halved for all
        scheduler.on_mail(FlowEnd(request=3))
        assert told() == {1: 200 * KB, 2: 400 * KB}
        scheduler.on_actor_restarted("sender")  # its transfers are gone
        assert scheduler.congestion.peers() == []
        assert json.loads(scheduler._congestion_facts()) == {}
    finally:
        for sock in scheduler._sockets:
            sock.close(linger=0)
        inbox.close()
        ctx.term()
