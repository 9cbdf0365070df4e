"""Conversation items and responses as the Realtime GA wire format writes them."""

from __future__ import annotations

from streaming import session as s

__all__ = ["item_json", "part_json", "response_json"]


def part_json(r: s.Response, empty: bool = False) -> dict:
    p = r.item.content[0]
    if r.audio:
        return {"type": "audio", "transcript": "" if empty else (p.transcript or "")}
    return {"type": "text", "text": "" if empty else (p.text or "")}


def item_json(item: s.ConvItem) -> dict:
    base = {"id": item.id, "object": "realtime.item", "type": item.type, "status": item.status}
    if item.type == "function_call":
        return {**base, "call_id": item.call_id, "name": item.name, "arguments": item.arguments}
    if item.type == "function_call_output":
        return {**base, "call_id": item.call_id, "output": item.output}
    content = []
    for p in item.content:
        part: dict = {"type": p.type}
        if p.type in ("input_text", "output_text"):
            part["text"] = p.text or ""
        else:
            part["transcript"] = p.transcript
        content.append(part)
    return {**base, "role": item.role, "content": content}


def response_json(r: s.Response, conversation_id: str) -> dict:
    """conversation_id: the session's conversation (null for an out-of-band response, as OpenAI writes it)."""
    out: dict = {"id": r.id, "object": "realtime.response", "status": r.status,
                 "conversation_id": conversation_id if r.in_conversation else None, "metadata": r.metadata,
                 "output_modalities": ["audio"] if r.audio else ["text"],
                 "output": [item_json(i) for i in (r.item, *r.calls)] if r.status != "in_progress" else []}
    if r.status == "cancelled":
        out["status_details"] = {"type": "cancelled", "reason": r.reason if r.reason in (
            "turn_detected", "client_cancelled") else "client_cancelled"}
    elif r.status == "incomplete":
        out["status_details"] = {"type": "incomplete", "reason": "max_output_tokens"}
    elif r.status == "failed":
        out["status_details"] = {"type": "failed", "error": {"type": "server_error", "code": r.reason or "failed"}}
    u = r.usage
    if r.status != "in_progress":
        inp = u.input_positions + u.cached_positions
        out_tokens = u.output_text_tokens + u.output_audio_frames
        out["usage"] = {"total_tokens": inp + out_tokens, "input_tokens": inp, "output_tokens": out_tokens,
                        "input_token_details": {"cached_tokens": u.cached_positions},
                        "output_token_details": {"text_tokens": u.output_text_tokens,
                                                 "audio_tokens": u.output_audio_frames}}
    return out
