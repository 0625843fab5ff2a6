"""The FedProx paper's Synthetic(α, β): simulated users whose heterogeneity is known.

Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020),
section 5.1, with its reference generator (``litian96/FedProx``,
``data/synthetic_*``). Each user k labels its records with its own model and
draws its inputs around its own centre, reproducibly from a seed:

* the model: u_k ~ N(0, α); every entry of W_k (10×60) and of b_k (10) is
  drawn from N(u_k, 1); y = argmax(softmax(W_k x + b_k)) — 10 classes;
* the inputs: B_k ~ N(0, β); every entry of v_k (60) from N(B_k, 1);
  x ~ N(v_k, Σ), Σ diagonal with Σ_jj = j^(−1.2) (j = 1…60).

α and β are standard deviations, as the reference code draws them.

What the two knobs do — measured and tested (``tests/model/test_synthetic.py``):

* **β moves users' inputs apart**: all 60 feature means of a user shift by
  B_k, so the spread of users' feature means grows with β.
* **α changes no record.** u_k is one number per user added to every entry of
  W_k and b_k, so it adds u_k·(1 + Σ_j x_j) to all ten logits alike, and the
  argmax does not move: from the same seed Synthetic(α, β) and Synthetic(0, β)
  hold the same records. This is the paper's generator as published (its
  reference code and other reimplementations draw a scalar u_k too); it is
  kept so that results compare with the paper's.
* **Users differ at every α and β**: each has its own W_k and b_k, drawn
  independently, so no two users share a labelling function; and x stays close
  to v_k, so most of a user's records fall in one or two classes. A model
  trained on other users' records predicts a new user's labels no better than
  chance (the classes are exchangeable: expected accuracy 1/10); what a user's
  own records teach is what counts.
* ``iid=True`` is the paper's Synthetic-IID control: one W, b for everyone
  (users and proxy), v = 0 — no heterogeneity at all (α and β must be 0).

How this simulation departs from the paper, for the benchmarks' protocol:

* **Records per user** follow the power law of the other simulations
  (:func:`~dmt_model.datasets.simulate_classifier_users`' sizes: Pareto shape
  ``size_shape`` 1.2, at least ``min_records`` 4, ``records_per_user`` ×
  ``n_users`` in all) rather than the paper's lognormal(4, 2) + 50.
* **Inputs are clipped** to [−8, 8] (:data:`FEATURE_BOUND`, the schema's
  bounds, which DP needs) before labelling, so y = argmax(W_k x + b_k) holds
  for the clipped x. A feature's standard deviation over all users is at most
  √(β² + 2): with β ≤ 1 no value of 4.8 million was clipped, with β = 2
  0.13 %, with β = 3 2.6 %.
* **The proxy is scarce and biased**: ``proxy_records`` records from
  ``proxy_users`` further users drawn the same way (split evenly), none of
  them a simulated user — the server's data comes from other models and other
  centres than the users'.
* Each user's records: ``test_fraction`` (25 %, at least one) are test; of the
  rest ``share_fraction`` (50 %) may be shared, the remainder never leaves the
  device — as :func:`~dmt_model.datasets.simulate_users` does.

Users, proxy and the shared IID model come from separate streams of one
:class:`numpy.random.SeedSequence` (simulation data, not a secret), so the
users' records do not change with the proxy's settings. Every record has its
own index across the simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real

import numpy as np
import pandas as pd

from dmt_model.datasets.classifier_users import _sizes
from dmt_model.datasets.users import SimulatedUser, Simulation
from dmt_privacy.errors import ValidationError
from dmt_privacy.schema import Field, Kind, Role, Schema

__all__ = [
    "FEATURE_BOUND",
    "SYNTHETIC_SCHEMA",
    "SyntheticSimulation",
    "SyntheticUser",
    "simulate_synthetic",
]

DIMENSION = 60
CLASSES = tuple(range(10))
#: The features' declared bounds are [−FEATURE_BOUND, FEATURE_BOUND]; inputs are clipped to them.
FEATURE_BOUND = 8.0
FEATURES = tuple(f"x{j}" for j in range(DIMENSION))
TARGET = "y"
#: The standard deviation of feature j (0-based) around its user's centre: √((j+1)^(−1.2)).
_SPREAD = np.arange(1, DIMENSION + 1, dtype=np.float64) ** -0.6
#: ``fresh_records``' child of the seed: the simulation spawns children 0 (users), 1 (proxy)
#: and 2 (the IID model), so 3 is a stream none of its records come from.
_FRESH_STREAM = 3

SYNTHETIC_SCHEMA = Schema(
    name="synthetic-fedprox",
    fields=(
        *(Field(name, Kind.NUMERIC, role=Role.SENSITIVE, bounds=(-FEATURE_BOUND, FEATURE_BOUND),
                grid=0.001,
                description=f"input {j + 1} of {DIMENSION}: N(v_k{j + 1}, {j + 1}^-1.2), "
                            f"clipped to ±{FEATURE_BOUND:g}")
          for j, name in enumerate(FEATURES)),
        Field(TARGET, Kind.CATEGORICAL, role=Role.TARGET, categories=CLASSES,
              description="argmax(W_k x + b_k): the class the user's own model gives x"),
    ),
)


@dataclass(frozen=True)
class SyntheticUser(SimulatedUser):
    """A simulated user of Synthetic(α, β) (``factor`` is 1: labels are never scaled)."""

    model_mean: float  # u_k, the mean of the entries of W_k and b_k (0 with iid)
    feature_mean: float  # B_k, the mean of the entries of v_k (0 with iid)


@dataclass(frozen=True)
class SyntheticSimulation(Simulation):
    """:class:`Simulation` (``spread`` is 0) of Synthetic(α, β) and its proxy's origin.

    It keeps each user's generator, so :meth:`fresh_records` can draw more records from
    the distribution a user's own come from: a model's *expected* error for that user,
    which a handful of test records only estimates.
    """

    users: tuple[SyntheticUser, ...]
    classes: tuple[int, ...]
    alpha: float
    beta: float
    iid: bool
    proxy_users: int  # how many further users the proxy's records come from
    _sources: tuple[_Source, ...] = field(default=(), repr=False, compare=False)

    def fresh_records(self, user_id: int, n: int, *, seed: int = 0) -> pd.DataFrame:
        """``n`` new records of user ``user_id``: from their own model and centre, as their
        records are, but from a stream of their own (a child of the simulation's seed that
        none of its other streams is, keyed by ``seed`` and the user's id), so they are none
        of the simulation's records and the same on every call. Frames fit
        :data:`SYNTHETIC_SCHEMA`; the index starts at 0."""
        if not self._sources:
            raise ValidationError("This simulation keeps no user generators: make it with "
                                  "simulate_synthetic to draw fresh records.")
        ids = {u.user_id for u in self.users}
        if isinstance(user_id, bool) or not isinstance(user_id, (int, np.integer)) or \
                int(user_id) not in ids:
            raise ValidationError(f"user_id must be one of the simulation's users ({min(ids)} "
                                  f"to {max(ids)}, {len(ids)} users), got {user_id!r}.")
        n = _check_whole("n", n, 1, "ask for at least one record")
        seed = _check_whole("seed", seed, 0, "pass a non-negative integer")
        stream = np.random.SeedSequence(self.seed, spawn_key=(_FRESH_STREAM, seed, int(user_id)))
        return _frame(*self._sources[int(user_id)].records(np.random.default_rng(stream), n), 0)


@dataclass(frozen=True)
class _Source:
    """One user's generator: their labelling model and the centre of their inputs."""

    weights: np.ndarray  # W_k, classes × DIMENSION
    bias: np.ndarray  # b_k
    centre: np.ndarray  # v_k
    model_mean: float
    feature_mean: float

    def records(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of ``n`` records: x clipped to the schema's bounds, y from the clipped x."""
        x = self.centre + rng.standard_normal((n, DIMENSION)) * _SPREAD
        x = np.clip(x, -FEATURE_BOUND, FEATURE_BOUND)
        return x, np.argmax(x @ self.weights.T + self.bias, axis=1)


def _source(rng: np.random.Generator, alpha: float, beta: float) -> _Source:
    """A user of Synthetic(α, β); the draws do not depend on α and β, only their scale."""
    model_mean = alpha * float(rng.standard_normal())
    weights = model_mean + rng.standard_normal((len(CLASSES), DIMENSION))
    bias = model_mean + rng.standard_normal(len(CLASSES))
    feature_mean = beta * float(rng.standard_normal())
    centre = feature_mean + rng.standard_normal(DIMENSION)
    return _Source(weights, bias, centre, model_mean, feature_mean)


def _iid_source(rng: np.random.Generator) -> _Source:
    """Synthetic-IID's one model for everyone: W, b from N(0, 1), inputs centred on 0."""
    return _Source(rng.standard_normal((len(CLASSES), DIMENSION)),
                   rng.standard_normal(len(CLASSES)), np.zeros(DIMENSION), 0.0, 0.0)


def _frame(x: np.ndarray, y: np.ndarray, start: int) -> pd.DataFrame:
    frame = pd.DataFrame(x, columns=list(FEATURES), index=pd.RangeIndex(start, start + len(y)))
    frame[TARGET] = y.astype(np.int64)
    return frame


def _check_whole(name: str, value: object, low: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValidationError(f"{name} must be an integer of at least {low}, got {value!r}; "
                              f"{what}.")
    return int(value)


def _check_scale(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not (
            math.isfinite(float(value)) and float(value) >= 0):
        raise ValidationError(f"{name} must be a finite number ≥ 0 (a standard deviation; the "
                              f"paper uses 0, 0.5 and 1), got {value!r}.")
    return float(value)


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) < 1.0:
        raise ValidationError(f"{name} must be a fraction in [0, 1), got {value!r}.")
    return float(value)


def simulate_synthetic(
    alpha: float,
    beta: float,
    *,
    n_users: int = 120,
    records_per_user: float = 14.0,
    proxy_users: int = 5,
    proxy_records: int = 300,
    test_fraction: float = 0.25,
    share_fraction: float = 0.5,
    min_records: int = 4,
    size_shape: float = 1.2,
    iid: bool = False,
    seed: int = 0,
) -> SyntheticSimulation:
    """``n_users`` users of Synthetic(``alpha``, ``beta``) and the server's proxy data from
    ``proxy_users`` other users (see the module doc); frames fit :data:`SYNTHETIC_SCHEMA`.

    ``records_per_user`` is the mean; sizes follow a power law with at least
    ``min_records`` each. ``iid=True`` is Synthetic-IID (``alpha`` and ``beta`` must be 0).
    """
    alpha, beta = _check_scale("alpha", alpha), _check_scale("beta", beta)
    if iid and (alpha or beta):
        raise ValidationError(f"Synthetic-IID shares one model and centre, so alpha and beta "
                              f"must be 0, got alpha={alpha!r}, beta={beta!r}; pass 0, 0 or "
                              "iid=False.")
    n_users = _check_whole("n_users", n_users, 1, "pass how many users to simulate")
    min_records = _check_whole("min_records", min_records, 2,
                               "a user needs one test and one training record")
    proxy_users = _check_whole("proxy_users", proxy_users, 1,
                               "the proxy's records come from users outside the simulation")
    proxy_records = _check_whole("proxy_records", proxy_records, proxy_users,
                                 f"give each of the {proxy_users} proxy users a record, or "
                                 "use fewer proxy_users")
    test_fraction = _check_fraction("test_fraction", test_fraction)
    share_fraction = _check_fraction("share_fraction", share_fraction)
    if isinstance(size_shape, bool) or not isinstance(size_shape, Real) or not (
            math.isfinite(float(size_shape)) and size_shape > 0):
        raise ValidationError(f"size_shape must be a positive number (the Pareto shape; "
                              f"smaller = more unequal users), got {size_shape!r}.")
    if isinstance(records_per_user, bool) or not isinstance(records_per_user, Real) or not (
            math.isfinite(float(records_per_user)) and records_per_user >= min_records):
        raise ValidationError(f"records_per_user must be a number of at least min_records="
                              f"{min_records} (it is the mean), got {records_per_user!r}; ask "
                              "for more records or lower min_records.")

    users_stream, proxy_stream, shared_stream = np.random.SeedSequence(seed).spawn(3)
    rng = np.random.default_rng(users_stream)
    shared = _iid_source(np.random.default_rng(shared_stream)) if iid else None
    total = round(records_per_user * n_users)  # at least n_users × min_records, checked
    sizes = _sizes(rng, n_users, total, min_records, float(size_shape))
    users: list[SyntheticUser] = []
    sources: list[_Source] = []
    start = 0
    for user_id, size in enumerate(sizes.tolist()):
        source = shared or _source(rng, alpha, beta)
        sources.append(source)
        records = _frame(*source.records(rng, size), start)
        start += size
        n_test = max(1, round(test_fraction * size))
        test, train = records.iloc[:n_test], records.iloc[n_test:]
        n_share = round(share_fraction * len(train))
        users.append(SyntheticUser(user_id, 1.0, train.iloc[:n_share], train.iloc[n_share:],
                                   test, model_mean=source.model_mean,
                                   feature_mean=source.feature_mean))

    proxy_rng = np.random.default_rng(proxy_stream)
    parts = []
    for count in np.diff(np.linspace(0, proxy_records, proxy_users + 1).round().astype(int)):
        source = shared or _source(proxy_rng, alpha, beta)
        parts.append(_frame(*source.records(proxy_rng, int(count)), start))
        start += int(count)
    proxy = pd.concat(parts)
    proxy = proxy.iloc[proxy_rng.permutation(len(proxy))]
    return SyntheticSimulation(proxy=proxy, users=tuple(users), seed=seed, spread=0.0,
                               classes=CLASSES, alpha=alpha, beta=beta, iid=iid,
                               proxy_users=proxy_users, _sources=tuple(sources))
