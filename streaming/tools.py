"""Function calling in LFM2's own format (the LFM2 chat template, docs/api.md "Function calling"):

    the system item: {instructions}\\nList of tools: <|tool_list_start|>[{tool JSON}, ...]<|tool_list_end|>
    a call:       <|tool_call_start|>[name(arg="value", n=1)]<|tool_call_end|>   (Pythonic, in the assistant turn)
    an output:    <|im_start|>tool\\n<|tool_response_start|>{output}<|tool_response_end|><|im_end|>

Tools arrive as OpenAI Realtime function tools; calls leave as `function_call` items whose arguments are JSON.
Plain Python, no torch.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field

__all__ = ["Tool", "ToolCall", "ToolError", "call_text", "output_text", "parse_calls", "parse_tool_choice",
           "parse_tools", "system_prompt", "tool_json"]

TOOL_LIST_START, TOOL_LIST_END = "<|tool_list_start|>", "<|tool_list_end|>"
TOOL_CALL_START, TOOL_CALL_END = "<|tool_call_start|>", "<|tool_call_end|>"
TOOL_RESPONSE_START, TOOL_RESPONSE_END = "<|tool_response_start|>", "<|tool_response_end|>"
TOOL_CHOICES = ("auto", "none", "required")


class ToolError(ValueError):
    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.where = where  # appended to the param (".0.name")


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON object text


def parse_tools(value: object) -> tuple[Tool, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ToolError("tools must be a list")
    tools = []
    for i, t in enumerate(value):
        if not isinstance(t, dict) or t.get("type", "function") != "function":
            raise ToolError("only function tools are supported", f".{i}.type")
        name = t.get("name")
        if not isinstance(name, str) or not name.isidentifier():
            raise ToolError("a tool name is a Python identifier (the model calls it as name(arg=...))", f".{i}.name")
        parameters = t.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ToolError("parameters must be a JSON schema object", f".{i}.parameters")
        tools.append(Tool(name, str(t.get("description") or ""), parameters))
    return tuple(tools)


def parse_tool_choice(value: object) -> str | dict:
    if value in TOOL_CHOICES:
        return value
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str):
        return {"type": "function", "name": value["name"]}
    raise ToolError("tool_choice must be auto, none, required or {\"type\": \"function\", \"name\": ...}")


def tool_json(tool: Tool) -> dict:
    return {"type": "function", "name": tool.name, "description": tool.description, "parameters": tool.parameters}


def system_prompt(instructions: str, tools: tuple[Tool, ...], tool_choice: str | dict = "auto") -> str:
    """The system turn's text: the instructions, then the tool list as LFM2's template writes it (each tool
    as JSON: name, description, parameters). tool_choice "none" leaves the tools out."""
    if not tools or tool_choice == "none":
        return instructions
    listed = ", ".join(json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters},
                                  ensure_ascii=False) for t in tools)
    return f"{instructions}{chr(10) if instructions else ''}List of tools: {TOOL_LIST_START}[{listed}]{TOOL_LIST_END}"


def _python(value: object) -> str:
    """A JSON value as a Python literal (what the model writes in its calls)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_python(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{json.dumps(str(k), ensure_ascii=False)}: {_python(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    return repr(value)


def call_text(name: str, arguments: str) -> str:
    """A function call (JSON arguments) as the model writes it, for the history."""
    try:
        args = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise ToolError("arguments must be a JSON object", ".arguments")
    inner = ", ".join(f"{k}={_python(v)}" for k, v in args.items())
    return f"{TOOL_CALL_START}[{name}({inner})]{TOOL_CALL_END}"


def output_text(output: str) -> str:
    """A function call's output as the tool turn's content."""
    return f"{TOOL_RESPONSE_START}{output}{TOOL_RESPONSE_END}"


def parse_calls(text: str) -> list[ToolCall]:
    """What the model wrote between <|tool_call_start|> and <|tool_call_end|>: a Python list of calls
    `[f(a=1), g(b="x")]` (LFM2's default), or a JSON list of {"name", "arguments"}. ToolError if neither."""
    text = text.strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if data is not None:
        data = data if isinstance(data, list) else [data]
        if all(isinstance(d, dict) and isinstance(d.get("name"), str) for d in data):
            return [ToolCall(d["name"], json.dumps(d.get("arguments") or {}, ensure_ascii=False)) for d in data]
    try:
        tree = ast.parse(text if text.startswith("[") else f"[{text}]", mode="eval").body
    except SyntaxError as e:
        raise ToolError(f"not a list of calls: {e.msg}") from None
    calls = []
    for node in tree.elts if isinstance(tree, ast.List) else [tree]:
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name | ast.Attribute) or node.args:
            raise ToolError("each call is name(keyword=value, ...)")
        name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        try:
            args = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        except ValueError:
            raise ToolError(f"the arguments of {name} are not literals") from None
        calls.append(ToolCall(name, json.dumps(args, ensure_ascii=False)))
    return calls
