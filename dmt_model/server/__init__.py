"""The server side of sharing: ingest sealed share packages into a SQL store.

:func:`ingest` (and :meth:`Ingestor.ingest_one`, the one path the CLI and the
HTTP service share) opens packages with the server's private key, validates them
exactly against a :class:`ServerPolicy`, rejects replays and writes the packages that
arrive together in one transaction (group commit); :class:`SharedStore` reads the
released (k-anonymous across packages) records back for retraining. SQLAlchemy is imported here, so
``dmt_privacy`` (the client side) never needs it.
"""

from dmt_model.server.ingest import DatabaseUnavailable, Ingestor, ingest
from dmt_model.server.policy import ServerPolicy
from dmt_model.server.report import IngestReport, Outcome
from dmt_model.server.store import SharedStore, connect
from dmt_model.server.validate import PackageRefused, validate_package

__all__ = ["DatabaseUnavailable", "IngestReport", "Ingestor", "Outcome", "PackageRefused",
           "ServerPolicy", "SharedStore", "connect", "ingest", "validate_package"]
