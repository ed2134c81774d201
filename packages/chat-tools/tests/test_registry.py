from pathlib import Path

import pytest
from openai_harmony import Conversation, DeveloperContent, Message, Role, SystemContent

from mlx_harmony.harmony_format import get_encoding
from mlx_harmony.tools import (
    ToolCall,
    ToolRegistry,
    ToolResult,
    apply_patch_instructions,
    render_tool_result,
)


def test_from_flags_enables_only_what_is_asked(tmp_path: Path) -> None:
    assert ToolRegistry.from_flags().names == ()
    assert not ToolRegistry.from_flags()
    registry = ToolRegistry.from_flags(python=True, apply_patch=True, workspace=tmp_path)
    assert registry.names == ("python", "functions.apply_patch")
    registry.close()


def test_apply_patch_needs_an_existing_workspace(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a workspace"):
        ToolRegistry.from_flags(apply_patch=True)
    with pytest.raises(ValueError, match="is not a folder"):
        ToolRegistry.from_flags(apply_patch=True, workspace=tmp_path / "missing")


def test_function_tools_of_the_caller_are_not_handled(tmp_path: Path) -> None:
    registry = ToolRegistry.from_flags(apply_patch=True, workspace=tmp_path)
    assert registry.handles("functions.apply_patch")
    assert not registry.handles("functions.get_weather")
    assert registry.get("functions.get_weather") is None
    with pytest.raises(KeyError, match="return such calls to the caller"):
        registry.execute(ToolCall("functions.get_weather", "{}"))


def test_apply_patch_through_the_registry(tmp_path: Path) -> None:
    registry = ToolRegistry.from_flags(apply_patch=True, workspace=tmp_path)
    ok = registry.execute(
        ToolCall(
            "functions.apply_patch", "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch"
        )
    )
    assert ok == ToolResult("functions.apply_patch", "Done!\nA a.txt")
    assert (tmp_path / "a.txt").read_text() == "hi\n"
    refused = registry.execute(
        ToolCall(
            "functions.apply_patch", "*** Begin Patch\n*** Add File: ../b.txt\n+x\n*** End Patch"
        )
    )
    assert refused.error
    assert refused.content.startswith("Error applying patch: path '../b.txt' refused")


def test_a_crashing_tool_becomes_an_error_result() -> None:
    class Broken:
        name = "broken"

        def handles(self, recipient: str) -> bool:
            return recipient == "broken"

        def execute(self, recipient: str, arguments: str) -> ToolResult:
            raise RuntimeError("boom")

    result = ToolRegistry([Broken()]).execute(ToolCall("broken"))  # type: ignore[list-item]
    assert result.error
    assert "RuntimeError: boom" in result.content


def test_declarations_render_in_a_harmony_prompt(tmp_path: Path) -> None:
    registry = ToolRegistry.from_flags(
        browser=True, python=True, apply_patch=True, workspace=tmp_path
    )
    declarations = registry.declarations()
    assert [ns.name for ns in declarations.system] == ["browser", "python"]
    assert declarations.function_names == ("functions.apply_patch",)
    assert declarations.instructions == apply_patch_instructions()
    assert "*** Begin Patch" in declarations.instructions

    system = SystemContent.new()
    for namespace in declarations.system:
        system = system.with_tools(namespace)
    developer = (
        DeveloperContent.new()
        .with_instructions("Be helpful.\n\n" + declarations.instructions)
        .with_function_tools(list(declarations.functions))
    )
    encoding = get_encoding()  # the offline vocabulary of mlx-harmony-format
    conversation = Conversation.from_messages(
        [
            Message.from_role_and_content(Role.SYSTEM, system),
            Message.from_role_and_content(Role.DEVELOPER, developer),
            Message.from_role_and_content(Role.USER, "hi"),
        ]
    )
    text = encoding.decode(
        encoding.render_conversation_for_completion(conversation, Role.ASSISTANT)
    )
    assert "namespace browser {" in text
    assert "type find = (_: {" in text
    assert "## python\n\nUse this tool to execute Python code" in text
    assert "namespace functions {" in text
    assert "type apply_patch = (_: string) => any;" in text
    assert "Calls to these tools must go to the commentary channel: 'functions'." in text
    registry.close()


def test_tool_result_message_goes_back_on_the_call_channel() -> None:
    message = render_tool_result(ToolResult("browser.search", "results"), channel="commentary")
    assert message.author.role == Role.TOOL
    assert message.author.name == "browser.search"
    assert (message.recipient, message.channel) == ("assistant", "commentary")
    assert message.content[0].text == "results"
