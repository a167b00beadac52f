"""Ingest benchmark: a bare Flask app against Escalier's signed, stored Zendesk endpoint.

Run ``python bench/ingest/run.py``. Both apps run under exactly the receiver's gunicorn settings
(``gunicorn_options()``'s defaults; ``ESCALIER_BENCH_WORKERS``/``ESCALIER_BENCH_THREADS`` change
them for both); wrk replays a pool of pre-signed requests with unique delivery ids and bodies
(bench/ingest/pool.lua). The two alternate for ``ESCALIER_BENCH_ROUNDS`` rounds (3, each server
freshly started) and the round with the median ratio is reported beside all of them; then
Escalier is measured again at about half its median maximum rate. The report gives both rates,
their ratio, p50/p99 of every run, the half-load run's rate and p99, and
checks that every measured Escalier request was a new row (a pool that wrapped would turn requests
into cheap duplicates). Each run also says how much of the machine's CPU was idle and how much
the hypervisor gave to other machines (steal), from /proc/stat, and what the server's processes
spent per answered request: CPU time and context switches (voluntary + involuntary), from
/proc/<pid>. Results are printed and written to bench/results/ingest-<time>.json.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
SECRET = "bench-signing-secret"
DURATION = 10
# The speed of this kind of machine drifts from minute to minute: the apps alternate, the median counts.
ROUNDS = int(os.environ.get("ESCALIER_BENCH_ROUNDS", "3"))

WRK_THREADS = 2
CONNECTIONS = int(os.environ.get("ESCALIER_BENCH_CONNECTIONS", "32"))
HALF_CONNECTIONS = 16


def server_options(port: int) -> dict:
    """The gunicorn options both apps run with: the receiver's defaults, unless overridden here."""
    from escalier.webhooks.serve import gunicorn_options

    overrides = {
        name: int(os.environ[var])
        for name, var in (("workers", "ESCALIER_BENCH_WORKERS"), ("threads", "ESCALIER_BENCH_THREADS"))
        if os.environ.get(var)
    }
    return gunicorn_options(bind=f"127.0.0.1:{port}", log_level="warning", **overrides)


def serve(kind: str, port: int, store_url: str | None) -> None:
    """Run one app under the receiver's gunicorn settings (called in a child process)."""
    from flask import Flask

    from escalier.webhooks import ReceiverSettings, create_app
    from escalier.webhooks.serve import GunicornServer

    options = server_options(port)
    if kind == "bare":
        def factory() -> Flask:
            app = Flask("bare", static_folder=None)

            @app.route("/healthz")
            def healthz():
                return {"status": "alive"}

            @app.route("/<path:anything>", methods=["POST"])
            def receive(anything):
                return "", 204

            return app
    else:
        settings = ReceiverSettings(store_url=store_url, secrets={("zendesk", "default"): (SECRET,)})

        def factory() -> Flask:
            return create_app(settings)

    GunicornServer(factory, options).run()


def write_pool(path: Path, size: int, prefix: str) -> None:
    """``size`` signed Zendesk event deliveries, each with its own id and body."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    key = SECRET.encode()
    with path.open("w") as out:
        for n in range(size):
            event_id = f"{prefix}-{n:08d}"
            body = json.dumps(
                {
                    "account_id": 1234567,
                    "detail": {"actor_id": "9000000000001", "id": str(4000 + n % 5000),
                               "status": "OPEN", "priority": "HIGH", "group_id": "360000003"},
                    "event": {"current": "OPEN", "previous": "NEW"},
                    "id": event_id,
                    "subject": f"zen:ticket:{4000 + n % 5000}",
                    "time": "2026-03-06T15:49:58.123456789Z",
                    "type": "zen:event-type:ticket.status_changed",
                    "zendesk_event_version": "2022-11-06",
                },
                separators=(",", ":"),
            )
            signature = base64.b64encode(
                hmac.new(key, stamp.encode() + body.encode(), hashlib.sha256).digest()
            ).decode()
            out.write(f"/webhooks/zendesk\t{event_id}\t{signature}\t{stamp}\t{body}\n")


def start(kind: str, port: int, store_url: str | None) -> subprocess.Popen:
    """Start a server and wait until it answers."""
    command = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
    if store_url:
        command += ["--store", store_url]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{kind} server did not start: {process.stderr.read().decode()[-2000:]}")


def stop(process: subprocess.Popen) -> None:
    """Stop a server started by :func:`start`."""
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()


def wrk(port: int, pool: Path, *, connections: int, duration: int, delay_ms: float = 0) -> dict:
    """One wrk run over ``pool``; requests per second and latency percentiles in ms."""
    env = {**os.environ, "ESCALIER_POOL": str(pool), "ESCALIER_THREADS": str(WRK_THREADS),
           "ESCALIER_DELAY_MS": str(int(delay_ms))}
    threads = min(WRK_THREADS, connections)
    env["ESCALIER_THREADS"] = str(threads)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "-s", str(HERE / "pool.lua"),
         f"http://127.0.0.1:{port}"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    found = re.search(r"ESCALIER_RESULT (\{.*\})", out)
    if not found:
        raise SystemExit(f"wrk gave no result:\n{out}")
    raw = json.loads(found.group(1))
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "rate": round(raw["requests"] / seconds, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "non_2xx": raw["non_2xx"],
        "socket_errors": raw["socket_errors"],
        # Times a wrk thread ran out of pool and started over (its later requests repeat).
        "pool_wrapped": raw["wrapped"],
        "connections": connections,
        "delay_ms": int(delay_ms),
    }


def stored_rows(db: Path, prefix: str) -> int:
    """How many inbox rows came from the pool with ``prefix``."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT count(*) FROM inbox WHERE delivery_id LIKE ?", (f"{prefix}-%",)
        ).fetchone()[0]


