"""openai-node 7 (`OpenAIRealtimeWS`), unmodified: it always connects with wss://, so the server serves TLS itself
(`--ssl-certfile/--ssl-keyfile`, a self-signed certificate made here, trusted through NODE_EXTRA_CA_CERTS)."""

from __future__ import annotations

import shutil

import httpx
import pytest

from tests.clients.harness import API_KEY, NODE_CLIENT, SCRIPTS, SERVER_ARGS, TlsServer, ensure_clients, run_client

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory, tls_files):
    if shutil.which("node") is None:
        pytest.fail("node is not installed (apt-get install nodejs npm)")
    ensure_clients("node")
    with TlsServer(tiny_dir, tmp_path_factory.mktemp("srv"), *tls_files, args=SERVER_ARGS) as srv:
        yield srv


def test_the_server_speaks_tls_and_only_tls(server):
    assert httpx.get(server.base + "/readyz", verify=server.trust).status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.base.replace("https", "http", 1) + "/readyz", timeout=5)
    with pytest.raises(httpx.HTTPError):  # an unknown certificate is refused: the client checks it
        httpx.get(server.base + "/readyz", timeout=5)


def test_openai_node_over_tls(server, speech_wav):
    found = run_client(["node", str(SCRIPTS / "openai_node.cjs"), server.base, API_KEY, speech_wav],
                       env={"NODE_CLIENT": str(NODE_CLIENT), "NODE_EXTRA_CA_CERTS": str(server.cert)})
    assert found["url"].startswith("wss://127.0.0.1:")
    assert found["turn_detection"] == "server_vad" and found["spoken"] in ("completed", "incomplete")
    assert found["metadata"] == [{"tag": "node"}, {"tag": "node"}]
    assert found["text"] == ["text"]
    assert found["barge_in"] == {"status": "cancelled", "reason": "turn_detected", "truncated": True}
    assert found["errors"] == []
