"""Server settings: one pydantic-settings class, read from `LFM_AUDIO_*` environment variables or CLI flags.

Every field has a description: the `serve` command turns the fields into its flags.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.defaults import (
    CLIENT_SECRET_TTL_S,
    DECODERS,
    MAX_CONTEXT,
    MAX_INPUT_BUFFER_S,
    MAX_RESPONSE_TOKENS,
    MAX_SESSIONS,
    MAX_TTL_S,
    MIN_TTL_S,
    PREFILL_BUDGET,
    SPECULATION_PAD_MS,
    SPECULATIVE_START,
    WEBRTC_PEER_TIMEOUT_S,
    WEIGHTS,
)

__all__ = ["ICE_SCHEMES", "Settings"]

ICE_SCHEMES = ("stun", "turn", "turns")  # URL schemes of ICE servers


def _split(value: Any) -> Any:
    """A JSON list, or a comma-separated string (what fits in an environment variable)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not a valid JSON list: {e}") from None
    return [part.strip() for part in text.split(",") if part.strip()]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LFM_AUDIO_", extra="forbid")

    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 exposes the server to the network)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one)")
    model: str | None = Field(None, description="checkpoint directory or Hub id (default: the embedded tiny random "
                                                "checkpoint, whose speech is noise)")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, ...")
    dtype: Literal["float32", "bfloat16"] | None = Field(
        None, description="weights and activations dtype (default: float32 on CPU, bfloat16 on CUDA)")
    weights: Literal[WEIGHTS] = Field(WEIGHTS[0], description="decode-path linear weights: dense (the dtype), or "
                                      "int8/int4 packed (CPU, bfloat16; error in docs/bench/speed.md)")
    max_sessions: int = Field(MAX_SESSIONS, ge=1,
                              description="concurrent sessions (engine batch slots); more are refused")
    max_context: int = Field(MAX_CONTEXT, ge=1,
                             description="positions kept per session before the oldest turns are dropped")
    prefill_budget: int = Field(PREFILL_BUDGET, ge=1, description="prefill positions per engine iteration (bounds "
                                                                  "the stall one long prefill causes everyone else's "
                                                                  "decode)")
    decoder: Literal[DECODERS] = Field(DECODERS[0], description="speech detokenizer")
    compile: bool = Field(False, description="torch.compile the decode step (slow start, faster steps)")
    runner_process: bool = Field(True, description="run the model in a process of its own (the GIL then never "
                                                   "slows a decode step; --no-runner-process: one process)")
    speculative_start: bool = Field(
        SPECULATIVE_START, description="sessions prepare the response while the end of a turn is judged (a "
        f"VAD turn then ends {SPECULATION_PAD_MS} ms after its speech; a session may choose with "
        "session.lfm_audio.speculative_start)")
    # repr=False: settings get logged, keys must not be
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, repr=False,
        description="accepted API keys, comma-separated or a JSON list (empty: an open server, anyone may connect)")
    secret_key: str | None = Field(
        None, repr=False, min_length=16,
        description="key that signs client secrets; set the same one on every replica (default: random per process)")
    client_secret_ttl_s: int = Field(CLIENT_SECRET_TTL_S, ge=MIN_TTL_S, le=MAX_TTL_S,
                                     description="default lifetime of a client secret, seconds")
    metrics_public: bool = Field(False, description="serve /metrics without an API key (default: when keys are "
                                 "configured it needs one, like every endpoint but the probes /healthz and /readyz)")
    max_sessions_per_key: int | None = Field(
        None, ge=1, description="concurrent sessions one API key may hold (default: no limit but max_sessions)")
    new_sessions_per_minute: int | None = Field(
        None, ge=1, description="sessions (and client secrets) one API key may start per minute (default: no limit)")
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins whose browser pages may open a Realtime WebSocket, comma-separated "
                                          "or a JSON list, '*' for any (empty: the server's own pages only; clients "
                                          "that send no Origin, like the SDKs, are not affected)")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS, comma-separated or a JSON list (empty: no CORS)")
    ice_servers: Annotated[list[dict[str, Any]], NoDecode] = Field(
        default_factory=list, repr=False,  # TURN credentials
        description='WebRTC ICE servers: a JSON list of {"urls": [...], "username": ..., "credential": ...}, or '
                    "comma-separated STUN/TURN URLs (empty: no STUN/TURN server is ever contacted)")
    webrtc_host_addresses: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="WebRTC host candidate addresses, comma-separated or a JSON list (empty: every interface "
                    "address but loopback, as aioice picks them; 127.0.0.1 for loopback-only tests)")
    webrtc_peer_timeout_s: float = Field(
        WEBRTC_PEER_TIMEOUT_S, gt=0,
        description="seconds an answered WebRTC call may take to connect (ICE, DTLS, the data channel), and a "
                    "connected peer's audio may stop, before the call is closed and its slot freed")
    max_input_buffer_s: float = Field(MAX_INPUT_BUFFER_S, gt=0,
                                      description="most uncommitted input audio per session, seconds")
    max_event_bytes: int = Field(1_000_000, ge=1, description="largest client event accepted, bytes")
    max_response_tokens: int = Field(MAX_RESPONSE_TOKENS, ge=1,
                                     description="cap on a response's text tokens and audio frames")
    ssl_certfile: str | None = Field(None, description="TLS certificate chain (PEM): serve https:// and wss:// "
                                               "(with --ssl-keyfile); a TLS proxy in front is the other way")
    ssl_keyfile: str | None = Field(None, repr=False, description="TLS private key (PEM) of --ssl-certfile")
    shutdown_grace_s: float = Field(5.0, ge=0, description="on shutdown, seconds sessions get to finish")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field("info",
                                                                                         description="log level")

    @model_validator(mode="after")
    def _tls(self) -> Settings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("TLS needs both ssl_certfile and ssl_keyfile")
        for path in (self.ssl_certfile, self.ssl_keyfile):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"TLS file {path!r} does not exist")
        return self

    @field_validator("api_keys", "cors_origins", "allowed_origins", "webrtc_host_addresses", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        if any(not k or k != k.strip() for k in value):
            raise ValueError("API keys must be non-empty and have no surrounding spaces")
        if any(k.startswith("ek_") for k in value):
            raise ValueError("API keys must not start with 'ek_' (the client secret prefix)")
        return value

    @field_validator("webrtc_host_addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"WebRTC host address {address!r} is not an IP address") from None
        return value

    @field_validator("ice_servers", mode="before")
    @classmethod
    def _ice(cls, value: Any) -> Any:
        value = _split(value)
        if not isinstance(value, list):
            return value  # the type check reports it
        out = []
        for server in value:
            if isinstance(server, str):  # a bare URL
                server = {"urls": [server]}
            if not isinstance(server, dict):
                raise ValueError(f"an ICE server is a URL or a dict with 'urls', got {server!r}")
            unknown = set(server) - {"urls", "username", "credential"}
            if unknown:
                raise ValueError(f"unknown ICE server keys {sorted(unknown)}: use urls, username, credential")
            urls = server.get("urls")
            urls = [urls] if isinstance(urls, str) else urls
            if not urls or not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
                raise ValueError(f"an ICE server needs 'urls', a URL or a list of URLs, got {server!r}")
            if any(not isinstance(server.get(k, ""), str) for k in ("username", "credential")):
                raise ValueError("an ICE server's username and credential must be strings")
            for url in urls:
                if url.split(":", 1)[0].lower() not in ICE_SCHEMES or ":" not in url:
                    raise ValueError(f"ICE server URL {url!r} must use one of the schemes {', '.join(ICE_SCHEMES)}")
            out.append({**server, "urls": urls})
        return out
