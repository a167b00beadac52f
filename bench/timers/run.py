"""Timer bench: a worker over a million open escalations, waking the few whose breach is due.

    python bench/timers/run.py [--escalations 1000000] [--due 2000] [--spread 10]

Bulk-loads the escalations and one timer each into a fresh SQLite store, nearly all due days
ahead. Then it starts a worker process (the testdesk connector, against a recording upstream in
this process) and makes ``--due`` timers come due spread over ``--spread`` seconds. Measured:
start-up (process start to first timer claim), lateness of each breach (when its decision was
committed minus when it was due, p50/p99/max) and the worker's peak RSS. Checks that the sweep's
query plan uses the ``due_at`` index. Writes bench/results/timers-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
POLICY = HERE / "policy.yaml"
TARGET_P99 = 1.0
TARGET_RSS_MB = 200.0
CHUNK = 50_000
SYSTEM, INSTANCE = "testdesk", "default"


def say(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


def stored(value: datetime) -> str:
    """A UTC time as SQLAlchemy's SQLite DateTime stores it, so string comparisons stay right."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


# --- loading ------------------------------------------------------------------------------------


def opened_state(ticket_id: str, opened: datetime) -> dict:
    """A real state: what the engine decides when the ticket is created at ``opened``."""
    from escalier.core.config import load_policy
    from escalier.core.engine import decide
    from escalier.core.model import EventKind, Ticket, TicketEvent
    from escalier.plugins import get_plugin_manager
    from escalier.runtime.testing import TestDeskPlugin

    pm = get_plugin_manager(load_entrypoints=False, plugins=[TestDeskPlugin()])
    policy = load_policy(POLICY, plugin_manager=pm)
    ticket = Ticket(system=SYSTEM, id=ticket_id, instance=INSTANCE, subject="Export fails",
                    priority="low", created_at=opened)
    event = TicketEvent(id=f"{ticket_id}:created", system=SYSTEM, instance=INSTANCE,
                        ticket_id=ticket_id, kind=EventKind.CREATED, occurred_at=opened, ticket=ticket)
    state = decide(policy, None, event, opened).state
    assert state is not None
    return state.model_dump(mode="json")


def load(path: Path, count: int, due: list[int], opened: datetime) -> float:
    """Escalations and far-future timers for ``count`` tickets; the ``due`` ones get their own state."""
    template = opened_state("T-TEMPLATE", opened)
    shared = json.dumps(template)
    policy_version = template.get("policy_version", "bench")
    due_set = set(due)
    far = datetime.now(UTC) + timedelta(days=1)
    rng = random.Random(7)
    began = time.perf_counter()
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=OFF")  # a bench load, not data anyone keeps
    for start in range(1, count + 1, CHUNK):
        ids = range(start, min(count, start + CHUNK - 1) + 1)
        escalation_rows = []
        timer_rows = []
        for number in ids:
            ticket = f"T-{number:07d}"
            state = shared.replace("T-TEMPLATE", ticket) if number in due_set else shared
            escalation_rows.append((number, SYSTEM, INSTANCE, ticket, 1, "open", policy_version, state,
                                    stored(opened), stored(opened), None, 1))
            if number not in due_set:
                timer_rows.append((number, stored(far + timedelta(seconds=rng.uniform(0, 30 * 86400)))))
        with connection:
            connection.executemany(
                "INSERT INTO escalations (id, system, instance, ticket_id, tier, status, policy_version,"
                " state, opened_at, updated_at, wake_at, version) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                escalation_rows,
            )
            connection.executemany("INSERT INTO timers (escalation_id, due_at) VALUES (?, ?)", timer_rows)
        done = ids[-1]
        elapsed = time.perf_counter() - began
        say(f"  loaded {done:>9,} escalations  {done / elapsed:>9,.0f}/s")
    connection.execute("ANALYZE")
    connection.close()
    # The load skipped durability for speed. Put it on disk before the measured run: otherwise the
    # first durable commit after it (make_due's, with the worker starting) waits for the kernel to
    # write back up to gigabytes of the load and holds the store's write lock meanwhile, so what
    # is measured is the bench's own setup.
    with open(path, "rb") as loaded:
        os.fsync(loaded.fileno())
    return time.perf_counter() - began


