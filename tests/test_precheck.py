"""The shell's pre-send check of several targets (peercrypt/cli/precheck.py)
against a crafted control socket: the answers a real node gives only when
swamped (health's limit on checks at once, control's on requests)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from peercrypt.cli import precheck
from peercrypt.client import ControlClient
from peercrypt.testing.fake_control import WAIT, FakeControl
from peercrypt.wire.network_messages import CheckResult


def _result(request: int, code: str, reason: str = "") -> dict[str, object]:
    return {"request": request, "code": code, "reason": reason}


def _checked(data_dir: Path, targets: list[str], out: dict[str, CheckResult]) -> threading.Thread:
    def run() -> None:
        with ControlClient.for_data_dir(data_dir) as client:
            out.update(precheck.check_targets(client, targets, budget=30.0))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_target_the_node_was_too_busy_to_check_has_no_verdict(tmp_path: Path) -> None:
    """Health's `busy` says nothing of the target (it was told unreachable
    and left out of the send); control's `error` (no more requests taken)
    is one check without a verdict, which names none: the others are
    waited for, and the wait ends once only refused ones are left (not
    after the budget, 30 s here)."""
    fake = FakeControl(tmp_path / "data")
    try:
        out: dict[str, CheckResult] = {}
        thread = _checked(tmp_path / "data", ["a:1", "b:2", "c:3"], out)
        asked = [fake.next() for _ in range(3)]
        assert [t for _, t, _ in asked] == ["check-request"] * 3
        answers = [("ok", ""), ("busy", "too many checks running"), ("unreachable", "refused")]
        for (route, _, fields), (code, reason) in zip(asked, answers, strict=True):
            fake.answer(route, "check-result", _result(fields["request"], code, reason))
        thread.join(WAIT)
        assert not thread.is_alive()
        assert {t: r.code for t, r in out.items()} == {"a:1": "ok", "c:3": "unreachable"}

        out.clear()
        began = time.monotonic()
        thread = _checked(tmp_path / "data", ["a:1", "b:2", "c:3"], out)
        asked = [fake.next() for _ in range(3)]
        route = asked[0][0]
        fake.answer(route, "error", {"code": "busy", "reason": "too many requests in progress"})
        fake.answer(route, "check-result", _result(asked[0][2]["request"], "ok"))
        fake.answer(route, "check-result", _result(asked[2][2]["request"], "unreachable"))
        thread.join(WAIT)
        assert not thread.is_alive() and time.monotonic() - began < WAIT
        assert {t: r.code for t, r in out.items()} == {"a:1": "ok", "c:3": "unreachable"}
    finally:
        fake.close()
