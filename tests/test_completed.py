"""The finished transfers a receiver remembers (peercrypt/core/completed.py):
kept ``keep`` seconds, never more than ``limit``, the oldest forgotten first."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.cli.fast import MAX_TIMEOUT
from peercrypt.core.completed import KEEP, CompletedMemory


def tid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def test_an_entry_answers_while_a_sender_may_still_repeat_its_done() -> None:
    """A sender repeats its Done for its --timeout at most: the entry outlives it."""
    assert KEEP >= MAX_TIMEOUT
    memory: CompletedMemory[str] = CompletedMemory(4)
    memory.remember(tid(1), "verified", 100.0)
    assert memory.get(tid(1), 100.0 + MAX_TIMEOUT) == "verified"
    assert memory.get(tid(1), 100.0 + KEEP) is None
    assert memory.expire(100.0 + KEEP) == 1 and len(memory) == 0
    assert memory.evicted == 0


def test_the_count_bound_forgets_the_oldest_first() -> None:
    memory: CompletedMemory[int] = CompletedMemory(2)
    for n in range(3):
        memory.remember(tid(n), n, float(n))
    assert tid(0) not in memory and memory.get(tid(1), 3.0) == 1 and memory.get(tid(2), 3.0) == 2
    assert memory.evicted == 1


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        CompletedMemory(0)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 8),
    keep=st.floats(0.5, 50.0),
    steps=st.lists(st.tuples(st.integers(0, 12), st.floats(0.0, 20.0), st.booleans()), max_size=60),
)
def test_memory_against_a_model(
    limit: int, keep: float, steps: list[tuple[int, float, bool]]
) -> None:
    """Whatever is remembered when: never more than ``limit`` entries; an
    entry answers exactly while it is younger than ``keep`` and fewer than
    ``limit`` newer ones came after it; ``evicted`` counts those forgotten
    early."""
    memory: CompletedMemory[int] = CompletedMemory(limit, keep)
    model: dict[bytes, tuple[float, int]] = {}  # tid -> (since, value), oldest first
    evicted, now = 0, 0.0
    for n, (key, dt, store) in enumerate(steps):
        now += dt
        t = tid(key)
        if store:
            model = {k: v for k, v in model.items() if now - v[0] < keep and k != t}
            while len(model) >= limit:
                del model[next(iter(model))]
                evicted += 1
            model[t] = (now, n)
            memory.remember(t, n, now)
        assert len(memory) <= limit
        assert memory.evicted == evicted
        for k in map(tid, range(13)):
            held = model.get(k)
            expected = held[1] if held is not None and now - held[0] < keep else None
            assert memory.get(k, now) == expected
