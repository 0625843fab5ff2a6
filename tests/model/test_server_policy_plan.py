"""A server policy's plan is what devices anonymize with: as fitted, its classes end at the
proxy records' values, and a device's record beyond them is suppressed."""

import warnings

import numpy as np
import pandas as pd
import pytest

from dmt_model.server import ServerPolicy
from dmt_privacy.anonymity import KAnonymizer
from dmt_privacy.schema import Field, Schema

FIELDS = (Field("age", "numeric", role="quasi-identifier", bounds=(0.0, 120.0)),
          Field("city", "categorical", role="quasi-identifier", categories=("a", "b", "c", "d")),
          Field("y", "numeric", role="target", bounds=(-10.0, 10.0)))


def _proxy() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"age": rng.integers(25, 70, 200).astype(float),
                         "city": rng.choice(["a", "b", "c"], 200), "y": rng.normal(size=200)})


# `dmt policy init --plan` ships the plan widened to the schema (20a2055); a policy built in
# Python took the plan as given, silently: a device's record of age 80, or of city 'd', was
# suppressed by every device, and nothing said so.
def test_a_policy_whose_plan_is_as_fitted_says_devices_suppress_beyond_its_ends():
    schema = Schema(FIELDS)
    fitted = KAnonymizer(["age", "city"], k=5).fit(_proxy()).plan_
    device = pd.DataFrame({"age": [80.0, 40.0], "city": ["a", "d"], "y": 0.0})
    assert len(fitted.apply(device).suppressed) == 2
    with pytest.warns(UserWarning, match=r"as fitted.*plan\.widened_to\(schema\)"):
        ServerPolicy(schema, min_k=5, plan=fitted)
    widened = fitted.widened_to(schema)
    assert len(widened.apply(device).suppressed) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ServerPolicy(schema, min_k=5, plan=widened)
    unbounded = Schema((Field("age", "numeric", role="quasi-identifier"), *FIELDS[1:]))
    with pytest.warns(UserWarning, match=r"'age'.*no bounds"):
        ServerPolicy(unbounded, min_k=5, plan=fitted)
