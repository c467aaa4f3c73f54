"""A scribbleflow server as a child process on a free loopback port: for benchmarks and tests
that talk to a real server over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

STARTUP_SECONDS = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def stop_children_on_sigterm() -> Iterator[None]:
    """Inside, SIGTERM raises SystemExit(143) in the main thread, so that the ``finally``
    blocks run and stop the child processes started there. The children run in sessions of
    their own (``start_new_session``), so a SIGTERM to this process alone, with Python's
    default handling (die at once), would leave e.g. a benchmark's server running and
    training. Outside the main thread (no signal handlers there) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, frame: object) -> None:
        # A second SIGTERM (``kill`` twice) must not cut the clean-up short in turn.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        if previous is not None:  # None: a handler installed from C, which Python cannot put back
            signal.signal(signal.SIGTERM, previous)


class ChildProcess:
    """A child process started in its own process group (``start_new_session``)."""

    process: subprocess.Popen | None = None

    def kill(self) -> None:
        """SIGKILL to the whole process group (a crash, for restart tests)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown: a worker finishes its running job first), SIGKILL after 60 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()


class ServerProcess(ChildProcess):
    """``command`` (default: ``scribbleflow serve``) with ``env`` on a free loopback port,
    started in its own process group; :meth:`start` returns once ``/health`` answers.

    The port and host also go into ``SCRIBBLEFLOW_PORT`` / ``SCRIBBLEFLOW_HOST`` so that a
    command that reads them (the compose file's) listens where this object looks."""

    def __init__(self, env: dict[str, str], log_path: Path, command: list[str] | None = None,
                 cwd: Path | None = None, startup_seconds: float = STARTUP_SECONDS):
        self.port = free_port()
        self.env = {**env, "SCRIBBLEFLOW_HOST": "127.0.0.1", "SCRIBBLEFLOW_PORT": str(self.port)}
        self.log_path = log_path
        self.command = command or [sys.executable, "-m", "server.cli", "serve",
                                   "--host", "127.0.0.1", "--port", str(self.port)]
        self.cwd = cwd
        self.startup_seconds = startup_seconds
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.cwd, start_new_session=True)
        deadline = time.monotonic() + self.startup_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self._log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"the server did not answer within {self.startup_seconds:g} s:\n{self._log_tail()}")

    def _log_tail(self, characters: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return f"(no log at {self.log_path})"
