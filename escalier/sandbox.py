"""``escalier sandbox NAME``: start a connector's sandbox server, an upstream in memory."""

from __future__ import annotations

import argparse
import inspect
import sys
from typing import Any

__all__ = ["add_sandbox_command"]

EXIT_USAGE = 2

_DESCRIPTION = """\
Start a connector's sandbox: an in-memory server on this machine that speaks the
upstream's real REST API and sends its real webhooks (signed like the upstream),
so that Escalier, the upstream's own client library and your tests can run
without a real Jira or Zendesk site. Nothing leaves this machine.

It prints its URL, a block to paste into the policy file, and the environment
variables to export; then one line per webhook it delivers. Data lives in memory
and is gone when it stops (Ctrl-C).

The control API under /_sandbox/ makes the upstream misbehave on purpose: answer
429 or 503 a few times, answer slowly, drop webhooks (to exercise
reconciliation), limit writes to a budget; it also counts the calls per
endpoint and the action keys Escalier sent, so an action applied twice shows.

The email sandbox is a mail server instead: SMTP and IMAP on this machine
(plain, without TLS: for loopback only), mailboxes in memory. Mail sent to
support@northwind.example can be read back over IMAP as the user 'support'; it
prints one line per message it accepts. It takes --smtp-port and --imap-port
rather than --port, and sends no webhooks."""

_EPILOG = """\
examples:
  escalier sandbox jira
  escalier sandbox jira --port 8091 --deployment datacenter
  escalier sandbox zendesk --webhook-mode trigger
  escalier sandbox jira --webhook-url http://127.0.0.1:8080/webhooks/jira --webhook-secret s3cret
  curl -s localhost:8091/_sandbox/calls
  curl -s -X POST localhost:8091/_sandbox/faults -d '{"status": 429, "count": 2, "retry_after": 3}'
  curl -s -X POST localhost:8091/_sandbox/webhooks -d '{"drop": 1}'
  escalier sandbox email --smtp-port 2525 --imap-port 1143

exit status: 0 stopped cleanly, 2 unknown sandbox or an option it does not take."""

# Options that only some sandboxes take, by the constructor keyword they map to: given to one
# that does not take it, the command refuses rather than ignore what was asked.
_FLAVOUR_OPTIONS = {
    "port": "--port",
    "webhook_url": "--webhook-url",
    "webhook_secret": "--webhook-secret",
    "smtp_port": "--smtp-port",
    "imap_port": "--imap-port",
    "deployment": "--deployment",
    "webhook_mode": "--webhook-mode",
}


def add_sandbox_command(commands: argparse._SubParsersAction) -> None:
    """Register ``escalier sandbox NAME [--host H] [--port P | --smtp-port P --imap-port P] ...``."""
    parser = commands.add_parser(
        "sandbox",
        help="start a connector's sandbox server (an upstream in memory, for trying and testing)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", metavar="NAME", help="the connector whose sandbox to start (e.g. jira)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help="HTTP sandboxes: port to listen on (default 0: a free port, printed)"
    )
    parser.add_argument(
        "--webhook-url", metavar="URL", help="where to send webhooks, e.g. Escalier's receiver"
    )
    parser.add_argument("--webhook-secret", metavar="S", help="the secret to sign webhooks with")
    parser.add_argument(
        "--smtp-port", type=int, metavar="P", help="email only: SMTP port (default 0: a free port)"
    )
    parser.add_argument(
        "--imap-port", type=int, metavar="P", help="email only: IMAP port (default 0: a free port)"
    )
    parser.add_argument(
        "--deployment",
        choices=("cloud", "datacenter"),
        help="Jira only: which flavour to imitate (default cloud)",
    )
    parser.add_argument(
        "--webhook-mode",
        choices=("events", "trigger", "both"),
        help="Zendesk only: send event-subscription webhooks, the recommended trigger body, or "
        "both (default events)",
    )
    parser.set_defaults(handler=_sandbox)


def _sandbox(args: argparse.Namespace) -> int:
    from escalier.connectors._sandbox import Sandbox, run_sandbox
    from escalier.plugins import get_plugin_manager

    specs = [spec for specs in get_plugin_manager().hook.register_connectors() for spec in specs or ()]
    available = sorted(spec.name for spec in specs if getattr(spec, "sandbox", None) is not None)
    spec = next((s for s in specs if s.name == args.name), None)
    if spec is None or getattr(spec, "sandbox", None) is None:
        reason = "has no sandbox" if spec is not None else "is not an installed connector"
        print(
            f"escalier: '{args.name}' {reason}; sandboxes available: {', '.join(available) or 'none'}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    accepted = inspect.signature(spec.sandbox).parameters
    options: dict[str, Any] = {"host": args.host}
    for keyword, flag in _FLAVOUR_OPTIONS.items():
        value = getattr(args, keyword)
        if value is None:
            continue
        if keyword not in accepted:
            takes = [f for k, f in _FLAVOUR_OPTIONS.items() if k in accepted]
            print(
                f"escalier: the {args.name} sandbox does not take {flag}"
                f"{'; it takes ' + ', '.join(takes) if takes else ''}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        options[keyword] = value
    try:
        sandbox = spec.sandbox(**options)
    except (OSError, ValueError) as exc:
        print(f"escalier: cannot start the {args.name} sandbox: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if isinstance(sandbox, Sandbox):
            return run_sandbox(sandbox, out=sys.stdout)
        # A sandbox that is not an HTTP upstream (the mail server) says itself what it serves.
        return sandbox.serve(out=sys.stdout)
    except OSError as exc:
        print(f"escalier: cannot start the {args.name} sandbox: {exc}", file=sys.stderr)
        return 1
