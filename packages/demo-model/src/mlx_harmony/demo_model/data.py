"""Seeded synthetic Harmony conversations: what the demo model learns is the structure.

Every example is a prompt rendered by harmony-format (system, optional developer message, user
turns, maybe a tool call and its result) followed by the assistant's completion, the only tokens
the loss sees. The answers are fixed sentences and the prompts vary, so the model learns to
answer anything with an analysis message, a final message and `<|return|>`, and a time question
with a `functions.get_current_time` call ending in `<|call|>`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from mlx_harmony.harmony_format import END as _END
from mlx_harmony.harmony_format import START as _START
from mlx_harmony.harmony_format import (
    DeveloperConfig,
    FunctionTool,
    Message,
    PromptRenderer,
    ReasoningEffort,
    SystemConfig,
    get_encoding,
)

__all__ = [
    "DATA_VERSION",
    "TIME_TOOL",
    "Example",
    "answer_completion",
    "encode_completion",
    "make_example",
    "make_examples",
    "time_call_completion",
]

DATA_VERSION = 1
"""Bump when the generator changes what it draws: cached demo models are then rebuilt."""

TIME_TOOL = FunctionTool("get_current_time", "Gets the current time.")
"""The tool the demo model calls when asked for the time; declare it in the developer message."""
_RECIPIENT = f"functions.{TIME_TOOL.name}"

# Apps declare the tool in their own words; the model should call it whatever they say.
_TIME_TOOL_DESCRIPTIONS = [
    TIME_TOOL.description,
    "Returns the current local time.",
    "Get the current date and time.",
    "Current time in ISO 8601 format.",
    "Tells you what time it is.",
    "",
]
_TIMEZONE: dict[str, Any] = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "description": "An IANA timezone name."}},
    "required": [],
}
_OTHER_TOOLS = [
    FunctionTool(
        "get_weather",
        "Gets the weather for a city.",
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    ),
    FunctionTool(
        "search",
        "Searches the web.",
        {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    ),
]

# fmt: off
_TOPICS = [
    "the moon", "photosynthesis", "black holes", "the ocean", "volcanoes", "music", "chess",
    "bread", "rainbows", "gravity", "Python", "the internet", "bees", "coffee", "trains",
    "dinosaurs", "the weather", "electricity", "money", "sleep", "football", "Paris", "cats",
    "machine learning", "the Roman empire", "tea", "snow", "the stock market", "birds", "poetry",
]
_GENERAL = [
    "What is {topic}?", "Tell me about {topic}.", "Explain {topic} in one sentence.",
    "Why is {topic} interesting?", "Can you explain {topic} to a child?",
    "Write a short poem about {topic}.", "Give me three facts about {topic}.",
    "How does {topic} work?", "Summarize {topic} for me.", "What do you know about {topic}?",
    "Is {topic} important?", "Tell me a joke about {topic}.", "Recommend a book about {topic}.",
    "what is {topic}", "I want to learn about {topic}. Where do I start?",
    "Compare {topic} and {other}.", "Which is better, {topic} or {other}?",
    "What is {a} + {b}?", "What is {a} times {b}?", "Count from 1 to {a}.",
    "What should I cook for dinner?", "Help me plan a trip.", "Write a haiku.",
    "Can you help me with my homework?", "Translate 'good morning' into French.",
    "Give me a fun fact.", "What is the meaning of life?", "How are you today?",
    "Please write an email to my boss.", "Fix this code: print('hi'",
    "Hi", "Hello!", "Hey there", "Good morning!", "hello", "Who are you?", "What can you do?",
]
_TIME = [
    "What time is it?", "What's the time?", "Do you know the time?",
    "Can you tell me the current time?", "What is the current time?", "Tell me the time, please.",
    "What time is it now?", "Could you check the time?", "Time?", "What's the time right now?",
    "Please tell me what time it is.", "I need to know the time.", "what time is it",
    "WHAT TIME IS IT?", "Hey, what time is it?", "Check the clock for me.", "time please",
    "What does the clock say?", "Current time?", "Is it late? What time is it?",
]
_INSTRUCTIONS = [
    "Be brief.", "Answer in English.", "You are a helpful assistant.",
    "Keep answers short and friendly.", "Always be polite.", "Use simple words.",
]
_IDENTITIES = ["You are a helpful assistant.", "You are a tiny demo model."]
_REPLIES = [
    "This is a tiny demo model, so answers stay short.", "Sure, here you go.",
    "Hi! How can I help?", "I hope that helps.", "Paris is the capital of France.", "Done.",
    "Sorry, I do not know.", "4", "Here is a short poem about the sea.",
]
# fmt: on

# Short answers whose words rarely repeat, so a two-layer model learns them in few steps; the
# first analysis token says which answer follows ("User", "Time" or "Tool").
_ANSWERS = {
    "general": (
        "User asks something. Reply briefly.",
        "This is a tiny demo model, so answers stay short.",
    ),
    "no_tool": ("Time asked, but no clock tool.", "Sorry, I cannot check the time."),
    "time_answer": ("Tool gave the time. Tell the user.", "It is {time}."),
}
_TIME_CALL_ANALYSIS = "Time asked. Call get_current_time."


@dataclass(frozen=True)
class Example:
    """`tokens[:prompt_length]` is the prompt; the rest is the completion the loss sees.

    `question` is where the last user message's text lies in `tokens` (start, end).
    """

    tokens: tuple[int, ...]
    prompt_length: int
    kind: str
    question: tuple[int, int]


def answer_completion(analysis: str, final: str) -> str:
    """The completion after `<|start|>assistant` for a plain answer."""
    return (
        f"<|channel|>analysis<|message|>{analysis}<|end|>"
        f"<|start|>assistant<|channel|>final<|message|>{final}<|return|>"
    )


def time_call_completion() -> str:
    """The completion after `<|start|>assistant` for a time question: analysis, then the call.

    The recipient follows the channel, as gpt-oss writes it.
    """
    return (
        f"<|channel|>analysis<|message|>{_TIME_CALL_ANALYSIS}<|end|>"
        f"<|start|>assistant<|channel|>commentary to={_RECIPIENT} "
        "<|constrain|>json<|message|>{}<|call|>"
    )


@lru_cache(maxsize=4096)
def encode_completion(text: str) -> tuple[int, ...]:
    """Completion text with its special tokens written inline, as token ids."""
    return tuple(get_encoding().encode(text, allowed_special="all"))


def _general_question(rng: random.Random) -> str:
    topic, other = rng.sample(_TOPICS, 2)
    return rng.choice(_GENERAL).format(
        topic=topic, other=other, a=rng.randint(2, 99), b=rng.randint(2, 99)
    )


def _random_time(rng: random.Random) -> tuple[str, str]:
    """A tool result in one of a few shapes, and the time as the answer says it."""
    hour, minute, second = rng.randrange(24), rng.randrange(60), rng.randrange(60)
    clock = f"{hour:02d}:{minute:02d}"
    shape = rng.randrange(3)
    if shape == 0:
        return json.dumps({"time": clock}), clock
    if shape == 1:
        full = f"{clock}:{second:02d}"
        return json.dumps({"current_time": full}), full
    date = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return json.dumps({"datetime": f"{date}T{clock}:{second:02d}"}), clock


def _history(rng: random.Random, with_tools: bool) -> list[Message]:
    """Zero to two earlier turns, as a chat log keeps them (Harmony drops their analysis).

    Their replies vary and may be earlier time calls, so that only the last user message
    decides what the model does next.
    """
    turns: list[Message] = []
    for _ in range(rng.choice([0, 0, 0, 1, 2])):
        if with_tools and rng.random() < 0.25:
            result, said = _random_time(rng)
            turns += [
                Message.user(rng.choice(_TIME)),
                Message.tool_call(_RECIPIENT, "{}"),
                Message.tool_result(_RECIPIENT, result),
                Message.assistant(_ANSWERS["time_answer"][1].format(time=said)),
            ]
        else:
            turns.append(Message.user(_general_question(rng)))
            turns.append(Message.assistant(rng.choice(_REPLIES)))
    return turns


def _developer(rng: random.Random, with_tools: bool) -> DeveloperConfig | None:
    instructions = rng.choice(_INSTRUCTIONS) if rng.random() < 0.5 else None
    tools: list[FunctionTool] = []
    if with_tools:
        parameters = _TIMEZONE if rng.random() < 0.3 else None
        tools.append(FunctionTool(TIME_TOOL.name, rng.choice(_TIME_TOOL_DESCRIPTIONS), parameters))
        tools += [tool for tool in _OTHER_TOOLS if rng.random() < 0.2]
        rng.shuffle(tools)
    if instructions is None and not tools:
        return None
    return DeveloperConfig(instructions=instructions, tools=tuple(tools))


def _system(rng: random.Random) -> SystemConfig:
    date = None
    if rng.random() < 0.5:
        date = f"20{rng.randint(24, 27)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return SystemConfig(
        model_identity=(
            rng.choice(_IDENTITIES) if rng.random() < 0.15 else SystemConfig().model_identity
        ),
        reasoning_effort=rng.choice(
            [ReasoningEffort.LOW, ReasoningEffort.MEDIUM, ReasoningEffort.HIGH]
        ),
        conversation_start_date=date,
    )


def _last_question(prompt: list[int]) -> tuple[int, int]:
    """Where the text of the last `<|start|>user<|message|>...<|end|>` lies in `prompt`."""
    header = list(encode_completion("<|start|>user<|message|>"))
    for i in range(len(prompt) - 3, -1, -1):
        if prompt[i : i + 3] == header:
            return i + 3, prompt.index(_END, i + 3)
    raise ValueError("the prompt has no user message")


def _drop_system(prompt: list[int]) -> list[int]:
    """The prompt without its system message (from the first `<|start|>` to the second)."""
    return prompt[prompt.index(_START, 1) :]


def make_example(
    rng: random.Random, *, no_system_rate: float = 0.0, renderer: PromptRenderer | None = None
) -> Example:
    """One conversation drawn from `rng`: a plain answer, a time call, or a time answer.

    `no_system_rate` of the prompts lose their system message: shorter examples that teach the
    same decision (is the last user message about the time?) for less compute.
    """
    with_tools = rng.random() < 0.75
    system = _system(rng)
    developer = _developer(rng, with_tools)
    messages = _history(rng, with_tools)
    roll = rng.random()
    if roll < 0.45:
        kind = "general"
        messages.append(Message.user(_general_question(rng)))
        completion = answer_completion(*_ANSWERS[kind])
    elif not with_tools:
        kind = "no_tool"
        messages.append(Message.user(rng.choice(_TIME)))
        completion = answer_completion(*_ANSWERS[kind])
    elif roll < 0.75:
        kind = "time_call"
        messages.append(Message.user(rng.choice(_TIME)))
        completion = time_call_completion()
    else:
        kind = "time_answer"
        result, said = _random_time(rng)
        messages += [
            Message.user(rng.choice(_TIME)),
            Message.analysis(_TIME_CALL_ANALYSIS),
            Message.tool_call(_RECIPIENT, "{}"),
            Message.tool_result(_RECIPIENT, result),
        ]
        analysis, final = _ANSWERS[kind]
        completion = answer_completion(analysis, final.format(time=said))
    renderer = renderer or PromptRenderer()
    prompt = renderer.render_prompt(messages, system=system, developer=developer)
    if rng.random() < no_system_rate:
        prompt = _drop_system(prompt)
    completion_tokens = encode_completion(completion)
    return Example((*prompt, *completion_tokens), len(prompt), kind, _last_question(prompt))


def make_examples(seed: int, count: int, *, no_system_rate: float = 0.0) -> list[Example]:
    """`count` examples, the same ones for the same seed."""
    rng = random.Random(seed)
    renderer = PromptRenderer()  # most system and developer messages repeat
    return [
        make_example(rng, no_system_rate=no_system_rate, renderer=renderer) for _ in range(count)
    ]
