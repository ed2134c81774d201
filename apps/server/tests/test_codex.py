"""Codex CLI against the server: the request Codex 0.171 sends (a fixture, through the scripted
model), a namespace tool's call round trip as Codex sends it back (``store: false``, sealed
reasoning), and (slow) the real ``codex exec`` from npm against the demo model."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlx_harmony.controller.testing import Script

FIXTURE = Path(__file__).parent / "fixtures" / "codex_request.json"
MODEL = "mlx-harmony-demo"
CODEX_VERSION = "0.171.0"


def codex_request(**changes: Any) -> dict[str, Any]:
    body = json.loads(FIXTURE.read_text())
    body["model"] = MODEL
    body.update(changes)
    return body


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_the_codex_request_streams_a_well_formed_response(server: Any) -> None:
    response = httpx.post(f"{server.url}/v1/responses", json=codex_request(), timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    kinds = [kind for kind, _ in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert all(kind == data["type"] for kind, data in events)
    final = events[-1][1]["response"]
    assert final["store"] is False
    assert final["parallel_tool_calls"] is True
    assert final["reasoning"]["summary"] == "auto"
    reasoning, message = final["output"]
    assert reasoning["type"] == "reasoning"
    assert reasoning["summary"] == [{"type": "summary_text", "text": "The user said 'say hi'."}]
    assert reasoning["encrypted_content"].startswith("mlxh1:")
    assert message["content"][0]["text"] == "You said: say hi"
    summary_events = [k for k in kinds if k.startswith("response.reasoning_summary")]
    assert summary_events == [
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
    ]
    # the hosted web_search tool is left out, with a warning; the namespace is declared
    (warning,) = response.headers.get_list("x-mlx-harmony-warning")
    assert "tools[8] is a hosted 'web_search' tool" in warning
    prompt = server.generator.records[-1].prompt
    assert "// Tools for spawning and managing sub-agents.\nnamespace multi_agent_v1 {" in prompt
    assert "type close_agent = " in prompt
    assert "type exec_command = " in prompt
    assert "web_search" not in prompt
    assert "You are a coding agent running in the Codex CLI" in prompt
    # a second stored response with this key never happened: store is false
    assert not server.app.state.responses.store


def test_a_namespace_call_round_trips_as_codex_sends_it_back(server: Any) -> None:
    server.generator.add(
        Script.harmony(
            analysis="I close the helper agent first.",
            call=("multi_agent_v1.close_agent", '{"target": "agent-1"}'),
        )
    )
    first = httpx.post(
        f"{server.url}/v1/responses", json=codex_request(stream=False), timeout=60
    ).json()
    reasoning, call = first["output"]
    assert call["type"] == "function_call"
    assert (call["namespace"], call["name"]) == ("multi_agent_v1", "close_agent")
    assert call["arguments"] == '{"target": "agent-1"}'
    sealed = reasoning["encrypted_content"]
    assert "I close the helper agent" not in sealed

    # Codex keeps the history itself and drops the reasoning's plain text
    body = codex_request(stream=False)
    body["input"] += [
        {"type": "reasoning", "id": reasoning["id"], "summary": [], "encrypted_content": sealed},
        {k: call[k] for k in ("type", "call_id", "name", "namespace", "arguments")},
        {"type": "function_call_output", "call_id": call["call_id"], "output": "closed"},
    ]
    server.generator.add(Script.harmony("Closed it.", analysis="Done."))
    second = httpx.post(f"{server.url}/v1/responses", json=body, timeout=60)
    assert second.status_code == 200, second.text
    assert "x-mlx-harmony-warning" in second.headers  # web_search, only
    assert len(second.headers.get_list("x-mlx-harmony-warning")) == 1
    assert second.json()["output"][-1]["content"][0]["text"] == "Closed it."
    prompt = server.generator.records[-1].prompt
    analysis = prompt.index("<|channel|>analysis<|message|>I close the helper agent first.<|end|>")
    sent = prompt.index("to=multi_agent_v1.close_agent<|channel|>commentary <|constrain|>json")
    result = prompt.index("<|start|>multi_agent_v1.close_agent to=assistant")
    assert analysis < sent < result
    assert "closed<|end|>" in prompt[result:]


def test_a_tool_choice_none_leaves_namespaces_out_too(server: Any) -> None:
    body = codex_request(stream=False, tool_choice="none")
    assert httpx.post(f"{server.url}/v1/responses", json=body, timeout=60).status_code == 200
    prompt = server.generator.records[-1].prompt
    assert "namespace multi_agent_v1" not in prompt
    assert "exec_command" not in prompt


def test_a_namespace_tool_with_a_duplicate_is_a_400_naming_it(server: Any) -> None:
    body = codex_request(stream=False)
    space = copy.deepcopy(body["tools"][4])
    space["tools"].append(space["tools"][0])
    body["tools"][4] = space
    response = httpx.post(f"{server.url}/v1/responses", json=body, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "duplicate_tool"
    assert error["param"] == f"tools[4].tools[{len(space['tools']) - 1}].name"


# -- the real Codex CLI ------------------------------------------------------------------------


def _install_codex(folder: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: Codex CLI comes from npm (@openai/codex)")
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", f"@openai/codex@{CODEX_VERSION}"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        pytest.skip(f"npm could not install @openai/codex@{CODEX_VERSION}: {done.stderr[-500:]}")
    return folder / "node_modules" / ".bin" / "codex"


@pytest.mark.slow
def test_codex_exec_finishes_against_the_demo_model(tmp_path: Path) -> None:
    codex = _install_codex(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    port_file = tmp_path / "port"
    log = tmp_path / "server.log"
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys\n"
            "from mlx_harmony.server.cli import main\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]; s.close()\n"
            f"open({str(port_file)!r}, 'w').write(str(port))\n"
            "sys.exit(main(['--port', str(port), '--preload', '--log-file', "
            f"{str(log)!r}]))",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = _wait_for_server(port_file, server)
        done = subprocess.run(
            [
                str(codex),
                "exec",
                "--skip-git-repo-check",
                "-c",
                "model_provider=local",
                "-c",
                f'model_providers.local={{name="local",base_url="{url}/v1",wire_api="responses"}}',
                "-m",
                MODEL,
                "say hi",
            ],
            cwd=tmp_path,
            env={**os.environ, "HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        server.terminate()
        server.wait(30)
    requests = log.read_text() if log.exists() else ""
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}\n{requests}"
    assert done.stdout.strip(), done.stderr[-3000:]
    assert "POST /v1/responses 200" in requests


def _wait_for_server(port_file: Path, server: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited: {server.stdout and server.stdout.read()}")
        if port_file.exists() and port_file.read_text():
            url = f"http://127.0.0.1:{port_file.read_text()}"
            try:
                if httpx.get(f"{url}/v1/health", timeout=5).json().get("model_loaded"):
                    return url
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    raise AssertionError("the server did not load the demo model in 300 s")
