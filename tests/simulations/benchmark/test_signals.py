"""A benchmark stopped by SIGTERM or by SIGINT (even where a background shell ignores SIGINT) stops its child tree."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest

CHILD = r"""
import subprocess, sys, time
from simulations.benchmark.benchmark import install_signal_handlers
from simulations.engines import stop_tree
install_signal_handlers()
proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
try:
    print(proc.pid, flush=True)
    time.sleep(120)
finally:
    stop_tree(proc.pid)
"""


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for `cmd &` in a non-interactive shell


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_child_tree(signum):
    parent = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, preexec_fn=_ignore_sigint)
    try:
        child = int(parent.stdout.readline())
        assert psutil.pid_exists(child)
        parent.send_signal(signum)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 15
        while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child outlived its stopped parent"
            time.sleep(0.1)
        assert "KeyboardInterrupt" in parent.stderr.read()
    finally:
        if parent.poll() is None:
            parent.kill()