def sweep_plan(url: str) -> list[str]:
    """SQLite's plan for the worker's timer sweep, compiled from the store's own claim query."""
    from sqlalchemy import select

    from escalier.store import create_store_engine
    from escalier.store._store import _claimable
    from escalier.store.schema import timers

    now = datetime.now(UTC)
    query = (
        select(timers.c.escalation_id)
        .where(timers.c.due_at <= now, _claimable(timers, "bench", now))
        .order_by(timers.c.due_at)
        .limit(50)
    )
    engine = create_store_engine(url)
    compiled = query.compile(engine)
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            f"EXPLAIN QUERY PLAN {compiled}", tuple(compiled.params[name] for name in compiled.positiontup)
        ).all()
    engine.dispose()
    return [row[-1] for row in rows]


def make_due(path: Path, due: list[int], *, lead: float, spread: float) -> dict[int, float]:
    """Bring the chosen timers forward: due from ``lead`` seconds from now, over ``spread`` seconds."""
    base = time.time() + lead
    moments = {number: base + spread * index / max(1, len(due) - 1) for index, number in enumerate(due)}
    connection = sqlite3.connect(path)
    with connection:
        connection.executemany(
            "INSERT INTO timers (escalation_id, due_at) VALUES (?, ?)",
            [(number, stored(datetime.fromtimestamp(at, UTC))) for number, at in moments.items()],
        )
    connection.close()
    return moments


# --- the worker process -------------------------------------------------------------------------


