"""The built-in mail connector plugin: tickets by email, and mail as a notification channel."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from escalier.connectors.email import config
from escalier.core.connector import ConnectorSpec
from escalier.core.extensions import ChannelSpec
from escalier.core.hookspecs import hookimpl

__all__ = ["register_connectors", "register_notification_channels"]


class MailChannelOptions(BaseModel):
    """Options of a mail notification channel."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    subject_prefix: str = "[escalation]"


@hookimpl(trylast=True)
def register_connectors() -> list[ConnectorSpec]:
    """The mail connector: SMTP out, IMAP in."""
    return [
        ConnectorSpec(
            name="email",
            title="Email (SMTP and IMAP)",
            config_model=config.EmailConfig,
            target_model=config.EmailTarget,
            check_target=config.check_target,
        )
    ]


@hookimpl(trylast=True)
def register_notification_channels() -> list[ChannelSpec]:
    """Mail as a notification channel, sent through the mail connector's SMTP server."""
    return [ChannelSpec(kind="email", options_model=MailChannelOptions)]
