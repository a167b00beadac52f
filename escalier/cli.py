"""The ``escalier`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from escalier import __version__
from escalier.core.errors import ConfigError, EscalierError, PluginError

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_DESCRIPTION = """\
Escalier brings a disciplined escalation process into Jira, Zendesk and email:
tiers, a decision matrix, time-boxes, RACI, SLA clocks on business hours, and
notifications that repeat until somebody acknowledges.

Write your process down once in a policy file (see examples/escalier.yaml),
check it, dry-run it against a ticket, then let it run.
"""

_EPILOG = """\
examples:
  escalier check-config escalier.yaml            validate a policy, errors with line numbers
  escalier check-config --strict escalier.yaml   treat lint warnings as errors (for CI)
  escalier schema > escalier.schema.json         JSON Schema for editor completion
  escalier plugins                               connectors and plugins installed
  escalier simulate escalier.yaml ticket.json    dry-run a ticket: what happens, when, why
  escalier parse jira delivery.json              what the Jira connector reads from a webhook
  escalier sandbox jira                          a Jira of your own in memory, for trying things
  escalier serve escalier.yaml                   receive webhooks and act on them (one command)
  escalier status --policy escalier.yaml         open escalations, timers, backlog, dead letters
  escalier mail-receiver escalier.yaml           store the mail Postfix pushes over LMTP
  escalier backtest escalier.yaml --from zendesk what the policy would have done to past tickets
  escalier report --policy escalier.yaml         escalations of the last 30 days: rates, times, load

