"""The verdicts a row of the gate carries (the comparison with the baseline and the audit of the books alike),
and the plain-text table both are printed in."""

from __future__ import annotations

OK, REGRESSION, IMPROVED = "ok", "REGRESSION", "improved"
IMPROVED_FAILS = "improved — refresh the baseline with `bench baseline`"
BOOKS = "BOOKS"
FAILING = (REGRESSION, IMPROVED_FAILS, BOOKS)
"""Verdicts that fail the gate. IMPROVED (a hardware-bound quantity moved the better way) does not."""


def _columns(headers: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *cells, strict=True)]
    lines = [headers, ["-" * width for width in widths], *cells]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines)
