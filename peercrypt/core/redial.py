"""When a connection the node dials may be made again after its port
guard closed it (core/port_guard.py).

Pure: no sockets, no clock (``now`` is passed in). libzmq reconnects a
dialled socket on its own as soon as its connection ends, so a peer that
floods the connection would be read (and closed) again and again, each
time costing the node up to its bound in memory and the CPU to take what
libzmq queued. The owner of such a socket disconnects it instead and
connects again after :meth:`Redial.closed`'s delay: 1 s, doubling at each
close up to 60 s; a connection that lived ``calm`` seconds before it was
closed starts again at 1 s (the peer was honest long enough).
"""

from __future__ import annotations

from peercrypt.core.backoff import Backoff

REDIAL_INITIAL = 1.0
REDIAL_MAX = 60.0
REDIAL_CALM = 60.0


class Redial:
    """The pauses of one dialled socket (see the module docs)."""

    def __init__(
        self,
        initial: float = REDIAL_INITIAL,
        maximum: float = REDIAL_MAX,
        calm: float = REDIAL_CALM,
    ) -> None:
        self._backoff = Backoff(initial, max_delay=maximum, max_retries=None, rng=None)
        self.calm = calm
        self._since: float | None = None  # when it connected again, if it did

    def connected(self, now: float) -> None:
        """The owner connected the socket again at ``now``."""
        self._since = now

    def closed(self, now: float) -> float:
        """The guard closed the socket's connection at ``now``: seconds to
        wait before connecting again."""
        if self._since is not None and now - self._since >= self.calm:
            self._backoff.reset()
        self._since = None
        delay = self._backoff.next_delay()
        assert delay is not None  # unlimited
        return delay
