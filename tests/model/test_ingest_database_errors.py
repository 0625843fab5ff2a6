"""A failing database becomes DatabaseUnavailable; a replay's IntegrityError and bugs do not."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from dmt_model.server.ingest import DatabaseUnavailable, _database_errors


def test_a_failing_database_is_unavailable_with_its_cause():
    failure = OperationalError("SELECT 1", {}, Exception("database is locked"))
    with pytest.raises(DatabaseUnavailable) as caught, _database_errors():
        raise failure
    assert caught.value.__cause__ is failure
    assert "OperationalError" in str(caught.value)


@pytest.mark.parametrize("error", [
    IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")),
    KeyError("a bug"),
])
def test_other_errors_pass_unchanged(error):
    with pytest.raises(type(error)) as caught, _database_errors():
        raise error
    assert caught.value is error


def test_nothing_raised_is_nothing_changed():
    with _database_errors():
        value = 1
    assert value == 1
