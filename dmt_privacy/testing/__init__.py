"""Public assertion helpers for users' own unit tests of anonymization guarantees."""

from dmt_privacy.testing.anonymity import assert_k_anonymous, assert_l_diverse, assert_t_close

__all__: list[str] = [
    "assert_k_anonymous",
    "assert_l_diverse",
    "assert_t_close",
]
