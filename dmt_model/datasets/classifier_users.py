"""Simulated users for classification: each has their own label mix and, for images, a hand.

The classification counterpart of :func:`~dmt_model.datasets.simulate_users`,
reproducible from a seed:

1. Shuffle the rows; ``proxy_fraction`` (30 %) become the server's proxy data,
   the rest the user pool. Proxy records are never restyled.
2. Each user's number of records follows a power law: weights from a Pareto
   distribution of shape ``size_shape`` (smaller = more unequal), scaled so the
   users share ``n_records`` records (default: the whole pool), at least
   ``min_records`` each.
3. Each user has a label distribution drawn from Dirichlet(``alpha``, …,
   ``alpha``) over the classes: small ``alpha`` (0.1) gives users one or two
   classes, large ``alpha`` (100) nearly the pool's mix; ``alpha=None``
   draws the user's records uniformly from the pool (no label shift). Records
   are drawn without replacement; once a class runs out, a user's draws go
   to the classes left, in proportion to their distribution.
4. With an ``image`` field, each user also has a hand: a fixed rotation
   drawn from U(−``max_rotation``, ``max_rotation``) degrees and a stroke
   weight s from U(0, ``max_stroke``) (ink spreads to the 4-neighbours at s
   times its intensity), applied to every image of that user
   (:func:`restyle_image`).
5. Each user's records: ``test_fraction`` (25 %) are test; of the rest,
   ``share_fraction`` (50 %) may be shared and the remainder never leaves the
   device.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dmt_model.datasets.users import SimulatedUser, Simulation
from dmt_privacy.errors import ValidationError

__all__ = [
    "ClassifierSimulation",
    "SimulatedClassifierUser",
    "restyle_image",
    "simulate_classifier_users",
]

_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


@dataclass(frozen=True)
class SimulatedClassifierUser(SimulatedUser):
    """A simulated user of a classifier: their own label mix and hand (``factor`` is 1:
    labels are never scaled), so code written for :class:`SimulatedUser` takes them."""

    label_distribution: tuple[float, ...] = ()  # over ClassifierSimulation.classes; () if iid
    rotation: float = 0.0  # degrees, counter-clockwise; 0 without an image field
    stroke: float = 0.0  # 0 = the pen of the data set


@dataclass(frozen=True)
class ClassifierSimulation(Simulation):
    """:class:`Simulation` (``spread`` is 0) with the classes and the label-shift ``alpha``."""

    users: tuple[SimulatedClassifierUser, ...]
    classes: tuple[Hashable, ...] = ()
    alpha: float | None = None


def restyle_image(image: np.ndarray, *, rotation: float = 0.0, stroke: float = 0.0
                  ) -> np.ndarray:
    """``image`` (uint8, H×W) as another hand writes it: rotated by ``rotation`` degrees
    about its centre (bilinear, zeros outside), then with ink spread to the 4-neighbours
    at ``stroke`` times its intensity; rounded back to uint8."""
    from scipy import ndimage

    pixels = np.asarray(image, dtype=np.float64)
    if pixels.ndim != 2:
        raise ValidationError(f"restyle_image takes a grey H×W image, got shape {pixels.shape}.")
    if rotation:
        pixels = ndimage.rotate(pixels, rotation, reshape=False, order=1, mode="constant",
                                cval=0.0)
    if stroke:
        pixels = np.maximum(pixels, stroke * ndimage.grey_dilation(pixels, footprint=_CROSS))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _check(name: str, value: float, low: float, high: float, *, closed_high: bool = False
           ) -> None:
    ok = low <= value <= high if closed_high else low <= value < high
    if not ok:
        bracket = "]" if closed_high else ")"
        raise ValidationError(f"{name} must be in [{low:g}, {high:g}{bracket}, got {value!r}.")


def _sizes(rng: np.random.Generator, n_users: int, total: int, min_records: int,
           size_shape: float) -> np.ndarray:
    weights = rng.pareto(size_shape, n_users) + 1.0
    spare = total - n_users * min_records
    sizes = min_records + np.floor(weights / weights.sum() * spare).astype(int)
    sizes[np.argsort(-weights)[: total - sizes.sum()]] += 1  # hand out what flooring left
    return sizes


def _draw(rng: np.random.Generator, wanted: np.ndarray, stock: list[list[int]], size: int
          ) -> list[int]:
    """``size`` positions from the per-class ``stock`` following ``wanted``, without
    replacement; classes that ran out pass their share to the others."""
    taken: list[int] = []
    while len(taken) < size:
        left = np.array([len(s) for s in stock], dtype=float)
        mix = wanted * (left > 0)
        mix = mix / mix.sum() if mix.sum() > 0 else left / left.sum()
        counts = rng.multinomial(size - len(taken), mix)
        for k, n in enumerate(np.minimum(counts, left.astype(int))):
            taken.extend(stock[k][:n])
            del stock[k][:n]
    return taken


def simulate_classifier_users(
    data: pd.DataFrame,
    *,
    target: str,
    n_users: int = 20,
    proxy_fraction: float = 0.3,
    alpha: float | None = 0.5,
    test_fraction: float = 0.25,
    share_fraction: float = 0.5,
    n_records: int | None = None,
    min_records: int = 12,
    size_shape: float = 1.5,
    image: str | None = None,
    max_rotation: float = 12.0,
    max_stroke: float = 0.75,
    seed: int = 0,
) -> ClassifierSimulation:
    """Split ``data`` into proxy data and ``n_users`` simulated users (see module doc)."""
    for name, value in (("proxy_fraction", proxy_fraction), ("test_fraction", test_fraction),
                        ("share_fraction", share_fraction)):
        _check(name, value, 0.0, 1.0)
    _check("max_rotation", max_rotation, 0.0, 180.0, closed_high=True)
    _check("max_stroke", max_stroke, 0.0, 1.0, closed_high=True)
    if alpha is not None and not (np.isfinite(alpha) and alpha > 0):
        raise ValidationError(f"alpha must be a positive number or None, got {alpha!r}.")
    if not size_shape > 0:
        raise ValidationError(f"size_shape must be positive, got {size_shape!r}.")
    if min_records < 2:
        raise ValidationError(f"min_records must be at least 2 (one test, one train record), "
                              f"got {min_records!r}.")
    for column in (target, image):
        if column is not None and column not in data.columns:
            raise ValidationError(f"Column {column!r} is missing; the protocol needs it.")
    rng = np.random.default_rng(seed)
    shuffled = data.iloc[rng.permutation(len(data))]
    n_proxy = round(proxy_fraction * len(data))
    proxy, pool = shuffled.iloc[:n_proxy], shuffled.iloc[n_proxy:]
    total = len(pool) if n_records is None else n_records
    if not n_users * min_records <= total <= len(pool):
        raise ValidationError(
            f"n_users={n_users} × min_records={min_records} records must fit in n_records="
            f"{total}, at most the pool's {len(pool)}; use fewer users or more records.")
    classes = tuple(sorted(data[target].unique().tolist()))
    labels = pool[target].to_numpy()
    stock = [np.flatnonzero(labels == c).tolist() for c in classes]
    sizes = _sizes(rng, n_users, total, min_records, size_shape)
    order = list(range(len(pool)))
    users = []
    for user_id, size in enumerate(sizes):
        if alpha is None:
            wanted: np.ndarray | None = None
            positions = order[:size]
            del order[:size]
        else:
            wanted = rng.dirichlet(np.full(len(classes), alpha))
            positions = _draw(rng, wanted, stock, int(size))
        rotation = float(rng.uniform(-max_rotation, max_rotation)) if image else 0.0
        stroke = float(rng.uniform(0.0, max_stroke)) if image else 0.0
        records = pool.iloc[positions].copy()
        if image is not None:
            records[image] = [restyle_image(v, rotation=rotation, stroke=stroke)
                              for v in records[image]]
        records = records.iloc[rng.permutation(len(records))]
        n_test = max(1, round(test_fraction * len(records)))
        test, train = records.iloc[:n_test], records.iloc[n_test:]
        n_share = round(share_fraction * len(train))
        mix = () if wanted is None else tuple(float(p) for p in wanted)
        users.append(SimulatedClassifierUser(
            user_id, 1.0, train.iloc[:n_share], train.iloc[n_share:], test,
            label_distribution=mix, rotation=rotation, stroke=stroke))
    return ClassifierSimulation(proxy=proxy, users=tuple(users), seed=seed, spread=0.0,
                                classes=classes, alpha=alpha)
