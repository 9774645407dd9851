"""The ``peercrypt`` command line (``peercrypt.cli:run`` is the entry point).

One module per command group: ``node`` (node, status, keygen), ``send``,
``modes`` (policy options and live mode commands), ``multicast``,
``network`` (membership commands), ``actor`` (one actor attached to a
node), ``stats`` (the statistics history), ``top`` (the live view);
``common`` holds what they share and ``app`` assembles the group.
"""

from peercrypt.cli.app import main, run

__all__ = ["main", "run"]
