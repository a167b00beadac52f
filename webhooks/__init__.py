"""The webhook receiver: verify, store durably, acknowledge."""

from escalier.core.extensions import WebhookRejected
from escalier.webhooks.app import create_app
from escalier.webhooks.serve import run_receiver
from escalier.webhooks.settings import ReceiverSettings

__all__ = ["ReceiverSettings", "WebhookRejected", "create_app", "run_receiver"]