def worker_main(args: argparse.Namespace) -> int:
    """Run a worker until ``--expect`` timers were handled; write its measurements to ``--out``."""
    from escalier.core.config import load_policy
    from escalier.core.engine import decide
    from escalier.plugins import get_plugin_manager
    from escalier.runtime.operations import build_connections
    from escalier.runtime.testing import URL_VARIABLE, TestDeskPlugin
    from escalier.runtime.worker import Worker
    from escalier.store import Store, create_store_engine

    stop = threading.Event()
    first_claim: list[float] = []
    lateness: list[float] = []

    class TimedWorker(Worker):
        """A worker noting when each due timer's decision was committed."""

        def process_timers(self) -> int:
            claimed = self.store.claim_timers(
                self.worker_id, now=self.clock(), limit=self.batch_size, lease=self.lease
            )
            if not first_claim:
                first_claim.append(time.time())
            for timer in claimed:
                self.handle(self._timer(timer))
                lateness.append(time.time() - timer.due_at.timestamp())
            if len(lateness) >= args.expect:
                stop.set()
            return len(claimed)

    pm = get_plugin_manager(load_entrypoints=False, plugins=[TestDeskPlugin()])
    policy = load_policy(POLICY, plugin_manager=pm)
    connections = build_connections(policy, pm, {URL_VARIABLE: args.upstream})
    engine = create_store_engine(args.url)
    worker = TimedWorker(Store(engine), decide=decide, policy=policy, connections=connections,
                         plugin_manager=pm, batch_size=args.batch_size, worker_id="bench-worker")
    threading.Timer(args.timeout, stop.set).start()
    worker.run(stop=stop, idle_wait=args.idle_wait)
    for connection in connections.values():
        connection.close()
    engine.dispose()
    Path(args.out).write_text(json.dumps({
        "first_claim": first_claim[0] if first_claim else None,
        "lateness": lateness,
        # Linux reports kilobytes.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))
    os._exit(0)  # the timeout thread must not keep a finished worker alive


# --- the bench ----------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> int:
    """Load, start a worker, bring timers due, and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--escalations", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=2000, help="timers that come due during the run")
    parser.add_argument("--spread", type=float, default=10.0, help="seconds over which they come due")
    parser.add_argument("--lead", type=float, default=3.0, help="seconds from worker start to the first")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--idle-wait", type=float, default=0.5)
    parser.add_argument("--db", help="SQLite file to create (default: a temporary one)")
    sub = parser.add_subparsers(dest="command")
    child = sub.add_parser("worker", help="(internal) the measured worker process")
    child.add_argument("--url", required=True)
    child.add_argument("--upstream", required=True)
    child.add_argument("--expect", type=int, required=True)
    child.add_argument("--out", required=True)
    child.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.command == "worker":
        return worker_main(args)

    from escalier.runtime.testing import Upstream
    from escalier.store import upgrade

    due_count = min(args.due, args.escalations)
    folder = Path(tempfile.mkdtemp(prefix="escalier-timers-"))
    path = Path(args.db) if args.db else folder / "escalier.db"
    url = f"sqlite:///{path}"
    say(f"store {path}: migrating")
    upgrade(url)
    due = sorted(random.Random(11).sample(range(1, args.escalations + 1), due_count))
    say(f"loading {args.escalations:,} escalations and timers ({due_count:,} to come due)")
    # Opened 40 minutes ago: the 30-minute acknowledge target is breached when the timer fires.
    load_seconds = load(path, args.escalations, due, datetime.now(UTC) - timedelta(minutes=40))
    plan = sweep_plan(url)
    uses_index = any("ix_timers_due" in line for line in plan)
    say(f"sweep plan: {' | '.join(plan)}")

    out = folder / "worker.json"
    with Upstream() as upstream:
        spawned = time.time()
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--batch-size", str(args.batch_size),
             "--idle-wait", str(args.idle_wait), "worker", "--url", url, "--upstream", upstream.url,
             "--expect", str(due_count), "--out", str(out), "--timeout", str(args.lead + args.spread + 60)],
        )
        moments = make_due(path, due, lead=args.lead, spread=args.spread)
        say(f"worker started; {due_count:,} timers due from {args.lead:.0f}s over {args.spread:.0f}s")
        while process.poll() is None:
            time.sleep(1.0)
            with sqlite3.connect(path) as probe:
                left = probe.execute("SELECT count(*) FROM timers WHERE due_at <= ?",
                                     (stored(datetime.now(UTC)),)).fetchone()[0]
            say(f"  {time.time() - spawned:5.1f}s  due and unclaimed-or-open: {left:>6,}"
                f"  upstream writes: {len(upstream.written()):>6,}")
        writes = len(upstream.written())
    measured = json.loads(out.read_text())
    lateness = measured["lateness"]
    children_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert len(lateness) >= due_count, f"the worker handled {len(lateness)} of {due_count} due timers"
    result = {
        "bench": "timers",
        "escalations": args.escalations,
        "timers_due": due_count,
        "spread_seconds": args.spread,
        "load_seconds": round(load_seconds, 1),
        "db_megabytes": round(path.stat().st_size / 2**20),
        "startup_seconds": round(measured["first_claim"] - spawned, 3),
        "lateness_p50_seconds": round(percentile(lateness, 0.50), 3),
        "lateness_p99_seconds": round(percentile(lateness, 0.99), 3),
        "lateness_max_seconds": round(max(lateness), 3),
        "lateness_mean_seconds": round(statistics.fmean(lateness), 3),
        "peak_rss_mb": round(measured["peak_rss_mb"], 1),
        "peak_rss_children_mb": round(children_rss, 1),
        "upstream_writes": writes,
        "sweep_uses_due_index": uses_index,
        "sweep_plan": plan,
        "targets": {"lateness_p99_seconds": TARGET_P99, "peak_rss_mb": TARGET_RSS_MB},
        "python": platform.python_version(),
        "machine": platform.machine(),
        "at": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    del moments
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / f"timers-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        ("escalations", f"{args.escalations:,}", ""),
        ("timers due", f"{due_count:,} over {args.spread:.0f}s", ""),
        ("bulk load", f"{load_seconds:.1f} s", ""),
        ("worker start-up", f"{result['startup_seconds']:.2f} s", "process start to first claim"),
        ("lateness p50", f"{result['lateness_p50_seconds']:.3f} s", ""),
        ("lateness p99", f"{result['lateness_p99_seconds']:.3f} s",
         "meets <= 1 s" if result["lateness_p99_seconds"] <= TARGET_P99 else "MISSES <= 1 s"),
        ("lateness max", f"{result['lateness_max_seconds']:.3f} s", ""),
        ("peak RSS", f"{result['peak_rss_mb']:.0f} MB",
         "meets <= 200 MB" if result["peak_rss_mb"] <= TARGET_RSS_MB else "MISSES <= 200 MB"),
        ("upstream writes", f"{writes:,}", ""),
        ("sweep uses ix_timers_due", "yes" if uses_index else "NO", ""),
    ]
    for name, value, note in rows:
        print(f"{name:<26}{value:>22}  {note}")
    print(f"Written to {target}")
    if not args.db:
        for leftover in folder.iterdir():
            leftover.unlink()
        folder.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
