"""How ``status`` shows a running node: its fingerprint and pid, its facts
and counters (or all of it as one JSON object).

Light on purpose (no click): the fast path (:mod:`peercrypt.cli.fast`) and
the ``status`` command (:mod:`peercrypt.cli.status`) both show it with this.
"""

from __future__ import annotations

import json
import re
from typing import Any

from peercrypt.cli.echo import echo
from peercrypt.sizes import readable
from peercrypt.wire.local_messages import StatusReply


def show(reply: StatusReply, as_json: bool) -> None:
    """Print ``reply`` on stdout. The fingerprint is the one the node
    reports: it loaded this data dir's identity (no key is made here)."""
    if as_json:
        facts = {key: typed(value, key) for key, value in reply.node.items()}
        lines = [json.dumps({"running": True, **facts, "counters": reply.counters})]
    else:
        fp = reply.node.get("fingerprint", "")
        lines = [f"fingerprint {fp}", f"node: running (pid {reply.node.get('pid')})"]
        for key in sorted(reply.node):
            value = reply.node[key]
            if key in ("fingerprint", "pid") or value in ("", "{}", "[]"):
                continue  # shown above, or nothing to show (--json has every fact)
            shown = _VIEWS.get(key, str)(value)
            lines.append(f"  {key}: {shown}")
        lines += [f"  {key} = {reply.counters[key]}" for key in sorted(reply.counters)]
    echo("\n".join(lines))


_YES_NO = {"yes": True, "no": False}
YES_NO_FACTS = frozenset({"listening"})  # the node's facts that are a yes or a no
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def typed(fact: str, key: str = "") -> Any:
    """A node's fact (text on the wire) as ``status --json`` gives it: a
    number as a number, a list or map the node wrote as JSON as itself, the
    rest as text (``"pid": 4242``, ``"flows": [...]``, ``"mode": "aimd"``);
    a yes-or-no fact's yes or no as true or false (``"listening": true``;
    not any text: a host named ``no`` stays one)."""
    if key in YES_NO_FACTS and fact in _YES_NO:
        return _YES_NO[fact]
    number = _NUMBER.fullmatch(fact)
    if number:
        # (a value written with :g is 1.23e+03 past 999 with 3 digits: a number too)
        return float(fact) if number.group(1) or number.group(2) else int(fact)
    if fact[:1] in ("[", "{"):
        try:
            return json.loads(fact)
        except ValueError:
            return fact
    return fact


def describe_outcome(last: dict[str, Any]) -> str:
    """The receiver's latest outcome (its ``last_in`` fact) in words."""
    if last.get("ok"):
        return (
            f"received {last.get('name')} ({last.get('size')} bytes) as "
            f"{last.get('stored_as')}, verified"
        )
    return f"receiving {last.get('name')} failed: {last.get('reason')}"


def _last_in(text: str) -> str:
    try:
        last = json.loads(text)
    except ValueError:
        return text
    return describe_outcome(last) if isinstance(last, dict) else text


def incoming_text(text: str) -> str:
    """The receiver's running transfers, each with the id `cancel` takes."""
    try:
        rows = json.loads(text)
        return "; ".join(f"{r[3]} {r[0]} ({readable(r[2])} of {readable(r[1])})" for r in rows)
    except (ValueError, TypeError, IndexError, KeyError):
        return text


def incoming_multicast_text(text: str) -> str:
    """The multicast sessions coming in: name, progress and sender each."""
    try:
        rows = json.loads(text)
        return "; ".join(f"{r[0]} ({readable(r[2])} of {readable(r[1])}) from {r[3]}" for r in rows)
    except (ValueError, TypeError, IndexError, KeyError):
        return text


def rate_cap(text: str) -> str:
    """The node's rate cap in human units (``--json`` keeps the bytes/s)."""
    return readable(int(text), rate=True) if text.isdigit() and int(text) else "none"


_VIEWS = {
    "last_in": _last_in,
    "last_multicast_in": _last_in,
    "incoming": incoming_text,
    "incoming_multicast": incoming_multicast_text,
    "max_rate": rate_cap,
}
