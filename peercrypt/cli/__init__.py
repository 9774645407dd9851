"""The ``peercrypt`` command line (``peercrypt.cli:run`` is the entry point).

One module per command group: ``node`` (node, keygen), ``status``, ``send``,
``modes`` (policy options and live mode commands), ``multicast``,
``network`` (membership commands), ``actor`` (one actor attached to a
node), ``stats`` (the statistics history), ``top`` (the live view);
``common`` holds what they share and ``app`` assembles the group. ``fast``
runs the plainest ``status`` and ``send`` lines without click (the entry
point tries it first); ``follow``, ``send_report``, ``status_view`` and
``echo`` are what it shares with the click commands.
"""

from __future__ import annotations

import sys
from typing import Any


def run() -> None:
    """The ``peercrypt`` entry point: the fast path when it takes the line,
    else the click group (:func:`peercrypt.cli.app.run`)."""
    from peercrypt.cli import fast

    code = fast.run(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from peercrypt.cli.app import run as run_group

    run_group()


def __getattr__(name: str) -> Any:
    if name == "main":  # the click group, imported when asked for
        from peercrypt.cli.app import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["main", "run"]
