"""Security in this process, on the scripted engine: per-key session limits, the Origin check of browser
WebSockets, the demo page's security headers, static serving that stays inside web_client, and keys that
never reach the logs."""

from __future__ import annotations

import logging

import pytest
from starlette.websockets import WebSocketDisconnect

from server.errors import CLOSE_POLICY, CLOSE_TRY_LATER
from server.security import CSP, KeyLimits, key_id
from tests.server.fake_engine import AUTH, KEY, realtime, served


def _refused(client, headers: dict | None = None) -> tuple[dict, int]:
    """The error event and close code of a WebSocket the server refuses."""
    with client.websocket_connect("/v1/realtime", headers=AUTH if headers is None else headers) as ws:
        event = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    return event["error"], closed.value.code


def test_a_key_holds_at_most_its_sessions(tiny):
    with served(tiny, max_sessions=3, max_sessions_per_key=2) as srv:
        with realtime(srv.client), realtime(srv.client):
            error, code = _refused(srv.client)
            assert srv.slots_used() == 2  # refused before it took a slot
        with realtime(srv.client) as rt:  # both closed: their counts came back
            done = rt.say("hi")
        assert srv.metric("lfm_audio_rejected_sessions_total", reason="limit") == 1
    assert (error["code"], code) == ("session_limit_exceeded", CLOSE_TRY_LATER)
    assert done["response"]["status"] == "completed"


def test_a_key_starts_at_most_so_many_sessions_a_minute(tiny):
    with served(tiny, new_sessions_per_minute=3) as srv:
        minted = srv.client.post("/v1/realtime/client_secrets", headers=AUTH, json={})  # a session to be: counts
        with realtime(srv.client):
            pass
        with realtime(srv.client, headers={"Authorization": f"Bearer {minted.json()['value']}"}):
            pass  # redeeming a secret counts nothing more
        with realtime(srv.client):
            pass
        error, code = _refused(srv.client)
        again = srv.client.post("/v1/realtime/client_secrets", headers=AUTH, json={})
    assert minted.status_code == 200
    assert (error["code"], code) == ("rate_limit_exceeded", CLOSE_TRY_LATER)
    assert "in the last minute" in error["message"]
    assert again.status_code == 429 and again.json()["error"]["code"] == "rate_limit_exceeded"


def test_the_limits_count_a_minute_and_each_key_alone():
    now = [0.0]
    limits = KeyLimits(max_sessions=None, per_minute=2, clock=lambda: now[0])
    limits.acquire("a")
    limits.acquire("a")
    limits.acquire("b")  # another key: its own count
    with pytest.raises(Exception, match="last minute"):
        limits.acquire("a")
    now[0] = 60.5  # the first two have left the window
    limits.acquire("a")
    assert limits.open_sessions("a") == 3
    for _ in range(3):
        limits.release("a")
    assert limits.open_sessions("a") == 0


def test_browser_websockets_from_other_origins_are_refused(tiny):
    with served(tiny, allowed_origins=["https://app.example"]) as srv:
        error, code = _refused(srv.client, {**AUTH, "Origin": "https://evil.example"})
        lookalike, _ = _refused(srv.client, {**AUTH, "Origin": "https://app.example.evil.example"})
        for origin in ("http://testserver", "https://app.example", None):  # its own page, allowed, no browser
            headers = {**AUTH, **({"Origin": origin} if origin else {})}
            with realtime(srv.client, headers=headers) as rt:
                assert rt.events[0]["type"] == "session.created"
        assert srv.slots_used() == 0
    assert (error["code"], code) == ("origin_not_allowed", CLOSE_POLICY)
    assert lookalike["code"] == "origin_not_allowed"
    with served(tiny) as srv:  # by default: only the server's own pages
        assert _refused(srv.client, {**AUTH, "Origin": "https://app.example"})[0]["code"] == "origin_not_allowed"


def test_the_demo_page_has_security_headers_and_a_csp_it_works_under(tiny):
    with served(tiny) as srv:
        page = srv.client.get("/")
        script = srv.client.get("/app.js")
        api = srv.client.get("/v1/models", headers=AUTH)
    assert page.status_code == 200 and "<script" in page.text
    for response in (page, script, api):
        assert response.headers["content-security-policy"] == CSP
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    # the page loads its own scripts and styles only, nothing inline (which the CSP would block)
    assert "<script>" not in page.text and "style=" not in page.text and " on" + "click=" not in page.text


@pytest.mark.parametrize("path", [
    "/../pyproject.toml", "/..%2fpyproject.toml", "/%2e%2e/pyproject.toml", "/%2e%2e%2fpyproject.toml",
    "/static/../../pyproject.toml", "/..%5cpyproject.toml", "/....//pyproject.toml", "/%252e%252e/pyproject.toml",
    "/web_client/../server/auth.py", "/..%2f..%2f..%2fetc%2fpasswd", "//etc/passwd", "/%00../pyproject.toml",
])
def test_static_serving_stays_inside_the_web_client(tiny, path):
    with served(tiny) as srv:
        response = srv.client.get(path)
    assert response.status_code in (400, 404), (path, response.status_code)
    assert "[project]" not in response.text and "root:" not in response.text and "HMAC" not in response.text


def test_keys_and_secrets_never_reach_the_logs(tiny, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-9876543210"
    with served(tiny) as srv:
        secret = srv.client.post("/v1/realtime/client_secrets", headers=AUTH, json={}).json()["value"]
        with realtime(srv.client) as rt:
            rt.say("hi")
        with realtime(srv.client, headers={"Authorization": f"Bearer {secret}"}):
            pass
        _refused(srv.client, {"Authorization": f"Bearer {secret}"})  # used already
        _refused(srv.client, {"Authorization": f"Bearer {wrong}"})
        repr_settings = repr(srv.state.settings)
    logged = "\n".join(r.getMessage() for r in caplog.records) + repr_settings
    assert "session_end" in logged  # the log was captured
    for value in (KEY, wrong, secret, secret.split(".")[-1]):
        assert value not in logged
    assert key_id(KEY) != key_id(wrong) and KEY not in key_id(KEY)
