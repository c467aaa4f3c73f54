"""A benchmark stopped with SIGTERM stops the children it started in sessions of their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

# The parent: a child in its own session (as ServerProcess starts the server), stopped in a
# ``finally`` inside ``stop_children_on_sigterm``; it prints the child's pid, then waits.
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    from clients.server_process import ChildProcess, stop_children_on_sigterm

    child = ChildProcess()
    with stop_children_on_sigterm():
        try:
            child.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
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


def test_sigterm_to_the_parent_stops_the_child_of_another_session():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        child_pid = int(parent.stdout.readline())
        assert _alive(child_pid)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child_pid), "the child outlived its parent's SIGTERM"
    finally:
        if parent.poll() is None:
            parent.kill()
