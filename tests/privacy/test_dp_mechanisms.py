"""dmt_privacy.dp mechanisms: grid exactness, distributions against diffprivlib, the audit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_fixtures import BinaryKeepRandomizedResponse, HalfNoiseLaplace, LargerEpsilonLaplace
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dmt_privacy.dp import (
    DiscreteGaussian,
    DiscreteLaplace,
    InsecureRandomnessWarning,
    RandomizedResponse,
    SeededInsecureSource,
    SystemSource,
    UnaryEncoding,
)
from dmt_privacy.dp.numeric import discrete_laplace_noise
from dmt_privacy.testing import audit_ldp

P_MIN = 1e-6  # goodness-of-fit tests fail a correct sampler with probability at most this


def on_grid(values: np.ndarray, grid: float) -> np.ndarray:
    """True where a float64 value is exactly float(k) * grid for an integer k."""
    units = np.rint(values / grid)
    return units.astype(np.int64).astype(np.float64) * grid == values


# --- the grid ---------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    low=st.floats(-1e4, 1e4),
    width=st.floats(1e-3, 1e4),
    grid_exp=st.integers(-12, 3),
    grid_mant=st.sampled_from([1.0, 0.1, 0.25, 0.3, 0.7, 1.5]),
    epsilon=st.floats(0.05, 10),
    rounding=st.sampled_from(["stochastic", "nearest"]),
    gaussian=st.booleans(),
    values=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50),
)
def test_every_output_lies_on_the_stated_grid(low, width, grid_exp, grid_mant, epsilon,
                                              rounding, gaussian, values):
    grid = grid_mant * 2.0**grid_exp
    bounds = (low, low + width)
    if width / grid > 2**30:
        return
    if gaussian:
        mech = DiscreteGaussian(epsilon=epsilon, delta=1e-6, bounds=bounds, grid=grid,
                                rounding=rounding)
    else:
        mech = DiscreteLaplace(epsilon=epsilon, bounds=bounds, grid=grid, rounding=rounding)
    x = np.array(values * 20)
    out = mech.randomise(x)
    assert out.dtype == np.float64
    assert on_grid(out, grid).all()
    units = np.rint(out / grid)
    assert (units >= mech.window_units[0]).all() and (units <= mech.window_units[1]).all()


def test_textbook_float_laplace_is_caught_by_the_grid_check():
    rng = np.random.default_rng(1)
    out = rng.laplace(0.5, 1.0, 1000)
    assert not on_grid(out, 2**-10).any()


def test_sensitivity_is_the_width_rounded_up_to_grid_units():
    assert DiscreteLaplace(epsilon=1, bounds=(0, 1), grid=0.1).sensitivity_units == 10
    assert DiscreteLaplace(epsilon=1, bounds=(0.3, 0.9), grid=0.1).sensitivity_units == 6
    assert DiscreteLaplace(epsilon=1, bounds=(0.05, 0.92), grid=0.1).sensitivity_units == 10
    m = DiscreteLaplace(epsilon=2, bounds=(17, 90), grid=1)
    assert m.sensitivity_units == 73
    assert m.scale_units == pytest.approx(73 / 2, rel=1e-8)


def test_stochastic_rounding_is_unbiased_and_nearest_is_deterministic():
    mech = DiscreteLaplace(epsilon=1, bounds=(0, 10), grid=1)
    x = np.full(200_000, 3.3)
    snapped = mech.snap(x) * 1.0
    se = snapped.std() / math.sqrt(x.size)
    assert abs(snapped.mean() - 3.3) < 5 * se
    assert set(np.unique(snapped)) == {3.0, 4.0}
    nearest = DiscreteLaplace(epsilon=1, bounds=(0, 10), grid=1, rounding="nearest")
    assert (nearest.snap(x) == 3).all()
    assert (nearest.snap(np.array([-5.0, 50.0])) == [0, 10]).all()  # clamped


# --- distributions ---------------------------------------------------------------------------
def _pmf_dlap(z: np.ndarray, scale: float) -> np.ndarray:
    p = math.exp(-1 / scale)
    return (1 - p) / (1 + p) * p ** np.abs(z)


@pytest.mark.parametrize("scale", [0.3, 1.0, 7.5, 1000.0])
def test_discrete_laplace_matches_its_pmf(scale):
    z = discrete_laplace_noise(SystemSource(), 1_000_000, scale)
    half = max(3, int(6 * scale))
    if scale >= 100:  # a wide support: 40 bins
        bins = np.linspace(-half, half, 41).round()
        observed = np.histogram(z, bins=np.r_[-np.inf, bins[1:-1], np.inf])[0]
        ks = np.arange(-40 * half, 40 * half + 1)
        idx = np.searchsorted(bins[1:-1], ks, side="right")
        expected = np.bincount(idx, weights=_pmf_dlap(ks, scale), minlength=observed.size)
    else:  # every value from -half + 1 to half - 1, and the two tails
        edges = np.arange(-half, half + 1)
        observed = np.bincount(np.clip(z, -half, half) + half, minlength=2 * half + 1)
        p = math.exp(-1 / scale)
        tail = p**half / (1 + p)  # P(Z <= -half)
        expected = np.r_[tail, _pmf_dlap(edges[1:-1], scale), tail]
    assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > P_MIN
    assert abs(z.mean()) < 6 * math.sqrt(2 * math.exp(-1 / scale)) / (1 - math.exp(-1 / scale)) \
        / math.sqrt(z.size)


def _two_sample(a: np.ndarray, b: np.ndarray, bins: int = 30) -> float:
    edges = np.unique(np.quantile(np.r_[a, b], np.linspace(0, 1, bins + 1)[1:-1]))
    ca = np.bincount(np.searchsorted(edges, a, side="right"), minlength=edges.size + 1)
    cb = np.bincount(np.searchsorted(edges, b, side="right"), minlength=edges.size + 1)
    keep = (ca + cb) > 0
    return stats.chi2_contingency(np.vstack([ca[keep], cb[keep]]))[1]


def test_discrete_laplace_matches_diffprivlib_geometric():
    from diffprivlib.mechanisms import Geometric

    ours = DiscreteLaplace(epsilon=0.7, bounds=(0, 5), grid=1)
    ref = Geometric(epsilon=0.7, sensitivity=5)
    n = 30_000
    a = ours.randomise(np.full(n, 2.0))
    b = np.array([ref.randomise(2) for _ in range(n)], dtype=np.float64)
    assert _two_sample(a, b) > P_MIN


def test_discrete_gaussian_calibration_and_samples_match_diffprivlib():
    from diffprivlib.mechanisms import GaussianDiscrete

    for eps, delta, sens in [(1.0, 1e-6, 1), (0.5, 1e-5, 3), (2.0, 1e-4, 10)]:
        ours = DiscreteGaussian(epsilon=eps, delta=delta, bounds=(0, sens), grid=1)
        ref = GaussianDiscrete(epsilon=eps, delta=delta, sensitivity=sens)
        assert ours.scale_units == pytest.approx(ref._scale, rel=1e-5)
    ours = DiscreteGaussian(epsilon=0.5, delta=1e-5, bounds=(0, 3), grid=1)
    ref = GaussianDiscrete(epsilon=0.5, delta=1e-5, sensitivity=3)
    n = 20_000
    a = ours.randomise(np.full(n, 1.0))
    b = np.array([ref.randomise(1) for _ in range(n)], dtype=np.float64)
    assert _two_sample(a, b) > P_MIN


def test_krr_probabilities_match_diffprivlib_exponential_and_are_exact():
    from diffprivlib.mechanisms import Exponential

    for eps, k in [(0.1, 2), (1.0, 4), (3.0, 9), (8.0, 50)]:
        mech = RandomizedResponse(epsilon=eps, categories=list(range(k)))
        utility = [1.0] + [0.0] * (k - 1)
        ref = np.diff(np.r_[0.0, Exponential._find_probabilities(eps, 1, utility, True, None)])
        assert mech.keep_probability == pytest.approx(ref[0], rel=1e-12)
        assert mech.flip_probability == pytest.approx(ref[1], rel=1e-12)
        assert mech._keep + (k - 1) * mech._other == 2**64
        assert mech.realized_epsilon <= eps
        assert mech.realized_epsilon == pytest.approx(eps, rel=1e-12)


def test_krr_and_oue_frequencies_match_their_probabilities():
    n = 200_000
    mech = RandomizedResponse(epsilon=1.0, categories=list("abcde"))
    out = mech.randomise(np.full(n, "c", dtype=object))
    counts = np.array([np.count_nonzero(out == c) for c in "abcde"])
    q = mech.flip_probability
    expected = np.array([q, q, mech.keep_probability, q, q]) * n
    assert stats.chisquare(counts, expected).pvalue > P_MIN
    oue = UnaryEncoding(epsilon=1.0, categories=list("abcde"))
    bits = oue.randomise(np.full(n, "b", dtype=object))
    assert bits.shape == (n, 5) and set(np.unique(bits)) <= {0, 1}
    for j in range(5):
        prob = 0.5 if j == 1 else oue.flip_probability
        assert stats.binomtest(int(bits[:, j].sum()), n, prob).pvalue > P_MIN
    assert oue.realized_epsilon <= 1.0


def test_random_state_is_reproducible_and_marked_insecure():
    with pytest.warns(InsecureRandomnessWarning, match="NOT cryptographically secure"):
        a = DiscreteLaplace(epsilon=1, bounds=(0, 1), grid=0.01, random_state=7)
    with pytest.warns(InsecureRandomnessWarning):
        b = DiscreteLaplace(epsilon=1, bounds=(0, 1), grid=0.01, random_state=7)
    x = np.linspace(0, 1, 100)
    assert (a.randomise(x) == b.randomise(x)).all()
    assert not a.source.secure and "NOT SECURE" in a.source.name
    assert SystemSource().secure
    assert isinstance(a.source, SeededInsecureSource)


def test_secure_source_words_look_uniform():
    w = SystemSource().words(100_000)
    assert w.dtype == np.uint64
    top = np.bincount((w >> np.uint64(60)).astype(np.int64), minlength=16)
    assert stats.chisquare(top).pvalue > P_MIN
    log_u, bit = SystemSource().log_uniform_and_bit(200_000)
    assert (log_u < 0).all()
    assert stats.kstest(np.exp(log_u), "uniform").pvalue > P_MIN
    assert stats.binomtest(int(bit.sum()), bit.size).pvalue > P_MIN


# --- the audit: every shipped mechanism passes at 100k samples per side ------------------------
SAMPLES = 100_000


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 4.0])
def test_audit_passes_discrete_laplace(epsilon):
    mech = DiscreteLaplace(epsilon=epsilon, bounds=(0, 10), grid=1)
    result = audit_ldp(mech, epsilon, inputs=[0.0, 10.0], samples=SAMPLES)
    assert result.passed and result.epsilon_lower_bound <= epsilon
    assert result.epsilon_lower_bound > 0.7 * epsilon  # the events found are nearly tight


def test_audit_passes_discrete_laplace_on_a_fine_grid():
    mech = DiscreteLaplace(epsilon=1.0, bounds=(0, 1), grid=2**-10)
    result = audit_ldp(mech, 1.0, inputs=[0.0, 1.0, 0.5], samples=SAMPLES)
    assert result.passed and result.epsilon_lower_bound > 0.7


def test_audit_passes_discrete_gaussian():
    mech = DiscreteGaussian(epsilon=1.0, delta=1e-5, bounds=(0, 10), grid=1)
    assert audit_ldp(mech, 1.0, delta=1e-5, inputs=[0.0, 10.0], samples=SAMPLES).passed


@pytest.mark.parametrize("epsilon,k", [(0.5, 2), (1.0, 4), (3.0, 9)])
def test_audit_passes_randomized_response(epsilon, k):
    mech = RandomizedResponse(epsilon=epsilon, categories=list(range(k)))
    result = audit_ldp(mech, epsilon, inputs=[0, 1, k - 1], samples=SAMPLES)
    assert result.passed and result.epsilon_lower_bound > 0.8 * epsilon


@pytest.mark.parametrize("epsilon,k", [(1.0, 4), (2.0, 9)])
def test_audit_passes_unary_encoding(epsilon, k):
    mech = UnaryEncoding(epsilon=epsilon, categories=list(range(k)))
    result = audit_ldp(mech, epsilon, inputs=[0, 1, 2], samples=SAMPLES)
    assert result.passed and result.epsilon_lower_bound > 0.7 * epsilon


def test_audit_with_fixed_events_from_the_caller():
    mech = DiscreteLaplace(epsilon=1.0, bounds=(0, 10), grid=1)

    def high(y):
        return y >= 10

    def low(y):
        return y <= 0

    result = audit_ldp(mech, 1.0, inputs=[0.0, 10.0], events=[high, low], samples=SAMPLES)
    assert result.passed and result.n_tests == 2 * 2 * 2


# --- ... and fails the planted bugs ---------------------------------------------------------
@pytest.mark.parametrize("bug", [HalfNoiseLaplace, LargerEpsilonLaplace])
@pytest.mark.parametrize("epsilon", [0.5, 1.0, 2.0])
def test_audit_fails_miscalibrated_laplace(bug, epsilon):
    mech = bug(epsilon=epsilon, bounds=(0, 10), grid=1)
    with pytest.raises(AssertionError, match="audit_ldp FAILED"):
        audit_ldp(mech, epsilon, inputs=[0.0, 10.0], samples=SAMPLES)


def test_audit_fails_half_noise_on_a_fine_grid():
    mech = HalfNoiseLaplace(epsilon=1.0, bounds=(0, 1), grid=2**-10)
    result = audit_ldp(mech, 1.0, inputs=[0.0, 1.0], samples=SAMPLES, raise_on_failure=False)
    assert not result.passed and result.epsilon_lower_bound > 1.0


@pytest.mark.parametrize("epsilon,k", [(0.5, 3), (1.0, 4), (2.0, 9)])
def test_audit_fails_randomized_response_with_binary_keep_probability(epsilon, k):
    mech = BinaryKeepRandomizedResponse(epsilon=epsilon, categories=list(range(k)))
    with pytest.raises(AssertionError, match="audit_ldp FAILED"):
        audit_ldp(mech, epsilon, inputs=[0, 1, 2], samples=SAMPLES)


def test_audit_fails_a_claim_below_the_real_epsilon():
    mech = UnaryEncoding(epsilon=1.0, categories=list(range(4)))
    result = audit_ldp(mech, 0.6, inputs=[0, 1], samples=SAMPLES, raise_on_failure=False)
    assert not result.passed and 0.6 < result.epsilon_lower_bound <= 1.0
    assert "ε ≥" in result.summary()


def test_audit_rejects_nonsense_arguments():
    mech = DiscreteLaplace(epsilon=1.0, bounds=(0, 10), grid=1)
    with pytest.raises(ValueError, match="epsilon"):
        audit_ldp(mech, -1.0, inputs=[0.0, 10.0])
    with pytest.raises(ValueError, match="two distinct inputs"):
        audit_ldp(mech, 1.0, inputs=[0.0])
    with pytest.raises(ValueError, match="outputs for"):
        audit_ldp(lambda v: v[:5], 1.0, inputs=[0.0, 1.0], samples=1000)
