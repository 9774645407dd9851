"""``peercrypt status`` in words: the latest incoming transfer as a
sentence, and no empty facts (``--json`` keeps every fact as it is)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from peercrypt.cli.status_view import incoming_text
from peercrypt.testing.nodes import NodeProcess, wait_until


def test_status_text_says_the_last_transfer_and_skips_empty_facts(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    receiver, sender = node_factory(), node_factory()
    source = make_file(10 * 1024, name="report.pdf")
    code, result = sender.send_to(source, receiver)
    assert code == 0, result
    # The receiver publishes its facts on its own beat: wait for this outcome.
    wait_until(
        lambda: (
            "last_in" in (facts := json.loads(receiver.cli("status", "--json").stdout))
            and facts["last_in"].get("stored_as") == result["stored_as"]
        ),
        15.0,
        "the receiver's last_in fact",
    )
    shown = receiver.cli("status")
    assert shown.returncode == 0, shown.describe()
    lines = shown.stdout.splitlines()
    assert f"  last_in: received report.pdf (10240 bytes) as {result['stored_as']}, verified" in (
        lines
    ), shown.stdout
    assert not [line for line in lines if line.endswith((": {}", ": []", ": "))], shown.stdout
    facts = json.loads(receiver.cli("status", "--json").stdout)
    assert facts["last_in"]["stored_as"] == result["stored_as"]
    empty = [key for key, value in facts.items() if value in ("", {}, [])]
    assert empty, facts  # there are empty facts, and the text left them out
    assert not [line for line in lines if line.split(":")[0].strip() in empty]


def test_incoming_transfers_are_shown_in_human_sizes() -> None:
    """`status`'s incoming line: each transfer's id, name and sizes to read
    at a glance (it said '(30408704 of 314572800 bytes)'); a fact it cannot
    read is shown as it is."""
    rows = json.dumps([["r1.bin", 300 << 20, 29 << 20, "in1"], ["b.bin", 512, 0, "in2"]])
    assert incoming_text(rows) == "in1 r1.bin (29.0 MiB of 300.0 MiB); in2 b.bin (0 B of 512 B)"
    assert incoming_text('[["x", "?", 1, "in3"]]') == '[["x", "?", 1, "in3"]]'
    assert incoming_text("not json") == "not json"


def test_status_says_multicast_sessions_coming_in_in_words() -> None:
    """As the unicast ones: name, progress and sender (it printed the
    fact's JSON); a fact it cannot read is shown as it came."""
    from peercrypt.cli.status_view import incoming_multicast_text

    fact = json.dumps([["mc.bin", 30 * 1024 * 1024, 18 * 1024 * 1024, "aty4-4roe-k7p3-n4d6"]])
    assert incoming_multicast_text(fact) == "mc.bin (18.0 MiB of 30.0 MiB) from aty4-4roe-k7p3-n4d6"
    assert incoming_multicast_text("[[1]]") == "[[1]]"


def test_status_says_the_last_multicast_session_in_words() -> None:
    """Its latest outcome as the unicast one's (it printed the JSON)."""
    from peercrypt.cli.status_view import _VIEWS

    last = {"seq": 2, "name": "mc.bin", "size": 9, "stored_as": "mc.1.bin", "ok": True}
    assert _VIEWS["last_multicast_in"](json.dumps(last)) == (
        "received mc.bin (9 bytes) as mc.1.bin, verified"
    )


def test_status_json_gives_numbers_lists_and_maps_as_themselves() -> None:
    """`status --json` (scripts read it with jq): a fact that is a number is
    one, one the node keeps as JSON is that list or map, the rest stays text
    (a version, an id with leading zeros, JSON that does not parse)."""
    from peercrypt.cli.status_view import typed

    numbers = ("4242", "0", "-3", "0.7", "12.50", "1.23e+03", "5e-05")
    assert [typed(v) for v in numbers] == [4242, 0, -3, 0.7, 12.5, 1230.0, 5e-05]
    assert typed('[["a.bin", 10, 2, "in1"]]') == [["a.bin", 10, 2, "in1"]]
    assert typed('{"ok": true}') == {"ok": True} and typed("{}") == {}
    assert (typed("yes", "listening"), typed("no", "listening")) == (True, False)
    assert typed("no", "host") == "no"  # (a host of that name: text, as any other)
    for text in ("0.1.0", "007", "inf", "", "on", "[not json", "w=4096 min=256", " 5", "Yes"):
        assert typed(text) == text
