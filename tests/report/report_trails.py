"""Hand-written audit trails whose report is known by construction, written through the store.

Five escalations in the week of 2026-03-02 (UTC), with the kinds, tiers, criteria, actors and
sentences the engine writes (core/engine.py):

* SUP-1 goes 1 -> 2 -> 1 -> 2 (ping-pong, two reversals), is resolved, reopened, resolved again;
* SUP-2 opens at tier 2, breaches its acknowledge target after a warning, goes to engineering
  (functional) after a warning of its resolve clock, then to the Head of Support (hierarchical),
  and is still open;
* zendesk 5 was opened before the week, is escalated and resolved in it, and reopened after it;
* SUP-3 is resolved at tier 1 without an escalation;
* SUP-4 opens at tier 3 and is de-escalated by the workaround rule after 20 minutes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from escalier.core.model import EscalationState, HistoryEntry, Ticket
from escalier.store import Store

__all__ = ["SINCE", "UNTIL", "write_trails"]

SINCE = "2026-03-02T00:00:00+00:00"
UNTIL = "2026-03-09T00:00:00+00:00"
VERSION = "trails000001"

T1 = "tier 1 (General support)"
T2 = "tier 2 (Specialists)"
T3 = "tier 3 (Critical response)"


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _entry(at: str, kind: str, reason: str, **values: Any) -> HistoryEntry:
    return HistoryEntry(at=_at(at), kind=kind, reason=reason, policy_version=VERSION, **values)


TRAILS: list[dict[str, Any]] = [
    {
        "system": "jira", "ticket": "SUP-1", "tier": 2, "status": "resolved",
        "tags": ("billing", "escalier-tier-2"), "organization": "acme", "components": ["Billing"],
        "entries": [
            _entry("2026-03-02 09:00", "opened", f"Opened at {T1}: severity medium with single impact.",
                   to_tier=1, criteria=("matrix:medium/single",)),
            _entry("2026-03-02 09:10", "sla-warning",
                   f"50% of the acknowledge target of 30m used at {T1}; breach at Mon 2026-03-02 09:30 UTC.",
                   to_tier=1),
            _entry("2026-03-02 09:20", "acknowledged",
                   f"mia@northwind.example answered publicly at {T1}; notifications stop.",
                   actor="mia@northwind.example"),
            _entry("2026-03-02 10:00", "escalated", f"Escalated from {T1} to {T2}: unresolved for 1h.",
                   from_tier=1, to_tier=2, criteria=("stale-tier-1",)),
            _entry("2026-03-02 11:00", "deescalated", f"De-escalated from {T2} to {T1}: requested by priya.",
                   from_tier=2, to_tier=1, criteria=("manual",), actor="priya@northwind.example"),
            _entry("2026-03-02 12:00", "escalated", f"Escalated from {T1} to {T2}: requested by mia.",
                   from_tier=1, to_tier=2, criteria=("manual",), actor="mia@northwind.example"),
            _entry("2026-03-02 13:00", "resolved", f"Resolved at {T2}; the resolve clock stops.",
                   from_tier=2, actor="priya@northwind.example"),
            _entry("2026-03-03 09:00", "reopened", f"Reopened at {T2}; the resolve clock runs again.",
                   to_tier=2, actor="dana@customer.example"),
            _entry("2026-03-03 10:00", "resolved", f"Resolved at {T2}; the resolve clock stops.",
                   from_tier=2, actor="priya@northwind.example"),
        ],
    },
    {
        "system": "jira", "ticket": "SUP-2", "tier": 2, "status": "open",
        "tags": ("sso", "api"), "organization": "globex", "components": ["API", "Support L2"],
        "entries": [
            _entry("2026-03-02 10:00", "opened", f"Opened at {T2}: severity high with some impact.",
                   to_tier=2, criteria=("matrix:high/some",)),
            _entry("2026-03-02 10:30", "sla-warning",
                   f"50% of the acknowledge target of 1h used at {T2}; breach at Mon 2026-03-02 11:00 UTC.",
                   to_tier=2),
            _entry("2026-03-02 11:00", "sla-breach", f"The acknowledge target of 1h at {T2} is breached.",
                   to_tier=2),
            _entry("2026-03-02 11:30", "acknowledged",
                   f"priya@northwind.example answered publicly at {T2}; notifications stop.",
                   actor="priya@northwind.example"),
            _entry("2026-03-02 12:00", "sla-warning",
                   f"50% of the resolve target of 4h used at {T2}; breach at Mon 2026-03-02 14:00 UTC.",
                   to_tier=2),
            _entry("2026-03-02 14:00", "functional",
                   f"Handed from {T2} to Engineering (engineering): tagged bug-confirmed "
                   "(criterion bug-confirmed).",
                   from_tier=2, to_tier=2, criteria=("bug-confirmed",)),
            _entry("2026-03-02 15:00", "hierarchical",
                   "Raised to management level 1 (Head of Support): tagged deadline-conflict "
                   "(criterion contract-conflict).",
                   from_tier=2, to_tier=2, criteria=("contract-conflict",)),
            _entry("2026-03-02 15:05", "notified", "Notified Head of Support (amara): raised."),
        ],
    },
    {
        "system": "zendesk", "ticket": "5", "tier": 2, "status": "open",
        "tags": ("vip", "escalier-tier-2"), "organization": None, "components": None,
        "entries": [
            _entry("2026-02-20 09:00", "opened", f"Opened at {T1}: new ticket.", to_tier=1),
            _entry("2026-03-04 09:00", "escalated", f"Escalated from {T1} to {T2}: unresolved for 2h.",
                   from_tier=1, to_tier=2, criteria=("stale-tier-1",)),
            _entry("2026-03-04 10:00", "acknowledged", f"360003 answered publicly at {T2}.", actor="360003"),
            _entry("2026-03-04 12:00", "resolved", f"Resolved at {T2}; the resolve clock stops.",
                   from_tier=2, actor="360003"),
            _entry("2026-03-10 09:00", "reopened", f"Reopened at {T2}; the resolve clock runs again.",
                   to_tier=2, actor="360001"),
        ],
    },
    {
        "system": "jira", "ticket": "SUP-3", "tier": 1, "status": "resolved",
        "tags": ("export",), "organization": "acme", "components": ["Reports"],
        "entries": [
            _entry("2026-03-05 08:00", "opened", f"Opened at {T1}: new ticket.", to_tier=1),
            _entry("2026-03-05 08:05", "acknowledged", f"mia answered publicly at {T1}.",
                   actor="mia@northwind.example"),
            _entry("2026-03-05 09:00", "resolved", f"Resolved at {T1}; the resolve clock stops.",
                   from_tier=1, actor="mia@northwind.example"),
        ],
    },
    {
        "system": "jira", "ticket": "SUP-4", "tier": 2, "status": "resolved",
        "tags": ("outage", "billing"), "organization": "acme", "components": ["Platform"],
        "entries": [
            _entry("2026-03-06 08:00", "opened", f"Opened at {T3}: severity critical with widespread impact.",
                   to_tier=3, criteria=("matrix:critical/widespread",)),
            _entry("2026-03-06 08:10", "sla-warning",
                   f"50% of the acknowledge target of 15m used at {T3}; breach at Fri 2026-03-06 08:15 UTC.",
                   to_tier=3),
            _entry("2026-03-06 08:20", "deescalated",
                   f"De-escalated from {T3} to {T2}: tagged workaround-provided (rule workaround-found).",
                   from_tier=3, to_tier=2, criteria=("workaround-found",), actor="tomas@northwind.example"),
            _entry("2026-03-06 09:00", "resolved", f"Resolved at {T2}; the resolve clock stops.",
                   from_tier=2, actor="priya@northwind.example"),
        ],
    },
]


def write_trails(engine: Any) -> None:
    """Save each escalation and append its audit entries, as the worker does (one transaction each)."""
    store = Store(engine)
    for trail in TRAILS:
        entries = trail["entries"]
        opened = entries[0].at
        fields = {"components": trail["components"]} if trail["components"] is not None else {}
        ticket = Ticket(
            system=trail["system"], id=trail["ticket"], created_at=opened, tags=trail["tags"],
            organization=trail["organization"], fields=fields,
        )
        state = EscalationState(
            system=trail["system"], ticket_id=trail["ticket"], ticket=ticket, tier=trail["tier"],
            status=trail["status"], opened_at=opened, tier_entered_at=entries[-1].at,
            policy_version=VERSION,
        )
        with store.begin() as tx:
            escalation_id = tx.save_escalation(None, state, entries[-1].at)
            tx.append_audit(escalation_id, entries)
