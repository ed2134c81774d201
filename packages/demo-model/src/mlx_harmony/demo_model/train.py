"""Train the demo model on a small vocabulary, then widen it to the full o200k_harmony one.

The lm_head over 201088 ids would dominate a CPU training step, yet the synthetic data uses a
few hundred of them. So training runs on those ids plus one shared "unseen" row that stands for
every other id: its logit is counted `log(number of unseen ids)` times (plus a margin) in the
softmax, which is exactly what a full-vocab softmax sees once every unseen id gets that row.
Widening then copies the shared row into all unseen ids of the embedding and lm_head, so the
saved model, sampled at temperature 1 over the full vocabulary, gives unseen ids as little
probability as training taught (less, by the margin).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models.gpt_oss import Model, ModelArgs

from .data import DATA_VERSION, Example, make_examples
from .random_model import gpt_oss_config
from .tokenizer import VOCAB_SIZE

__all__ = [
    "DEMO_RECIPE",
    "DemoRecipe",
    "TrainResult",
    "train_demo_model",
    "widen_vocab",
]

_SPECIAL_START = 199998  # ids from here on are Harmony's special and reserved tokens


@dataclass(frozen=True)
class DemoRecipe:
    """Everything besides the seed that decides the demo model's weights.

    Measured on 2 CPU cores: the default learns the structure (greedy and sampled) in 600
    steps of 4 conversations; fewer steps or a larger learning rate learn the time question
    less reliably.
    """

    shape: str = "demo"
    steps: int = 600
    batch_size: int = 4
    examples: int = 2400
    learning_rate: float = 2e-3
    warmup_steps: int = 20
    final_learning_rate: float = 1e-4
    decision_weight: float = 5.0
    """Loss weight of the first analysis token, which decides: answer, call the tool, or report
    the tool's result."""
    unseen_margin: float = 4.0
    """Extra nats the unseen ids get in training and lose afterwards: e^-4 less probability."""
    unseen_input_rate: float = 0.1
    """Prompt words swapped for the unseen row, so unknown words in a prompt do not derail it."""
    unknown_question_rate: float = 0.2
    """General questions whose words are mostly swapped for the unseen row: a question made of
    words the model never saw is answered, not taken for a time question."""
    no_system_rate: float = 0.4
    self_check: bool = True
    shape_overrides: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.examples < self.batch_size:
            raise ValueError(
                f"need steps >= 1 and examples >= batch_size >= 1, got steps={self.steps}, "
                f"batch_size={self.batch_size}, examples={self.examples}"
            )
        if self.warmup_steps >= self.steps:
            object.__setattr__(self, "warmup_steps", 0)

    def fingerprint(self) -> str:
        """Short hash of the recipe and the data generator's version: a changed one rebuilds."""
        text = json.dumps({"recipe": asdict(self), "data": DATA_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def config(self, vocab_size: int = VOCAB_SIZE) -> dict:
        """The gpt-oss config.json of the model this recipe trains."""
        return gpt_oss_config(self.shape, **self.shape_overrides, vocab_size=vocab_size)


DEMO_RECIPE = DemoRecipe()


@dataclass(frozen=True)
class TrainResult:
    """The model on the small vocabulary, the vocabulary, and the loss of each step."""

    model: Model
    token_ids: tuple[int, ...]
    losses: tuple[float, ...]


def _batches(
    examples: list[np.ndarray], batch_size: int, rng: random.Random
) -> Iterator[list[int]]:
    """Batches of similar lengths (little padding), in a random order, forever."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        window = batch_size * 8
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: len(examples[i]))
            groups = [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
            rng.shuffle(groups)
            yield from (g for g in groups if len(g) == batch_size)


def _to_arrays(
    batch: list[int],
    compact: list[np.ndarray],
    raw: list[Example],
    recipe: DemoRecipe,
    rng: np.random.Generator,
) -> tuple[mx.array, mx.array, mx.array]:
    """Inputs, targets and loss weights for one batch; padding has weight 0."""
    length = max(len(compact[i]) for i in batch) - 1
    inputs = np.zeros((len(batch), length), np.int32)
    targets = np.zeros((len(batch), length), np.int32)
    weights = np.zeros((len(batch), length), np.float32)
    for row, i in enumerate(batch):
        ids, example = compact[i], raw[i]
        n, p = len(ids) - 1, example.prompt_length
        x = ids[:-1].copy()
        # Swap some ordinary prompt tokens for the unseen row (index 0).
        swap = rng.random(p) < recipe.unseen_input_rate
        if example.kind == "general" and rng.random() < recipe.unknown_question_rate:
            start, end = example.question
            swap[start:end] |= rng.random(end - start) < rng.uniform(0.5, 1.0)
        swap &= np.asarray(example.tokens[:p]) < _SPECIAL_START
        x[:p][swap] = 0
        inputs[row, :n] = x
        targets[row, :n] = ids[1:]
        weights[row, p - 1 : n] = 1.0
        weights[row, p + 2] = recipe.decision_weight  # predicts the first analysis word
    return mx.array(inputs), mx.array(targets), mx.array(weights)


def train_demo_model(
    recipe: DemoRecipe,
    *,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
    examples: list[Example] | None = None,
) -> TrainResult:
    """Train on `recipe.examples` seeded conversations; `on_step(step, loss)` after each step."""
    if examples is None:
        examples = make_examples(seed, recipe.examples, no_system_rate=recipe.no_system_rate)
    token_ids = tuple(sorted({t for e in examples for t in e.tokens}))
    to_compact = np.zeros(VOCAB_SIZE, np.int32)
    to_compact[list(token_ids)] = np.arange(1, len(token_ids) + 1)
    compact = [to_compact[np.asarray(e.tokens)] for e in examples]

    mx.random.seed(seed)
    model = Model(ModelArgs.from_dict(recipe.config(vocab_size=len(token_ids) + 1)))
    mx.eval(model.parameters())
    unseen = math.log(VOCAB_SIZE - len(token_ids)) + recipe.unseen_margin
    bias = mx.zeros((len(token_ids) + 1,)).at[0].add(unseen)

    def loss_fn(model: Model, x: mx.array, y: mx.array, w: mx.array) -> mx.array:
        losses = nn.losses.cross_entropy(model(x) + bias, y, reduction="none")
        return (losses * w).sum() / w.sum()

    decay = optim.cosine_decay(
        recipe.learning_rate, recipe.steps - recipe.warmup_steps, recipe.final_learning_rate
    )
    schedule = decay
    if recipe.warmup_steps:
        warmup = optim.linear_schedule(
            recipe.learning_rate / 10, recipe.learning_rate, recipe.warmup_steps
        )
        schedule = optim.join_schedules([warmup, decay], [recipe.warmup_steps])
    optimizer = optim.Adam(learning_rate=schedule)
    loss_and_grad = nn.value_and_grad(model, loss_fn)

    order = _batches(compact, recipe.batch_size, random.Random(f"batches-{seed}"))
    swaps = np.random.default_rng(seed)
    losses: list[float] = []
    for step in range(recipe.steps):
        x, y, w = _to_arrays(next(order), compact, examples, recipe, swaps)
        loss, grads = loss_and_grad(model, x, y, w)
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state, loss)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, losses[-1])
    return TrainResult(model, token_ids, tuple(losses))


def widen_vocab(result: TrainResult, recipe: DemoRecipe) -> tuple[Model, dict]:
    """The trained model over the full vocabulary: every unseen id gets the shared row."""
    index = np.zeros(VOCAB_SIZE, np.int32)
    index[list(result.token_ids)] = np.arange(1, len(result.token_ids) + 1)
    index = mx.array(index)
    weights = dict(tree_flatten(result.model.parameters()))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        weights[name] = weights[name][index]
    config = recipe.config()
    model = Model(ModelArgs.from_dict(config))
    model.load_weights(list(weights.items()))
    mx.eval(model.parameters())
    return model, config
