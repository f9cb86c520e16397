"""`bench list`: sizes, pair defaults, methods, collectors and the price table."""

from __future__ import annotations

import json

from bench.collectors.cost import load_prices
from bench.sizes import SIZES, defaults_for


def listing() -> str:
    from bench.collectors import collector_names
    from bench.methods import method_names

    lines = ["sizes (layers / hidden / heads / ffn):"]
    lines += [f"  {s.name:16} {s.layers:3} {s.hidden:5} {s.heads:3} {s.ffn:6}" for s in SIZES.values()]
    lines.append("pairs: any SMALL:LARGE of one family where LARGE is nowhere smaller; defaults:")
    for label, d in (("CPU scale (hidden <= 256)", defaults_for(SIZES["bert-micro"])),
                     ("paper scale", defaults_for(SIZES["bert-base"]))):
        lines.append(f"  {label}: budget {d.budget_steps} steps (quick {d.quick_budget_steps}), parent "
                     f"{d.parent_steps} steps (quick {d.quick_parent_steps}), batch {d.batch_size} x {d.seq_len}, "
                     f"vocab {d.vocab_size}")
    lines.append(f"methods: {', '.join(method_names())}")
    lines.append(f"collectors: {', '.join(collector_names())}")
    prices = load_prices()
    lines.append(f"prices (as of {prices.get('as_of', '?')}):")
    lines += [f"  {line}" for line in json.dumps(prices, indent=1).splitlines()[1:-1]]
    return "\n".join(lines)
