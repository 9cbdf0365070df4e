import base64
import hmac
import json

import pytest
from openai.types.realtime import ClientSecretCreateResponse

from server.auth import KEY_SUBPROTOCOL, Auth, AuthResult
from server.settings import Settings

SECRET = "test-secret-key-0123456789"


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def make(clock, keys=("key-one", "key-two"), secret=SECRET, **kw) -> Auth:
    return Auth(Settings(api_keys=list(keys), secret_key=secret), clock=clock, **kw)


def tamper(value: str, index: int) -> str:
    swap = "A" if value[index] != "A" else "B"
    return value[:index] + swap + value[index + 1:]


# ---- API keys
def test_open_only_without_keys(clock):
    assert make(clock, keys=()).open
    assert not make(clock).open


def test_check_key(clock):
    auth = make(clock)
    assert auth.check_key("key-one") and auth.check_key("key-two")
    for wrong in ("key-three", "", "key-one ", "KEY-ONE", "key-on", "ключ"):
        assert not auth.check_key(wrong)


def test_check_key_compares_every_key(clock, monkeypatch):
    calls = []
    real = hmac.compare_digest  # the patch below replaces it on the shared hmac module

    def counting(a, b):
        calls.append((a, b))
        return real(a, b)

    auth = make(clock, keys=("k1", "k2", "k3"))
    monkeypatch.setattr("server.auth.hmac.compare_digest", counting)
    assert auth.check_key("k1")  # a match on the first key does not stop the loop
    assert len(calls) == 3
    assert all(len(a) == len(b) == 32 for a, b in calls)  # digests: the key lengths do not leak
    calls.clear()
    assert not auth.check_key("nope")
    assert len(calls) == 3


def test_client_secret_signature_compared_in_constant_time(clock, monkeypatch):
    auth = make(clock)
    value = auth.mint()["value"]
    calls = []
    monkeypatch.setattr("server.auth.hmac.compare_digest", lambda a, b: calls.append(1) or a == b)
    assert auth.redeem(value) is not None
    assert calls == [1]


# ---- client secrets
def test_mint_shape(clock):
    auth = make(clock)
    config = {"type": "realtime", "instructions": "Be brief.", "audio": {"output": {"voice": "alloy"}}}
    out = auth.mint(config, ttl_s=120)
    assert out["value"].startswith("ek_") and out["expires_at"] == 1_000_120
    assert out["session"]["instructions"] == "Be brief." and out["session"]["object"] == "realtime.session"
    assert out["session"]["id"].startswith("sess_")
    ClientSecretCreateResponse.model_validate(out)  # OpenAI's own response model accepts it
    assert auth.mint()["expires_at"] == 1_000_600  # the settings' ttl
    assert auth.mint()["session"]["type"] == "realtime"
    assert auth.mint()["value"] != auth.mint()["value"]
    transcription = auth.mint({"type": "transcription"})
    ClientSecretCreateResponse.model_validate(transcription)


@pytest.mark.parametrize("ttl", [9, 7201, 0, -5, 60.0, True, "600"])
def test_mint_refuses_bad_ttl(clock, ttl):
    with pytest.raises(ValueError, match="from 10 to 7200"):
        make(clock).mint(ttl_s=ttl)


def test_mint_refuses_bad_session(clock):
    with pytest.raises(ValueError, match=r"session\.type"):
        make(clock).mint({"type": "chat"})
    with pytest.raises(ValueError, match=r"session\.type"):
        make(clock).mint({"type": ["realtime"]})
    with pytest.raises(ValueError, match="session must be an object"):
        make(clock).mint(["realtime"])
    with pytest.raises(ValueError, match="too large"):
        make(clock).mint({"instructions": "x" * 70_000})


def test_redeem_once(clock):
    auth = make(clock)
    value = auth.mint({"instructions": "hi"})["value"]
    assert auth.redeem(value) == {"type": "realtime", "instructions": "hi"}
    assert auth.redeem(value) is None
    assert auth.authenticate(f"Bearer {value}", []).reason == "client secret already used"


def test_redeem_checks_expiry(clock):
    auth = make(clock)
    a, b = auth.mint(ttl_s=60)["value"], auth.mint(ttl_s=60)["value"]
    clock.now += 59.5
    assert auth.redeem(a) is not None
    clock.now += 0.5
    assert auth.redeem(b) is None
    assert auth.authenticate(f"Bearer {b}", []).reason == "expired client secret"


@pytest.mark.parametrize("where", ["payload", "signature", "separator"])
def test_tampered_secret_refused(clock, where):
    auth = make(clock)
    value = auth.mint()["value"]
    index = {"payload": 10, "signature": len(value) - 5, "separator": value.rindex(".")}[where]
    bad = tamper(value, index)
    assert bad != value and auth.redeem(bad) is None
    assert auth.authenticate(f"Bearer {bad}", []).reason == "invalid client secret"
    assert auth.redeem(value) is not None  # the failed attempts did not use it up


def test_stray_characters_refused(clock):  # a lenient base64 decoder would skip them and accept the secret
    auth = make(clock)
    value = next(v for v in (auth.mint()["value"] for _ in range(200)) if set("-_") & set(v.rpartition(".")[2]))
    sig = value.rpartition(".")[2]
    assert auth.redeem(value[:-4] + "!!!!" + value[-4:]) is None
    assert auth.redeem(value + "\n") is None
    assert auth.redeem(value + "====") is None
    # the standard alphabet's twins of the URL-safe characters
    assert auth.redeem(value[:-len(sig)] + sig.replace("-", "+").replace("_", "/")) is None
    assert auth.redeem(value) is not None


