"""Round-trip time estimation and retransmission timeout (RFC 6298).

Pure: samples and times are passed in, nothing reads a clock. All times are
seconds as floats.

The estimator follows RFC 6298 section 2 exactly (alpha = 1/8, beta = 1/4,
K = 4, clock granularity G) with two documented deviations that suit a
LAN-first file mover: the lower bound is configurable (default 0.2 s instead
of 1 s, as Linux does) and Karn's rule is left to the caller, which simply
does not feed samples taken from retransmitted chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALPHA = 1 / 8
BETA = 1 / 4
K = 4


@dataclass
class RttEstimator:
    """SRTT/RTTVAR/RTO state of one path.

    ``rto`` starts at ``initial_rto`` until the first sample arrives;
    :meth:`backoff` doubles it after a timeout (RFC 6298 5.5), capped at
    ``max_rto``; the next sample recomputes it from SRTT and RTTVAR.
    """

    initial_rto: float = 1.0
    min_rto: float = 0.2
    max_rto: float = 60.0
    granularity: float = 0.001
    srtt: float | None = None
    rttvar: float | None = None
    rto: float = field(init=False)
    samples: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.min_rto <= self.max_rto:
            raise ValueError("need 0 < min_rto <= max_rto")
        self.rto = self._clamp(self.initial_rto)

    def _clamp(self, value: float) -> float:
        return min(self.max_rto, max(self.min_rto, value))

    def sample(self, rtt: float) -> None:
        """Feed one RTT measurement (seconds, >= 0) from a chunk sent once."""
        if rtt < 0:
            raise ValueError("rtt sample must be >= 0")
        if self.srtt is None or self.rttvar is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - rtt)
            self.srtt = (1 - ALPHA) * self.srtt + ALPHA * rtt
        self.samples += 1
        self.rto = self._clamp(self.srtt + max(self.granularity, K * self.rttvar))

    def reset_backoff(self) -> None:
        """Undo :meth:`backoff` (the path is known to work again): the RTO
        from SRTT and RTTVAR, or the initial one before any sample."""
        if self.srtt is None or self.rttvar is None:
            self.rto = self._clamp(self.initial_rto)
        else:
            self.rto = self._clamp(self.srtt + max(self.granularity, K * self.rttvar))

    def spurious_timeout(self, rtt: float) -> None:
        """A retransmission timeout turned out spurious: ``rtt`` (an ack of a
        chunk sent once, before the timeout) came after the RTO. The Eifel
        response (RFC 4015): SRTT and RTTVAR at least what that sample says,
        so the RTO (>= 3x the late round trip) holds over the next samples
        instead of firing again at the next such delay."""
        if rtt < 0:
            raise ValueError("rtt sample must be >= 0")
        self.srtt = max(self.srtt or 0.0, rtt)
        self.rttvar = max(self.rttvar or 0.0, rtt / 2)
        self.rto = self._clamp(self.srtt + max(self.granularity, K * self.rttvar))

    def backoff(self) -> None:
        """Double the RTO after a retransmission timeout (bounded by max_rto)."""
        self.rto = self._clamp(self.rto * 2)
