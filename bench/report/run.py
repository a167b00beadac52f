"""Report bench: ``escalier report`` over a million audit entries, its wall time and peak memory.

    python bench/report/run.py [--entries 1000000] [--seed 7] [--keep PATH]

Synthesises a SQLite store of escalations whose audit trails look like the engine's: each
escalation is opened at a tier, notified, warned, breached now and then, acknowledged, escalated
on one of the three paths, sometimes de-escalated (and sometimes bounced back up: ping-pong),
resolved, sometimes reopened, followed up and closed; entries carry the kinds, tiers, criteria,
actors and reason sentences the engine writes (core/engine.py). They are bulk-inserted with the
driver's ``executemany`` in one transaction. Then the report runs in a child process over the
whole store (``--since all``, writing the JSON document, the CSV files and the HTML page); the
bench prints the child's wall time and peak RSS (its own ``VmHWM``), and that of a child that
only imports the same modules, so the report's own share shows. ``--tracemalloc`` runs the report a
second time under tracemalloc for the peak of Python allocations (slower). It checks a few of the
report's counts against the numbers the generator wrote. Writes bench/results/report-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
BATCH = 50_000
POLICY_VERSION = "bench0000001"
START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
DAYS = 90

TIERS = {1: "General support", 2: "Specialists", 3: "Critical response"}
DEPARTMENTS = {"engineering": "Engineering", "product": "Product", "sales": "Sales"}
LEVELS = {1: "Head of Support", 2: "VP Customer Operations"}
TEAMS = {
    1: [f"agent-{n:02d}@northwind.example" for n in range(24)],
    2: [f"specialist-{n:02d}@northwind.example" for n in range(10)],
    3: [f"oncall-{n}@northwind.example" for n in range(5)],
}
TAGS = ["billing", "sso", "api", "export", "outage", "mobile", "vat", "import", "webhooks",
        "latency", "reports", "permissions", "search", "sync", "invoices", "onboarding"]
COMPONENTS = ["Billing", "Platform", "API", "Reports", "Mobile", "Integrations", "Auth"]
ORGANIZATIONS = [f"org-{n:03d}" for n in range(120)]
TARGETS = {1: (30 * 60, 8 * 3600), 2: (3600, 2 * 86400), 3: (15 * 60, 8 * 3600)}  # ack, resolve


def say(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


def stored(value: datetime) -> str:
    """A UTC time as SQLAlchemy's SQLite DateTime stores it."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def label(tier: int) -> str:
    return f"tier {tier} ({TIERS[tier]})"


