"""RequestMap: request ids of several nodes in one attached actor's id space."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from peercrypt.core.request_map import RequestMap

ops = st.lists(
    st.tuples(st.sampled_from(["in", "out", "forget"]), st.sampled_from("abc"), st.integers(0, 20)),
    max_size=200,
)


@given(ops, st.integers(1, 16))
def test_pairs_round_trip_and_never_share_a_local_id(program: list, capacity: int) -> None:
    rmap: RequestMap[str] = RequestMap(capacity)
    model: dict[tuple[str, int], int] = {}
    for op, link, request in program:
        if op == "in":
            known = model.get((link, request))
            remembered = known is not None and rmap.outward(known) == (link, request)
            local = rmap.inward(link, request)
            if remembered:
                assert known == local
            assert local not in {v for k, v in model.items() if k != (link, request)}
            model[(link, request)] = local
            assert rmap.outward(local) == (link, request)
        elif op == "out":
            rmap.outward(request)
        else:
            rmap.forget_link(link)
            model = {k: v for k, v in model.items() if k[0] != link}
        assert len(rmap) <= capacity
        # what it still remembers is exactly right
        for key, local in model.items():
            found = rmap.outward(local)
            assert found is None or found == key


def test_two_nodes_with_the_same_request_id_are_kept_apart() -> None:
    rmap: RequestMap[str] = RequestMap()
    a, b = rmap.inward("node-a", 7), rmap.inward("node-b", 7)
    assert a != b
    assert rmap.outward(a) == ("node-a", 7) and rmap.outward(b) == ("node-b", 7)
    assert rmap.inward("node-a", 7) == a


def test_least_recently_used_is_forgotten_first_and_links_are_dropped() -> None:
    rmap: RequestMap[str] = RequestMap(capacity=2)
    first, second = rmap.inward("a", 1), rmap.inward("a", 2)
    rmap.outward(first)  # used again: the second is now the oldest
    third = rmap.inward("b", 3)
    assert rmap.outward(second) is None
    assert rmap.outward(first) == ("a", 1) and rmap.outward(third) == ("b", 3)
    rmap.forget_link("a")
    assert rmap.outward(first) is None and rmap.outward(third) == ("b", 3)
    assert rmap.outward(999) is None