def durability(url: str) -> dict:
    """The journal mode and synchronous level the receiver's engine runs with."""
    from escalier.store.database import create_store_engine

    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            level = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            checkpoint = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
    finally:
        engine.dispose()
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    return {"journal_mode": journal, "synchronous": names.get(level, level),
            "wal_autocheckpoint_pages": checkpoint}


def cpu_ticks() -> list[int] | None:
    """The machine's CPU time so far, by kind (Linux's /proc/stat); None elsewhere."""
    try:
        with open("/proc/stat") as stat:
            return [int(n) for n in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def cpu_share(before: list[int] | None, after: list[int] | None) -> dict:
    """How the machine's CPU time went between two :func:`cpu_ticks` readings, in percent.

    ``steal`` is time the hypervisor gave to other machines: a run that lost much of it says
    less about either app than one that lost none.
    """
    if before is None or after is None:
        return {}
    user, nice, system, idle, iowait, irq, softirq, steal = (b - a for a, b in zip(before, after))
    total = max(1, user + nice + system + idle + iowait + irq + softirq + steal)
    return {"busy_pct": round(100 * (user + nice + system + irq + softirq) / total, 1),
            "idle_pct": round(100 * (idle + iowait) / total, 1),
            "steal_pct": round(100 * steal / total, 1)}


def process_usage(root: int) -> dict | None:
    """CPU seconds and context switches so far of process ``root`` (gunicorn's master) and its
    children (the HTTP workers), from Linux's /proc; None elsewhere. Threads that already ended
    are not counted."""
    tree = {root}
    try:
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/stat") as stat:
                        if int(stat.read().rsplit(")", 1)[1].split()[1]) == root:
                            tree.add(int(entry.name))
                except (OSError, ValueError, IndexError):
                    continue  # gone meanwhile
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    usage = {"cpu_s": 0.0, "voluntary": 0, "involuntary": 0}
    for pid in tree:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            usage["cpu_s"] += (int(fields[11]) + int(fields[12])) / ticks
            for task in os.scandir(f"/proc/{pid}/task"):
                with open(f"{task.path}/status") as status:
                    for line in status:
                        if line.startswith("voluntary_ctxt_switches"):
                            usage["voluntary"] += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches"):
                            usage["involuntary"] += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return usage


def per_request(before: dict | None, after: dict | None, requests: int) -> dict:
    """What the server's processes spent per answered request between two :func:`process_usage`."""
    if before is None or after is None or not requests:
        return {}
    return {
        "cpu_us": round((after["cpu_s"] - before["cpu_s"]) * 1e6 / requests),
        "voluntary_switches": round((after["voluntary"] - before["voluntary"]) / requests, 2),
        "involuntary_switches": round((after["involuntary"] - before["involuntary"]) / requests, 2),
    }


def measured(kind: str, port: int, store_url: str | None, warm: Path, pool: Path, *,
             connections: int = CONNECTIONS, delay_ms: float = 0) -> dict:
    """Start one server, warm it up for 2 s, measure it over ``pool``, and stop it."""
    server = start(kind, port, store_url)
    try:
        wrk(port, warm, connections=CONNECTIONS, duration=2)
        before, used = cpu_ticks(), process_usage(server.pid)
        run = wrk(port, pool, connections=connections, duration=DURATION, delay_ms=delay_ms)
        run["cpu"] = cpu_share(before, cpu_ticks())
        # The server's own cost of a request: CPU time, and how often its threads were switched
        # out (waiting for the GIL, a lock, the disk), voluntarily or not.
        run["server_per_request"] = per_request(used, process_usage(server.pid), run["requests"])
        return run
    finally:
        stop(server)


def measure_pair(round_: int, work: Path, url: str, warm: Path) -> tuple[dict, dict]:
    """One round: the bare app, then Escalier, each freshly started, at full load."""
    bare_run = measured("bare", 18081, None, warm, warm)
    prefix = f"full{round_}"
    pool = work / f"{prefix}.pool"
    write_pool(pool, int(bare_run["rate"] * DURATION * 1.2) + 2000, prefix)
    full = measured("escalier", 18082, url, warm, pool)
    full["stored_rows"] = stored_rows(work / "escalier.db", prefix)
    full["ratio"] = round(full["rate"] / bare_run["rate"], 3)
    return bare_run, full


def main() -> int:
    """Run the measurements and report them."""
    if shutil.which("wrk") is None:
        print("wrk is not installed. Install it with:\n"
              "    apt-get update && apt-get install -y wrk     (Debian/Ubuntu)\n"
              "    brew install wrk                              (macOS)", file=sys.stderr)
        return 2
    from escalier.store.database import create_store_engine, ensure_schema

    work = Path(tempfile.mkdtemp(prefix="escalier-bench-"))
    db = work / "escalier.db"
    url = f"sqlite:///{db}"
    engine = create_store_engine(url)
    ensure_schema(engine)
    engine.dispose()
    options = server_options(0)  # only for the report
    pairs: list[tuple[dict, dict]] = []
    try:
        warm = work / "warm.pool"
        write_pool(warm, 2000, "warm")
        for round_ in range(ROUNDS):
            bare_run, full = measure_pair(round_, work, url, warm)
            pairs.append((bare_run, full))
            print(f"round {round_ + 1}/{ROUNDS}: bare {bare_run['rate']:.0f} req/s, Escalier "
                  f"{full['rate']:.0f} req/s ({full['ratio']:.0%})", file=sys.stderr, flush=True)
        # The round with the median ratio stands for all of them; every round is in the report.
        bare_run, full = sorted(pairs, key=lambda pair: pair[1]["ratio"])[len(pairs) // 2]
        target = statistics.median(run["rate"] for _, run in pairs) / 2
        # wrk's delay() paces each connection; subtract part of the service time so the paced
        # rate lands near the target rather than below it.
        delay = max(0.0, HALF_CONNECTIONS / target * 1000 - full["p50_ms"] / 4)
        half_pool = work / "half.pool"
        write_pool(half_pool, int(target * DURATION * 1.5) + 2000, "half")
        half = measured("escalier", 18082, url, warm, half_pool, connections=HALF_CONNECTIONS,
                        delay_ms=delay)
        half["stored_rows"] = stored_rows(db, "half")
        stored = durability(url)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    half["target_rate"] = round(target, 1)
    half["fraction_of_max"] = round(half["rate"] / full["rate"], 3)
    ratio = full["ratio"]
    # Every 2xx of a measured run must be a new, committed row: no wrapped pool (duplicates are
    # cheap) and at least as many rows as answered requests.
    honest = all(
        run["pool_wrapped"] == 0 and run["non_2xx"] == 0 and run["stored_rows"] >= run["requests"]
        for run in [half, *(esc_run for _, esc_run in pairs)]
    )
    report = {
        "at": datetime.now(timezone.utc).isoformat(),
        "host_cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "gunicorn": {key: options[key] for key in ("workers", "threads", "worker_class")},
        "wrk": {"threads": WRK_THREADS, "connections": CONNECTIONS,
                "half_load_connections": HALF_CONNECTIONS, "duration_s": DURATION},
        "store": stored,
        "rounds": [{"bare": b, "escalier_full": e} for b, e in pairs],
        "bare": bare_run,
        "escalier_full": full,
        "escalier_half": half,
        "ratio": ratio,
        "ratios": [e["ratio"] for _, e in pairs],
        "every_measured_request_stored": honest,
        "targets": {"ratio_at_least": 0.5, "ratio_aim": 0.6, "half_load_p99_ms_below": 20},
        "met": {"ratio": ratio >= 0.5, "half_load_p99": half["p99_ms"] < 20},
    }
    print(f"gunicorn {report['gunicorn']}, store {stored}, 1-min load average "
          f"{report['load_average_1m']} on {report['host_cpus']} CPUs")
    print(f"{'run':<30}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'rows':>9}"
          f"{'idle %':>8}{'steal %':>9}{'CPU us/req':>12}{'switches/req':>14}")
    lines = []
    for n, (b, e) in enumerate(pairs, 1):
        lines += [(f"round {n}: bare Flask (204)", b), (f"round {n}: Escalier zendesk", e)]
    lines.append(("Escalier zendesk, ~half", half))
    for name, run in lines:
        server = run["server_per_request"]
        switches = (f"{server['voluntary_switches']:.1f}+{server['involuntary_switches']:.1f}"
                    if server else "-")
        print(f"{name:<30}{run['rate']:>10.0f}{run['p50_ms']:>9.2f}{run['p99_ms']:>9.2f}"
              f"{run['non_2xx']:>9}{run.get('stored_rows', '-'):>9}"
              f"{run['cpu'].get('idle_pct', '-'):>8}{run['cpu'].get('steal_pct', '-'):>9}"
              f"{server.get('cpu_us', '-'):>12}{switches:>14}")
    print(f"Escalier / bare, median of {ROUNDS} rounds: {ratio:.0%} (target >= 50%; rounds: "
          f"{', '.join(f'{r:.0%}' for r in report['ratios'])}); half load: {half['rate']:.0f} req/s "
          f"({half['fraction_of_max']:.0%} of max), p99 {half['p99_ms']} ms (target < 20 ms); "
          f"every measured request stored: {honest}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"ingest-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"written: {out}")
    return 0 if honest else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=["bare", "escalier"])
    parser.add_argument("--port", type=int, default=18081)
    parser.add_argument("--store")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.store)
    else:
        sys.exit(main())
