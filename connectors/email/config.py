"""The mail connector's section of the policy file, and what a tier's mail target may say."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from escalier.connectors._config import ConnectorSettings, StrictModel
from escalier.core.policy import SecretRef

__all__ = ["EmailConfig", "EmailTarget", "ImapSettings", "SmtpSettings", "check_target"]

_ADDRESS = r"^[^@\s]+@[^@\s]+$"


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


class EmailConfig(ConnectorSettings):
    """Mail in and out for customers who are served by email alone."""

    from_address: str = Field(pattern=_ADDRESS)
    smtp: SmtpSettings
    imap: ImapSettings | None = None


class EmailTarget(StrictModel):
    """Where a tier lives in mail: the address that receives its tickets."""

    address: str = Field(pattern=_ADDRESS)
    cc: list[str] = Field(default_factory=list)


def check_target(config: EmailConfig, target: EmailTarget, people: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems with a mail target: sending to ourselves would loop."""
    if target.address.lower() == config.from_address.lower():
        return [("address", "is the connector's own from_address; mail would loop")]
    return []
