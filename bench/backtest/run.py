"""Backtest throughput and memory: 100,000 tickets of synthetic history through the backtest's replay.

    python bench/backtest/run.py [--tickets 100000] [--seed 11] [--against]

The histories are made in-process, one ticket at a time, as the connectors' history readers yield
them (Zendesk-shaped: a creation, comments from customers and agents, waits on the customer, a
priority raised or a group moved by a person now and then, the solving); from there the run takes
the path of ``escalier backtest``: :func:`escalier.backtest.run_backtest`, each ticket replayed
through the engine with its wake-ups and dropped before the next is made. Prints the wall time,
tickets per second and the peak RSS, and writes them to bench/results/backtest-<time>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import resource
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

from escalier.backtest import Progress, run_backtest
from escalier.compiled import is_compiled
from escalier.core.model import ActorRole, Comment, EventKind, StatusCategory, Ticket, TicketEvent
from escalier.core.policy import Policy

HERE = Path(__file__).resolve().parent
POLICY = HERE.parent / "engine" / "policy.yaml"
RESULTS = HERE.parent / "results"
BERLIN = ZoneInfo("Europe/Berlin")
GROUPS = ("tier-1", "tier-2", "tier-3")


def histories(count: int, seed: int) -> Iterator[list[TicketEvent]]:
    """One ticket's events at a time, oldest first, each carrying the ticket as it then was."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 5, 8, 0, tzinfo=BERLIN)
    for number in range(count):
        created = start + timedelta(minutes=rng.randint(0, 60 * 24 * 60))
        ticket = Ticket(
            system="zendesk", id=str(100000 + number), subject="Export fails", status="new",
            status_category=StatusCategory.NEW, created_at=created, updated_at=created,
            priority=rng.choice(["normal", "normal", "high", "low"]),
            severity=rng.choice(["critical", "high", "high", "medium", "medium", "low"]),
            users_affected=rng.choice([1, 1, 1, 3, 12, 60]), group="tier-1", requester="900",
            fields={"steps": "run it"} if rng.random() < 0.7 else {},
        )
        prefix = f"zendesk:default:{ticket.id}"
        events = [TicketEvent(id=f"{prefix}:v:{int(created.timestamp())}", system="zendesk",
                              ticket_id=ticket.id, kind=EventKind.CREATED, occurred_at=created,
                              actor="900", actor_role=ActorRole.CUSTOMER, ticket=ticket)]
        at = created
        for index in range(rng.randint(2, 8)):
            at += timedelta(minutes=rng.randint(5, 300))
            roll = rng.random()
            kind, actor, role, comment = EventKind.UPDATED, "360001", ActorRole.AGENT, None
            if roll < 0.4:
                kind = EventKind.COMMENTED
                role = rng.choice([ActorRole.AGENT, ActorRole.CUSTOMER])
                actor = "360001" if role is ActorRole.AGENT else "900"
                comment = Comment(body=rng.choice(["any news?", "steps to reproduce: x", "on it"]),
                                  public=rng.random() < 0.6, author=actor, author_role=role)
            elif roll < 0.6:
                status = rng.choice(["open", "pending", "hold"])
                category = {"open": StatusCategory.OPEN, "pending": StatusCategory.PENDING,
                            "hold": StatusCategory.ON_HOLD}[status]
                ticket = ticket.model_copy(update={"status": status, "status_category": category})
                kind = EventKind.STATUS_CHANGED
            elif roll < 0.75:
                ticket = ticket.model_copy(update={"priority": rng.choice(["high", "urgent"])})
            elif roll < 0.85:
                ticket = ticket.model_copy(update={"group": rng.choice(GROUPS)})
            else:
                ticket = ticket.model_copy(update={"status": "solved", "status_category": StatusCategory.SOLVED})
                kind = EventKind.RESOLVED
            ticket = ticket.model_copy(update={"updated_at": at})
            event_id = f"{prefix}:comment:{index}" if comment else f"{prefix}:v:{int(at.timestamp())}"
            events.append(TicketEvent(id=event_id, system="zendesk", ticket_id=ticket.id, kind=kind,
                                      occurred_at=at, actor=actor, actor_role=role, ticket=ticket,
                                      comment=comment))
            if kind is EventKind.RESOLVED:
                break
        yield events


def peak_rss_mb() -> float:
    """The process's peak resident set size (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    """Run the bench; print wall time, tickets per second and peak RSS."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--against", action="store_true",
                        help="also replay a second policy (tier 1's time-box at 4h) and compare")
    args = parser.parse_args(argv)
    data = yaml.safe_load(POLICY.read_text())
    policy = Policy.model_validate(data).with_version("bench", str(POLICY))
    against = None
    if args.against:
        other = copy.deepcopy(data)
        other["name"] = "Engine test desk, 4h time-box"
        other["tiers"][0]["timebox"]["duration"] = "4h"
        against = Policy.model_validate(other).with_version("bench-4h", str(POLICY))
    until = datetime(2026, 3, 10, tzinfo=UTC)  # after the last ticket's last event
    rss_before = peak_rss_mb()
    began = time.perf_counter()
    report = run_backtest(histories(args.tickets, args.seed), policy, until=until, against=against,
                          progress=Progress(sys.stderr, every=10.0))
    wall = time.perf_counter() - began
    rss = peak_rss_mb()
    totals = report["results"]["policy"]
    result = {
        "bench": "backtest",
        "tickets": report["tickets"],
        "events": report["events"],
        "decisions": totals["decisions"],
        "policies": 2 if against is not None else 1,
        "wall_seconds": round(wall, 3),
        "tickets_per_second": round(report["tickets"] / wall),
        "peak_rss_mb": round(rss, 1),
        "peak_rss_before_mb": round(rss_before, 1),
        "escalations": sum(e["count"] for e in totals["escalations"]),
        "upstream_calls": totals["upstream"]["calls"],
        "differing": report["differences"]["differing"] if report["differences"] else None,
        "engine_build": "compiled" if is_compiled() else "python",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "at": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"backtest-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['tickets']:,} tickets ({result['events']:,} events, {result['decisions']:,} decisions, "
          f"{result['policies']} polic{'y' if result['policies'] == 1 else 'ies'}) in {wall:.1f}s wall: "
          f"{result['tickets_per_second']:,} tickets/s; peak RSS {rss:.0f} MB "
          f"({rss_before:.0f} MB before the run). Written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