def spell(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


class Trail:
    """One escalation's audit entries as the engine would write them, built step by step."""

    def __init__(self, rng: random.Random, escalation_id: int, opened: datetime):
        self.rng = rng
        self.id = escalation_id
        self.at = opened
        self.rows: list[tuple] = []
        self.kinds: Counter[str] = Counter()

    def add(self, kind: str, reason: str, *, from_tier=None, to_tier=None, criteria=(), actor=None,
            after: float = 0.0) -> None:
        self.at += timedelta(seconds=after)
        self.rows.append((self.id, stored(self.at), kind, from_tier, to_tier, reason,
                          json.dumps(list(criteria)), actor, POLICY_VERSION, None))
        self.kinds[kind] += 1

    def wait(self, mean: float) -> float:
        return self.rng.lognormvariate(0, 0.9) * mean

    def stay(self, tier: int) -> str:
        """Notifications, warnings, maybe a breach, an acknowledgement; returns how it ends."""
        rng = self.rng
        ack_target, resolve_target = TARGETS[tier]
        ack_after = self.wait(ack_target * 0.6)
        notified = 0.0
        while notified + ack_target / 3 < ack_after and notified < ack_target * 3:
            notified += ack_target / 3
            self.add("notified", f"Notified Responsible and Informed ({rng.choice(TEAMS[tier])}): "
                     f"waiting for acknowledgement at {label(tier)}.", after=ack_target / 3 if notified else 0)
        spent = notified
        for percent in (50, 75):
            due = ack_target * percent / 100
            if ack_after > due > spent:
                self.add("sla-warning", f"{percent}% of the acknowledge target of {spell(ack_target)} used "
                         f"at {label(tier)}; breach at later.", to_tier=tier, after=due - spent)
                spent = due
        if ack_after > ack_target and ack_target > spent:
            self.add("sla-breach", f"The acknowledge target of {spell(ack_target)} at {label(tier)} "
                     "is breached.", to_tier=tier, after=ack_target - spent)
            spent = ack_target
        if rng.random() < 0.93:
            self.add("acknowledged", f"acknowledged at {label(tier)}; notifications stop, the resolve "
                     "clock runs on.", actor=rng.choice(TEAMS[tier]), after=max(0.0, ack_after - spent))
        if rng.random() < 0.08:
            self.add("paused", "SLA clocks paused: the ticket is pending (Waiting).", after=self.wait(1800))
            self.add("resumed", "SLA clocks running again after 2h paused.", after=self.wait(7200))
        work = self.wait(resolve_target * 0.25)
        if work > resolve_target * 0.5:
            self.add("sla-warning", f"50% of the resolve target of {spell(resolve_target)} used at "
                     f"{label(tier)}; breach at later.", to_tier=tier, after=resolve_target * 0.5)
            work -= resolve_target * 0.5
            if work > resolve_target * 0.5:
                self.add("sla-breach", f"The resolve target of {spell(resolve_target)} at {label(tier)} "
                         "is breached.", to_tier=tier, after=resolve_target * 0.5)
                work -= resolve_target * 0.5
        self.at += timedelta(seconds=work)
        roll = rng.random()
        if tier < 3 and roll < (0.35 if tier == 1 else 0.22):
            return "up"
        if tier > 1 and roll < 0.30:
            return "down"
        if roll < 0.36:
            return "functional"
        if roll < 0.39:
            return "hierarchical"
        return "resolve"


def escalation(rng: random.Random, escalation_id: int, opened: datetime) -> Trail:
    """One escalation from opening to closing (or still open at the end)."""
    trail = Trail(rng, escalation_id, opened)
    tier = rng.choices((1, 2, 3), weights=(80, 13, 7))[0]
    cell = {1: "medium/single", 2: "high/some", 3: "critical/widespread"}[tier]
    trail.add("opened", f"Opened at {label(tier)}: severity with impact calls for {label(tier)} in the "
              "matrix.", to_tier=tier, criteria=(f"matrix:{cell}",))
    if rng.random() < 0.1:
        trail.add("priority", "Priority set to high.", criteria=(f"matrix:{cell}",))
    level = 0
    department = None
    for _ in range(8):
        outcome = trail.stay(tier)
        if outcome == "up":
            if tier == 1 and rng.random() < 0.1:
                trail.add("missing-information", f"Not moved to {label(2)} yet: Steps to reproduce missing.",
                          from_tier=1, to_tier=2, criteria=("stale-tier-1",))
            why = rng.choice(("stale-tier-1", "vip-high", "manual", "timebox-tier-2", "matrix:medium/many"))
            trail.add("escalated", f"Escalated from {label(tier)} to {label(tier + 1)}: {why}.",
                      from_tier=tier, to_tier=tier + 1, criteria=(why,),
                      actor=rng.choice(TEAMS[tier]) if why == "manual" else None, after=1)
            tier += 1
        elif outcome == "down":
            why = rng.choice(("workaround-found", "workaround-found", "manual"))
            trail.add("deescalated", f"De-escalated from {label(tier)} to {label(tier - 1)}: {why}.",
                      from_tier=tier, to_tier=tier - 1, criteria=(why,), actor=rng.choice(TEAMS[tier]),
                      after=1)
            tier -= 1
        elif outcome == "functional" and department is None:
            department = rng.choice(list(DEPARTMENTS))
            trail.add("functional", f"Handed from {label(tier)} to {DEPARTMENTS[department]} "
                      f"({department}): tagged bug-confirmed (criterion bug-confirmed).",
                      from_tier=tier, to_tier=tier, criteria=("bug-confirmed",), after=1)
        elif outcome == "hierarchical" and level < 2:
            level += 1
            trail.add("hierarchical", f"Raised to management level {level} ({LEVELS[level]}): tagged "
                      "deadline-conflict (criterion contract-conflict).", from_tier=tier, to_tier=tier,
                      criteria=("contract-conflict",), after=1)
        else:
            if trail.at > START + timedelta(days=DAYS):
                return trail  # still open at the end
            trail.add("resolved", f"Resolved at {label(tier)}; the resolve clock stops.", from_tier=tier,
                      actor=rng.choice(TEAMS[tier]), after=1)
            if rng.random() < 0.07:
                trail.add("reopened", f"Reopened at {label(tier)}; the resolve clock runs again.",
                          to_tier=tier, actor="customer@example.com", after=trail.wait(86400))
                continue
            trail.add("follow-up", "Resolved 3d ago: follow-up due.", after=3 * 86400)
            trail.add("closed", "Closed 7d after resolution.", after=4 * 86400)
            return trail
    return trail


def ticket_state(rng: random.Random, escalation_id: int, opened: datetime, tier: int, status: str) -> str:
    """The escalation's state as stored, with the ticket snapshot the report reads."""
    tags = sorted(set(rng.choices(TAGS, weights=range(len(TAGS), 0, -1), k=rng.randint(0, 3))))
    ticket = {
        "system": "jira", "id": f"SUP-{escalation_id}", "instance": "default",
        "subject": "Synthetic ticket", "status": "Open", "status_category": "open",
        "tags": [*tags, f"escalier-tier-{tier}"],
        "organization": rng.choices(ORGANIZATIONS, weights=[1 / (n + 1) for n in range(len(ORGANIZATIONS))])[0],
        "created_at": opened.isoformat(),
        "fields": {"components": [rng.choice(COMPONENTS)]},
    }
    return json.dumps({
        "system": "jira", "instance": "default", "ticket_id": ticket["id"], "ticket": ticket,
        "tier": tier, "status": status, "opened_at": opened.isoformat(),
        "tier_entered_at": opened.isoformat(), "policy_version": POLICY_VERSION,
    })


def synthesise(path: Path, entries: int, seed: int) -> dict:
    """Write a store of about ``entries`` audit entries; returns what was written."""
    from escalier.store import upgrade

    url = f"sqlite:///{path}"
    upgrade(url)
    rng = random.Random(seed)
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA synchronous=OFF")
    written = 0
    escalation_id = 0
    kinds: Counter[str] = Counter()
    audit_rows: list[tuple] = []
    escalation_rows: list[tuple] = []
    span = DAYS * 86400
    began = time.monotonic()
    connection.execute("BEGIN")
    while written < entries:
        escalation_id += 1
        opened = START + timedelta(seconds=rng.random() * span)
        trail = escalation(rng, escalation_id, opened)
        rows = trail.rows[: entries - written]
        written += len(rows)
        kinds.update(row[2] for row in rows)
        audit_rows.extend(rows)
        last = rows[-1]
        tier = next((row[4] for row in reversed(rows) if row[4] is not None), 1)
        status = {"closed": "closed", "resolved": "resolved", "follow-up": "resolved"}.get(last[2], "open")
        escalation_rows.append((
            escalation_id, "jira", "default", f"SUP-{escalation_id}", tier, status, POLICY_VERSION,
            ticket_state(rng, escalation_id, opened, tier, status), stored(opened), last[1], None, 1,
        ))
        if len(audit_rows) >= BATCH:
            flush(connection, audit_rows, escalation_rows)
            say(f"  {written:,} audit entries written")
    flush(connection, audit_rows, escalation_rows)
    connection.commit()
    connection.close()
    return {"entries": written, "escalations": escalation_id, "kinds": dict(kinds),
            "seconds": time.monotonic() - began}


def flush(connection: sqlite3.Connection, audit_rows: list[tuple], escalation_rows: list[tuple]) -> None:
    connection.executemany(
        "INSERT INTO audit (escalation_id, at, kind, from_tier, to_tier, reason, criteria, actor,"
        " policy_version, event_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", audit_rows)
    connection.executemany(
        "INSERT INTO escalations (id, system, instance, ticket_id, tier, status, policy_version, state,"
        " opened_at, updated_at, wake_at, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        escalation_rows)
    audit_rows.clear()
    escalation_rows.clear()


_CHILD = """
import json, sys
from escalier.report import main
from escalier import report_html  # noqa: F401
from escalier.store import create_store_engine  # noqa: F401  (what the report imports to read)
peak = None
if sys.argv[1] == "--imports-only":
    status = 0
elif sys.argv[1] == "--tracemalloc":
    import tracemalloc
    tracemalloc.start()
    status = main(sys.argv[2:])
    peak = tracemalloc.get_traced_memory()[1]
else:
    status = main(sys.argv[1:])
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec, so a child of
# the process that synthesised the store would report the parent's peak.
with open("/proc/self/status") as status_file:
    rss = next(int(line.split()[1]) * 1024 for line in status_file if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss": rss, "tracemalloc_peak": peak}), file=sys.stderr)
sys.exit(status)
"""


def run_child(args: list[str], stdout: Path | None = None) -> tuple[float, dict, int, str]:
    """Run ``_CHILD`` with ``args``: (wall seconds, its figures, exit status, stderr)."""
    began = time.monotonic()
    with open(stdout or os.devnull, "w") as out:
        done = subprocess.run([sys.executable, "-c", _CHILD, *args], stdout=out,
                              stderr=subprocess.PIPE, text=True)
    seconds = time.monotonic() - began
    lines = done.stderr.strip().splitlines()
    figures = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return seconds, figures, done.returncode, done.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000, help="audit entries (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", metavar="PATH", help="keep the store in this file (default: a temporary one)")
    parser.add_argument("--tracemalloc", action="store_true", help="also measure the peak of Python allocations")
    args = parser.parse_args()
    if args.entries < 100:
        parser.error("--entries: at least 100")

    workdir = Path(tempfile.mkdtemp(prefix="escalier-report-bench-"))
    path = Path(args.keep) if args.keep else workdir / "store.db"
    if path.exists():
        parser.error(f"--keep {path}: the file exists; name a new one")
    say(f"synthesising {args.entries:,} audit entries into {path}")
    made = synthesise(path, args.entries, args.seed)
    size = path.stat().st_size
    say(f"  {made['entries']:,} entries of {made['escalations']:,} escalations in {made['seconds']:.1f} s "
        f"({size / 1e6:.0f} MB)")

    # The imports alone: the floor the report's child starts from.
    _, base, _, _ = run_child(["--imports-only"])
    base_rss = base["peak_rss"]
    out_json = workdir / "report.json"
    report_args = ["--db", f"sqlite:///{path}", "--since", "all", "--json", "-q",
                   "--html", str(workdir / "report.html"), "--csv", str(workdir / "csv")]
    say("running escalier report --since all --json --html --csv")
    seconds, figures, status, stderr = run_child(report_args, stdout=out_json)
    if status != 0:
        say(stderr)
        return 1
    rss = figures["peak_rss"]
    document = json.loads(out_json.read_text())
    summary = document["summary"]
    kinds = made["kinds"]
    checks = {
        "entries read": (document["entries"], made["entries"]),
        "internal escalations": (summary["escalations_internal"], kinds.get("escalated", 0)),
        "functional escalations": (summary["escalations_functional"], kinds.get("functional", 0)),
        "hierarchical escalations": (summary["escalations_hierarchical"], kinds.get("hierarchical", 0)),
        "de-escalations": (summary["deescalations"], kinds.get("deescalated", 0)),
        "SLA breaches": (summary["sla_breaches"], kinds.get("sla-breach", 0)),
        "escalations opened": (summary["escalations_opened"], kinds.get("opened", 0)),
    }
    failed = {name: pair for name, pair in checks.items() if pair[0] != pair[1]}
    peak_py = None
    if args.tracemalloc:
        say("running it again under tracemalloc")
        _, traced, _, _ = run_child(["--tracemalloc", *report_args])
        peak_py = traced["tracemalloc_peak"]

    times = {row["tier"]: row for row in document["tables"]["times"]["rows"]
             if row["measure"] == "time to resolve"}
    print(f"report over {document['entries']:,} audit entries of {document['escalations_read']:,} escalations "
          f"({size / 1e6:.0f} MB SQLite store)")
    print(f"  wall time            {seconds:.1f} s ({document['entries'] / seconds:,.0f} entries/s, "
          "JSON + HTML + CSV, child process start included)")
    print(f"  peak RSS             {rss / 1e6:.0f} MB (a child that only imports the modules: "
          f"{base_rss / 1e6:.0f} MB)")
    if peak_py is not None:
        print(f"  tracemalloc peak     {peak_py / 1e6:.1f} MB")
    print(f"  quantiles            {document['quantiles']['method']}")
    print(f"  ping-pong            {summary['ping_pong']:,} of {summary['escalations_opened']:,} opened; "
          f"reopen rate {summary['reopen_rate']:.1%}; time to resolve p50 "
          f"{times['all']['median_s'] / 3600:.1f} h")
    for name, (found, expected) in checks.items():
        print(f"  check {name:<26} {'ok' if found == expected else 'MISMATCH'} ({found:,} vs {expected:,})")

    RESULTS.mkdir(parents=True, exist_ok=True)
    result = RESULTS / f"report-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    result.write_text(json.dumps({
        "entries": document["entries"], "escalations": document["escalations_read"],
        "store_bytes": size, "synthesis_seconds": made["seconds"], "report_seconds": seconds,
        "peak_rss_bytes": rss, "imports_only_rss_bytes": base_rss, "tracemalloc_peak_bytes": peak_py,
        "quantiles": document["quantiles"], "checks": {k: list(v) for k, v in checks.items()},
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
    }, indent=2))
    say(f"figures in {result}")
    if not args.keep:
        for child in sorted(workdir.rglob("*"), reverse=True):
            child.unlink() if child.is_file() else child.rmdir()
        workdir.rmdir()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
