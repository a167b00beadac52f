"""What the receiver needs to know, read once at start-up."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ValidationError

from escalier.core.errors import ConfigError, ConfigProblem

__all__ = ["DEFAULT_KEPT_HEADERS", "DEFAULT_MARKER", "ReceiverSettings"]

DEFAULT_MARKER = "[escalier]"
# The headers a delivery keeps in the inbox: what a connector reads later (delivery ids, the
# signed timestamp, the sender's account and webhook) and what helps to trace a request. Any
# other header is dropped, whatever it is called: an allow-list, because senders and proxies
# add credentials under names no list of forbidden words foresees (X-Credentials, X-Auth-Key).
DEFAULT_KEPT_HEADERS = frozenset(
    {
        "content-type",
        "user-agent",
        "x-request-id",
        "x-atlassian-webhook-identifier",
        "x-atlassian-webhook-retry",
        "x-atlassian-webhook-flow",
        "x-zendesk-account-id",
        "x-zendesk-webhook-id",
        "x-zendesk-webhook-invocation-id",
        "x-zendesk-webhook-signature-timestamp",
        "x-escalier-delivery",
    }
)
Key = tuple[str, str]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _frozen(mapping: Mapping[Key, Any]) -> Mapping[Key, tuple[str, ...]]:
    return MappingProxyType({key: tuple(str(v) for v in values) for key, values in mapping.items()})


@dataclass(frozen=True)
class ReceiverSettings:
    """The receiver's settings; ``secrets`` and ``identities`` are keyed by (connector, instance).

    ``secrets`` hold the current secret first and, during rotation, the previous one; both verify.
    An endpoint exists for a (connector, instance) only if it has at least one secret.
    ``identities`` are Escalier's own accounts upstream (a Jira accountId or username, a Zendesk
    user id), whose changes are stored as ignored so Escalier never reacts to itself.
    ``replay_tolerance`` bounds a signed timestamp (Zendesk's); ``payload_max_age`` bounds the
    unsigned time a payload claims (Jira's, which retries for about 30 minutes).
    ``kept_headers`` names (case-insensitively) the only request headers stored with a delivery.
    ``dashboard`` serves the read-only dashboard at ``/dashboard/``: to loopback without a token,
    beyond it only with ``dashboard_token``; ``policy`` names its tiers and people and measures
    its business time (:meth:`from_policy` sets it).
    ``ack_secrets`` verify acknowledge links (``/ack/<token>``, served only when there is one): the
    mail connector's ``acknowledge_links.secrets``, current first.
    """

    store_url: str
    secrets: Mapping[Key, tuple[str, ...]] = field(default_factory=dict, repr=False)
    identities: Mapping[Key, tuple[str, ...]] = field(default_factory=dict)
    marker: str = DEFAULT_MARKER
    max_body_bytes: int = 1024 * 1024
    replay_tolerance: timedelta = timedelta(minutes=5)
    payload_max_age: timedelta = timedelta(minutes=60)
    # Jira signs no timestamp: a replayed body must be recognised for as long as its payload's
    # own timestamp is accepted, so this window is never shorter than payload_max_age.
    dedupe_window: timedelta = timedelta(minutes=60)
    max_batch: int = 256
    kept_headers: frozenset[str] = DEFAULT_KEPT_HEADERS
    create_schema: bool = False
    clock: Callable[[], datetime] = field(default=_utcnow, repr=False, compare=False)
    dashboard: bool = False
    dashboard_token: str | None = field(default=None, repr=False)
    dashboard_refresh_seconds: int = 30
    policy: Any = field(default=None, repr=False, compare=False)
    ack_secrets: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.dedupe_window < self.payload_max_age:
            raise ValueError(
                "dedupe_window must be at least payload_max_age, or a replayed Jira body "
                "would be accepted again after the window"
            )
        if self.dashboard_token is not None and len(self.dashboard_token) < 16:
            raise ValueError("dashboard_token must be at least 16 characters")
        object.__setattr__(self, "kept_headers", frozenset(h.lower() for h in self.kept_headers))
        object.__setattr__(self, "secrets", _frozen(self.secrets))
        object.__setattr__(self, "identities", _frozen(self.identities))
        object.__setattr__(self, "ack_secrets", tuple(str(s) for s in self.ack_secrets))

    @classmethod
    def from_policy(
        cls, policy: Any, environ: Mapping[str, str], store_url: str, **options: Any
    ) -> ReceiverSettings:
        """Settings from a policy's ``connectors`` section, with secrets read from ``environ``.

        ``options`` set the other fields (windows, limits).

        :raises ConfigError: a connector section is invalid or a secret's variable is unset;
            every problem is reported together.
        """
        from escalier.connectors.jira.config import JiraConfig
        from escalier.connectors.zendesk.config import ZendeskConfig

        models: dict[str, tuple[type[BaseModel], str]] = {
            "jira": (JiraConfig, "service_account"),
            "zendesk": (ZendeskConfig, "service_user_id"),
        }
        source = getattr(policy, "source", "<policy>")
        problems: list[ConfigProblem] = []
        secrets: dict[Key, tuple[str, ...]] = {}
        identities: dict[Key, tuple[str, ...]] = {}
        for name, section in (policy.connectors or {}).items():
            if name not in models:
                continue
            model, identity_field = models[name]
            try:
                config = model.model_validate(section)
            except ValidationError as exc:
                for error in exc.errors():
                    path = ".".join(str(part) for part in ("connectors", name, *error["loc"]))
                    problems.append(ConfigProblem(source, None, path, error["msg"]))
                continue
            sites = {"default": config, **config.instances}
            for instance, site in sites.items():
                revealed = []
                for index, ref in enumerate(site.webhook_secrets):
                    try:
                        revealed.append(ref.reveal(environ))
                    except KeyError:
                        where = "" if instance == "default" else f".instances.{instance}"
                        problems.append(
                            ConfigProblem(
                                source,
                                None,
                                f"connectors.{name}{where}.webhook_secrets[{index}]",
                                f"the environment variable {ref.env} is not set",
                                hint="export it before starting the receiver",
                            )
                        )
                if revealed:
                    secrets[(name, instance)] = tuple(revealed)
                identity = getattr(site, identity_field)
                if identity is not None:
                    identities[(name, instance)] = (str(identity),)
        ack_secrets = _ack_secrets(policy, environ, source, problems)
        if problems:
            raise ConfigError(problems)
        if ack_secrets:
            options.setdefault("ack_secrets", ack_secrets)
        options.setdefault("policy", policy)
        return cls(store_url=store_url, secrets=secrets, identities=identities, **options)


def _ack_secrets(
    policy: Any, environ: Mapping[str, str], source: str, problems: list[ConfigProblem]
) -> tuple[str, ...]:
    """The secrets that verify acknowledge links: the mail connector's ``acknowledge_links``."""
    from escalier.connectors.email.config import EmailConfig

    section = (policy.connectors or {}).get("email")
    if section is None:
        return ()
    try:
        config = EmailConfig.model_validate(section)
    except ValidationError as exc:
        for error in exc.errors():
            path = ".".join(str(part) for part in ("connectors", "email", *error["loc"]))
            problems.append(ConfigProblem(source, None, path, error["msg"]))
        return ()
    links = config.acknowledge_links
    if links is None:
        return ()
    found: list[str] = []
    for index, ref in enumerate(links.secrets):
        try:
            found.append(ref.reveal(environ))
        except KeyError:
            problems.append(ConfigProblem(
                source, None, f"connectors.email.acknowledge_links.secrets[{index}]",
                f"the environment variable {ref.env} is not set",
                hint="export it before starting the receiver",
            ))
    return tuple(found)
