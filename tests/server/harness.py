"""A real server for integration tests: `lfm-audio serve` in a subprocess on a free loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, model: Path, tmp: Path, *, env: dict[str, str] | None = None, args: list[str] = ()) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/v1"
        self.log_path = tmp / f"server-{self.port}.log"
        self.cmd = [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port), "--model", str(model),
                    "--max-sessions", "3", "--max-context", "1024", *args]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.verify: object = True  # how the readiness probe checks TLS (a subclass serving https sets it)

    def __enter__(self) -> ServerProcess:
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(self.base + "/readyz", timeout=1, verify=self.verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("server did not become ready:\n" + self.log()[-3000:])

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # graceful: lifespan shutdown runs
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text()

    def log_events(self, kind: str) -> list[dict]:
        """The structured log lines of one kind (session_start, turn, session_end)."""
        out = []
        for line in self.log().splitlines():
            start = line.find('{"event"')
            if start >= 0:
                record = json.loads(line[start:])
                if record["event"] == kind:
                    out.append(record)
        return out

    def auth(self) -> dict[str, str]:
        """The Authorization header of the server's first API key (none: an open server)."""
        keys = self.env.get("LFM_AUDIO_API_KEYS") or next(
            (value for flag, value in zip(self.cmd, self.cmd[1:], strict=False) if flag == "--api-keys"), "")
        return {"Authorization": "Bearer " + keys.split(",")[0].strip()} if keys else {}

    def metrics(self) -> str:
        reply = httpx.get(self.base + "/metrics", timeout=5, headers=self.auth(), verify=self.verify)
        reply.raise_for_status()
        return reply.text
