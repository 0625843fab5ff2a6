"""Public assertion helpers for users' own unit tests of anonymization guarantees."""

__all__: list[str] = []
