"""Congestion state per destination peer, shared by every flow to it (RFC 3124).

RFC 3124's Congestion Manager: the flows from one node to one peer cross
the same path, so they share one congestion window instead of each probing
the path on its own (four flows with four windows take four times the share
and back off four times as often). The scheduler actor owns a
:class:`CongestionManager`; each aimd flow registers with its peer and QoS
weight, reports what it saw in batches (:meth:`CongestionManager.report`:
new bytes sent, bytes newly acked, losses and timeouts it detected, bytes in
flight), and is told its share of the peer's window: ``window * weight /
sum of weights`` of the peer's flows.

Pure: ``now`` passed in (only for the window's history). The controller is
the one congestion implementation (:mod:`peercrypt.core.congestion`), fed
with the peer's aggregate byte stream: ``sent`` and ``acked`` are the sums
over its flows of new bytes sent and bytes acked, so a decrease ends its
recovery once everything sent before it (by any flow) was acked. Losses come
already detected by each flow's :class:`~peercrypt.core.send_window.SendWindow`
(SACK threshold, RTO), so the shared window has no duplicate-ack counter of
its own. A peer's state lives while it has flows.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from peercrypt.core.congestion import CongestionControl, shared_for_policy
from peercrypt.core.modes import Policy

K = TypeVar("K", bound=Hashable)


@dataclass
class FlowShare:
    peer: str
    weight: int
    share: int = 0  # bytes of the peer's window this flow may have in flight
    in_flight: int = 0  # as last reported
    sent: int = 0
    acked: int = 0
    losses: int = 0
    timeouts: int = 0


@dataclass
class PeerCongestion:
    control: CongestionControl
    flows: int = 0
    sent: int = 0
    acked: int = 0

    @property
    def window(self) -> int:
        return self.control.window


@dataclass
class CongestionManager(Generic[K]):
    _flows: dict[K, FlowShare] = field(default_factory=dict)
    _peers: dict[str, PeerCongestion] = field(default_factory=dict)
    _told: dict[K, int] = field(default_factory=dict)  # the share each flow last heard

    def add(self, flow: K, peer: str, weight: int, policy: Policy) -> None:
        """A flow to ``peer`` with QoS ``weight`` (1..3). The first flow to a
        peer sets the window's parameters from its ``policy``."""
        self.remove(flow)
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = PeerCongestion(shared_for_policy(policy))
        state.flows += 1
        self._flows[flow] = FlowShare(peer, max(1, weight))
        self._divide(peer)

    def remove(self, flow: K) -> None:
        f = self._flows.pop(flow, None)
        self._told.pop(flow, None)
        if f is None:
            return
        state = self._peers[f.peer]
        state.flows -= 1
        if state.flows:
            self._divide(f.peer)
        else:
            del self._peers[f.peer]

    def report(
        self,
        flow: K,
        sent: int,
        acked: int,
        losses: int,
        timeouts: int,
        in_flight: int,
        now: float,
    ) -> None:
        """What ``flow`` saw since its last report: ``sent`` new bytes,
        ``acked`` bytes newly acknowledged, ``losses`` and ``timeouts``
        detected, ``in_flight`` bytes now unacked. Unknown flows are ignored;
        negative numbers count as 0."""
        f = self._flows.get(flow)
        if f is None:
            return
        sent, acked = max(0, sent), max(0, acked)
        losses, timeouts = max(0, losses), max(0, timeouts)
        state = self._peers[f.peer]
        f.sent += sent
        f.acked += acked
        f.losses += losses
        f.timeouts += timeouts
        f.in_flight = max(0, in_flight)
        state.sent += sent
        state.acked = min(state.sent, state.acked + acked)
        control = state.control
        control.on_sent(state.sent)
        for _ in range(min(losses, 64)):
            control.on_loss(now)
        for _ in range(min(timeouts, 64)):
            control.on_timeout(now)
        if acked:
            control.on_acked(state.acked, now)
        self._divide(f.peer)

    def _divide(self, peer: str) -> None:
        state = self._peers[peer]
        flows = [f for f in self._flows.values() if f.peer == peer]
        total = sum(f.weight for f in flows)
        for f in flows:
            f.share = state.window * f.weight // total

    # -- reading ----------------------------------------------------------------

    def share(self, flow: K) -> int | None:
        f = self._flows.get(flow)
        return None if f is None else f.share

    def changed(self) -> dict[K, int]:
        """Shares that differ from what each flow was last told (and now is)."""
        out: dict[K, int] = {}
        for flow, f in self._flows.items():
            if self._told.get(flow) != f.share:
                self._told[flow] = out[flow] = f.share
        return out

    def peer(self, peer: str) -> PeerCongestion | None:
        return self._peers.get(peer)

    def peer_of(self, flow: K) -> PeerCongestion | None:
        f = self._flows.get(flow)
        return None if f is None else self._peers[f.peer]

    def flows(self, peer: str) -> dict[K, FlowShare]:
        return {k: f for k, f in self._flows.items() if f.peer == peer}

    def peers(self) -> list[str]:
        return list(self._peers)
