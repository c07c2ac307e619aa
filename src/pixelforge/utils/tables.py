"""Result tables as the scripts print them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def markdown(rows: list[dict]) -> str:
    """A Markdown table of result rows (union of their keys, floats to 4 significant digits)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{row[k]:.4g}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(rows: list[dict], out: str | Path | None = None, **meta: Any) -> Path | None:
    """Print ``rows`` as a Markdown table; with ``out``, also write them (and ``meta``) as JSON and the table as
    ``.md`` beside it. Returns the JSON path, if any."""
    table = markdown(rows)
    print(table)
    if out is None:
        return None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
    return out
