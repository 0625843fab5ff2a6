"""What ingestion reports: one :class:`Outcome` per package and an :class:`IngestReport` per run.

Reasons are the server's, for its operators: ``"<kind>: <what>"``, naming fields
and checks and never a value from a package (see
:mod:`dmt_model.server.validate`). The sender is told only accepted, replay or
invalid.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["IngestReport", "Outcome", "reason_kind"]


def reason_kind(reason: str) -> str:
    """The kind of a refusal reason: the part before the first colon."""
    return reason.split(":", 1)[0]


@dataclass(frozen=True)
class Outcome:
    """What happened to one package: ``accepted`` or ``rejected`` (with the reason)."""

    source: str
    status: str
    reason: str = ""
    package_id: str | None = None
    n_records: int = 0
    replay: bool = False
    #: classes this package's write released from quarantine
    released_classes: int = 0

    @property
    def kind(self) -> str:
        return reason_kind(self.reason) if self.reason else self.status


@dataclass
class IngestReport:
    """Every package's outcome, and the quarantine after the run."""

    outcomes: list[Outcome] = field(default_factory=list)
    released_classes: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def accepted(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "accepted"]

    @property
    def rejected(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "rejected"]

    @property
    def replays(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.replay]

    @property
    def stored_ids(self) -> list[str]:
        """Package ids the server holds after this run (accepted now or before): what to ack."""
        return [o.package_id for o in self.outcomes
                if o.package_id is not None and (o.status == "accepted" or o.replay)]

    @property
    def reasons(self) -> dict[str, int]:
        """Refused packages counted by the kind of reason."""
        return dict(Counter(reason_kind(o.reason) for o in self.rejected))

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": len(self.accepted),
                "records_accepted": sum(o.n_records for o in self.accepted),
                "rejected": len(self.rejected), "replays": len(self.replays),
                "reasons": self.reasons,
                "released_classes": self.released_classes, "store": dict(self.counts),
                "outcomes": [dataclasses.asdict(o) for o in self.outcomes]}

    def to_text(self) -> str:
        kinds = self.reasons
        lines = [f"accepted     {len(self.accepted)} package(s), "
                 f"{sum(o.n_records for o in self.accepted)} record(s)",
                 f"rejected     {len(self.rejected)} package(s)"
                 + (" (" + ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())) + ")"
                    if kinds else "")]
        shown = [o for o in self.rejected if not o.replay]
        lines += [f"  {o.source}: {o.reason}" for o in shown[:20]]
        if len(shown) > 20:
            lines.append(f"  ... and {len(shown) - 20} more")
        c = self.counts
        if c:
            lines.append(f"quarantined  {c['records_quarantined']} record(s) in "
                         f"{c['classes_quarantined']} class(es) with fewer than k packages")
            lines.append(f"released     {c['records_released']} record(s) in "
                         f"{c['classes_released']} class(es) ({self.released_classes} newly)")
            if c.get("records_withdrawn"):
                lines.append(f"withdrawn    {c['records_withdrawn']} record(s) out of the release "
                             "for good (released with a package since removed)")
            lines.append(f"store        {c['packages']} package(s), {c['records']} record(s)")
        return "\n".join(lines)
