"""Who may read /metrics: with API keys configured it needs one (a 401 with the error body otherwise), unless
`metrics_public` (LFM_AUDIO_METRICS_PUBLIC, --metrics-public) opens it; a server without keys is open. The
probes never need a key."""

from __future__ import annotations

import pytest

from server.cli import build_parser
from server.settings import Settings
from tests.server.fake_engine import AUTH, served


@pytest.mark.parametrize("public", [False, True])
def test_metrics_need_a_key_unless_opened(tiny, public):
    with served(tiny, metrics_public=public) as srv:
        bare = srv.client.get("/metrics")
        wrong = srv.client.get("/metrics", headers={"Authorization": "Bearer sk-wrong-0123456789"})
        keyed = srv.client.get("/metrics", headers=AUTH)
        probes = [srv.client.get(path).status_code for path in ("/healthz", "/readyz")]
        refused = srv.metric("lfm_audio_rejected_sessions_total", reason="auth")
    assert keyed.status_code == 200 and "lfm_audio_sessions_active" in keyed.text
    assert probes == [200, 200]
    if public:
        assert bare.status_code == wrong.status_code == 200 and refused == 0
    else:
        assert bare.status_code == wrong.status_code == 401
        assert bare.json()["error"]["code"] == wrong.json()["error"]["code"] == "invalid_api_key"
        assert set(bare.json()["error"]) == {"type", "code", "message", "param", "event_id"}
        assert refused == 2


def test_a_server_without_keys_serves_metrics_to_anyone(tiny):
    with served(tiny, api_keys=[]) as srv:
        assert srv.client.get("/metrics").status_code == 200


def test_the_setting_has_its_env_twin_and_flag(monkeypatch):
    assert Settings().metrics_public is False  # keyed by default
    monkeypatch.setenv("LFM_AUDIO_METRICS_PUBLIC", "true")
    assert Settings().metrics_public is True
    args = vars(build_parser().parse_args(["serve", "--no-metrics-public"]))
    assert args["metrics_public"] is False
    assert vars(build_parser().parse_args(["serve", "--metrics-public"]))["metrics_public"] is True
