"""Planted bugs: mechanisms that claim more privacy than they give. The audit must catch each."""

from __future__ import annotations

from dmt_privacy.dp import DiscreteLaplace, RandomizedResponse
from dmt_privacy.dp.categorical import krr_thresholds


class HalfNoiseLaplace(DiscreteLaplace):
    """Half the noise scale the claimed ε needs: really 2ε-DP."""

    def _scale(self) -> float:
        return super()._scale() / 2


class LargerEpsilonLaplace(DiscreteLaplace):
    """Noise calibrated to 1.5 × the claimed ε."""

    def _scale(self) -> float:
        return self.sensitivity_units / (1.5 * self.epsilon)


class BinaryKeepRandomizedResponse(RandomizedResponse):
    """k-RR that keeps the true value with the binary probability e^ε / (e^ε + 1) for any k.

    Each other value then gets (1 - p) / (k - 1): the ratio is (k - 1) e^ε, not e^ε.
    """

    def _thresholds(self) -> tuple[int, int]:
        keep_binary, _ = krr_thresholds(self.epsilon, 2)
        other = (2**64 - keep_binary) // (self.k - 1)
        return 2**64 - (self.k - 1) * other, other
