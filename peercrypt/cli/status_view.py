"""How ``status`` shows a running node: its fingerprint and pid, its facts
and counters (or all of it as one JSON object).

Light on purpose (no click): the fast path (:mod:`peercrypt.cli.fast`) and
the ``status`` command (:mod:`peercrypt.cli.status`) both show it with this.
"""

from __future__ import annotations

import json

from peercrypt.cli.echo import echo
from peercrypt.wire.local_messages import StatusReply


def show(reply: StatusReply, as_json: bool) -> None:
    """Print ``reply`` on stdout. The fingerprint is the one the node
    reports: it loaded this data dir's identity (no key is made here)."""
    if as_json:
        lines = [json.dumps({"running": True, **reply.node, "counters": reply.counters})]
    else:
        fp = reply.node.get("fingerprint", "")
        lines = [f"fingerprint {fp}", f"node: running (pid {reply.node.get('pid')})"]
        lines += [
            f"  {key}: {reply.node[key]}"
            for key in sorted(reply.node)
            if key not in ("fingerprint", "pid")
        ]
        lines += [f"  {key} = {reply.counters[key]}" for key in sorted(reply.counters)]
    echo("\n".join(lines))