exit status: 0 success, 1 the work failed, 2 invalid input (bad policy, bad arguments).
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.handler(args)
    except ConfigError as exc:
        _print_problems(exc.problems, sys.stderr)
        return EXIT_USAGE
    except PluginError as exc:
        print(f"escalier: plugin error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except EscalierError as exc:
        print(f"escalier: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away; that is not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        found = _store_problem(exc)
        if found is None:
            raise
        message, status = found
        print(f"escalier: {message}", file=sys.stderr)
        return status


def _store_problem(exc: Exception) -> tuple[str, int] | None:
    """A store URL that cannot be used (exit 2) or a store that cannot be opened (exit 1), said
    in a sentence; None for anything else."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    if isinstance(exc, ArgumentError):
        return (f"the store URL cannot be used ({exc}); give a SQLAlchemy URL such as "
                "sqlite:///escalier.db or postgresql+psycopg://user@host/db"), EXIT_USAGE
    if isinstance(exc, SQLAlchemyError):
        cause = getattr(exc, "orig", None) or exc
        return (f"the store could not be opened or read: {type(cause).__name__}: "
                f"{str(cause).splitlines()[0] if str(cause) else ''}"), EXIT_FAILED
    return None


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="escalier",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"escalier {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    check = _command(
        commands,
        "check-config",
        "validate a policy file and lint it",
        """\
Validate a policy file completely: every error is reported at once with its
file, line and path, then the linter looks for weak spots in the process
(tiers with no Accountable owner, unreachable tiers, escalations that would
come only after the SLA they protect has been breached, overlapping criteria).

Secrets are checked against the current environment: an unset variable is a
warning here, since the file may be checked where the secrets are not.""",
        """\
examples:
  escalier check-config examples/escalier.yaml
  escalier check-config --strict --quiet escalier.yaml && deploy
  escalier check-config --connect escalier.yaml    # and log in to each connection

exit status: 0 valid, 2 invalid (or warnings with --strict), 1 a connection failed
(with --connect).""",
    )
    check.add_argument("policy", metavar="FILE", help="the policy file (YAML)")
    check.add_argument("--strict", action="store_true", help="treat warnings as errors")
    check.add_argument("--quiet", "-q", action="store_true", help="print problems only")
    check.add_argument(
        "--connect", action="store_true",
        help="then try each configured connection (one cheap read, e.g. Jira's myself) and say "
        "what it found; exit 1 if one fails",
    )
    check.set_defaults(handler=_check_config)

    schema = _command(
        commands,
        "schema",
        "print the JSON Schema of the policy file",
        "Print the JSON Schema (draft 2020-12) of the policy file, for editors and CI.",
        """\
examples:
  escalier schema > escalier.schema.json
  # VS Code with the YAML extension, in settings.json:
  #   "yaml.schemas": {"./escalier.schema.json": "escalier.yaml"}""",
    )
    schema.add_argument("--indent", type=int, default=2, help="indentation (default 2)")
    schema.set_defaults(handler=_schema)

    plugins = _command(
        commands,
        "plugins",
        "list installed connectors and plugins",
        "List the plugins loaded from the 'escalier' entry-point group and what each offers.",
        """\
examples:
  escalier plugins
  escalier plugins --json | jq '.[].name'""",
    )
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.set_defaults(handler=_plugins)

    simulate = _command(
        commands,
        "simulate",
        "dry-run a policy against a ticket and print the timeline",
        """\
Dry-run a policy against one ticket: starting from the ticket's creation, step
through its events and every wake-up the engine asks for, and print each
decision with its time in the tier's calendar, in UTC, and the reason.
Nothing is sent anywhere.

The ticket is JSON (a ticket snapshot with timezone-aware times); events are
JSON lines, one change event per line, applied at their own times.""",
        """\
examples:
  escalier simulate examples/escalier.yaml examples/tickets/sync-failure.json
  escalier simulate examples/escalier.yaml examples/tickets/missing-details.json \\
      --events examples/events/missing-details.jsonl
  escalier simulate escalier.yaml ticket.json --until 2026-03-13T18:00:00+01:00 --json""",
    )
    simulate.add_argument("policy", metavar="POLICY", help="the policy file (YAML)")
    simulate.add_argument("ticket", metavar="TICKET.json", help="the ticket, as JSON")
    simulate.add_argument("--events", metavar="EVENTS.jsonl", help="change events, one JSON object a line")
    simulate.add_argument(
        "--until", metavar="TIME", help="stop at this time (ISO 8601; default 30 days after creation)"
    )
    simulate.add_argument("--json", action="store_true", help="print the timeline as JSON (every step)")
    simulate.add_argument(
        "--all", action="store_true", help="show every step; by default repeated notifications are folded"
    )
    simulate.set_defaults(handler=_simulate)

    parse = _command(
        commands,
        "parse",
        "show what a connector reads from a captured delivery",
        """\
Show what a connector reads from one captured delivery: a webhook body saved
from Jira's or Zendesk's delivery log (also a Jira Automation or Service
Management automation request, or a Zendesk EventBridge event), or an .eml
file for email. No store, no network and no policy are needed; this is how to
find out why Escalier ignored a delivery. With --policy, the connector's
settings (field mapping, statuses, Escalier's own account) come from the
policy file.

A payload that does not carry the ticket (Jira Server's comment events) is
shown with its ticket missing: the worker reads it from the upstream.""",
        """\
examples:
  escalier parse jira delivery.json
  escalier parse jira delivery.json --policy escalier.yaml --json | jq '.events[0].ticket'
  escalier parse zendesk body.json --header 'X-Zendesk-Webhook-Id: 01HX...'
  pbpaste | escalier parse jira -

output with --json: {"source": ..., "events": [TicketEvent, ...],
  "skipped": null | {"reason": ..., "class": ...}}, where class names why a
  delivery carries nothing to act on (unsupported_event, own_change, ...).

exit status: 0 parsed (or skipped, with the reason), 2 unreadable input.""",
    )
    parse.add_argument("source", metavar="SOURCE", help="the connector: jira, zendesk, email or a plugin's")
    parse.add_argument("file", metavar="FILE", help="the delivery's body (- for standard input)")
    parse.add_argument(
        "--header", action="append", default=[], metavar="'NAME: VALUE'",
        help="a request header of the delivery (repeatable)",
    )
    parse.add_argument("--instance", default="default", help="the connector instance (default: default)")
    parse.add_argument("--policy", metavar="FILE", help="read the connector's settings from this policy")
    parse.add_argument("--json", action="store_true", help="print the documented JSON")
    parse.set_defaults(handler=_parse)

    from escalier.backtest import add_command as add_backtest_command
    from escalier.demo import add_demo_command
    from escalier.mail_receiver import add_command as add_mail_receiver_command
    from escalier.report import add_command as add_report_command
    from escalier.sandbox import add_sandbox_command

    add_sandbox_command(commands)
    add_demo_command(commands)
    add_backtest_command(commands)
    add_report_command(commands)
    add_mail_receiver_command(commands)
    _add_runtime_commands(commands)
    return parser


_DB_HELP = (
    "the store: a SQLAlchemy URL such as sqlite:///escalier.db or "
    "postgresql+psycopg://user@host/db (default: $ESCALIER_DB, else escalier.db beside the policy)"
)


def _add_runtime_commands(commands: argparse._SubParsersAction) -> None:
    serve = _command(
        commands,
        "serve",
        "receive webhooks and run a worker beside them",
        """\
Run the webhook receiver under gunicorn and a worker beside it (a child process,
restarted if it dies): the embedded default for one team. Webhooks are verified,
stored and acknowledged; the worker decides and applies tags, reassignments and
comments upstream.

The store is migrated to the newest schema first. Webhook secrets are read from
the environment variables the policy names; a missing one stops the start-up.
Endpoints: /webhooks/<connector>[/<instance>], /healthz, /readyz, /metrics.""",
        """\
examples:
  escalier serve escalier.yaml
  escalier serve escalier.yaml --bind 0.0.0.0:8080 --workers 2 --threads 16
  escalier serve escalier.yaml --db postgresql+psycopg://escalier@db/escalier --no-worker

Put a TLS-terminating proxy in front of it; gunicorn serves plain HTTP.""",
    )
    serve.add_argument("policy", metavar="POLICY", help="the policy file (YAML)")
    serve.add_argument("--db", metavar="URL", help=_DB_HELP)
    serve.add_argument(
        "--bind",
        default="127.0.0.1:8080",
        help="HOST:PORT or unix:PATH to listen on (default 127.0.0.1:8080); a TCP address already "
        "in use stops the start-up",
    )
    serve.add_argument("--workers", type=int, default=2, help="HTTP worker processes (default 2: one per core)")
    serve.add_argument("--threads", type=int, default=16, help="threads per HTTP worker (default 16)")
    serve.add_argument("--no-worker", action="store_true", help="receive only; run `escalier worker` elsewhere")
    serve.add_argument(
        "--dashboard", action="store_true",
        help="also serve the read-only escalations dashboard at /dashboard/: to this machine as is, "
        "beyond it only with the token in $ESCALIER_DASHBOARD_TOKEN (16 characters or more)",
    )
    serve.set_defaults(handler=_serve)

    worker = _command(
        commands,
        "worker",
        "run a worker alone (several nodes on PostgreSQL)",
        """\
Run a worker: claim stored events and due timers, decide, and apply the actions
upstream with retries. Several workers on several nodes share one PostgreSQL
store without doing anything twice. Stops cleanly on SIGTERM or Ctrl-C.""",
        """\
examples:
  escalier worker escalier.yaml --db postgresql+psycopg://escalier@db/escalier
  escalier worker escalier.yaml --once        # drain what is due, then exit""",
    )
    worker.add_argument("policy", metavar="POLICY", help="the policy file (YAML)")
    worker.add_argument("--db", metavar="URL", help=_DB_HELP)
    worker.add_argument("--id", dest="worker_id", help="a unique name for this worker (default host:pid)")
    worker.add_argument("--once", action="store_true", help="exit when nothing is left to do")
    worker.set_defaults(handler=_worker)

    db = _command(
        commands,
        "db",
        "manage the store",
        "Manage the store's schema.",
        """\
examples:
  escalier db upgrade --policy escalier.yaml
  escalier db upgrade --db postgresql+psycopg://escalier@db/escalier""",
    )
    db_commands = db.add_subparsers(title="db commands", metavar="DB_COMMAND")
    upgrade = db_commands.add_parser("upgrade", help="migrate the store to the newest schema")
    _store_options(upgrade)
    upgrade.set_defaults(handler=_db_upgrade)

    status = _command(
        commands,
        "status",
        "show open escalations, timers due, outbox backlog, dead letters",
        """\
Show what the store holds now: open escalations per tier, timers due, actions
waiting to reach their upstream, dead letters, and escalations that have no
future wake-up although they are open (which should be none).""",
        """\
examples:
  escalier status --policy escalier.yaml
  escalier status --db postgresql+psycopg://escalier@db/escalier --json

exit status: 0 healthy, 1 when an open escalation has no future wake-up.""",
    )
    _store_options(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_status)

    dlq = _command(
        commands,
        "dlq",
        "list or retry actions that exhausted their attempts",
        "List the dead letters (actions upstream refused or kept failing), or queue them again.",
        """\
examples:
  escalier dlq list --policy escalier.yaml
  escalier dlq retry 12 --policy escalier.yaml
  escalier dlq retry --all --policy escalier.yaml""",
    )
    dlq_commands = dlq.add_subparsers(title="dlq commands", metavar="DLQ_COMMAND")
    dlq_list = dlq_commands.add_parser("list", help="list dead letters")
    _store_options(dlq_list)
    dlq_list.add_argument("--json", action="store_true", help="print JSON")
    dlq_list.set_defaults(handler=_dlq_list)
    dlq_retry = dlq_commands.add_parser("retry", help="queue dead letters again")
    _store_options(dlq_retry)
    dlq_retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="dead-letter ids")
    dlq_retry.add_argument("--all", action="store_true", help="retry every dead letter")
    dlq_retry.set_defaults(handler=_dlq_retry)


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", metavar="URL", help=_DB_HELP)
    parser.add_argument("--policy", metavar="FILE", help="find the default store beside this policy")


