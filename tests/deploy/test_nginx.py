"""deploy/nginx/ with Debian's nginx: the config as shipped passes `nginx -t`, and a real nginx on a free loopback
port in front of two real servers carries a Realtime WebSocket session, passes /healthz, refuses /metrics however
it is spelled, spreads requests over both replicas and keeps a client's WebRTC call requests on one."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import websockets

from tests.server.harness import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
NGINX_DIR = ROOT / "deploy" / "nginx"
SITE = NGINX_DIR / "lfm-audio.conf"
REPLICAS = NGINX_DIR / "lfm-audio-replicas.inc"
LISTEN = "listen 80;"  # the shipped public listener; the tests move it to a free loopback port
CALLS = "/v1/realtime/calls"


def nginx() -> str:
    path = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).is_file()), None)
    if path is None:
        pytest.fail("nginx is not installed (Debian package: nginx)")
    return path


def render(tmp: Path, port: int, replicas: str | None) -> Path:
    """A main config around the shipped site file (temp paths, pid and logs under `tmp`, the listener on `port`),
    and the replica list: the shipped one, or `replicas`."""
    site = SITE.read_text()
    assert site.count(LISTEN) == 1, f"expected one {LISTEN!r} in {SITE}"
    (tmp / "lfm-audio.conf").write_text(site.replace(LISTEN, f"listen 127.0.0.1:{port};"))
    (tmp / REPLICAS.name).write_text(REPLICAS.read_text() if replicas is None else replicas)
    temp = " ".join(f"{kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                    "scgi"))
    main = tmp / "nginx.conf"
    main.write_text(f"""
user {getpass.getuser()};
pid {tmp / 'nginx.pid'};
error_log {tmp / 'error.log'} info;
events {{ worker_connections 256; }}
http {{
    access_log {tmp / 'access.log'};
    {temp}
    include {tmp / 'lfm-audio.conf'};
}}
""")
    return main


def check(main: Path) -> subprocess.CompletedProcess:
    return subprocess.run([nginx(), "-t", "-q", "-c", str(main), "-p", str(main.parent)], capture_output=True,
                          text=True, timeout=30)


def test_the_shipped_config_passes_nginx_t(tmp_path):
    run = check(render(tmp_path, free_port(), None))
    assert run.returncode == 0, run.stderr


def test_nginx_t_catches_a_broken_replica_list(tmp_path):
    run = check(render(tmp_path, free_port(), "server 127.0.0.1:1 max_fails=;\n"))
    assert run.returncode != 0 and "max_fails" in run.stderr


def raw_get(port: int, target: str) -> int:
    """The status of GET `target` sent byte for byte (no client-side normalisation of the path)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: lfm-audio\r\nConnection: close\r\n\r\n".encode())
        status_line = s.makefile("rb").readline().decode()
    return int(status_line.split()[1])


def requests_seen(server: ServerProcess, method: str, path: str) -> int:
    """How many `method path` requests the replica's access log shows."""
    return server.log().count(f'"{method} {path} HTTP/1.1"')


@contextlib.contextmanager
def replicas(tiny_dir: Path, tmp: Path, n: int, args: list[str] = ()):
    """n servers (each with `args`), started side by side."""
    servers = [ServerProcess(tiny_dir, tmp, args=list(args)) for _ in range(n)]
    with contextlib.ExitStack() as stack:
        with ThreadPoolExecutor(n) as pool:
            started = [pool.submit(s.__enter__) for s in servers]
        for server in servers:
            stack.callback(server.__exit__)
        for future in started:
            future.result()
        yield servers


@contextlib.contextmanager
def nginx_in_front(tmp: Path, servers: list[ServerProcess]):
    port = free_port()
    main = render(tmp, port, "".join(f"server 127.0.0.1:{s.port} max_fails=1 fail_timeout=10s;\n" for s in servers))
    proc = subprocess.Popen([nginx(), "-c", str(main), "-p", str(tmp), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (tmp / "error.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, "nginx did not start listening"
            time.sleep(0.05)
        yield port
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful stop
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_nginx_in_front_of_two_replicas(tiny_dir, tmp_path):
    with replicas(tiny_dir, tmp_path, 2) as servers, nginx_in_front(tmp_path, servers) as port:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/healthz", timeout=10).json() == {"status": "ok"}

        # /metrics: the replicas serve it, the public listener does not, however the path is written
        assert "lfm_audio_sessions_active" in servers[0].metrics()
        direct = [requests_seen(s, "GET", "/metrics") for s in servers]
        for target in ("/metrics", "/metrics/", "/metrics?name[]=x", "/%6Detrics", "/%6d%65trics", "//metrics",
                       "/./metrics", "/v1/../metrics", "/METRICS"):
            status = raw_get(port, target)
            assert status in (400, 404) and status != 200, (target, status)
        assert [requests_seen(s, "GET", "/metrics") for s in servers] == direct  # none got through

        # a Realtime session over the WebSocket upgrade
        async def session() -> dict:
            async with websockets.connect(f"ws://127.0.0.1:{port}/v1/realtime?model=lfm-audio",
                                          open_timeout=30) as ws:
                return json.loads(await asyncio.wait_for(ws.recv(), 30))

        assert asyncio.run(session())["type"] == "session.created"

        # plain requests spread over both replicas; a client's call requests stay on one
        rounds = 6
        for _ in range(rounds):
            assert httpx.get(base + "/v1/models", timeout=10).status_code == 200
            reply = httpx.post(base + CALLS, content=b"not an offer", headers={"Content-Type": "application/sdp"},
                               timeout=10)
            assert reply.status_code == 400, reply.text  # the server's refusal: the request reached a replica
        models = [requests_seen(s, "GET", "/v1/models") for s in servers]
        calls = [requests_seen(s, "POST", CALLS) for s in servers]
        assert sum(models) == rounds and min(models) > 0, models
        assert sorted(calls) == [0, rounds], calls
