"""Fixtures of the dashboard tests: headless Chromium (``browser``, from tests/browser_support.py)."""

from __future__ import annotations

from browser_support import browser  # noqa: F401 - the fixture
