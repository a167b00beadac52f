"""Engine throughput: decisions per second on one core over a mixed workload.

    python bench/engine/run.py [--tickets 100000] [--seed 7]
    ESCALIER_PURE_PYTHON=1 python bench/engine/run.py     (the engine's plain Python source)

Each ticket is created, then receives a mix of comments, updates, status changes (some pausing
the clocks), acknowledgements, a few late deliveries, and the timers the engine asks for in
between. Writes the figures to bench/results/engine-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

from escalier.compiled import is_compiled
from escalier.core.engine import decide
from escalier.core.model import ActorRole, Comment, EventKind, StatusCategory, Ticket, TicketEvent, Timer
from escalier.core.policy import Policy

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
TARGET = 20_000
BERLIN = ZoneInfo("Europe/Berlin")


def workload(count: int, seed: int):
    """Yield each ticket's deliveries: (arrival time, event), in arrival order."""
    rng = random.Random(seed)
    start = datetime(2026, 3, 2, 8, 0, tzinfo=BERLIN)
    for number in range(count):
        created = start + timedelta(minutes=rng.randint(0, 60 * 24 * 60))
        ticket = Ticket(
            system="zendesk", id=str(number), subject="Export fails", created_at=created,
            severity=rng.choice(["critical", "high", "high", "high"]),
            users_affected=rng.choice([1, 1, 1, 3, 12, 60]),
            fields={"steps": "run it"} if rng.random() < 0.7 else {},
        )
        deliveries = [(created, TicketEvent(id=f"{number}:c", system="zendesk", ticket_id=ticket.id,
                                            kind=EventKind.CREATED, occurred_at=created, ticket=ticket))]
        at = created
        for index in range(rng.randint(2, 6)):
            at += timedelta(minutes=rng.randint(5, 240))
            roll = rng.random()
            fields: dict = {}
            if roll < 0.35:
                fields = dict(kind=EventKind.COMMENTED, actor_role=rng.choice([ActorRole.AGENT, ActorRole.CUSTOMER]),
                              comment=Comment(body=rng.choice(["any news?", "steps to reproduce: x", "on it"]),
                                              public=rng.random() < 0.5))
            elif roll < 0.6:
                category = rng.choice([StatusCategory.OPEN, StatusCategory.PENDING, StatusCategory.ON_HOLD])
                ticket = ticket.model_copy(update={"status_category": category, "status": category.value})
                fields = dict(kind=EventKind.STATUS_CHANGED, ticket=ticket)
            elif roll < 0.8:
                ticket = ticket.model_copy(update={"tags": tuple(rng.sample(["x", "bug-confirmed", "workaround", "y"], 2))})
                fields = dict(kind=EventKind.UPDATED, ticket=ticket)
            elif roll < 0.9:
                fields = dict(kind=EventKind.ACKNOWLEDGED, actor="agent")
            else:
                solved = ticket.model_copy(update={"status_category": StatusCategory.SOLVED, "status": "solved"})
                fields = dict(kind=EventKind.RESOLVED, ticket=solved)
            late = timedelta(minutes=rng.randint(0, 30)) if rng.random() < 0.1 else timedelta(0)
            deliveries.append((at + late, TicketEvent(id=f"{number}:{index}", system="zendesk",
                                                      ticket_id=ticket.id, occurred_at=at, **fields)))
        deliveries.sort(key=lambda pair: pair[0])
        yield deliveries


def main(argv: list[str] | None = None) -> int:
    """Run the bench and print decisions per second."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timers-per-gap", type=int, default=4, help="timers delivered between two events at most")
    args = parser.parse_args(argv)
    policy = Policy.model_validate(yaml.safe_load((HERE / "policy.yaml").read_text())).with_version("bench", "policy.yaml")

    decisions = events = timers = actions = 0
    busy = 0.0
    began = time.perf_counter()
    step = max(args.tickets // 10, 1)
    for number, deliveries in enumerate(workload(args.tickets, args.seed), start=1):
        state = None
        for arrival, item in deliveries:
            for _ in range(args.timers_per_gap):
                if state is None or state.wake_at is None or state.wake_at > arrival:
                    break
                due = state.wake_at
                timer = Timer(system="zendesk", ticket_id=state.ticket_id, due_at=due)
                t0 = time.perf_counter()
                decision = decide(policy, state, timer, due)
                busy += time.perf_counter() - t0
                state = decision.state
                decisions += 1
                timers += 1
                actions += len(decision.actions)
            t0 = time.perf_counter()
            decision = decide(policy, state, item, arrival)
            busy += time.perf_counter() - t0
            state = decision.state
            decisions += 1
            events += 1
            actions += len(decision.actions)
        if number % step == 0:
            print(f"  {number:>7} tickets  {decisions:>8} decisions  {decisions / busy:>9,.0f}/s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - began
    rate = decisions / busy
    result = {
        "bench": "engine",
        "tickets": args.tickets,
        "decisions": decisions,
        "events": events,
        "timers": timers,
        "actions": actions,
        "engine_seconds": round(busy, 3),
        "wall_seconds": round(wall, 3),
        "decisions_per_second": round(rate),
        "target": TARGET,
        "engine_build": "compiled" if is_compiled() else "python",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "at": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"engine-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    verdict = "meets" if rate >= TARGET else "is below"
    build = "compiled engine" if is_compiled() else "plain Python engine"
    print(f"{rate:,.0f} decisions/s on one core, {build} ({decisions:,} decisions, {busy:.1f}s in the engine); "
          f"{verdict} the target of {TARGET:,}/s. Written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
