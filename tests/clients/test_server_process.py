"""A benchmark stopped with SIGTERM stops the children it started in sessions of their own."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

# The child: like a server whose worker finishes its running job on SIGTERM, it exits
# ``linger`` seconds after the signal; it says "ready" (on the parent's stdout) once it
# handles the signal.
CHILD = textwrap.dedent("""
    import signal, sys, time
    linger = float(sys.argv[1])
    asked = []
    signal.signal(signal.SIGTERM, lambda *_: asked.append(time.monotonic()))
    print("ready", flush=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (asked and time.monotonic() - asked[0] > linger):
        time.sleep(0.05)
""")

# The parent: that child in its own session (as ServerProcess starts the server), stopped in a
# ``finally`` inside ``stop_children_on_sigterm``; it prints the child's pid, then waits.
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    from clients.server_process import ChildProcess, stop_children_on_sigterm

    child = ChildProcess()
    with stop_children_on_sigterm():
        try:
            child.process = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]],
                                             start_new_session=True)
            print(child.process.pid, flush=True)
            time.sleep(120)
        finally:
            child.stop()
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("signals", [1, 2], ids=["sigterm", "sigterm-twice"])
def test_sigterm_to_the_parent_stops_the_child_of_another_session(signals: int):
    """A second SIGTERM while the child is still finishing (``kill`` twice) does not cut the
    parent's clean-up short: the parent still waits for the child."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, "2.0"], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    child_pid = None
    started = time.monotonic()
    try:
        lines = []
        while len(lines) < 2 and time.monotonic() - started < 60:
            ready, _, _ = select.select([parent.stdout], [], [], 1)
            if ready:
                lines.append(parent.stdout.readline().strip())
        child_pid = int(next(line for line in lines if line.isdigit()))
        assert "ready" in lines and _alive(child_pid)
        started = time.monotonic()
        parent.send_signal(signal.SIGTERM)
        if signals == 2:
            time.sleep(0.5)  # the parent is in its clean-up, waiting for the lingering child
            parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM
        assert time.monotonic() - started >= 2.0  # the parent waited for the child to finish
        assert not _alive(child_pid), "the child outlived its parent's SIGTERM"
    finally:
        if parent.poll() is None:
            parent.kill()
        if child_pid is not None and _alive(child_pid):
            os.killpg(child_pid, signal.SIGKILL)
