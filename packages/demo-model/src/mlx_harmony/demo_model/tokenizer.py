"""The o200k_harmony tokenizer as Hugging Face files, made from the vocab harmony-format ships.

gpt-oss checkpoints carry a `tokenizer.json`; a locally built model needs the same files so that
`mlx_lm.load` (and so mlx-lm's server, our peer in benchmarks) can read the folder.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from importlib.resources import files
from pathlib import Path

__all__ = [
    "CHAT_TEMPLATE",
    "O200K_PATTERN",
    "SPECIAL_TOKENS",
    "VOCAB_SIZE",
    "write_tokenizer_files",
]

VOCAB_SIZE = 201088

# tiktoken's o200k_base split pattern (the one o200k_harmony uses).
O200K_PATTERN = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)

_NAMED = {
    199998: "<|startoftext|>",
    199999: "<|endoftext|>",
    200002: "<|return|>",
    200003: "<|constrain|>",
    200005: "<|channel|>",
    200006: "<|start|>",
    200007: "<|end|>",
    200008: "<|message|>",
    200012: "<|call|>",
}
SPECIAL_TOKENS: dict[int, str] = {
    i: _NAMED.get(i, f"<|reserved_{i}|>") for i in range(199998, VOCAB_SIZE)
}

# A Harmony chat template for tokenizer_config.json. It renders what our harmony-format renders
# for the common case (system defaults, optional developer instructions, user and final
# assistant turns), so peers fed through `apply_chat_template` see the same prompt.
CHAT_TEMPLATE = (
    "{%- set effort = reasoning_effort | default('medium') -%}"
    "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
    "Knowledge cutoff: 2024-06{{ '\\n' }}"
    "{%- if conversation_start_date is defined -%}"
    "Current date: {{ conversation_start_date }}{{ '\\n' }}"
    "{%- endif -%}"
    "{{ '\\n' }}Reasoning: {{ effort }}{{ '\\n\\n' }}"
    "# Valid channels: analysis, commentary, final. Channel must be included for every message."
    "<|end|>"
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' or m.role == 'developer' -%}"
    "<|start|>developer<|message|># Instructions\n\n{{ m.content }}<|end|>"
    "{%- elif m.role == 'user' -%}"
    "<|start|>user<|message|>{{ m.content }}<|end|>"
    "{%- elif m.role == 'assistant' -%}"
    "<|start|>assistant<|channel|>final<|message|>{{ m.content }}"
    "{%- if loop.last and not add_generation_prompt %}<|return|>{% else %}<|end|>{% endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}"
)


def _vocab_path() -> Path:
    return Path(str(files("mlx_harmony.harmony_format") / "data" / "o200k_base.tiktoken"))


def _build_tokenizer_json(vocab_file: Path) -> str:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks: dict[bytes, int] = {}
    for line in vocab_file.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)

    byte_encoder = bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(byte_encoder[c] for c in b)

    # A merge for every way a token splits into two tokens, ordered like transformers'
    # TikTokenConverter; `ignore_merges` makes whole-word vocab hits win, as in tiktoken.
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    vocab = {to_str(t): r for t, r in ranks.items()}
    model = BPE(vocab, [(to_str(m[3]), to_str(m[4])) for m in merges], fuse_unk=False)
    tokenizer = Tokenizer(model)
    tokenizer.model.ignore_merges = True
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(O200K_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for _, t in sorted(SPECIAL_TOKENS.items())]
    )
    return tokenizer.to_str()


_built_here: list[Path] = []
"""The tokenizer files this process built, newest last: another cache folder copies one."""


def _cached_tokenizer_json(cache_dir: Path) -> Path:
    """Building the merges takes seconds; do it once per machine (and once per process, for a
    process that uses several cache folders)."""
    target = cache_dir / "o200k_harmony-tokenizer.json"
    if not target.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache_dir, delete=False, suffix=".tmp") as f:
            built = next((p for p in reversed(_built_here) if p.is_file()), None)
            if built is not None:
                f.close()
                shutil.copyfile(built, f.name)
            else:
                f.write(_build_tokenizer_json(_vocab_path()))
        Path(f.name).replace(target)
        _built_here.append(target)
    return target


def write_tokenizer_files(folder: Path, *, cache_dir: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and generation_config.json into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_cached_tokenizer_json(cache_dir), folder / "tokenizer.json")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|startoftext|>",
        "eos_token": "<|return|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    generation = {"bos_token_id": 199998, "eos_token_id": [200002, 199999, 200012]}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
