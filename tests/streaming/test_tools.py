"""Function calling in LFM2's format: the tool list in the system turn, calls read from what the model writes
between <|tool_call_start|> and <|tool_call_end|> (Pythonic, or JSON), history rendered the same way; and the
engine turning a scripted call into a ToolCalls event, unsaid."""

from __future__ import annotations

import json

import pytest

from models.generation import Modality
from streaming.engine import Engine, EngineConfig
from streaming.messages import Mode, ResponseDone, ResponseRequest, TextDelta, ToolCalls
from streaming.tools import ToolError, call_text, output_text, parse_calls, parse_tools, system_prompt
from tests.streaming.fakes import FakeRunner

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def test_the_tool_list_follows_the_lfm2_template():
    tools = parse_tools([WEATHER])
    listed = json.dumps({"name": "get_weather", "description": "Weather", "parameters": WEATHER["parameters"]})
    assert system_prompt("Be brief.", tools) == \
        f"Be brief.\nList of tools: <|tool_list_start|>[{listed}]<|tool_list_end|>"
    assert system_prompt("", tools).startswith("List of tools: ")  # no instructions: no leading newline
    assert system_prompt("Be brief.", tools, "none") == system_prompt("Be brief.", ()) == "Be brief."


@pytest.mark.parametrize("text, calls", [
    ('[get_weather(city="Paris")]', [("get_weather", {"city": "Paris"})]),
    ("[a(x=1, y=[True, None]), b()]", [("a", {"x": 1, "y": [True, None]}), ("b", {})]),
    ('get_weather(city="Oslo")', [("get_weather", {"city": "Oslo"})]),  # without the list brackets
    ('[{"name": "get_weather", "arguments": {"city": "Rome"}}]', [("get_weather", {"city": "Rome"})]),
])
def test_calls_are_read_from_the_models_text(text, calls):
    assert [(c.name, json.loads(c.arguments)) for c in parse_calls(text)] == calls


@pytest.mark.parametrize("text", ["[get_weather(", "[get_weather('Paris')]", "[f(x=open('y'))]", "42"])
def test_unreadable_calls_are_refused(text):
    with pytest.raises(ToolError):
        parse_calls(text)


def test_history_renders_as_the_model_writes_it():
    text = call_text("get_weather", '{"city": "Paris", "days": 2, "metric": true, "extra": null}')
    assert text == '<|tool_call_start|>[get_weather(city="Paris", days=2, metric=True, extra=None)]<|tool_call_end|>'
    assert [json.loads(c.arguments) for c in parse_calls(text.split("|>", 1)[1].rsplit("<|", 1)[0])] == [
        {"city": "Paris", "days": 2, "metric": True, "extra": None}]  # round trip
    assert output_text("21 C") == "<|tool_response_start|>21 C<|tool_response_end|>"
    with pytest.raises(ToolError):
        call_text("f", "[1, 2]")


def test_the_engine_reports_a_call_and_does_not_say_it(tiny):
    tok = tiny.tokenizer
    text = [*tok.encode("Ok."), *tok.encode("<|tool_call_start|>"), *tok.encode('[get_weather(city="Paris")]'),
            *tok.encode("<|tool_call_end|>"), *tok.encode("Done"), *tok.encode("<|im_end|>")]

    def model(n, plan) -> None:
        for d in plan.decode:
            runner.script[d.slot] = [text.pop(0)] if d.want == Modality.TEXT and text else []

    runner = FakeRunner(on_step=model)
    eng = Engine(tiny, EngineConfig(max_sessions=1, max_context=512), runner=runner)
    events: list = []
    s = eng.open(events.append)
    s.add_item("u", "user", text="weather?")
    s.respond(ResponseRequest("r", "item_r", Mode.CHAT, max_tokens=200))
    eng.run_until_idle()
    calls = [e for e in events if isinstance(e, ToolCalls)]
    assert [c.text for c in calls] == ['[get_weather(city="Paris")]']
    said = "".join(e.text for e in events if isinstance(e, TextDelta))
    done = next(e for e in events if isinstance(e, ResponseDone))
    assert said == done.text == "Ok.Done"
    # the call stays in the assistant turn, where the model wrote it (its context for the next turn)
    item = s.conversation.get("item_r")
    ids = [i for seg in item.segments if seg.kind == Modality.TEXT for i in seg.data]
    written = tok.decode(ids, skip_special=False)
    assert '<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>' in written
