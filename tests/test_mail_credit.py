"""What the gateway may hand on to an actor of peers' messages
(peercrypt/core/mail_credit.py) in memory, the actors' reports of what they
took (the runtime's ``InboundTaken``) between real actors, and a gossip
budget of bytes (``GOSSIP_LIMITS``)."""

from __future__ import annotations

import time
from typing import Any

import zmq
from hypothesis import given
from hypothesis import strategies as st

from peercrypt.core.answer_budget import GOSSIP_LIMITS, AnswerBudget, Verdict
from peercrypt.core.mail_credit import MailCredit, inbound_cost
from peercrypt.runtime.actor import Actor, ActorEnv
from peercrypt.runtime.supervisor import Supervisor
from peercrypt.testing.nodes import wait_until
from peercrypt.wire import codec
from peercrypt.wire.messages import Inbound, InboundTaken

LIMIT, STALE = 1000, 5.0

step_st = st.one_of(
    st.tuples(st.just("send"), st.sampled_from("ab"), st.integers(0, 700)),
    st.tuples(st.just("take"), st.sampled_from("ab"), st.integers(0, 5000)),
    st.tuples(st.just("wait"), st.just(""), st.integers(0, 3)),
    st.tuples(st.just("restart"), st.sampled_from("ab"), st.just(0)),
)


@given(st.lists(step_st, max_size=200))
def test_what_is_in_flight_never_passes_the_limit(steps: list[tuple[str, str, int]]) -> None:
    """Whatever the sends, reports, silences and restarts: never more than
    the limit in flight to an actor; a message is refused only if it would
    pass the limit while its actor reported within ``stale_after``."""
    credit = MailCredit(LIMIT, STALE)
    now = 0.0
    heard = {"a": 0.0, "b": 0.0}
    owed_since: dict[str, float] = {}
    for kind, actor, n in steps:
        if kind == "send":
            before = credit.in_flight(actor)
            if before == 0:
                owed_since[actor] = now
            ok = credit.may_send(actor, n, now)
            quiet = now - max(heard[actor], owed_since.get(actor, now))
            if before + n <= LIMIT:
                assert ok
            elif quiet < STALE:
                assert not ok
            if ok:
                assert credit.in_flight(actor) in (before + n, n)
        elif kind == "take":
            credit.taken(actor, n, now)
            heard[actor] = now
        elif kind == "wait":
            now += n
        else:
            credit.restarted(actor)
            assert credit.in_flight(actor) == 0
        assert 0 <= credit.in_flight("a") <= LIMIT and 0 <= credit.in_flight("b") <= LIMIT


def test_reports_free_room_and_a_silent_actor_is_taken_as_lost_after_a_while() -> None:
    credit = MailCredit(LIMIT, STALE)
    assert credit.may_send("d", 600, 0.0) and credit.may_send("d", 400, 0.0)
    assert not credit.may_send("d", 1, 1.0)  # full, and heard from lately
    assert not credit.may_send("e", 1001, 1.0)  # larger than the bound: never
    credit.taken("d", 600, 2.0)
    assert credit.in_flight("d") == 400 and credit.may_send("d", 600, 2.0)
    credit.taken("d", 300, 3.0)  # an older total (the proxy's was larger): kept
    assert credit.in_flight("d") == 1000
    assert not credit.may_send("d", 1, 3.0 + STALE - 0.1)
    assert credit.may_send("d", 1, 3.0 + STALE)  # silent for stale_after: lost
    assert credit.in_flight("d") == 1
    credit.taken("d", 10**9, 9.0)  # never more than was sent
    assert credit.in_flight("d") == 0
    credit.restarted("d")
    assert credit.in_flight("d") == 0 and credit.may_send("d", 1000, 9.0)


def test_gossip_is_budgeted_in_bytes_per_identity_and_for_the_node() -> None:
    budget = AnswerBudget(0.0, GOSSIP_LIMITS)
    size = 60 * 1024
    taken = sum(budget.ask(b"flooder", "10.0.0.9", 0.0, size) is Verdict.ANSWER for _ in range(100))
    assert taken * size <= GOSSIP_LIMITS.peer_burst < (taken + 1) * size
    other = budget.ask(b"honest", "10.0.0.8", 0.0, 2048)
    assert other is Verdict.ANSWER  # its own budget, and the node's has room
    later = sum(
        budget.ask(b"flooder", "10.0.0.9", 10.0, size) is Verdict.ANSWER for _ in range(100)
    )
    assert later * size <= GOSSIP_LIMITS.peer_burst


class Gateway(Actor):
    """Hands ``sizes`` Inbound messages to ``taker`` and keeps the reports;
    the first one of them restarts once it heard ``restart_at``."""

    name = "gateway"
    REPORT_TO = None

    def __init__(
        self, env: ActorEnv, sizes: list[int], reports: list[int], lives: list[int], restart_at: int
    ) -> None:
        super().__init__(env)
        self.sizes, self.reports, self.restart_at = sizes, reports, restart_at
        lives.append(len(lives))
        self.life = lives[-1]

    def setup(self) -> None:
        self.call_later(0.01, self._fire)

    def _fire(self) -> None:
        for size in self.sizes:
            msg = Inbound(route=b"r", peer=b"", peer_host="h", payload=b"x" * size)
            self.tell("taker", msg)

    def on_mail(self, msg: codec.Message) -> None:
        if isinstance(msg, InboundTaken) and msg.actor == "taker":
            self.reports.append(msg.taken)
            if self.life == 0 and msg.taken == self.restart_at:
                self.restart("a test's")


class Taker(Actor):
    name = "taker"
    REPORT_TO = None

    def __init__(self, env: ActorEnv, seen: list[int]) -> None:
        super().__init__(env)
        self.seen = seen

    def on_mail(self, msg: codec.Message) -> None:
        if isinstance(msg, Inbound):
            self.seen.append(len(msg.payload))


def test_an_actor_reports_the_bytes_of_peers_messages_it_took_from_each_gateway() -> None:
    """Running totals of what each message counts (payload, routing id and
    the overhead), after each batch; a gateway that restarts (its count
    starts at 0) gets totals from 0 again."""
    sizes = [100, 5000, 1, 60_000] * 50
    batch = sum(inbound_cost(b"x" * n, b"r") for n in sizes)
    reports: list[int] = []
    seen: list[int] = []
    lives: list[int] = []
    ctx: zmq.Context[Any] = zmq.Context()
    env = ActorEnv(context=ctx, node_uid=f"t{time.monotonic_ns()}")
    sup = Supervisor(
        env,
        [
            ("taker", lambda e: Taker(e, seen)),
            ("gateway", lambda e: Gateway(e, sizes, reports, lives, batch)),
        ],
    )
    sup.start()
    sup.run_in_background()  # restarts the gateway when it asks
    try:
        wait_until(lambda: len(seen) == 2 * len(sizes) or None, 10.0, "both batches taken")
        wait_until(lambda: reports.count(batch) == 2 or None, 10.0, "the second gateway's total")
        first = reports[: reports.index(batch) + 1]
        second = reports[len(first) :]
        assert first == sorted(first) and second == sorted(second), reports
        assert max(reports) == batch and len(lives) == 2  # from 0 again, not 2 x batch
    finally:
        assert sup.stop() is True
        ctx.term()
