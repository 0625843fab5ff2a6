"""The server side of sharing: ingest sealed share packages into a SQL store.

:func:`ingest` opens packages with the server's private key, validates them
against a :class:`ServerPolicy`, rejects replays and writes each package in
one transaction; :class:`SharedStore` reads the released (k-anonymous across
packages) records back for retraining. SQLAlchemy is imported here, so
``dmt_privacy`` (the client side) never needs it.
"""

from dmt_model.server.ingest import IngestReport, Outcome, ServerPolicy, ingest
from dmt_model.server.store import SharedStore, connect

__all__ = ["IngestReport", "Outcome", "ServerPolicy", "SharedStore", "connect", "ingest"]