def _store_url(args: argparse.Namespace, policy: str | None = None) -> str:
    from escalier.store.database import default_url

    return args.db or os.environ.get("ESCALIER_DB") or default_url(policy or getattr(args, "policy", None))


def _serve(args: argparse.Namespace) -> int:
    from escalier.core.config import load_policy
    from escalier.runtime.operations import upgrade
    from escalier.runtime.supervise import WorkerProcess
    from escalier.webhooks import ReceiverSettings, run_receiver
    from escalier.webhooks.serve import check_free

    url = _store_url(args, args.policy)
    policy = load_policy(args.policy)
    dashboard: dict[str, object] = {}
    if args.dashboard:
        token = os.environ.get("ESCALIER_DASHBOARD_TOKEN") or None
        if token is not None and len(token) < 16:
            raise EscalierError("ESCALIER_DASHBOARD_TOKEN must be at least 16 characters")
        dashboard = {"dashboard": True, "dashboard_token": token}
    settings = ReceiverSettings.from_policy(policy, os.environ, url, **dashboard)
    if not args.no_worker:
        _can_connect(policy)
    # Before the store is touched or the worker started (run_receiver checks again).
    check_free(args.bind)
    revision = upgrade(url)
    print(f"escalier: store {_safe_url(url)} at revision {revision}", file=sys.stderr)
    worker = None
    if not args.no_worker:
        worker = WorkerProcess(url, args.policy)
        worker.start()
    print(f"escalier: receiving on http://{args.bind}/webhooks/", file=sys.stderr)
    if args.dashboard:
        print(f"escalier: dashboard on http://{args.bind}/dashboard/", file=sys.stderr)
    try:
        run_receiver(settings, bind=args.bind, workers=args.workers, threads=args.threads)
    finally:
        if worker is not None:
            worker.stop()
    return EXIT_OK


