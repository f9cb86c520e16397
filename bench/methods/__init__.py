"""The method registry. A method is one file in this package (or a `growbench.methods` entry
point) that registers a class yielding phases; nothing else needs editing to add one."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import ClassVar

from transformers import PreTrainedModel

from bench.errors import BenchError
from bench.phases import Phase
from bench.sizes import Pair

_REGISTRY: dict[str, type[Method]] = {}


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


def register_method(name: str):
    def decorator(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _load_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    for entry in entry_points(group="growbench.methods"):
        entry.load()


def method_names() -> list[str]:
    _load_all()
    return list(_REGISTRY)


def make_method(name: str, args: dict[str, str] | None = None) -> Method:
    """The method `name` with its settings overridden by `args` ({field: text value})."""
    _load_all()
    if name not in _REGISTRY:
        raise BenchError(f"unknown method {name!r}; known methods: {', '.join(_REGISTRY)}")
    cls = _REGISTRY[name]
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
