"""LocalDPPerturber: a scikit-learn transformer that perturbs the fields of records on a device.

Per-field ε allocation; numeric fields with the schema's bounds and grid
(:mod:`dmt_privacy.dp.numeric`), categorical fields with k-RR or OUE
(:mod:`dmt_privacy.dp.categorical`). Every call is one release: it yields a
:class:`ReleaseReceipt` and, when a :class:`PrivacyLedger` is attached,
charges it before any noise is drawn.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from dmt_privacy.dp._checks import check_delta, check_epsilon
from dmt_privacy.dp.categorical import RandomizedResponse, UnaryEncoding
from dmt_privacy.dp.ledger import UNACCOUNTED, PrivacyLedger, Unaccounted
from dmt_privacy.dp.numeric import DiscreteGaussian, DiscreteLaplace
from dmt_privacy.dp.random import resolve_source
from dmt_privacy.dp.receipt import FieldReceipt, ReleaseReceipt
from dmt_privacy.errors import SchemaError, ValidationError
from dmt_privacy.schema import Kind, Schema

__all__ = ["LocalDPPerturber", "Release", "release_epsilon"]

_NUMERIC = {"laplace": "laplace", "discrete_laplace": "laplace",
            "gaussian": "gaussian", "discrete_gaussian": "gaussian"}
_CATEGORICAL = {"k_rr": "k_rr", "krr": "k_rr", "randomized_response": "k_rr",
                "oue": "oue", "unary_encoding": "oue"}
_UNITS = ("user", "record")
_REMAINDERS = ("error", "drop", "passthrough")


def _max_multiplicity(frame: pd.DataFrame) -> int:
    """How many times the most repeated row of ``frame`` (by value) occurs."""
    if len(frame) <= 1:
        return len(frame)
    hashed = pd.util.hash_pandas_object(frame.astype(object), index=False).to_numpy()
    return int(np.unique(hashed, return_counts=True)[1].max())


def release_epsilon(frame: pd.DataFrame, epsilon: Mapping[str, float], delta: Mapping[str, float]
                    | None = None, *, privacy_unit: str = "user") -> tuple[float, float]:
    """The (ε, δ) one release of ``frame`` costs under ``privacy_unit``.

    ``"user"``: every record of the release belongs to the one user whose
    ledger pays, so the cost is ``n_records × Σε`` (and ``n_records × Σδ``):
    basic sequential composition over the user's records and fields.
    ``"record"``: each record is protected on its own and records are assumed
    distinct, so the cost is ``Σε`` times the largest number of identical rows
    (by value, over the released fields): a duplicated record reveals as much
    as that many releases of it, and is charged so.
    """
    eps = math.fsum(float(v) for v in epsilon.values())
    dlt = math.fsum(float(v) for v in (delta or {}).values())
    if privacy_unit == "user":
        factor = len(frame)
    elif privacy_unit == "record":
        factor = _max_multiplicity(frame[list(epsilon)])
    else:
        raise ValidationError(f"privacy_unit must be one of {_UNITS!r}, got {privacy_unit!r}.")
    return factor * eps, factor * dlt


@dataclass(frozen=True, eq=False)
class Release:
    """The perturbed records and the receipt of the release that produced them."""

    data: pd.DataFrame
    receipt: ReleaseReceipt


#: Checks of ``sklearn.utils.estimator_checks`` that feed a numpy array to fit or transform.
_ARRAY_CHECKS = (
    "check_fit_score_takes_y", "check_estimators_overwrite_params",
    "check_dont_overwrite_parameters", "check_estimators_fit_returns_self",
    "check_readonly_memmap_input", "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit", "check_estimators_dtypes", "check_complex_data",
    "check_dtype_object", "check_estimators_empty_data_messages", "check_pipeline_consistency",
    "check_estimators_nan_inf", "check_estimators_pickle", "check_f_contiguous_array_estimator",
    "check_transformer_data_not_an_array", "check_transformer_general",
    "check_transformer_preserve_dtypes", "check_methods_sample_order_invariance",
    "check_methods_subset_invariance", "check_fit2d_1sample", "check_fit2d_1feature",
    "check_dict_unchanged", "check_fit_idempotent", "check_fit_check_is_fitted",
    "check_n_features_in", "check_fit2d_predict1d",
)


class LocalDPPerturber(TransformerMixin, BaseEstimator):
    """Perturb the fields of records with local differential privacy before they leave a device.

    Parameters
    ----------
    schema:
        States each field's kind, and the bounds and grid of numeric fields or
        the categories of categorical ones. Bounds are required, never inferred.
    epsilon:
        Mapping ``field -> ε`` (each > 0). Exactly these fields are perturbed;
        what happens to a DataFrame's other columns is ``remainder``'s choice.
    delta:
        Mapping ``field -> δ`` for fields using the Gaussian mechanism.
    mechanism:
        Mapping ``field -> name``: ``"laplace"`` (default for numeric) or
        ``"gaussian"``; ``"k_rr"`` (default for categorical) or ``"oue"``
        (output columns ``"<field>=<category>"`` of 0/1).
    rounding:
        ``"stochastic"`` (default; unbiased) or ``"nearest"`` snapping to the grid.
    ledger:
        Required. The user's :class:`PrivacyLedger`; each
        :meth:`perturb`/:meth:`transform` call charges it before drawing noise
        and refuses with :class:`BudgetExceededError` past the budget.
        ``ledger=UNACCOUNTED`` (:data:`dmt_privacy.dp.UNACCOUNTED`) releases
        with no accounting at all: simulations and benchmarks only. ``None``
        is refused at :meth:`fit`.
    privacy_unit:
        ``"user"`` (default): user-level DP. The ledger is one user's and every
        record of a release is that user's, so a release costs
        ``n_records × Σε`` (``n_records × Σδ``): what the user loses when all
        their records, duplicates included, are compared with none of them.
        ``"record"``: record-level DP, a weaker promise: each record is
        protected on its own; a release costs ``Σε`` times the largest number
        of identical rows in it (a duplicate costs what it reveals).
    random_state:
        ``None`` (default): noise from the OS CSPRNG. An int seeds numpy's
        PCG64: NOT SECURE, reproducible tests only (warns; receipts say so).
    remainder:
        The columns of a DataFrame that have no ε: ``"error"`` (default)
        refuses them; ``"drop"`` leaves them out of the output;
        ``"passthrough"`` copies them to the output UNPERTURBED, in their
        place (as after a :class:`~dmt_privacy.anonymity.KAnonymizer` in a
        ``Pipeline``); the receipt covers the perturbed fields only.

    scikit-learn: ``clone`` and ``copy.deepcopy`` keep the SAME ledger (a
    ledger is an account, never copied), so every clone that ``GridSearchCV``
    or ``cross_validate`` makes charges it. Pickling follows
    :meth:`PrivacyLedger.__reduce__`. Only DataFrames are accepted: the checks
    of ``sklearn.utils.estimator_checks`` that feed arrays are declared by
    :meth:`_expected_failed_checks`.
    """

    def __init__(
        self,
        schema: Schema,
        *,
        epsilon: Mapping[str, float],
        delta: Mapping[str, float] | None = None,
        mechanism: Mapping[str, str] | None = None,
        rounding: str = "stochastic",
        ledger: PrivacyLedger | Unaccounted | None = None,
        privacy_unit: str = "user",
        random_state: Any = None,
        remainder: str = "error",
    ) -> None:
        self.schema = schema
        self.epsilon = epsilon
        self.delta = delta
        self.mechanism = mechanism
        self.rounding = rounding
        self.ledger = ledger
        self.privacy_unit = privacy_unit
        self.random_state = random_state
        self.remainder = remainder

    # --- fit ----------------------------------------------------------------------
    def fit(self, X: Any = None, y: Any = None) -> LocalDPPerturber:
        """Validate the parameters against the schema and build the mechanisms.

        ``X``, when given, is validated as a release would be (nothing is
        charged) and its column names kept: nothing about the data's values is
        learned (bounds come from the schema).
        """
        if not isinstance(self.schema, Schema):
            raise SchemaError(f"schema must be a dmt_privacy Schema, got {type(self.schema)!r}.")
        if not isinstance(self.epsilon, Mapping) or not self.epsilon:
            raise ValidationError(
                f"epsilon must map field names to ε, e.g. {{'age': 0.5, 'sex': 0.5}}; got "
                f"{self.epsilon!r}."
            )
        if self.privacy_unit not in _UNITS:
            raise ValidationError(
                f"privacy_unit must be one of {_UNITS!r}, got {self.privacy_unit!r}."
            )
        if self.remainder not in _REMAINDERS:
            raise ValidationError(
                f"remainder must be one of {_REMAINDERS!r}, got {self.remainder!r}."
            )
        if self.ledger is None:
            raise ValidationError(
                "ledger is required: pass the user's PrivacyLedger (LocalStore.ledger) so every "
                "release is charged, or ledger=UNACCOUNTED (dmt_privacy.dp) to release with no "
                "accounting at all (simulations and benchmarks only)."
            )
        if not (isinstance(self.ledger, PrivacyLedger) or self.ledger is UNACCOUNTED):
            raise ValidationError(
                f"ledger must be a PrivacyLedger or UNACCOUNTED, got {type(self.ledger).__name__}."
            )
        delta = dict(self.delta or {})
        choice = dict(self.mechanism or {})
        unknown = sorted(set(delta) - set(self.epsilon)) + sorted(set(choice) - set(self.epsilon))
        if unknown:
            raise ValidationError(
                f"delta/mechanism name field(s) {unknown!r} that have no ε allocated; add them "
                "to epsilon or remove them."
            )
        source = resolve_source(self.random_state)
        mechanisms: dict[str, Any] = {}
        for name, eps in self.epsilon.items():
            if name not in self.schema:
                raise SchemaError(
                    f"Field {name!r} has ε allocated but is not in schema {self.schema.name!r} "
                    f"(fields: {self.schema.names!r})."
                )
            spec = self.schema[name]
            check_epsilon(eps, field=name)
            if spec.kind is Kind.NUMERIC:
                kind = _NUMERIC.get(choice.get(name, "laplace"))
                if kind is None:
                    raise ValidationError(
                        f"Field {name!r} is numeric: mechanism must be 'laplace' or 'gaussian', "
                        f"got {choice[name]!r}."
                    )
                common: dict[str, Any] = {"epsilon": eps, "bounds": spec.bounds, "grid": spec.grid,
                          "rounding": self.rounding, "random_state": source, "field": name}
                if kind == "laplace":
                    if delta.get(name, 0) != 0:
                        raise ValidationError(
                            f"Field {name!r}: delta={delta[name]!r} given for the Laplace "
                            "mechanism, which is pure ε-DP; drop it or use 'gaussian'."
                        )
                    mechanisms[name] = DiscreteLaplace(**common)
                else:
                    mechanisms[name] = DiscreteGaussian(
                        delta=check_delta(delta.get(name, 0.0), field=name, required=True),
                        **common,
                    )
            elif spec.kind is Kind.CATEGORICAL:
                kind = _CATEGORICAL.get(choice.get(name, "k_rr"))
                if kind is None:
                    raise ValidationError(
                        f"Field {name!r} is categorical: mechanism must be 'k_rr' or 'oue', "
                        f"got {choice[name]!r}."
                    )
                if delta.get(name, 0) != 0:
                    raise ValidationError(
                        f"Field {name!r}: delta={delta[name]!r} given for a pure ε-DP "
                        "categorical mechanism; drop it."
                    )
                cls = RandomizedResponse if kind == "k_rr" else UnaryEncoding
                mechanisms[name] = cls(epsilon=eps, categories=spec.categories,
                                       random_state=source, field=name)
            else:
                raise SchemaError(
                    f"Field {name!r} is {spec.kind.value}: local DP applies to numeric and "
                    "categorical fields only; modify or drop it instead."
                )
        self.mechanisms_ = mechanisms
        self.source_ = source
        names = list(mechanisms) if X is None else list(self._check_frame(X).columns)
        self.feature_names_in_ = np.array(names, dtype=object)
        self.n_features_in_ = len(names)
        return self

    # --- release --------------------------------------------------------------------
    def _check_frame(self, X: Any) -> pd.DataFrame:
        if not isinstance(X, pd.DataFrame):
            sparse = " (sparse input is not supported)" if type(X).__module__.startswith(
                "scipy.sparse") else ""
            raise ValidationError(
                f"LocalDPPerturber expects a pandas DataFrame with columns "
                f"{list(self.mechanisms_)!r}, got {type(X).__name__}{sparse}."
            )
        if len(X) == 0:
            raise ValidationError("Nothing to release: the DataFrame has no rows.")
        fields = list(self.mechanisms_)
        extra = [c for c in X.columns if c not in self.mechanisms_]
        if extra and self.remainder == "error":
            raise ValidationError(
                f"Unexpected column(s) {extra!r}: only {fields!r} have an ε. Drop them, or pass "
                "remainder='drop' (leave them out) or remainder='passthrough' (release them "
                "unperturbed, e.g. after a KAnonymizer)."
            )
        self.schema.select(fields).validate(X, columns=fields, allow_extra=True)
        return X

    def _receipt(self, frame: pd.DataFrame) -> ReleaseReceipt:
        fields: tuple[FieldReceipt, ...] = tuple(
            m.field_receipt() for m in self.mechanisms_.values()
        )
        eps, dlt = release_epsilon(
            frame, {f.field: f.epsilon for f in fields}, {f.field: f.delta for f in fields},
            privacy_unit=self.privacy_unit)
        ledger = self.ledger if isinstance(self.ledger, PrivacyLedger) else None
        return ReleaseReceipt(
            release_id=uuid.uuid4().hex,
            n_records=len(frame),
            epsilon=eps,
            delta=dlt,
            fields=fields,
            privacy_unit=self.privacy_unit,
            user_id=ledger.user_id if ledger is not None else None,
            random_source=self.source_.name,
            secure_random=self.source_.secure,
            created=_dt.datetime.now(_dt.timezone.utc).date().isoformat(),
        )

    def _draw(self, X: pd.DataFrame) -> pd.DataFrame:
        perturbed: dict[str, dict[str, Any]] = {}
        for name, mech in self.mechanisms_.items():
            out = mech.randomise(X[name].to_numpy())
            if isinstance(mech, UnaryEncoding):
                perturbed[name] = {col: out[:, j] for j, col in enumerate(mech.output_columns)}
            else:
                perturbed[name] = {name: out}
        columns: dict[Any, Any] = {}
        if self.remainder == "passthrough":  # every column in its place
            for name in X.columns:
                kept = {name: X[name].array.copy()} if name not in perturbed else perturbed[name]
                columns.update(kept)
        else:
            for block in perturbed.values():
                columns.update(block)
        return pd.DataFrame(columns, index=X.index.copy())

    def receipt_for(self, X: pd.DataFrame) -> ReleaseReceipt:
        """The receipt :meth:`perturb` would give ``X`` (under a release id of its own),
        charging nothing and drawing nothing: what a release would cost and carry, known
        before it happens (:func:`~dmt_privacy.sharing.share` sizes its package with it)."""
        check_is_fitted(self, "mechanisms_")
        return self._receipt(self._check_frame(X))

    def perturb(self, X: pd.DataFrame) -> Release:
        """Release ``X``: validate, charge the ledger, draw the noise; data and receipt.

        Validation (missing columns, NaN, values outside a categorical domain)
        happens before the charge, so a refused input costs nothing.
        """
        check_is_fitted(self, "mechanisms_")
        frame = self._check_frame(X)
        receipt = self._receipt(frame)
        guard = (self.ledger.release(receipt) if isinstance(self.ledger, PrivacyLedger)
                 else contextlib.nullcontext())
        with guard:
            data = self._draw(frame)
        return Release(data=data, receipt=receipt)

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """The perturbed DataFrame; its receipt is in ``last_receipt_`` and ``.attrs``."""
        release = self.perturb(X)
        self.last_receipt_ = release.receipt
        release.data.attrs["dmt_receipt"] = release.receipt.to_dict()
        return release.data

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """The output columns (OUE fields expand to ``"<field>=<category>"``).

        With ``remainder='passthrough'``, the input's columns in their order
        (``input_features``, else those seen by :meth:`fit`).
        """
        check_is_fitted(self, "mechanisms_")
        inputs = list(self.mechanisms_)
        if self.remainder == "passthrough":
            inputs = list(self.feature_names_in_ if input_features is None else input_features)
        names: list[str] = []
        for name in inputs:
            mech = self.mechanisms_.get(name)
            names.extend(mech.output_columns if isinstance(mech, UnaryEncoding) else [name])
        return np.array(names, dtype=object)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None  # the OS CSPRNG, unseeded
        tags.input_tags.categorical = True
        tags.input_tags.string = True
        tags.transformer_tags.preserves_dtype = []
        return tags

    def _expected_failed_checks(self) -> dict[str, str]:
        """The ``sklearn.utils.estimator_checks`` that fail by design, with the reason."""
        return dict.fromkeys(_ARRAY_CHECKS, "DataFrames only: fields are named by the schema")
