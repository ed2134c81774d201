"""``--json-schema`` / ``--grammar``: every generation of the chat made to match a grammar.

The controller calls the generator's `stream` for each reply (and each retry or tool round);
`ConstrainedGenerator` passes the `ConstraintSpec` with every call, so the answer is JSON for the
schema (or matches the grammar) while the reasoning stays free.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

from mlx_harmony.generate import StreamEvent, TokenGenerator
from mlx_harmony.generate.constrain import ConstraintError, ConstraintSpec

from .launch import CliError

__all__ = ["ConstrainedGenerator", "constrain_generator"]


class ConstrainedGenerator:
    """`generator` with `constraint` on every `stream` / `generate` call; everything else is
    the generator's own."""

    def __init__(self, generator: TokenGenerator, constraint: ConstraintSpec) -> None:
        self.generator = generator
        self.constraint = constraint

    def __getattr__(self, name: str) -> Any:
        return getattr(self.generator, name)

    def stream(self, **kwargs: Any) -> Generator[StreamEvent, None, None]:
        return self.generator.stream(**kwargs, constraint=self.constraint)

    def generate(self, **kwargs: Any) -> Iterator[int]:
        return self.generator.generate(**kwargs, constraint=self.constraint)


def constrain_generator(
    generator: TokenGenerator, constraint: ConstraintSpec
) -> ConstrainedGenerator:
    """Compile `constraint` for the model's tokenizer now (a schema or grammar the engine cannot
    handle is a usage error, exit status 2, naming the keyword or rule) and wrap `generator`."""
    try:
        generator.compile_constraint(constraint)
    except ConstraintError as error:
        flag = "--grammar" if constraint.mode == "grammar" else "--json-schema"
        raise CliError(f"{flag}: {error}", exit_status=2) from None
    return ConstrainedGenerator(generator, constraint)
