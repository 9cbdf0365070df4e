"""The Realtime `session` object: a client's session.update applied to a SessionConfig, and the config
reported back in session.created / session.updated.

As OpenAI does, a field the server cannot honour gets an error naming it and the rest of the update still
applies; session.updated then says what is in force. Unknown fields are ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from models.defaults import SPECULATION_PAD_MS
from streaming import session as s
from streaming.audio import AudioFormat, UnsupportedFormat
from streaming.endpoint import EAGERNESS
from streaming.tools import ToolError, parse_tool_choice, parse_tools, tool_json
from streaming.vad import VadConfig

__all__ = ["ProtocolError", "apply_session_update", "max_tokens", "session_object", "session_update"]

TURN_DETECTION = "session.audio.input.turn_detection"


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def session_update(config: s.SessionConfig, update: dict) -> tuple[s.SessionConfig, list[ProtocolError]]:
    """A GA `session` object applied to the current config, field by field: the new config (every field
    that could be honoured) and one error per field that could not."""
    errors: list[ProtocolError] = []
    changes: dict = {}

    def field(apply: Callable[[], None]) -> None:
        try:
            apply()
        except ProtocolError as e:
            errors.append(e)

    kind = update.get("type", config.kind)
    if kind not in ("realtime", "transcription"):
        return config, [ProtocolError("invalid_value", f"session.type must be realtime or transcription, got "
                                      f"{kind!r}", "session.type")]
    changes["kind"] = kind
    if update.get("instructions") is not None:
        changes["instructions"] = str(update["instructions"])
    audio = _object(update.get("audio"))
    inp, out = _object(audio.get("input")), _object(audio.get("output"))
    for key, part, param in (("input_format", inp, "session.audio.input.format"),
                             ("output_format", out, "session.audio.output.format")):
        if part.get("format") is not None:
            field(lambda key=key, part=part, param=param: changes.update({key: _format(part["format"], param)}))
    if "turn_detection" in inp:
        field(lambda: changes.update(turn_detection=_turn_detection(inp["turn_detection"], config.turn_detection)))
    if "transcription" in inp:
        changes["transcribe_input"] = inp["transcription"] is not None
    if inp.get("noise_reduction") is not None:
        errors.append(ProtocolError("invalid_value", "noise_reduction is not supported; send null",
                                    "session.audio.input.noise_reduction"))
    voice = out.get("voice", update.get("voice"))
    if voice is not None:
        changes["voice"] = voice if isinstance(voice, str) else str(_object(voice).get("id", config.voice))
    speed = out.get("speed", update.get("speed"))
    if speed is not None and speed != 1:
        errors.append(ProtocolError("invalid_value", "speed is not supported: the model speaks at its own pace "
                                    "(1.0)", "session.audio.output.speed"))
    if update.get("output_modalities") is not None:
        field(lambda: changes.update(output_audio=_modalities(update["output_modalities"],
                                                               "session.output_modalities")))
    if update.get("max_output_tokens") is not None:
        field(lambda: changes.update(max_output_tokens=max_tokens(update["max_output_tokens"],
                                                                   "session.max_output_tokens")))
    if "tools" in update:
        field(lambda: changes.update(tools=_tools(update["tools"], "session.tools")))
    if update.get("tool_choice") is not None:
        field(lambda: changes.update(tool_choice=_tool_choice(update["tool_choice"], "session.tool_choice")))
    ext = _object(update.get("lfm_audio"))  # our sampling extensions
    for key, cast, lo, hi in (("audio_temperature", float, 0.0, 5.0), ("audio_top_k", int, 0, 2049),
                              ("text_temperature", float, 0.0, 5.0)):
        if ext.get(key) is not None:
            field(lambda key=key, cast=cast, lo=lo, hi=hi: changes.update({key: _ranged(ext[key], cast, lo, hi, key)}))
    if "speculative_start" in ext:
        field(lambda: changes.update(speculative_start=_choice(ext["speculative_start"], "speculative_start")))
    if "seed" in ext:
        field(lambda: changes.update(seed=None if ext["seed"] is None else _ranged(ext["seed"], int, None, None,
                                                                                    "seed")))
    return replace(config, **changes), errors


def apply_session_update(config: s.SessionConfig, update: dict) -> s.SessionConfig:
    """session_update, all or nothing (a session config given at connect time): the first error raises."""
    new, errors = session_update(config, update)
    if errors:
        raise errors[0]
    return new


def _object(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _format(value: object, param: str) -> AudioFormat:
    try:
        return AudioFormat.parse(value)
    except UnsupportedFormat as e:
        raise ProtocolError("invalid_value", str(e), param) from None


def _ranged(value: object, cast: type, lo: float | None, hi: float | None, key: str) -> float | int:
    param = f"session.lfm_audio.{key}"
    try:
        number = cast(value)
    except (TypeError, ValueError):
        raise ProtocolError("invalid_value", f"{key} must be a number", param) from None
    if lo is not None and not lo <= number <= hi:
        raise ProtocolError("invalid_value", f"{key} must be in [{lo}, {hi}]", param)
    return number


def _choice(value: object, key: str) -> bool | None:
    """true, false, or null (the server's default)."""
    if value is not None and not isinstance(value, bool):
        raise ProtocolError("invalid_value", f"{key} must be true, false or null", f"session.lfm_audio.{key}")
    return value


def _modalities(value: object, param: str) -> bool:
    """output_modalities -> whether responses speak."""
    modalities = list(value) if isinstance(value, list | tuple) else None
    if modalities not in (["audio"], ["text"], ["audio", "text"], ["text", "audio"]):
        raise ProtocolError("invalid_value", "output_modalities must be [\"audio\"] or [\"text\"]", param)
    return "audio" in modalities


def max_tokens(value: object, param: str) -> int:
    if value == "inf":
        return s.INF_TOKENS
    if isinstance(value, bool) or not isinstance(value, int) or not value >= 1:
        raise ProtocolError("invalid_value", "max_output_tokens must be a positive integer or \"inf\"", param)
    return value


def _tools(value: object, param: str) -> tuple:
    try:
        return parse_tools(value)
    except ToolError as e:
        raise ProtocolError("invalid_value", str(e), f"{param}{e.where}") from None


def _tool_choice(value: object, param: str) -> str:
    try:
        return parse_tool_choice(value)
    except ToolError as e:
        raise ProtocolError("invalid_value", str(e), param) from None


def _turn_detection(td: object, current: s.TurnDetection | None) -> s.TurnDetection | None:
    """server_vad: a silence of silence_duration_ms ends a turn; semantic_vad: the end-of-turn model decides,
    by eagerness (streaming/endpoint.py); threshold and prefix_padding_ms apply to both."""
    if td is None:
        return None
    if not isinstance(td, dict):
        raise ProtocolError("invalid_value", "turn_detection must be an object or null", TURN_DETECTION)
    kind = td.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise ProtocolError("invalid_value", f"turn_detection.type {kind!r} is not supported; use server_vad, "
                            "semantic_vad or null", TURN_DETECTION + ".type")
    base = current or s.TurnDetection()
    eagerness = base.eagerness
    if kind == "semantic_vad":
        eagerness = td.get("eagerness") or "auto"
        if eagerness not in EAGERNESS:
            raise ProtocolError("invalid_value", f"eagerness must be one of {', '.join(EAGERNESS)}",
                                TURN_DETECTION + ".eagerness")
    vad = base.vad
    try:
        vad = VadConfig(
            threshold=float(td.get("threshold", vad.threshold)),
            prefix_padding_ms=int(td.get("prefix_padding_ms", vad.prefix_padding_ms)),
            silence_duration_ms=int(td.get("silence_duration_ms", vad.silence_duration_ms)),
        )
    except (TypeError, ValueError) as e:
        raise ProtocolError("invalid_value", str(e), TURN_DETECTION) from None
    return s.TurnDetection(vad, bool(td.get("create_response", base.create_response)),
                           bool(td.get("interrupt_response", base.interrupt_response)), kind, eagerness)


def turn_detection_json(td: s.TurnDetection | None) -> dict | None:
    if td is None:
        return None
    if td.kind == "semantic_vad":
        return {"type": "semantic_vad", "eagerness": td.eagerness, "create_response": td.create_response,
                "interrupt_response": td.interrupt_response}
    return {"type": "server_vad", "threshold": td.vad.threshold, "prefix_padding_ms": td.vad.prefix_padding_ms,
            "silence_duration_ms": td.vad.silence_duration_ms, "create_response": td.create_response,
            "interrupt_response": td.interrupt_response}


def session_object(config: s.SessionConfig, session_id: str, model: str, speculative: bool | None = None) -> dict:
    """`speculative`: whether the session's turns start speculatively (its choice or the server's default)."""
    td = config.turn_detection
    transcription = {"model": model} if config.transcribe_input or config.kind == "transcription" else None
    audio_in = {"format": config.input_format.to_openai(), "turn_detection": turn_detection_json(td),
                "transcription": transcription, "noise_reduction": None}
    if config.kind == "transcription":
        return {"type": "transcription", "id": session_id, "object": "realtime.transcription_session",
                "audio": {"input": audio_in}}
    ext: dict = {"audio_temperature": config.audio_temperature, "audio_top_k": config.audio_top_k,
                 "text_temperature": config.text_temperature, "seed": config.seed}
    if speculative is not None:  # a VAD turn then ends SPECULATION_PAD_MS after its speech: what it speculated
        ext.update(speculative_start=speculative, speculation_pad_ms=SPECULATION_PAD_MS if speculative else None)
    return {
        "type": "realtime", "id": session_id, "object": "realtime.session", "model": model,
        "instructions": config.instructions, "output_modalities": ["audio"] if config.output_audio else ["text"],
        "max_output_tokens": "inf" if config.max_output_tokens >= s.INF_TOKENS else config.max_output_tokens,
        "tools": [tool_json(t) for t in config.tools], "tool_choice": config.tool_choice,
        "audio": {"input": audio_in, "output": {"format": config.output_format.to_openai(), "voice": config.voice,
                                                "speed": 1.0}},
        "lfm_audio": ext,
    }
