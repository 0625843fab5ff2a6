"""The exact (digit-by-digit) sampler draws all its digits at once and keeps every draw.

``RandomSource.log_uniform_rows`` must read the same words in the same order as that many
successive ``log_uniform_and_bit`` calls, and return the same numbers, also when a word's
exponent bits are all zero and it continues with fresh words (about one word in 2,048).
The references below are the one-call-a-digit samplers it replaced.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from dmt_privacy.dp import DiscreteLaplace, SeededInsecureSource
from dmt_privacy.dp.numeric import discrete_gaussian_noise, discrete_laplace_noise
from dmt_privacy.dp.random import RandomSource

pytestmark = pytest.mark.filterwarnings("ignore::dmt_privacy.dp.InsecureRandomnessWarning")


def _reference_geometric(source: RandomSource, n: int, lam: float, limit: float) -> np.ndarray:
    out = np.zeros(n, dtype=np.int64)
    i = 0
    while True:
        x = (2.0**i) * lam
        if 2.0**i > limit and x > 200.0:
            break
        log_q = -x - math.log1p(math.exp(-x))
        log_u, _ = source.log_uniform_and_bit(n)
        out += (log_u < log_q).astype(np.int64) << np.int64(i)
        i += 1
        if i >= 62:
            break
    return out


def _reference_laplace(source: RandomSource, n: int, scale: float, limit: float) -> np.ndarray:
    return (_reference_geometric(source, n, 1.0 / scale, limit)
            - _reference_geometric(source, n, 1.0 / scale, limit))


class _Scripted(RandomSource):
    """PCG64's words, with the exponent bits (the top 11) of chosen words set to zero, counted
    from the first word drawn: a word that continues with fresh words, where we want it."""

    def __init__(self, seed: int, zero_at: set[int]) -> None:
        self._bits = np.random.PCG64(seed)
        self._zero_at = zero_at
        self.drawn = 0

    def words(self, n: int) -> np.ndarray:
        w = np.asarray(self._bits.random_raw(n), dtype=np.uint64)
        for at in range(self.drawn, self.drawn + n):
            if at in self._zero_at:
                w[at - self.drawn] &= np.uint64((1 << 53) - 1)
        self.drawn += n
        return w


@pytest.mark.parametrize("n", [0, 1, 3, 7, 64])
@pytest.mark.parametrize("scale,limit", [(0.3, 20.0), (17.0, 800.0), (3e5, 3e7), (2e9, 2e11)])
def test_the_exact_laplace_draws_are_those_of_one_call_a_digit(n, scale, limit):
    for seed in range(20):
        new, old = SeededInsecureSource(seed), SeededInsecureSource(seed)
        drawn = discrete_laplace_noise(new, n, scale, exact=True, limit=limit)
        np.testing.assert_array_equal(drawn, _reference_laplace(old, n, scale, limit))
        # and the stream is left where the reference left it
        np.testing.assert_array_equal(new.words(4), old.words(4))


@pytest.mark.parametrize("zero_at", [
    {0}, {5}, {6}, {7}, {0, 1, 2}, {13, 14, 15, 16}, {41}, {3, 30, 31, 90, 91, 92},
    set(range(7, 7 + 30)),  # a row's first word and the extra words after it
    {6} | set(range(7, 31)),  # a word whose 24 extra rounds all come up zero: the cap
    {6} | set(range(7, 40)),  # and zero words beyond the cap, read as the next row's
])
def test_words_that_continue_with_fresh_words_are_read_in_the_same_order(zero_at):
    n, scale, limit = 7, 40.0, 4000.0
    for seed in range(5):
        new, old = _Scripted(seed, zero_at), _Scripted(seed, zero_at)
        drawn = discrete_laplace_noise(new, n, scale, exact=True, limit=limit)
        np.testing.assert_array_equal(drawn, _reference_laplace(old, n, scale, limit))
        assert new.drawn == old.drawn


def test_the_draws_are_those_of_the_sampler_before_the_change():
    """Pinned from the one-call-a-digit sampler (cb1d81f), which the references above only
    rewrite: the same seeds give the same noise, to the last unit."""
    digest = hashlib.sha256()
    for seed, n, scale, limit in [(11, 50, 3e5, 3e7), (12, 7, 17.0, 800.0),
                                  (13, 3000, 2e9, 2e11)]:
        noise = discrete_laplace_noise(SeededInsecureSource(seed), n, scale, exact=True,
                                       limit=limit)
        digest.update(noise.astype("<i8").tobytes())
    digest.update(discrete_gaussian_noise(SeededInsecureSource(14), 100, 30.0,
                                          exact=True).astype("<i8").tobytes())
    assert digest.hexdigest() == ("e33707e97b892f9163c1db8e427e16e6"
                                  "e441c7b29078f0174c776ccf6ef698bf")
    assert discrete_laplace_noise(SeededInsecureSource(11), 5, 3e5, exact=True,
                                  limit=3e7).tolist() == [257393, -198210, -239005, 194661,
                                                          -450451]


def test_long_rows_are_drawn_a_block_at_a_time(monkeypatch):
    """Rows longer than a block come one a draw; the words and numbers stay the same."""
    from dmt_privacy.dp import random as random_module

    for block in (1, 5, 16, 4096):
        monkeypatch.setattr(random_module, "_ROW_BLOCK_WORDS", block)
        for seed in range(4):
            zeros = {2, 3, 17, 40, 41, 42}
            new, old = _Scripted(seed, zeros), _Scripted(seed, zeros)
            sizes = []
            words = new.words
            new.words = lambda k, words=words, sizes=sizes: sizes.append(k) or words(k)  # type: ignore
            got = new.log_uniform_rows(9, 6)
            want = [old.log_uniform_and_bit(6)[0] for _ in range(9)]
            np.testing.assert_array_equal(got, np.array(want))
            assert new.drawn == old.drawn
            assert max(sizes) <= max(6, block - block % 6)  # (a block is whole rows)


@pytest.mark.parametrize("rows,n", [(0, 4), (4, 0), (1, 1), (3, 5), (30, 9)])
def test_log_uniform_rows_are_successive_single_draws(rows, n):
    for seed in range(10):
        zeros = {seed * 3, seed * 3 + n, 4 * n + 1}
        new, old = _Scripted(seed, zeros), _Scripted(seed, zeros)
        got = new.log_uniform_rows(rows, n)
        assert got.shape == (rows, n) and got.dtype == np.float64
        want = [old.log_uniform_and_bit(n)[0] for _ in range(rows)]
        np.testing.assert_array_equal(got, np.array(want).reshape(rows, n))
        assert new.drawn == old.drawn


def test_the_mechanisms_that_use_the_exact_sampler_draw_the_same_noise():
    """A perturber's field at a large scale, and the discrete Gaussian's exact proposals."""
    mech = DiscreteLaplace(epsilon=0.1, bounds=(0.0, 1e10), grid=1.0, random_state=3)
    assert mech.exact_sampler
    limit = float(mech.window_units[1] - mech.window_units[0])
    np.testing.assert_array_equal(
        mech.noise_units(50), _reference_laplace(SeededInsecureSource(3), 50,
                                                 mech.scale_units, limit))
    for seed in range(5):
        np.testing.assert_array_equal(
            discrete_gaussian_noise(SeededInsecureSource(seed), 200, 30.0, exact=True),
            _reference_gaussian(SeededInsecureSource(seed), 200, 30.0))


def _reference_gaussian(source: RandomSource, n: int, sigma: float) -> np.ndarray:
    t = math.floor(sigma) + 1
    s2 = sigma * sigma
    out = np.empty(n, dtype=np.int64)
    pending = np.arange(n)
    while pending.size:
        y = _reference_laplace(source, pending.size, t, 64.0 * t)
        log_u, _ = source.log_uniform_and_bit(pending.size)
        accept = log_u < -((np.abs(y) - s2 / t) ** 2) / (2.0 * s2)
        out[pending[accept]] = y[accept]
        pending = pending[~accept]
    return out
