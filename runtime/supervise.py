"""The worker beside the receiver, as a child process that is restarted if it dies.

``escalier serve`` used to run the worker as threads of gunicorn's master process, which forks
its HTTP workers from that process: a fork taken while a worker thread was inside SQLite (or any
other library holding a lock) left the HTTP worker waiting on that lock for ever. A separate
process (``escalier worker``, started with fork and exec) shares no locks with the master.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

__all__ = ["PARENT_VARIABLE", "WorkerProcess", "follow_parent"]

# Set by WorkerProcess in the child's environment: the process the worker is to die with.
PARENT_VARIABLE = "ESCALIER_PARENT_PID"
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("escalier.runtime.supervise")

_FIRST_DELAY = 1.0
_MAX_DELAY = 30.0
# A worker that ran this long before it died is restarted at once, not after a growing pause.
_HEALTHY_RUN = 60.0


class WorkerProcess:
    """Runs ``escalier worker POLICY --db URL`` until :meth:`stop`, restarting it when it exits.

    The child runs in its own session, so a terminal's Ctrl-C reaches only the receiver, which
    then stops the worker (SIGTERM: it finishes what it is doing and exits). On Linux the child
    is also sent SIGTERM if the receiver dies without stopping it (SIGKILL, a crash): see
    :func:`follow_parent`.
    """

    def __init__(self, url: str, policy_path: str, *, command: Sequence[str] | None = None) -> None:
        self.command = list(command or (sys.executable, "-m", "escalier", "worker", policy_path, "--db", url))
        self.starts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._owner: int | None = None
        self._thread = threading.Thread(target=self._supervise, name="escalier-worker-supervisor", daemon=True)

    @property
    def pid(self) -> int | None:
        """The running child's process id, if there is one."""
        with self._lock:
            return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the child and the thread that restarts it."""
        self._owner = os.getpid()
        self._spawn()
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop the child (SIGTERM, then SIGKILL after ``timeout``); its exit status.

        Only in the process that started it: gunicorn's HTTP workers are forks of that process,
        and leave through the same ``finally`` that stops the worker.
        """
        if os.getpid() != self._owner:
            return None
        self._stopping.set()
        with self._lock:
            process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("runtime.worker.killed", extra={"pid": process.pid, "after_seconds": timeout})
            process.kill()
            code = process.wait()
        self._thread.join(timeout)
        return code

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            env = {**os.environ, PARENT_VARIABLE: str(os.getpid())}
            self._process = subprocess.Popen(self.command, start_new_session=True, env=env)
            self.starts += 1
        log.info("runtime.worker.process_started", extra={"pid": self._process.pid, "start": self.starts})

    def _supervise(self) -> None:
        delay = _FIRST_DELAY
        while not self._stopping.is_set():
            with self._lock:
                process = self._process
            if process is None:
                return
            began = time.monotonic()
            code = process.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - began >= _HEALTHY_RUN:
                delay = _FIRST_DELAY
            log.error(
                "runtime.worker.process_exited",
                extra={"pid": process.pid, "code": code, "restart_in_seconds": delay},
            )
            if self._stopping.wait(delay):
                return
            self._spawn()
            delay = min(delay * 2, _MAX_DELAY)


def follow_parent() -> bool:
    """In a worker started by :class:`WorkerProcess`: be sent SIGTERM when the receiver dies.

    Linux's ``PR_SET_PDEATHSIG``, asked for after the exec (not between fork and exec, where a
    threaded parent makes Python code unsafe). A receiver that died before the request was made
    is caught by comparing the parent's pid. Elsewhere, or outside ``serve``, nothing happens.

    :returns: True if the worker now follows its parent.
    """
    parent = os.environ.pop(PARENT_VARIABLE, None)
    if not parent or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if str(os.getppid()) != parent:
        # The receiver was gone before the request took effect: stop as it would have asked.
        os.kill(os.getpid(), signal.SIGTERM)
    return True
