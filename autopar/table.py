"""Plain-text tables for terminal reports: aligned columns, a rule under the header, no deps.

Reports are read in terminals, logs and CI output, so the table is plain ASCII that survives
copy and paste; numbers are right-aligned so their magnitudes line up.
"""

from __future__ import annotations

from collections.abc import Sequence


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], *,
           align: str = "", footer: Sequence[Sequence[str]] = ()) -> str:
    """Lay out ``rows`` under ``headers``; ``footer`` rows follow a second rule.

    ``align`` holds one letter per column, ``l`` or ``r`` (default: first column left, the
    rest right). Cells are strings already formatted by the caller; trailing blanks are
    trimmed so a long last column does not pad every line.
    """
    ncols = len(headers)
    for row in (*rows, *footer):
        if len(row) != ncols:
            raise ValueError(f"row has {len(row)} cells, table has {ncols} columns: {row!r}")
    align = align or "l" + "r" * (ncols - 1)
    if len(align) != ncols or set(align) - {"l", "r"}:
        raise ValueError(f"align must be {ncols} letters 'l'/'r', got {align!r}")
    widths = [max(len(str(r[i])) for r in (headers, *rows, *footer)) for i in range(ncols)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(w) if a == "l" else c.rjust(w)
                 for c, w, a in zip(cells, widths, align, strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(headers), rule, *(line(r) for r in rows)]
    if footer:
        out += [rule, *(line(r) for r in footer)]
    return "\n".join(out)
