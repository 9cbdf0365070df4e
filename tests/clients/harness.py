"""What the real-client tests share: the clients' own environments (tools/client-venv.sh), a self-signed TLS
certificate, a server over TLS, and running one client script as a subprocess that prints its findings as JSON."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.server.harness import ROOT, ServerProcess

CLIENT_VENV = ROOT / ".cache" / "client-venv"
NODE_CLIENT = ROOT / ".cache" / "node-client"
SCRIPTS = Path(__file__).parent / "scripts"
API_KEY = "sk-client-test-key"
# The server caps every response (clients ask for "inf" by default): long enough that a barge-in finds the
# response still generating, short enough that a turn takes seconds on CPU.
SERVER_ARGS = ["--max-response-tokens", "160", "--api-keys", API_KEY]


def ensure_clients(kind: str) -> None:
    """Install the clients' environments once (idempotent: a stamp skips the work when the pins are the same)."""
    flag = {"python": "--python-only", "node": "--node-only"}[kind]
    subprocess.run(["bash", str(ROOT / "tools" / "client-venv.sh"), flag], check=True, cwd=ROOT)


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lfm-audio test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsServer(ServerProcess):
    """`lfm-audio serve --ssl-certfile/--ssl-keyfile`: https:// and wss://, ready when /readyz answers over TLS."""

    def __init__(self, model: Path, tmp: Path, cert: Path, key: Path, args: list[str] = ()) -> None:
        super().__init__(model, tmp, args=[*args, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)])
        self.cert = cert
        self.trust = ssl.create_default_context(cafile=str(cert))  # what a client given the certificate checks
        self.verify = self.trust
        self.base = f"https://127.0.0.1:{self.port}"
        self.ws = f"wss://127.0.0.1:{self.port}/v1"

    def metrics(self) -> str:
        return httpx.get(self.base + "/metrics", timeout=5, verify=self.trust).text


def run_client(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 240) -> dict:
    """Run a client script; it prints one JSON object (its findings) as its last stdout line."""
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, (f"client failed ({proc.returncode}):\nstdout:\n{proc.stdout[-4000:]}"
                                            f"\nstderr:\n{proc.stderr[-6000:]}")
    result = json.loads(lines[-1])
    result["_seconds"] = time.monotonic() - t0
    return result


def python_client(script: str, *args: str, **kw) -> dict:
    return run_client([str(CLIENT_VENV / "bin" / "python"), str(SCRIPTS / script), *args], **kw)


def main_python(script: str, *args: str, **kw) -> dict:
    """A script run by our own interpreter (the openai SDK is a dev extra of the project)."""
    return run_client([sys.executable, str(SCRIPTS / script), *args], **kw)
