"""Result tables as the scripts print them."""

from __future__ import annotations


def markdown(rows: list[dict]) -> str:
    """A Markdown table of result rows (union of their keys, floats to 4 significant digits)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{row[k]:.4g}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
