"""The congestion control interface, and the node's policy for it.

A congestion controller turns what a sender observes -- what it sent, how
far the receiver's cumulative ack got, losses it detected, retransmission
timeouts -- into a window: how much may be in flight. It is pure (``now``
passed in, only to timestamp its history) and unit-agnostic: unicast feeds
byte offsets (the window is bytes), a multicast session feeds chunk counts
(the window is chunks).

:class:`~peercrypt.core.aimd.AimdWindow` is the one implementation; the
detectors of the seed are its parameters (``dupack_threshold``: duplicate
acks; ``loss_decrease``: losses the caller found by SACK or NAK;
``timeout_decrease``: retransmission timeouts). Unicast transfers
(:class:`~peercrypt.core.outgoing.OutgoingTransfer`, aimd mode) and
multicast sessions (:class:`~peercrypt.core.multicast.SessionPlan`) both
use it through this interface: to change the congestion policy, add an
implementation here and return it from :func:`shared_for_policy`/:func:`for_multicast`.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from peercrypt.core.aimd import AimdWindow
from peercrypt.core.modes import Policy


class CongestionControl(Protocol):
    """What every congestion controller offers (see the module docstring)."""

    @property
    def window(self) -> int:
        """How much may be in flight now (the caller's unit)."""
        ...

    decreases: int  # congestion responses so far
    timeouts: int
    fast_retransmits: int  # losses detected (duplicate acks, SACK, NAK)
    history: deque[tuple[float, int]]  # (now, window) samples, bounded

    def on_sent(self, end: int) -> None:
        """Everything before offset ``end`` has been sent."""

    def on_acked(self, cumulative: int, now: float) -> object:
        """The receiver holds everything before ``cumulative``."""

    def on_loss(self, now: float) -> bool:
        """The caller detected a loss; True if the window decreased."""
        ...

    def on_timeout(self, now: float) -> object:
        """A retransmission timeout."""


def shared_for_policy(policy: Policy) -> CongestionControl:
    """The window one peer's aimd flows share (in bytes; see
    :mod:`peercrypt.core.congestion_manager`). The flows' send windows
    detect losses (SACK after ``ack_threshold`` later chunks, RTO); the
    policy's detectors decide whether those shrink the window."""
    return AimdWindow.from_kb(
        policy.window_kb,
        policy.min_window_kb,
        policy.max_window_kb,
        dupack_threshold=None,
        loss_decrease=policy.dupack_detect,
        timeout_decrease=policy.timeout_detect,
    )


def for_multicast(window: int, min_window: int) -> CongestionControl:
    """A multicast session's controller in chunks: starts at ``window``, +1
    chunk per window acked by the slowest member, halved on a NAK of a first
    publication (once per round trip), never below ``min_window``. The floor
    of acks repeats whenever another member acks, so duplicate acks mean
    nothing here: only NAKs (``on_loss``) are losses."""
    return AimdWindow(
        initial=window,
        minimum=min_window,
        maximum=window,
        increase=1,
        dupack_threshold=None,
        loss_decrease=True,
        timeout_decrease=False,
    )
