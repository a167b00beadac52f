"""The gunicorn settings every receiver worker runs with."""

from __future__ import annotations

import gc
import socket

import pytest

from escalier.core.errors import EscalierError
from escalier.webhooks.serve import check_free, freeze_startup_objects, gunicorn_options


def test_workers_freeze_what_they_built_at_start_up():
    options = gunicorn_options()
    assert options["post_worker_init"] is freeze_startup_objects
    assert options["worker_class"] == "escalier.webhooks._front.BufferingWorker"
    assert options["preload_app"] is False
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


def test_each_worker_listens_on_its_own_tcp_socket_but_never_on_a_shared_unix_path():
    assert gunicorn_options(bind="127.0.0.1:8080")["reuse_port"] is True
    assert gunicorn_options(bind="[::1]:8080")["reuse_port"] is True
    assert gunicorn_options(bind="unix:/run/escalier.sock")["reuse_port"] is False


def test_a_taken_address_is_refused_before_gunicorn_starts():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EscalierError, match=f"127.0.0.1:{port} is already in use"):
            check_free(f"127.0.0.1:{port}")
    check_free(f"127.0.0.1:{port}")  # free again once closed
    check_free("unix:/run/escalier.sock")  # not a TCP address: gunicorn checks it


def test_workers_read_whole_requests_before_a_thread_takes_them_and_share_no_control_socket():
    from gunicorn.config import Config
    from gunicorn.workers.gthread import ThreadWorker

    options = gunicorn_options(request_deadline=4.0, max_body_bytes=2048)
    assert (options["escalier_request_deadline"], options["escalier_max_body_bytes"]) == (4.0, 2048)
    # gunicorn's own control socket would be one path in $HOME/.gunicorn/ for every instance.
    assert options["control_socket_disable"] is True
    config = Config()
    for key in ("worker_class", "control_socket_disable"):
        config.set(key, options[key])
    assert issubclass(config.worker_class, ThreadWorker) and config.control_socket_disable
