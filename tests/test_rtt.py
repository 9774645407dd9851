"""Tests for the RFC 6298 estimator in peercrypt.core.rtt."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.rtt import ALPHA, BETA, K, RttEstimator


def test_constants_are_rfc_6298() -> None:
    assert (ALPHA, BETA, K) == (1 / 8, 1 / 4, 4)


def test_before_any_sample_rto_is_initial() -> None:
    est = RttEstimator()
    assert est.rto == 1.0
    assert est.srtt is None
    assert est.rttvar is None
    assert est.samples == 0


def test_initial_rto_is_clamped_into_bounds() -> None:
    assert RttEstimator(initial_rto=0.01).rto == 0.2
    assert RttEstimator(initial_rto=100.0).rto == 60.0
    assert RttEstimator(initial_rto=3.0).rto == 3.0


def test_first_sample_sets_srtt_and_half_rttvar() -> None:
    est = RttEstimator()
    est.sample(0.5)
    assert est.srtt == 0.5
    assert est.rttvar == 0.25
    # RTO = SRTT + max(G, K * RTTVAR) = 0.5 + 1.0
    assert est.rto == pytest.approx(1.5, abs=1e-12)
    assert est.samples == 1


def test_second_sample_matches_hand_computed_rfc_values() -> None:
    est = RttEstimator()
    est.sample(0.5)
    est.sample(0.3)
    # RTTVAR = 3/4 * 0.25 + 1/4 * |0.5 - 0.3| = 0.1875 + 0.05
    assert est.rttvar == pytest.approx(0.2375, abs=1e-12)
    # SRTT = 7/8 * 0.5 + 1/8 * 0.3 = 0.4375 + 0.0375
    assert est.srtt == pytest.approx(0.475, abs=1e-12)
    # RTO = 0.475 + 4 * 0.2375
    assert est.rto == pytest.approx(1.425, abs=1e-12)
    assert est.samples == 2


def test_third_sample_matches_hand_computed_rfc_values() -> None:
    est = RttEstimator()
    for r in (0.5, 0.3, 0.9):
        est.sample(r)
    # RTTVAR = 0.75 * 0.2375 + 0.25 * |0.475 - 0.9| = 0.178125 + 0.10625
    assert est.rttvar == pytest.approx(0.284375, abs=1e-12)
    # SRTT = 0.875 * 0.475 + 0.125 * 0.9 = 0.415625 + 0.1125
    assert est.srtt == pytest.approx(0.528125, abs=1e-12)
    assert est.rto == pytest.approx(0.528125 + 4 * 0.284375, abs=1e-12)


def test_rttvar_uses_old_srtt() -> None:
    # RFC 6298 2.3: RTTVAR must be updated with the SRTT from before this sample.
    est = RttEstimator()
    est.sample(1.0)
    est.sample(0.0)
    assert est.rttvar == pytest.approx(0.75 * 0.5 + 0.25 * 1.0, abs=1e-12)
    assert est.srtt == pytest.approx(0.875, abs=1e-12)


def test_rto_lower_bound_applies() -> None:
    est = RttEstimator()
    est.sample(0.01)  # 0.01 + 4 * 0.005 = 0.03 < 0.2
    assert est.rto == 0.2


def test_rto_upper_bound_applies() -> None:
    est = RttEstimator()
    est.sample(100.0)
    assert est.rto == 60.0


def test_granularity_floor_on_variance_term() -> None:
    est = RttEstimator(min_rto=0.01, granularity=0.001)
    for _ in range(60):
        est.sample(0.1)
    # RTTVAR decays to ~0, so RTO -> SRTT + G
    assert est.rttvar is not None
    assert est.rttvar < 0.00025
    assert est.rto == pytest.approx(0.101, abs=1e-9)


def test_zero_sample_is_accepted() -> None:
    est = RttEstimator()
    est.sample(0.0)
    assert est.srtt == 0.0
    assert est.rttvar == 0.0
    assert est.rto == 0.2


def test_negative_sample_raises_and_changes_nothing() -> None:
    est = RttEstimator()
    with pytest.raises(ValueError, match="rtt sample"):
        est.sample(-0.001)
    assert est.samples == 0
    assert est.srtt is None


@pytest.mark.parametrize(("min_rto", "max_rto"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_invalid_bounds_raise(min_rto: float, max_rto: float) -> None:
    with pytest.raises(ValueError, match="min_rto"):
        RttEstimator(min_rto=min_rto, max_rto=max_rto)


def test_backoff_doubles_and_is_capped() -> None:
    est = RttEstimator()
    seen = []
    for _ in range(8):
        est.backoff()
        seen.append(est.rto)
    assert seen == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_backoff_then_sample_recomputes_from_estimates() -> None:
    est = RttEstimator()
    est.sample(0.5)
    est.backoff()
    est.backoff()
    assert est.rto == pytest.approx(6.0, abs=1e-12)
    est.sample(0.5)
    # RTTVAR = 0.75 * 0.25 + 0 ; SRTT = 0.5 ; RTO = 0.5 + 4 * 0.1875
    assert est.rto == pytest.approx(1.25, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(st.floats(min_value=0.0, max_value=1000.0), st.none()),
        max_size=40,
    )
)
def test_rto_always_within_bounds(events: list[float | None]) -> None:
    est = RttEstimator(min_rto=0.2, max_rto=60.0)
    n_samples = 0
    for ev in events:
        if ev is None:
            before = est.rto
            est.backoff()
            assert est.rto == min(60.0, 2 * before)
        else:
            est.sample(ev)
            n_samples += 1
        assert 0.2 <= est.rto <= 60.0
    assert est.samples == n_samples


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=1, max_size=30))
def test_matches_reference_recurrence(samples: list[float]) -> None:
    est = RttEstimator(min_rto=0.0001, max_rto=1e6)
    srtt = samples[0]
    rttvar = samples[0] / 2
    for r in samples[1:]:
        rttvar = 0.75 * rttvar + 0.25 * abs(srtt - r)
        srtt = 0.875 * srtt + 0.125 * r
    for r in samples:
        est.sample(r)
    assert est.srtt == pytest.approx(srtt, rel=1e-9, abs=1e-12)
    assert est.rttvar == pytest.approx(rttvar, rel=1e-9, abs=1e-12)
    expected = max(0.0001, srtt + max(0.001, 4 * rttvar))
    assert est.rto == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_a_spurious_timeout_makes_the_rto_cover_the_late_round_trip() -> None:
    est = RttEstimator(min_rto=0.2)
    for _ in range(20):
        est.sample(0.1)
    assert est.rto < 0.3
    est.spurious_timeout(1.0)  # RFC 4015: SRTT >= the sample, RTTVAR >= half of it
    assert est.srtt == pytest.approx(1.0) and est.rttvar == pytest.approx(0.5)
    assert est.rto == pytest.approx(3.0)
    est.spurious_timeout(0.5)  # never lowers them
    assert est.rto == pytest.approx(3.0)
    with pytest.raises(ValueError):
        est.spurious_timeout(-1.0)
