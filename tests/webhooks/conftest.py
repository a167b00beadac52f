"""Fixtures of the receiver tests: an app on a fresh SQLite file, with a hand-moved clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from webhook_support import (
    JIRA_SECRET,
    JIRA_SERVICE,
    ZENDESK_OLD_SECRET,
    ZENDESK_SECRET,
    ZENDESK_SERVICE,
    Clock,
)

from escalier.plugins import get_plugin_manager
from escalier.webhooks import ReceiverSettings, create_app


@pytest.fixture
def clock() -> Clock:
    """The receiver's clock, just after the recorded payloads were sent."""
    return Clock()


@pytest.fixture
def make_app(tmp_path, clock) -> Iterator[Callable[..., Flask]]:
    """Build receiver apps on a SQLite file in ``tmp_path``; each is closed after the test."""
    apps: list[Flask] = []

    def build(**overrides) -> Flask:
        options = {
            "store_url": f"sqlite:///{tmp_path / 'escalier.db'}",
            "secrets": {
                ("zendesk", "default"): (ZENDESK_SECRET, ZENDESK_OLD_SECRET),
                ("zendesk", "emea"): ("zd-emea-secret",),
                ("jira", "default"): (JIRA_SECRET,),
            },
            "identities": {
                ("zendesk", "default"): (ZENDESK_SERVICE,),
                ("jira", "default"): (JIRA_SERVICE,),
            },
            "create_schema": True,
            "clock": clock,
        }
        options.update(overrides)
        app = create_app(
            ReceiverSettings(**options), plugin_manager=get_plugin_manager(load_entrypoints=False)
        )
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["escalier"].close()


@pytest.fixture
def app(make_app) -> Flask:
    """A receiver with the default test settings."""
    return make_app()


@pytest.fixture
def client(app):
    """A test client of :func:`app`."""
    return app.test_client()
