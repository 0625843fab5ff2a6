"""Bundled proxy data and the simulated-user protocol of the benchmarks."""

from dmt_model.datasets.adult import ADULT_QUASI_IDENTIFIERS, ADULT_SCHEMA, load_adult
from dmt_model.datasets.boston import BOSTON_SCHEMA, load_boston
from dmt_model.datasets.classification import (
    CLASSIFICATION_DATASETS,
    DIGITS_SCHEMA,
    WORDNET_TOPICS_SCHEMA,
    ClassificationDataset,
    holdout_split,
    load_digits,
    load_wordnet_topics,
)
from dmt_model.datasets.classifier_users import (
    ClassifierSimulation,
    SimulatedClassifierUser,
    restyle_image,
    simulate_classifier_users,
)
from dmt_model.datasets.regression import (
    FRIEDMAN_SCHEMA,
    REGRESSION_DATASETS,
    STAR98_SCHEMA,
    RegressionDataset,
    load_friedman,
    load_star98,
)
from dmt_model.datasets.synthetic import (
    SYNTHETIC_SCHEMA,
    SyntheticSimulation,
    SyntheticUser,
    simulate_synthetic,
)
from dmt_model.datasets.users import SimulatedUser, Simulation, simulate_users

__all__ = [
    "ADULT_QUASI_IDENTIFIERS",
    "ADULT_SCHEMA",
    "BOSTON_SCHEMA",
    "CLASSIFICATION_DATASETS",
    "DIGITS_SCHEMA",
    "FRIEDMAN_SCHEMA",
    "REGRESSION_DATASETS",
    "STAR98_SCHEMA",
    "SYNTHETIC_SCHEMA",
    "WORDNET_TOPICS_SCHEMA",
    "ClassificationDataset",
    "ClassifierSimulation",
    "RegressionDataset",
    "SimulatedClassifierUser",
    "SimulatedUser",
    "Simulation",
    "SyntheticSimulation",
    "SyntheticUser",
    "holdout_split",
    "load_adult",
    "load_boston",
    "load_digits",
    "load_friedman",
    "load_star98",
    "load_wordnet_topics",
    "restyle_image",
    "simulate_classifier_users",
    "simulate_synthetic",
    "simulate_users",
]
