"""Public assertion helpers for users' own unit tests of anonymization guarantees."""

from dmt_privacy.testing.anonymity import (
    assert_k_anonymous,
    assert_l_diverse,
    assert_release_rule,
    assert_t_close,
)
from dmt_privacy.testing.ldp import AuditFinding, AuditResult, audit_ldp

__all__: list[str] = [
    "AuditFinding",
    "AuditResult",
    "assert_k_anonymous",
    "assert_l_diverse",
    "assert_release_rule",
    "assert_t_close",
    "audit_ldp",
]
