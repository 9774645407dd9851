"""A stop request set from a signal handler."""

from __future__ import annotations


class StopFlag:
    """Set by a SIGINT/SIGTERM handler, read by the supervisor's loop (which
    the signal wakes through the signal module's wake-up fd).

    A plain attribute, no lock: a handler runs between two bytecodes of the
    main thread, so one that takes a lock (``threading.Event.set`` does) can
    interrupt its own earlier call holding that lock when a second signal
    follows the first, and wait for itself forever (a data-plane process got
    SIGTERM twice as its node died, and hung so)."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set
