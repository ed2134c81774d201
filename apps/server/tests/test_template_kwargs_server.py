"""``chat_template_kwargs`` through a real uvicorn server and the openai SDK: gpt-oss takes the
keys that are Harmony settings and refuses others by name; a model with a chat template gets
them in its template, over the server's ``--chat-template-args``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from mlx_harmony.server.cli import build_parser

USER = [{"role": "user", "content": "Hi"}]


def _client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)


def test_an_unknown_key_for_gpt_oss_is_a_400_naming_it(server: Any) -> None:
    client = _client(server)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="mlx-harmony-demo",
            messages=USER,
            extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        )
    assert caught.value.status_code == 400
    message = str(caught.value)
    assert "'enable_thinking'" in message
    assert "reasoning_effort, model_identity, knowledge_cutoff, conversation_start_date" in message
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == "chat_template_kwargs.enable_thinking"
    assert server.generator.records == []  # refused before anything ran


def test_reasoning_effort_as_a_template_keyword_sets_the_system_message(server: Any) -> None:
    client = _client(server)
    reply = client.chat.completions.create(
        model="mlx-harmony-demo",
        messages=USER,
        extra_body={"chat_template_kwargs": {"reasoning_effort": "high", "model_identity": "Tiny"}},
    )
    assert reply.choices[0].message.content == "You said: Hi"
    prompt = server.generator.records[-1].prompt
    assert prompt.startswith("<|start|>system<|message|>Tiny\n")
    assert "Reasoning: high" in prompt


def test_the_request_field_wins_over_the_servers_template_args(start_server: Any) -> None:
    server = start_server(chat_template_args={"reasoning_effort": "high"})
    client = _client(server)
    client.chat.completions.create(model="mlx-harmony-demo", messages=USER)
    assert "Reasoning: high" in server.generator.records[-1].prompt
    client.chat.completions.create(
        model="mlx-harmony-demo",
        messages=USER,
        reasoning_effort="low",
        extra_body={"chat_template_kwargs": {"model_identity": "Tiny"}},
    )
    assert "Reasoning: low" in server.generator.records[-1].prompt


def test_an_argument_the_server_sets_itself_is_a_400(server: Any) -> None:
    with pytest.raises(openai.BadRequestError, match="'tools' is an argument"):
        _client(server).chat.completions.create(
            model="mlx-harmony-demo",
            messages=USER,
            extra_body={"chat_template_kwargs": {"tools": []}},
        )


def test_chat_template_args_flag_takes_a_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["--chat-template-args", '{"enable_thinking": false}'])
    assert args.chat_template_args == {"enable_thinking": False}
    for bad in ("{oops", "[1, 2]"):
        with pytest.raises(SystemExit) as caught:
            build_parser().parse_args(["--chat-template-args", bad])
        assert caught.value.code == 2
        assert "--chat-template-args" in capsys.readouterr().err


PERSONA_TEMPLATE = (
    "{%- for message in messages %}<|start|>{{ message.role }}<|message|>"
    "{{ message.content }}<|end|>{%- endfor %}"
    "{%- if persona is defined %}<|start|>system<|message|>Speak as {{ persona }}.<|end|>"
    "{%- endif %}"
    "{%- if add_generation_prompt %}<|start|>assistant{%- endif %}"
)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlx_harmony.demo_model.random_model import save_random_llama

    cache = tmp_path_factory.mktemp("tokenizer-cache")
    return save_random_llama(tmp_path_factory.mktemp("llama"), cache_dir=cache, seed=2)


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_a_native_template_gets_the_keywords_over_the_servers(
    start_server: Any, llama_dir: Path, tmp_path: Path
) -> None:
    template = tmp_path / "persona.jinja"
    template.write_text(PERSONA_TEMPLATE)
    server = start_server(
        real=True,
        model=str(llama_dir),
        chat_template=str(template),
        chat_template_args={"persona": "a pirate"},
        preload=True,
    )
    model = _client(server).models.list().data[0].id

    def prompt_tokens(kwargs: dict[str, Any] | None) -> int:
        body: dict[str, Any] = {"model": model, "messages": USER}
        if kwargs is not None:
            body["chat_template_kwargs"] = kwargs
        response = httpx.post(f"{server.url}/v1/tokenize", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return int(response.json()["prompt_tokens"])

    pirate = prompt_tokens(None)  # the server's --chat-template-args
    longer = prompt_tokens({"persona": "a very talkative pirate who sails the seven seas"})
    assert longer > pirate
    reply = _client(server).chat.completions.create(
        model=model,
        messages=USER,
        max_tokens=3,
        extra_body={"chat_template_kwargs": {"persona": "a parrot", "enable_thinking": False}},
    )
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == prompt_tokens({"persona": "a parrot"})


def test_responses_report_the_effort_of_the_servers_template_args(start_server: Any) -> None:
    server = start_server(chat_template_args={"reasoning_effort": "high"})
    client = _client(server)
    response = client.responses.create(model="mlx-harmony-demo", input="Hi")
    assert response.reasoning is not None
    assert response.reasoning.effort == "high"
    assert "Reasoning: high" in server.generator.records[-1].prompt
    response = client.responses.create(
        model="mlx-harmony-demo", input="Hi", reasoning={"effort": "low"}
    )
    assert response.reasoning is not None
    assert response.reasoning.effort == "low"
    assert "Reasoning: low" in server.generator.records[-1].prompt
    with pytest.raises(openai.BadRequestError, match="chat_template_kwargs"):
        client.responses.create(
            model="mlx-harmony-demo",
            input="Hi",
            extra_body={"chat_template_kwargs": {"reasoning_effort": "low"}},
        )
