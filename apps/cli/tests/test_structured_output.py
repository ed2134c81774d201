"""``--json-schema`` / ``--grammar``: usage errors exit 2 with the message, every generation of
the chat carries the constraint, and with the demo model the answer is JSON for the schema."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from mlx_harmony.cli.constrained import ConstrainedGenerator, constrain_generator
from mlx_harmony.cli.generate import main, run_generate
from mlx_harmony.cli.launch import CliError
from mlx_harmony.generate.constrain import ConstraintError, ConstraintSpec
from mlx_harmony.generate.testing import ScriptedGenerator

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "n": {"type": "integer"}},
    "required": ["name", "n"],
    "additionalProperties": False,
}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--json-schema", "missing.json"], "--json-schema: cannot read"),
        (["--json-schema", "{bad}"], "is not JSON"),
        (["--json-schema", "[1, 2]"], "must hold a JSON object"),
        (["--grammar", "missing.lark"], "--grammar: cannot read"),
        (["--json-schema", "{}", "--grammar", "start: /x/"], "not allowed with argument"),
        (["--json-schema", "{}", "--server", "http://127.0.0.1:9"], "applies to a local model"),
    ],
)
def test_bad_files_and_flags_exit_2_with_the_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    argv = ["--prompt", "hi"]
    for i, flag in enumerate(flags):
        previous = flags[i - 1] if i else ""
        if previous in ("--json-schema", "--grammar") and not flag.startswith("missing"):
            flag = str(_write(tmp_path, f"file{i}", flag))
        elif flag.startswith("missing"):
            flag = str(tmp_path / flag)
        argv.append(flag)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


class _Refusing(ScriptedGenerator):
    def compile_constraint(self, constraint: ConstraintSpec) -> Any:
        raise ConstraintError('Unimplemented keys: ["not"]')


def test_a_schema_the_engine_refuses_is_a_usage_error() -> None:
    with pytest.raises(CliError, match=r"--json-schema: Unimplemented keys: \[\"not\"\]") as info:
        constrain_generator(_Refusing([]), ConstraintSpec("json_schema", schema={"not": {}}))  # type: ignore[arg-type]
    assert info.value.exit_status == 2


def test_every_generation_carries_the_constraint() -> None:
    spec = ConstraintSpec("json_schema", schema=SCHEMA)
    scripted = ScriptedGenerator(["<|channel|>final<|message|>{}<|return|>"] * 2)
    wrapped = ConstrainedGenerator(scripted, spec)  # type: ignore[arg-type]
    list(wrapped.stream(prompt_tokens=[1, 2, 3]))
    list(wrapped.generate(prompt_tokens=[1, 2, 3]))
    assert [call.constraint for call in scripted.calls] == [spec, spec]
    assert wrapped.is_harmony  # the rest is the generator's own


@pytest.mark.slow
def test_generate_answers_json_for_the_schema_with_the_demo_model(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jsonschema

    from mlx_harmony.demo_model import demo_model_for_tests

    prebuilt = os.environ.get("MLX_HARMONY_DEMO_MODEL")
    if prebuilt and (Path(prebuilt) / "model.safetensors").exists():
        demo = Path(prebuilt)
    else:
        monkeypatch.delenv("MLX_HARMONY_DEMO_MODEL", raising=False)
        demo = Path(demo_model_for_tests(tmp_path_factory))
    monkeypatch.setenv("MLX_HARMONY_DEMO_MODEL", str(demo))
    schema_file = _write(tmp_path, "schema.json", json.dumps(SCHEMA))
    out = io.StringIO()
    argv = ["--prompt", "Describe the moon.", "--json", "--temperature", "1.0", "--seed", "3"]
    status = run_generate(
        [*argv, "--max-tokens", "300", "--json-schema", str(schema_file)],
        stdout=out,
        stderr=io.StringIO(),
    )
    assert status == 0
    data = json.loads(out.getvalue())
    assert data["finish_reason"] == "stop", data
    jsonschema.validate(json.loads(data["final"]), SCHEMA)
    assert data["analysis"].strip()

    bad = _write(tmp_path, "bad.json", json.dumps({"not": {"type": "string"}}))
    err = io.StringIO()
    with pytest.raises(CliError, match="not") as info:
        run_generate(["--prompt", "hi", "--json-schema", str(bad)], stdout=out, stderr=err)
    assert info.value.exit_status == 2
