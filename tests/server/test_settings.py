import pytest
from pydantic import ValidationError

from server.settings import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.upper().startswith("LFM_AUDIO_"):
            monkeypatch.delenv(name)


def test_defaults():
    s = Settings()
    assert (s.host, s.port, s.model, s.device, s.dtype) == ("127.0.0.1", 8000, None, "cpu", None)
    assert (s.max_sessions, s.max_context, s.prefill_budget, s.decoder, s.compile) == (8, 4096, 256, "auto", False)
    assert (s.api_keys, s.secret_key, s.client_secret_ttl_s, s.cors_origins) == ([], None, 600, [])
    assert s.ice_servers == []  # never a public STUN server unless configured
    assert (s.max_input_buffer_s, s.max_event_bytes, s.max_response_tokens) == (60.0, 1_000_000, 4096)
    assert (s.shutdown_grace_s, s.log_level) == (5.0, "info")


def test_every_field_has_a_description():  # the serve flags' help comes from them
    assert all(f.description for f in Settings.model_fields.values())


def test_env_scalars(monkeypatch):
    for name, value in {"PORT": "9001", "COMPILE": "true", "DTYPE": "bfloat16", "MAX_SESSIONS": "3",
                        "MODEL": "LiquidAI/LFM2-Audio-1.5B", "MAX_INPUT_BUFFER_S": "12.5"}.items():
        monkeypatch.setenv("LFM_AUDIO_" + name, value)
    monkeypatch.setenv("PORT", "1")  # no prefix: not ours
    s = Settings()
    assert (s.port, s.compile, s.dtype, s.max_sessions) == (9001, True, "bfloat16", 3)
    assert (s.model, s.max_input_buffer_s) == ("LiquidAI/LFM2-Audio-1.5B", 12.5)


def test_env_comma_lists(monkeypatch):
    monkeypatch.setenv("LFM_AUDIO_API_KEYS", " key-one, key-two,,")
    monkeypatch.setenv("LFM_AUDIO_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("LFM_AUDIO_ICE_SERVERS", "stun:stun.example.org:3478, turns:turn.example.org")
    s = Settings()
    assert s.api_keys == ["key-one", "key-two"]
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.ice_servers == [{"urls": ["stun:stun.example.org:3478"]}, {"urls": ["turns:turn.example.org"]}]


def test_env_json_lists(monkeypatch):
    monkeypatch.setenv("LFM_AUDIO_API_KEYS", '["a,b", "c"]')  # a comma inside a JSON item is kept
    monkeypatch.setenv("LFM_AUDIO_CORS_ORIGINS", '["https://a.example"]')
    monkeypatch.setenv("LFM_AUDIO_ICE_SERVERS",
                       '[{"urls": "turn:t.example.org:3478", "username": "u", "credential": "p"},'
                       ' {"urls": ["stun:s.example.org", "stun:s2.example.org"]}]')
    s = Settings()
    assert s.api_keys == ["a,b", "c"]
    assert s.cors_origins == ["https://a.example"]
    assert s.ice_servers == [{"urls": ["turn:t.example.org:3478"], "username": "u", "credential": "p"},
                             {"urls": ["stun:s.example.org", "stun:s2.example.org"]}]


def test_kwargs_lists_pass_through():  # what the CLI hands over
    s = Settings(api_keys=["k1"], cors_origins=["*"], ice_servers=[{"urls": "stun:s.example.org"}])
    assert (s.api_keys, s.cors_origins, s.ice_servers) == (["k1"], ["*"], [{"urls": ["stun:s.example.org"]}])


@pytest.mark.parametrize(("field", "value", "message"), [
    ("port", 70000, "less than or equal to 65535"),
    ("max_sessions", 0, "greater than or equal to 1"),
    ("max_context", -1, "greater than or equal to 1"),
    ("prefill_budget", 0, "greater than or equal to 1"),
    ("max_event_bytes", 0, "greater than or equal to 1"),
    ("max_response_tokens", 0, "greater than or equal to 1"),
    ("max_input_buffer_s", 0, "greater than 0"),
    ("shutdown_grace_s", -1, "greater than or equal to 0"),
    ("client_secret_ttl_s", 7201, "less than or equal to 7200"),
    ("client_secret_ttl_s", 5, "greater than or equal to 10"),
    ("dtype", "float16", "'float32' or 'bfloat16'"),
    ("decoder", "wavenet", "'auto', 'mimi' or 'lfm2.5'"),
    ("log_level", "loud", "'critical'"),
    ("secret_key", "short", "at least 16 characters"),
    ("api_keys", "ek_abc", "must not start with 'ek_'"),
    ("api_keys", '["a", ', "not a valid JSON list"),
    ("api_keys", ["good", " spaced "], "no surrounding spaces"),
    ("ice_servers", "stun.l.google.com:19302", "must use one of the schemes stun, turn, turns"),
    ("ice_servers", [{"urls": ["https://turn.example.org"]}], "must use one of the schemes"),
    ("ice_servers", [{"url": "stun:s.example.org"}], "unknown ICE server keys ['url']"),
    ("ice_servers", [{"username": "u"}], "needs 'urls'"),
    ("ice_servers", [{"urls": "turn:t.example.org", "credential": 5}], "must be strings"),
    ("ice_servers", [42], "a URL or a dict"),
])
def test_invalid_values_rejected(field, value, message):
    with pytest.raises(ValidationError) as e:
        Settings(**{field: value})
    assert e.value.errors()[0]["loc"][0] == field
    assert message in str(e.value)


def test_invalid_env_value_rejected(monkeypatch):
    monkeypatch.setenv("LFM_AUDIO_ICE_SERVERS", "stun:ok.example.org,http://bad.example.org")
    with pytest.raises(ValidationError, match=r"'http://bad\.example\.org' must use one of the schemes"):
        Settings()


def test_secrets_kept_out_of_repr():
    s = Settings(api_keys=["key-visible?"], secret_key="s" * 20,
                 ice_servers=[{"urls": "turn:t.example.org", "username": "u", "credential": "turn-pass"}])
    assert "key-visible?" not in repr(s) and "turn-pass" not in repr(s) and "s" * 20 not in repr(s)
