"""Models other than gpt-oss: reasoning between think markers and tool calls through mlx-lm's
tool parsers, streamed as deltas like gpt-oss's; tools for a model without a tool parser are a
400. A scripted native model for the server paths, and a tiny Llama in the real Hugging Face
layout (mlx-lm's tokenizer reads its chat template) for the markers and the template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlx_lm.tool_parsers import json_tools

from mlx_harmony.controller import adapter_for
from mlx_harmony.controller.adapters import NativeMarkers
from mlx_harmony.controller.testing import Script, ScriptedGenerator
from mlx_harmony.harmony_format import FunctionTool, get_encoding

ENDOFTEXT = 199999
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_time",
        "description": "The current time.",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
    },
}
USER = [{"role": "user", "content": "What time is it?"}]


class QwenLikeTokenizer:
    """The attributes mlx-lm's ``TokenizerWrapper`` has for a Qwen3-style model."""

    has_thinking = True
    think_start = "<think>"
    think_end = "</think>"
    has_tool_calling = True
    tool_call_start = json_tools.tool_call_start
    tool_call_end = json_tools.tool_call_end

    @property
    def tool_parser(self) -> Any:
        return json_tools.parse_tool_call


class NativeGenerator(ScriptedGenerator):
    """A scripted non-Harmony model with mlx-lm's markers; records the template's kwargs."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(is_harmony=False, eos_token_ids=(ENDOFTEXT,))
        self.tokenizer = tokenizer
        self.template_kwargs: list[dict[str, Any]] = []
        self.loaded = type("Loaded", (), {"config": {"vocab_size": 201088}, "path": "x"})()

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
        self.template_kwargs.append({"messages": messages, **kwargs})
        return super().apply_chat_template(messages)


def says(text: str) -> Script:
    return Script((*get_encoding().encode(text), ENDOFTEXT))


def chat(url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def stream(url: str, body: dict[str, Any]) -> tuple[str, str, list[dict[str, Any]], str]:
    content, reasoning, calls, finish = "", "", [], ""
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=30
    ) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:])["choices"]:
                delta = choice["delta"]
                content += delta.get("content") or ""
                reasoning += delta.get("reasoning") or ""
                calls.extend(delta.get("tool_calls") or [])
                finish = choice["finish_reason"] or finish
    return content, reasoning, calls, finish


THOUGHT = "<think>The user wants a greeting.</think>Hello! How can I help?"


@pytest.mark.parametrize("streamed", [False, True])
def test_reasoning_between_think_markers_is_split_from_the_answer(
    start_server: Any, streamed: bool
) -> None:
    generator = NativeGenerator(QwenLikeTokenizer())
    generator.add(says(THOUGHT))
    server = start_server(generator)
    body = {"messages": [{"role": "user", "content": "Hi"}]}
    if streamed:
        content, reasoning, _, finish = stream(server.url, body)
    else:
        answer = chat(server.url, body)
        message = answer["choices"][0]["message"]
        content, reasoning, finish = (
            message["content"],
            message["reasoning"],
            answer["choices"][0]["finish_reason"],
        )
        assert answer["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    assert reasoning == "The user wants a greeting."
    assert content == "Hello! How can I help?"
    assert finish == "stop"


CALL = (
    'Let me check.<tool_call>\n{"name": "get_current_time", "arguments": {"timezone": "UTC"}}'
    "\n</tool_call>"
)


@pytest.mark.parametrize("streamed", [False, True])
def test_a_tool_call_comes_back_through_mlx_lms_tool_parser(
    start_server: Any, streamed: bool
) -> None:
    generator = NativeGenerator(QwenLikeTokenizer())
    generator.add(says(CALL))
    server = start_server(generator)
    body = {"messages": USER, "tools": [TIME_TOOL]}
    if streamed:
        content, _, calls, finish = stream(server.url, body)
    else:
        choice = chat(server.url, body)["choices"][0]
        content, calls, finish = (
            choice["message"]["content"],
            choice["message"]["tool_calls"],
            choice["finish_reason"],
        )
    assert finish == "tool_calls"
    assert content == "Let me check."
    assert [c["function"]["name"] for c in calls] == ["get_current_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"timezone": "UTC"}
    # The tools went to the model's chat template, OpenAI-shaped.
    declared = generator.template_kwargs[-1]["tools"]
    assert declared[0]["function"]["name"] == "get_current_time"
    assert declared[0]["function"]["parameters"]["properties"] == {"timezone": {"type": "string"}}


def test_a_tool_round_goes_back_through_the_template(start_server: Any) -> None:
    generator = NativeGenerator(QwenLikeTokenizer())
    generator.add(says("It is 14:05."))
    server = start_server(generator)
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_current_time", "arguments": '{"timezone": "UTC"}'},
    }
    messages = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "14:05"},
    ]
    answer = chat(server.url, {"messages": messages, "tools": [TIME_TOOL]})
    assert answer["choices"][0]["message"]["content"] == "It is 14:05."
    rendered = generator.template_kwargs[-1]["messages"]
    assert rendered[-2]["role"] == "assistant"
    assert rendered[-2]["tool_calls"][0]["function"] == {
        "name": "get_current_time",
        "arguments": {"timezone": "UTC"},
    }
    assert rendered[-1] == {"role": "tool", "name": "get_current_time", "content": "14:05"}


def test_tools_for_a_model_without_a_tool_parser_are_a_400(start_server: Any) -> None:
    server = start_server(NativeGenerator(object()))
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"messages": USER, "tools": [TIME_TOOL]},
        timeout=30,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "tools_unsupported"
    assert error["param"] == "tools"
    assert "tool parser" in error["message"]


def test_think_markers_split_across_tokens_never_reach_the_answer() -> None:
    generator = NativeGenerator(QwenLikeTokenizer())
    adapter = adapter_for(generator)
    parser = adapter.make_stream_parser()
    shown = []
    for piece in ["<th", "ink>Hm", "m.</thi", "nk>Yes", " <", "tool"]:
        shown.extend(parser.feed(1, piece))
    shown.extend(parser.flush())
    output = parser.finish()
    assert output.analysis == "Hmm."
    assert output.final == "Yes <tool"
    assert "".join(d.text for d in shown if type(d).__name__ == "AnswerDelta") == output.final


# -- a tiny Llama in the Hugging Face layout -----------------------------------------------------

QWEN_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\n"
    "For each function call, return a json object within <tool_call></tool_call> tags:\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    "<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.tool_calls %}<|im_start|>assistant\n"
    "{%- for tool_call in message.tool_calls %}{%- set tool_call = tool_call.function %}"
    '<tool_call>\n{"name": "{{ tool_call.name }}", "arguments": '
    "{{ tool_call.arguments | tojson }}}\n</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


@pytest.fixture(scope="module")
def qwen_like_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlx_harmony.demo_model.random_model import save_random_llama

    folder = save_random_llama(
        tmp_path_factory.mktemp("tiny-qwen-like"),
        cache_dir=tmp_path_factory.mktemp("tokenizer-cache"),
        seed=0,
        eos_token_id=ENDOFTEXT,
    )
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = QWEN_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


@pytest.mark.slow
def test_a_real_template_gets_mlx_lms_tool_parser_and_the_tools(qwen_like_model: Path) -> None:
    from mlx_harmony.generate import TokenGenerator

    generator = TokenGenerator(str(qwen_like_model))
    adapter = adapter_for(generator)
    assert adapter.supports_tools
    assert isinstance(adapter.markers, NativeMarkers)
    assert adapter.markers.tool_call_start == "<tool_call>"
    from mlx_harmony.controller import PromptConfig, Turn
    from mlx_harmony.harmony_format import Message

    tool = FunctionTool("get_current_time", "The current time.", {"type": "object"})
    prompt = adapter.render(
        [Turn(Message.user("What time is it?"))], config=PromptConfig(), function_tools=[tool]
    )
    text = generator.decode(prompt)
    assert '"name": "get_current_time"' in text
    assert text.rstrip().endswith("<|im_start|>assistant")
    output = adapter.parse(
        [
            *generator.encode('<tool_call>\n{"name": "get_current_time", "arguments": {}}\n'),
            *generator.encode("</tool_call>"),
            ENDOFTEXT,
        ]
    )
    assert [c.recipient for c in output.tool_calls] == ["functions.get_current_time"]
    assert output.called_tool
