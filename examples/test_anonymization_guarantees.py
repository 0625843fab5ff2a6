"""A test of anonymization guarantees, as a project using dmt would write it.

Run: .venv/bin/python -m pytest examples/test_anonymization_guarantees.py
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dmt_privacy.anonymity import KAnonymizer
from dmt_privacy.testing import assert_k_anonymous, assert_l_diverse


def patients(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.integers(18, 90, n),
        "zip": rng.choice(["02139", "02140", "02141", "02142"], n),
        "sex": rng.choice(["F", "M"], n),
        "diagnosis": rng.choice(["flu", "asthma", "diabetes", "none"], n),
    }).sample(frac=1.0, random_state=seed)  # a shuffled index, as real data has


def test_our_release_is_5_anonymous_and_2_diverse():
    quasi_identifiers = ["age", "zip", "sex"]
    released = KAnonymizer(quasi_identifiers=quasi_identifiers, sensitive="diagnosis", k=5,
                           l=2).fit_transform(patients())
    assert_k_anonymous(released, quasi_identifiers, 5)
    assert_l_diverse(released, quasi_identifiers, "diagnosis", 2)
