"""The gunicorn settings every receiver worker runs with."""

from __future__ import annotations

import gc

from escalier.webhooks.serve import freeze_startup_objects, gunicorn_options


def test_workers_freeze_what_they_built_at_start_up():
    options = gunicorn_options()
    assert options["post_worker_init"] is freeze_startup_objects
    assert options["worker_class"] == "gthread" and options["preload_app"] is False
    built_at_start_up = [["route", [n]] for n in range(1000)]
    gc.unfreeze()
    try:
        options["post_worker_init"](None)
        # Everything alive then, the app's objects among them, is out of the collector's reach.
        assert gc.get_freeze_count() >= len(built_at_start_up)
        first = built_at_start_up[0]
        assert all(obj is not first for obj in gc.get_objects())
    finally:
        gc.unfreeze()
