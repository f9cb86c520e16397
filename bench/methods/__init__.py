"""The method registry. A method is one file in this package (or a `growbench.methods` entry
point) that registers a class yielding phases; nothing else needs editing to add one."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from transformers import PreTrainedModel

from bench.errors import BenchError
from bench.phases import Phase
from bench.registry import Registry
from bench.sizes import Pair


@dataclass
class GrowthContext:
    """What a method gets to build its phases from."""

    pair: Pair
    parent: PreTrainedModel | None  # the pretrained SMALL model (the method's own copy), or None
    vocab_size: int
    seq_len: int
    pad_token_id: int
    seed: int

    def build_large(self) -> PreTrainedModel:
        """LARGE with transformers' default random init, seeded by the run's seed."""
        return self.pair.large.build(self.vocab_size, self.seq_len, self.seed, self.pad_token_id)


class Method:
    """Base class: a registered name, a settings dataclass, and `phases()`.

    `Settings` is a dataclass of the method's knobs; `--method-arg NAME.FIELD=VALUE` overrides
    them and the run records them.
    """

    name: ClassVar[str]
    needs_parent: ClassVar[bool] = True

    @dataclass
    class Settings:
        pass

    def __init__(self, settings: Settings | None = None):
        self.settings = settings if settings is not None else self.Settings()

    def phases(self, ctx: GrowthContext) -> Iterator[Phase]:
        """Yield phases in order. The loop trains each one before asking for the next, so a
        method can build the next phase from the trained state of the last."""
        raise NotImplementedError


_REGISTRY = Registry("method", __name__, "growbench.methods")
register_method = _REGISTRY.register


def method_names() -> list[str]:
    return list(_REGISTRY.classes())


def make_method(name: str, args: dict[str, str] | None = None) -> Method:
    """The method `name` with its settings overridden by `args` ({field: text value})."""
    classes = _REGISTRY.classes()
    if name not in classes:
        raise BenchError(f"unknown method {name!r}; known methods: {', '.join(classes)}")
    cls = classes[name]
    settings = cls.Settings()
    fields = {f.name: f for f in dataclasses.fields(settings)}
    for key, text in (args or {}).items():
        if key not in fields:
            raise BenchError(f"method {name} has no setting {key!r}; it has: {', '.join(fields) or 'none'}")
        current = getattr(settings, key)
        try:
            value = (text.lower() in ("1", "true", "yes")) if isinstance(current, bool) else type(current)(text)
        except ValueError:
            raise BenchError(f"{name}.{key}={text!r} is not a valid {type(current).__name__}") from None
        setattr(settings, key, value)
    return cls(settings)
