"""WebRTC calls end to end. They must run in a private network namespace with only `lo` (so that no packet
leaves 127.0.0.1 and no ICE candidate is an outside address): this test runs calls_in_netns.py (calls that work)
and hostile_in_netns.py (peers that misbehave) there, with `unshare -n` (or `unshare -rn` without root), and
passes when that run passes. Inside such a namespace already, it runs the file directly."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INNER = ["calls_in_netns.py", "hostile_in_netns.py"]
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("inner", INNER)
def test_calls_in_a_private_network_namespace(inner):
    path = Path(__file__).with_name(inner).relative_to(ROOT)
    pytest_cmd = [sys.executable, "-m", "pytest", str(path), "-q", "-p", "no:cacheprovider", "--durations=0"]
    if [name for _, name in socket.if_nameindex()] == ["lo"]:
        cmd = pytest_cmd
    else:
        inner = "ip link set lo up && exec " + shlex.join(pytest_cmd)
        cmd = ["unshare", "-n" if os.geteuid() == 0 else "-rn", "sh", "-c", inner]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"{shlex.join(cmd)} failed ({run.returncode}):\n{output[-12000:]}"
    assert " passed" in output and "skipped" not in output, output[-3000:]
