"""`bench list`: sizes, pair defaults and recipes, methods, collectors and the price table."""

from __future__ import annotations

import json
import textwrap

from bench.collectors.cost import load_prices
from bench.sizes import CPU_DEFAULTS, PAPER_DEFAULTS, SIZES, PairDefaults, defaults_for


def listing() -> str:
    from bench.collectors import collector_names
    from bench.methods import method_names

    lines = ["sizes (layers / hidden / heads / ffn):"]
    lines += [f"  {s.name:16} {s.layers:3} {s.hidden:5} {s.heads:3} {s.ffn:6}" for s in SIZES.values()]
    lines.append("pairs: any SMALL:LARGE of one family where LARGE is nowhere smaller; defaults and recipe, by LARGE:")
    pair_classes = [("CPU scale (hidden <= 256)", CPU_DEFAULTS)]
    for family, defaults in PAPER_DEFAULTS.items():
        larges = ", ".join(s.name for s in SIZES.values() if s.family == family and defaults_for(s) == defaults)
        pair_classes.append((f"{family} paper scale ({larges})", defaults))
    for label, defaults in pair_classes:
        lines += _pair_class(label, defaults)
    lines.append(f"methods: {', '.join(method_names())}")
    lines.append(f"collectors: {', '.join(collector_names())}")
    prices = load_prices()
    lines.append(f"prices (as of {prices.get('as_of', '?')}):")
    lines += [f"  {line}" for line in json.dumps(prices, indent=1).splitlines()[1:-1]]
    return "\n".join(lines)


def _pair_class(label: str, d: PairDefaults) -> list[str]:
    """A pair class's defaults, its recipe, and where the recipe's numbers come from (wrapped)."""
    r = d.recipe
    warmup_steps = round(r.warmup_fraction * d.budget_steps)
    clip = f"grad clip {r.grad_clip:g}" if r.grad_clip else "no grad clip"
    return [
        (f"  {label}: budget {d.budget_steps} steps (quick {d.quick_budget_steps}), parent {d.parent_steps} steps "
         f"(quick {d.quick_parent_steps}), batch {d.batch_size} x {d.seq_len}, vocab {d.vocab_size}"),
        (f"    recipe {r.name}: {r.optimizer} lr {r.lr:g}, betas ({r.betas[0]:g}, {r.betas[1]:g}), eps {r.eps:g}, "
         f"weight decay {r.weight_decay:g}, warmup {warmup_steps} of {d.budget_steps} steps "
         f"({r.warmup_fraction:.3g} of the budget) then linear decay, {clip}"),
        textwrap.fill(r.source, width=118, initial_indent="    source: ", subsequent_indent="      ",
                      break_long_words=False, break_on_hyphens=False),
    ]