def _can_connect(policy: object) -> None:
    """Build every connection (no network): a missing variable stops the start-up, named."""
    from escalier.plugins import get_plugin_manager
    from escalier.runtime.operations import build_connections

    for connection in build_connections(policy, get_plugin_manager(), os.environ).values():  # type: ignore[arg-type]
        connection.close()


def _worker(args: argparse.Namespace) -> int:
    from escalier.runtime.operations import run_worker
    from escalier.runtime.supervise import follow_parent

    follow_parent()

    handled = run_worker(_store_url(args, args.policy), args.policy, worker_id=args.worker_id, once=args.once)
    print(f"escalier: worker stopped; {handled}", file=sys.stderr)
    return EXIT_OK


def _db_upgrade(args: argparse.Namespace) -> int:
    from escalier.runtime.operations import upgrade

    url = _store_url(args)
    print(f"{_safe_url(url)}: at revision {upgrade(url)}")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from escalier.runtime.operations import status

    counts = status(_store_url(args))
    if args.json:
        json.dump(counts, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        tiers = counts.get("open_by_tier") or {}
        print("open escalations: " + (", ".join(f"tier {t}: {n}" for t, n in sorted(tiers.items())) or "none"))
        for key in ("timers_due", "outbox_pending", "outbox_ready", "outbox_done", "dead_letters",
                    "invariant_violations"):
            print(f"{key.replace('_', ' ')}: {counts.get(key, 0)}")
    return EXIT_FAILED if counts.get("invariant_violations") else EXIT_OK


def _dlq_list(args: argparse.Namespace) -> int:
    from escalier.runtime.operations import dlq_list

    rows = dlq_list(_store_url(args))
    if args.json:
        json.dump(rows, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif not rows:
        print("no dead letters")
    for row in rows if not args.json else ():
        print(f"{row.get('id')}  {row.get('failed_at')}  {row.get('system', '')} {row.get('ticket_id', '')}  "
              f"{row.get('kind', '')}  {row.get('error')}")
    return EXIT_OK


def _dlq_retry(args: argparse.Namespace) -> int:
    from escalier.runtime.operations import dlq_retry

    if not args.ids and not args.all:
        print("escalier dlq retry: name dead-letter ids, or --all", file=sys.stderr)
        return EXIT_USAGE
    count = dlq_retry(_store_url(args), None if args.all else args.ids)
    print(f"queued {count} dead letter{'' if count == 1 else 's'} again")
    return EXIT_OK


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _command(
    commands: argparse._SubParsersAction, name: str, summary: str, description: str, epilog: str
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _print_problems(problems: Sequence[object], stream: TextIO) -> None:
    for problem in problems:
        print(problem, file=stream)


def _check_config(args: argparse.Namespace) -> int:
    from escalier.core.config import read_policy

    policy, problems = read_policy(args.policy, environ=dict(os.environ), lint=True)
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity != "error"]
    if errors:
        _print_problems(errors, sys.stderr)
        print(f"invalid: {_count(errors, 'error')} in {args.policy}", file=sys.stderr)
        return EXIT_USAGE
    _print_problems(warnings, sys.stderr)
    if warnings and args.strict:
        print(f"{args.policy}: {_count(warnings, 'warning')} (--strict)", file=sys.stderr)
        return EXIT_USAGE
    if not args.quiet:
        tiers = ", ".join(f"{t.level} {t.name}" for t in policy.tiers)
        extra = f", {_count(warnings, 'warning')}" if warnings else ""
        print(f"{args.policy}: valid (policy '{policy.name}', version {policy.version}{extra})")
        print(f"  tiers: {tiers}")
        print(f"  criteria: {len(policy.criteria)}, matrix cells: "
              f"{sum(len(row) for row in policy.matrix.values())}, "
              f"calendars: {', '.join(policy.calendars)}")
        print(f"  connectors: {', '.join(policy.connectors) or 'none'}")
    if args.connect:
        return _connect(policy)
    return EXIT_OK


def _connect(policy: object) -> int:
    from escalier.plugins import get_plugin_manager
    from escalier.runtime.operations import check_connections

    results = check_connections(policy, get_plugin_manager(), os.environ)  # type: ignore[arg-type]
    if not results:
        print("  no connection to try")
    for (system, instance), ok, found in results:
        print(f"  {system}/{instance}: {'ok' if ok else 'FAILED'}: {found}")
    return EXIT_OK if all(ok for _, ok, _ in results) else EXIT_FAILED


def _count(items: Sequence[object], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _schema(args: argparse.Namespace) -> int:
    from escalier.core.policy import policy_json_schema

    json.dump(policy_json_schema(), sys.stdout, indent=args.indent)
    sys.stdout.write("\n")
    return EXIT_OK


def _parse(args: argparse.Namespace) -> int:
    from escalier.parse import run

    return run(
        args.source, args.file, headers=args.header, instance=args.instance, policy_path=args.policy,
        as_json=args.json,
    )


def _simulate(args: argparse.Namespace) -> int:
    from escalier.simulate import run

    return run(
        args.policy, args.ticket, events_path=args.events, until=args.until, as_json=args.json,
        show_all=args.all,
    )


def _plugins(args: argparse.Namespace) -> int:
    from escalier.plugins import describe_plugins, get_plugin_manager

    rows = describe_plugins(get_plugin_manager())
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    for row in rows:
        print(f"{row['name']}  ({row['module']})")
        for kind in ("connectors", "channels", "templates", "criteria", "webhooks"):
            if row[kind]:
                print(f"  {kind}: {', '.join(row[kind])}")
        print(f"  hooks: {', '.join(row['hooks'])}")
    return EXIT_OK
