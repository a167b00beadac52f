"""The mail connector's section of the policy file, and what a tier's mail target may say."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any

from escalier.connectors._config import ConnectorSettings, StrictModel
from escalier.core.policy import Duration, SecretRef
from pydantic import Field

__all__ = [
    "AcknowledgeLinks",
    "EmailConfig",
    "EmailTarget",
    "ImapSettings",
    "MailChannelOptions",
    "SmtpSettings",
    "check_target",
]

_ADDRESS = r"^[^@\s]+@[^@\s]+$"
_DOMAIN = r"^[^@\s]+\.[^@\s]+$"


class SmtpSettings(StrictModel):
    """The outgoing mail server."""

    host: str
    port: int = Field(default=587, ge=1, le=65535)
    security: str = Field(default="starttls", pattern=r"^(starttls|ssl|none)$")
    username: str | None = None
    password: SecretRef | None = None


class ImapSettings(StrictModel):
    """The mailbox customers write to."""

    host: str
    port: int = Field(default=993, ge=1, le=65535)
    security: str = Field(default="ssl", pattern=r"^(starttls|ssl|none)$")
    username: str
    password: SecretRef
    folder: str = "INBOX"
    poll_seconds: float = Field(
        default=60.0, gt=0, description="how often to look for mail where the server offers no IDLE"
    )
    processed_folder: str | None = Field(
        default=None, description="move mail here once stored (it is always marked $EscalierDone)"
    )
    quarantine_folder: str = Field(
        default="Escalier Quarantine",
        description="where mail that cannot be read or stored goes, with the reason in a header",
    )
    sent_folder: str | None = Field(
        default=None,
        description="keep a copy of every mail Escalier sends here, so that a mail that may have "
        "gone out before a crash is found instead of sent twice",
    )
    max_message_bytes: int = Field(default=50 * 2**20, ge=1024)


class AcknowledgeLinks(StrictModel):
    """Signed acknowledge links in notices that repeat until acknowledged."""

    url: str = Field(
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="the receiver's public address; a link is <url>/ack/<token>",
        examples=["https://escalier.northwind.example"],
    )
    secrets: list[SecretRef] = Field(
        min_length=1,
        description="HMAC secrets: the first signs, every one verifies (to rotate, put the new one first)",
    )
    valid_for: Duration = Field(
        default=timedelta(days=3), description="how long after the notice its link works"
    )


class MailChannelOptions(StrictModel):
    """Options of a mail notification channel (``notifications.channels.<name>.options``)."""

    subject_prefix: str = "[escalation]"
    instance: str = Field(default="default", description="the mail connection the notices go through")


class EmailConfig(ConnectorSettings):
    """Mail in and out for customers who are served by email alone."""

    from_address: str = Field(pattern=_ADDRESS)
    smtp: SmtpSettings
    imap: ImapSettings | None = None
    token_prefix: str = Field(
        default="ESC",
        pattern=r"^[A-Za-z][A-Za-z0-9]{0,15}$",
        description="the ticket token in subjects, e.g. [ESC-7K2QF9XA4M]",
    )
    agent_addresses: list[Annotated[str, Field(pattern=_ADDRESS)]] = Field(
        default_factory=list, description="senders whose mail is an agent's, not a customer's"
    )
    agent_domains: list[Annotated[str, Field(pattern=_DOMAIN)]] = Field(
        default_factory=list, description="mail domains whose senders are agents (example.com)"
    )
    from_name: str | None = Field(default=None, description="the display name of our mail")
    auto_replies_per_hour: int = Field(
        default=5, ge=1, description="at most this many automatic mails to one customer address an hour"
    )
    acknowledgement: str = Field(
        default=(
            "Thank you for your message. We have opened ticket {token} for it and will come back "
            "to you.\nPlease keep [{token}] in the subject when you write to us about it."
        ),
        description="the first mail of a thread to the customer; {token} is the ticket token",
    )
    max_attachment_bytes: int = Field(
        default=10 * 2**20, ge=0, description="a larger part is counted, never decoded"
    )
    acknowledge_links: AcknowledgeLinks | None = Field(
        default=None,
        description="put a signed acknowledge link, served by the receiver, in every notice sent "
        "while its escalation step is unacknowledged",
    )


class EmailTarget(StrictModel):
    """Where a tier lives in mail: the address that receives its tickets."""

    address: str = Field(pattern=_ADDRESS)
    cc: list[str] = Field(default_factory=list)


def check_target(
    config: EmailConfig, target: EmailTarget, people: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """Problems with a mail target: sending to ourselves would loop."""
    if target.address.lower() == config.from_address.lower():
        return [("address", "is the connector's own from_address; mail would loop")]
    return []