def test_forged_claims_refused(clock):
    auth = make(clock)
    value = auth.mint(ttl_s=60)["value"]
    body, _, sig = value.rpartition(".")
    claims = json.loads(base64.urlsafe_b64decode(body[3:] + "=" * (-len(body[3:]) % 4)))
    claims["exp"] += 3600  # extend the lifetime, keep the old signature
    forged = "ek_" + base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode() + "." + sig
    assert auth.redeem(forged) is None
    for junk in ("ek_", "ek_.", "ek_abc.def", "ek_!!!.???", "ek_" + "A" * 70_000, "key-one", "", None,
                 "ek_\ud800." + sig, "ek_é." + sig):
        assert auth.redeem(junk) is None


def test_secret_from_another_key_refused(clock):
    mine = make(clock, secret=SECRET)
    theirs = make(clock, secret="another-secret-key-000")
    assert mine.redeem(theirs.mint()["value"]) is None
    # replicas sharing secret_key accept each other's secrets
    assert make(clock).redeem(mine.mint()["value"]) is not None


def test_random_key_per_process(clock):
    a = Auth(Settings(), clock=clock)
    b = Auth(Settings(), clock=clock)
    value = a.mint()["value"]
    assert b.redeem(value) is None
    assert a.redeem(value) is not None


def test_used_ids_forgotten_after_expiry(clock):
    auth = make(clock)
    for _ in range(3):
        assert auth.redeem(auth.mint(ttl_s=60)["value"]) is not None
    assert len(auth._used) == 3
    clock.now += 61
    assert auth.redeem(auth.mint(ttl_s=60)["value"]) is not None
    assert len(auth._used) == 1


def test_used_ids_bounded_without_reuse(clock):
    auth = make(clock, max_used=2)
    a, b, c = (auth.mint(ttl_s=ttl)["value"] for ttl in (100, 200, 300))
    assert auth.redeem(a) is not None and auth.redeem(b) is not None
    assert auth.redeem(c) is not None  # full: a's id is dropped...
    assert len(auth._used) == 2
    assert auth.authenticate(f"Bearer {a}", []).reason == "expired client secret"  # ...but a stays refused
    assert auth.authenticate(f"Bearer {b}", []).reason == "client secret already used"
    early = auth.mint(ttl_s=50)["value"]  # expires before the refused horizon: refused, not reusable later
    assert auth.authenticate(f"Bearer {early}", []).reason == "expired client secret"
    assert auth.redeem(auth.mint(ttl_s=400)["value"]) is not None


# ---- authenticate
def test_bearer_api_key(clock):
    auth = make(clock)
    assert auth.authenticate("Bearer key-one", []) == AuthResult(True, None, None, None)
    assert auth.authenticate("bearer  key-two ", ["realtime"]) == AuthResult(True, None, None, "realtime")
    assert auth.authenticate("Bearer nope", []) == AuthResult(False, "invalid api key", None, None)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic a2V5LW9uZQ==", "key-one"])
def test_missing_credentials(clock, header):
    result = make(clock).authenticate(header, ["realtime"])
    assert (result.ok, result.reason, result.subprotocol) == (False, "missing credentials", "realtime")


def test_subprotocol_api_key(clock):
    auth = make(clock)
    result = auth.authenticate(None, ["realtime", KEY_SUBPROTOCOL + "key-one"])
    assert result == AuthResult(True, None, None, "realtime")  # the key itself is never echoed
    assert auth.authenticate(None, [KEY_SUBPROTOCOL + "key-one"]).subprotocol is None
    assert auth.authenticate(None, ["realtime", KEY_SUBPROTOCOL + "bad"]).reason == "invalid api key"
    assert auth.authenticate(None, ["realtime", KEY_SUBPROTOCOL]).reason == "missing credentials"


def test_header_wins_over_subprotocol(clock):
    auth = make(clock)
    assert auth.authenticate("Bearer bad", [KEY_SUBPROTOCOL + "key-one"]).reason == "invalid api key"


@pytest.mark.parametrize("via", ["header", "subprotocol"])
def test_client_secret_paths(clock, via):
    auth = make(clock)
    value = auth.mint({"instructions": "x"})["value"]

    def attempt():
        if via == "header":
            return auth.authenticate(f"Bearer {value}", ["realtime"])
        return auth.authenticate(None, ["realtime", KEY_SUBPROTOCOL + value])

    first = attempt()
    assert first == AuthResult(True, None, {"type": "realtime", "instructions": "x"}, "realtime")
    assert attempt() == AuthResult(False, "client secret already used", None, "realtime")


def test_open_server(clock):
    auth = make(clock, keys=())
    assert auth.authenticate(None, []).ok
    assert auth.authenticate("Bearer anything", []).ok
    assert auth.authenticate(None, [KEY_SUBPROTOCOL + "anything", "realtime"]).subprotocol == "realtime"
    value = auth.mint(ttl_s=30)["value"]
    assert auth.authenticate(f"Bearer {tamper(value, 12)}", []).reason == "invalid client secret"
    assert auth.authenticate(f"Bearer {value}", []).session == {"type": "realtime"}
    assert auth.authenticate(f"Bearer {value}", []).reason == "client secret already used"
    late = auth.mint(ttl_s=30)["value"]
    clock.now += 30
    assert auth.authenticate(f"Bearer {late}", []).reason == "expired client secret"
