"""Markdown tables, the one format of every table this package prints or writes (AR and RES results, model cards)."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right_aligned: Sequence[bool] | None = None
) -> str:
    """
    A Markdown table whose columns are padded to one width, so that it also reads as plain text (a terminal, a log).

    Args:
        header (`Sequence[str]`): the column titles.
        rows (`Sequence[Sequence[str]]`): the cells, one sequence per row, as many as the header.
        right_aligned (`Sequence[bool]`, *optional*): per column, right-align it (numbers) instead of left-aligning
            it; all columns are left-aligned by default.

    Returns:
        `str`: the header line, the alignment line and one line per row.
    """
    right_aligned = list(right_aligned) if right_aligned is not None else [False] * len(header)
    for index, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"row {index} has {len(row)} cells for {len(header)} columns")
    widths = [max(len(str(row[column])) for row in [header, *rows]) for column in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            str(cell).rjust(width) if right else str(cell).ljust(width)
            for cell, width, right in zip(cells, widths, right_aligned, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    rules = (
        "-" * (width + 1) + ":" if right else "-" * (width + 2)
        for width, right in zip(widths, right_aligned, strict=True)
    )
    return "\n".join([line(header), "|" + "|".join(rules) + "|", *(line(row) for row in rows)])
