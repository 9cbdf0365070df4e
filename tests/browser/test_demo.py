"""Runs demo_in_netns.py (the browser demo in Chromium against a real server) in a private network namespace
that has only `lo`: nothing can leave the machine, and WebRTC's ICE candidates can only be 127.0.0.1.

`unshare -n` needs root (or unprivileged user namespaces). Extra pytest arguments for the inner run:
LFM_AUDIO_BROWSER_ARGS, e.g. "-k websocket -s".
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CASES = HERE / "demo_in_netns.py"


def _missing() -> list[str]:
    need = {"unshare": "util-linux", "ip": "iproute2", "espeak-ng": "espeak-ng"}
    out = [f"{tool} (apt package {pkg})" for tool, pkg in need.items() if shutil.which(tool) is None]
    if not Path("/usr/bin/chromium").exists():
        out.append("chromium (apt-get install -y --no-install-recommends chromium fonts-dejavu-core)")
    return out


def test_demo_in_loopback_namespace():
    missing = _missing()
    if missing:
        pytest.fail("the browser tests need: " + ", ".join(missing))
    inner = [sys.executable, "-m", "pytest", str(CASES), "-p", "no:cacheprovider", "-q", "-rA", "--durations=0",
             *shlex.split(os.environ.get("LFM_AUDIO_BROWSER_ARGS", ""))]
    cmd = ["unshare", "-n", "sh", "-c", "ip link set lo up && exec " + shlex.join(inner)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    if "unshare failed" in output or "Operation not permitted" in output[:500]:
        pytest.fail(f"cannot create a network namespace here (unshare -n needs root): {output[:500]}")
    print(output[-6000:])
    assert result.returncode == 0, output[-12000:]
