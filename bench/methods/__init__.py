"""The method registry. A method is one file in this package (or a `growbench.methods` entry
point) that registers a class yielding phases; nothing else needs editing to add one."""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from transformers import PretrainedConfig, PreTrainedModel

from bench.errors import BenchError
from bench.phases import OPTIMIZER_HANDLING, Phase, Schedule
from bench.registry import Registry
from bench.sizes import Pair, Size


@dataclass
class GrowthContext:
    """What a method gets to build its phases from."""

    pair: Pair
    parent: PreTrainedModel | None  # the pretrained SMALL model (the method's own copy), or None
    vocab_size: int
    seq_len: int
    pad_token_id: int
    seed: int
    # A parent checkpoint's config (`--small-from`): every model built takes everything but its shape from it
    # (vocabulary, positions, type vocabulary, special ids); None: growbench's own configs (vocab_size, seq_len).
    base: PretrainedConfig | None = None

    def build(self, size: Size) -> PreTrainedModel:
        """A model of `size` with transformers' default random init, seeded by the run's seed."""
        return size.build(self.vocab_size, self.seq_len, self.seed, self.pad_token_id, self.base)

    def build_large(self) -> PreTrainedModel:
        """LARGE with transformers' default random init, seeded by the run's seed."""
        return self.build(self.pair.large)


class Method:
    """Base class: a registered name, a settings dataclass, and `phases()`.

    `Settings` is a dataclass of the method's knobs; `--method-arg NAME.FIELD=VALUE` overrides
    them and the run records them. A `validate(self, pair)` method on it (pair: the `Pair`, or None
    when not known yet) range-checks them, raising BenchError; `make_method` calls it, so that a bad
    setting is refused before anything is prepared or trained.
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


SCHEDULES = ("continue", "rewarm")


@dataclass
class GrownTraining:
    """How a grown model trains after its surgery; each method's default is its paper's (docs/methods.md).

    schedule: "continue": no warmup again — the grown model starts at the peak and the lr decays linearly to 0 at the
              budget (for staged methods one schedule runs across every stage); "rewarm": the run's warmup fraction
              again from the grown model's first step, as for a model trained from scratch.
    lr_scale: the grown model's peak lr relative to scratch's.
    """

    schedule: str = "continue"
    lr_scale: float = 1.0

    def grown_schedule(self) -> Schedule:
        return Schedule(warmup=0.0 if self.schedule == "continue" else None, lr_scale=self.lr_scale)

    def validate_training(self) -> None:
        if self.schedule not in SCHEDULES:
            raise BenchError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not (self.lr_scale > 0 and math.isfinite(self.lr_scale)):
            raise BenchError(f"lr_scale must be a finite number above 0, got {self.lr_scale}")


@dataclass
class StageOptimizer:
    """optimizer: "carry": AdamW's moments carry into the next stage for every parameter that maps one to one (same
    tensor, or same name, shape and values after the surgery), fresh for the others; "fresh": a new AdamW per
    stage."""

    optimizer: str = "carry"

    def validate_training(self) -> None:
        if self.optimizer not in OPTIMIZER_HANDLING:
            raise BenchError(f"optimizer must be one of {', '.join(OPTIMIZER_HANDLING)}, got {self.optimizer!r}")


_REGISTRY = Registry("method", __name__, "growbench.methods")
register_method = _REGISTRY.register


def method_names() -> list[str]:
    return list(_REGISTRY.classes())


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _setting_value(name: str, key: str, text: str, current):
    """`text` as the type of the setting's default (bool: true/false, yes/no, 1/0, on/off)."""
    if isinstance(current, bool):
        if text.strip().lower() in _TRUE + _FALSE:
            return text.strip().lower() in _TRUE
        raise BenchError(f"{name}.{key}={text!r} is not a valid bool (use true or false)")
    try:
        return type(current)(text)
    except (TypeError, ValueError):
        raise BenchError(f"{name}.{key}={text!r} is not a valid {type(current).__name__}") from None


def validate_settings(name: str, settings, pair: Pair | None = None) -> None:
    """BenchError when a setting is out of range: every float must be finite, and the settings' own `validate(pair)`
    hook (a method's range checks; `pair` None when it is not known yet) must pass."""
    for base in (GrownTraining, StageOptimizer):
        if isinstance(settings, base):
            try:
                base.validate_training(settings)
            except BenchError as error:
                raise BenchError(f"{name}.{error}") from None
    check = getattr(settings, "validate", None)
    if callable(check):
        check(pair)
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise BenchError(f"{name}.{field.name} must be a finite number, got {value}")


def check_method_args(method_args: dict[str, dict[str, str]], chosen: list[str], option: str) -> None:
    """A --method-arg for a method that does not run is a mistake (most often a typo): refuse it."""
    for method, settings in method_args.items():
        if method in chosen:
            continue
        close = difflib.get_close_matches(method, [*chosen, *method_names()], n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        named = ", ".join(f"{method}.{setting}" for setting in settings)
        raise BenchError(f"--method-arg {named}: method {method!r} is not {option} ({', '.join(chosen)}){hint}")


def make_method(name: str, args: dict[str, str] | None = None, pair: Pair | None = None) -> Method:
    """The method `name` with its settings overridden by `args` ({field: text value}), validated (with `pair`'s
    shapes when given), so that a bad setting is a BenchError before anything trains."""
    classes = _REGISTRY.classes()
    if name not in classes:
        raise BenchError(f"unknown method {name!r}; known methods: {', '.join(classes)}")
    cls = classes[name]
    settings = cls.Settings()
    fields = {f.name: f for f in dataclasses.fields(settings)}
    for key, text in (args or {}).items():
        if key not in fields:
            raise BenchError(f"method {name} has no setting {key!r}; it has: {', '.join(fields) or 'none'}")
        setattr(settings, key, _setting_value(name, key, text, getattr(settings, key)))
    validate_settings(name, settings, pair)
    return cls(settings)
