"""The benchmark's output: one JSON-ready record per measurement, and a fixed-width table of them."""

from __future__ import annotations

from typing import Any

from pixelforge.benchmark.timing import ms, spread

# the fields the table's columns show (in_channels is in the shape); the others go on a line of their own
BASE = ("case", "model", "precision", "shape", "in_channels", "unit", "ours_ms", "peer", "peer_ms", "ratio",
        "ours_params", "peer_params", "ours_spread_ms", "peer_spread_ms", "ours_peak_mb", "peer_peak_mb")


def record(case: str, precision: str, ours: list[float], peer: str | None, peer_times: list[float] | None,
           ours_params: int | None = None, peer_params: int | None = None, **extra: Any) -> dict[str, Any]:
    """One record: medians, their spread and the ours/peer ratio, plus case-specific fields."""
    ours_ms, peer_ms = ms(ours), ms(peer_times)
    return {"case": case, "precision": precision, "ours_ms": ours_ms, "peer": peer, "peer_ms": peer_ms,
            "ratio": None if peer_ms is None else ours_ms / peer_ms, "ours_params": ours_params,
            "peer_params": peer_params, "ours_spread_ms": spread(ours), "peer_spread_ms": spread(peer_times),
            **extra}


def fmt(value: Any, spec: str = ".1f") -> str:
    """``value`` formatted by ``spec``; "-" for a missing one."""
    return "-" if value is None else format(value, spec)


def table(records: list[dict[str, Any]]) -> str:
    """A fixed-width table of the records, then one line per record with its case-specific figures."""
    head = f"{'case':24} {'model':19} {'prec':5} {'shape':14} {'unit':11} {'ours ms':>10} {'min-max':>15} " \
           f"{'peer':11} {'peer ms':>10} {'ratio':>6} {'ours/peer params':>21} {'peak MB ours/peer':>18}"
    lines = [head, "-" * len(head)]
    for r in records:
        lo_hi = "-" if r["ours_spread_ms"] is None else "{:.4g}-{:.4g}".format(*r["ours_spread_ms"])
        params = f"{fmt(r['ours_params'], ',')}/{fmt(r['peer_params'], ',')}"
        peak = f"{fmt(r.get('ours_peak_mb'), '.0f')}/{fmt(r.get('peer_peak_mb'), '.0f')}"
        lines.append(f"{r['case']:24} {r.get('model') or '-':19} {r['precision']:5} {r.get('shape', ''):14} "
                     f"{r['unit']:11} {fmt(r['ours_ms'], '.4g'):>10} {lo_hi:>15} {r['peer'] or '-':11} "
                     f"{fmt(r['peer_ms'], '.4g'):>10} {fmt(r['ratio'], '.2f'):>6} {params:>21} {peak:>18}")
    for r in records:
        extra = {k: v for k, v in r.items() if k not in BASE}
        if extra:
            shown = ", ".join(f"{k}={fmt(v, '.4g') if isinstance(v, float) else v}" for k, v in extra.items())
            lines.append(f"  {r['case']} {r['precision']}: {shown}")
    return "\n".join(lines)
