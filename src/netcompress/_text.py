"""Plain-text tables for reports, demos and storage figures."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["text_table"]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, rule: bool = True,
               right: bool = False) -> str:
    """Columns padded to their widest cell; a dashed rule under the header; numbers right-aligned if ``right``."""
    lines = [list(map(str, header)), *[list(map(str, r)) for r in rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def render(line):
        cells = [c.rjust(w) if right and i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        return "  ".join(cells).rstrip()

    out = [render(line) for line in lines]
    if rule:
        out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
