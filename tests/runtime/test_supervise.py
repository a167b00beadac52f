"""The worker process beside the receiver: restarted when it dies, stopped when the receiver stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from escalier.runtime.supervise import PARENT_VARIABLE, WorkerProcess, follow_parent

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


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie that its new parent has not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


FOLLOWER = (
    "import os, sys, time; from escalier.runtime.supervise import PARENT_VARIABLE, follow_parent; "
    "follows = follow_parent(); "
    "open(sys.argv[1], 'w').write(f'{os.getpid()} {follows} {os.environ.get(PARENT_VARIABLE)}'); "
    "time.sleep(120)"
)

# A receiver that starts the command it is given as its worker, and waits.
RECEIVER = (
    "import sys, time; from escalier.runtime.supervise import WorkerProcess; "
    "WorkerProcess('sqlite://', 'unused.yaml', command=sys.argv[1:]).start(); time.sleep(120)"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_worker_dies_with_a_receiver_that_was_killed_outright(tmp_path):
    report = tmp_path / "worker"
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, sys.executable, "-c", FOLLOWER, str(report)]
    )
    try:
        assert _wait_for(lambda: report.exists() and report.read_text().count(" ") == 2, 30)
        pid, follows, variable = report.read_text().split()
        # It follows its parent, and does not hand the variable on to processes of its own.
        assert follows == "True" and variable == "None"
        assert not _gone(int(pid))
        receiver.kill()  # SIGKILL: the receiver's finally that stops the worker never runs
        receiver.wait(10)
        assert _wait_for(lambda: _gone(int(pid)), 10), "the worker outlived its receiver"
    finally:
        receiver.kill()
        receiver.wait(10)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_whose_receiver_is_already_gone_stops_at_once(tmp_path):
    # The receiver named in the environment is not the parent: it died before the worker asked.
    env = {**os.environ, PARENT_VARIABLE: "1"}
    child = subprocess.run([sys.executable, "-c", FOLLOWER, str(tmp_path / "worker")], env=env,
                           timeout=30, check=False)
    assert child.returncode == -signal.SIGTERM


def test_outside_serve_a_worker_follows_nobody(monkeypatch):
    monkeypatch.delenv(PARENT_VARIABLE, raising=False)
    assert follow_parent() is False
