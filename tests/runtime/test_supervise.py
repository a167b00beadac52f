"""The worker process beside the receiver: restarted when it dies, stopped when the receiver stops."""

from __future__ import annotations

import os
import signal
import sys
import time

from escalier.runtime.supervise import WorkerProcess

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
STUBBORN = [
    sys.executable, "-c",
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)",
]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_worker_that_dies_is_started_again_and_stopped_with_the_receiver():
    worker = WorkerProcess("sqlite://", "unused.yaml", command=SLEEPER)
    worker.start()
    try:
        first = worker.pid
        assert first is not None and _alive(first)
        os.kill(first, signal.SIGKILL)
        assert _wait_for(lambda: worker.pid not in (None, first)), "not restarted"
        assert worker.starts == 2
        second = worker.pid
    finally:
        code = worker.stop(timeout=10)
    assert code == -signal.SIGTERM
    assert second is not None and not _alive(second)


def test_a_worker_that_ignores_sigterm_is_killed_after_the_timeout(capfd):
    worker = WorkerProcess("sqlite://", "unused.yaml", command=STUBBORN)
    worker.start()
    assert _wait_for(lambda: "ready" in capfd.readouterr().out)
    # It ignores SIGTERM, so only the SIGKILL that follows the timeout ends it.
    assert worker.stop(timeout=1) == -signal.SIGKILL
    assert worker.starts == 1


def test_the_serve_command_runs_escalier_worker_for_its_store():
    worker = WorkerProcess("sqlite:////tmp/x.db", "policy.yaml")
    assert worker.command[1:] == ["-m", "escalier", "worker", "policy.yaml", "--db", "sqlite:////tmp/x.db"]


def test_a_forked_copy_of_the_receiver_leaves_the_worker_alone():
    worker = WorkerProcess("sqlite://", "unused.yaml", command=SLEEPER)
    worker.start()
    try:
        pid = worker.pid
        child = os.fork()
        if child == 0:  # what a gunicorn HTTP worker does on its way out
            try:
                worker.stop(timeout=1)
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        assert pid is not None and _alive(pid) and worker.pid == pid
    finally:
        worker.stop(timeout=10)
    assert not _alive(pid)
