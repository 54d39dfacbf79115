"""A scenario's result rows: a figure, its raw baseline and their ratio, or a figure
against a limit; each with what the processes were busy with meanwhile."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    scenario: str
    figure: str
    unit: str
    value: float | None
    baseline: float | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    note: str = ""
    busy: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("value", "baseline", "ratio"):
            if isinstance(out[key], float):
                out[key] = round(out[key], 4)
        out["busy"] = {k: round(v, 3) for k, v in self.busy.items()}
        return out


def ratio_row(scenario: str, figure: str, unit: str, value: float | None,
              baseline: float | None, min_ratio: float | None, min_value: float | None = None,
              note: str = "", busy: dict[str, float] | None = None) -> Row:
    ratio = value / baseline if value is not None and baseline else None
    parts = []
    if min_ratio is not None:
        parts.append(f">= {min_ratio:g} x baseline")
    if min_value is not None:
        parts.append(f">= {min_value:,.0f} {unit}")
    met = None
    if parts and value is not None:
        met = ((min_ratio is None or (ratio is not None and ratio >= min_ratio))
               and (min_value is None or value >= min_value))
    return Row(scenario, figure, unit, value, baseline, ratio, " and ".join(parts) or None,
               met, note, busy or {})


def cost_row(scenario: str, figure: str, unit: str, value: float | None,
             baseline: float | None, max_ratio: float, note: str = "",
             busy: dict[str, float] | None = None) -> Row:
    """A cost against a baseline's: lower is better, the target is a ratio at most."""
    ratio = value / baseline if value is not None and baseline else None
    met = ratio <= max_ratio if ratio is not None else None
    return Row(scenario, figure, unit, value, baseline, ratio, f"<= {max_ratio:g} x baseline",
               met, note, busy or {})


def limit_row(scenario: str, figure: str, unit: str, value: float | None,
              max_value: float | None, note: str = "",
              busy: dict[str, float] | None = None) -> Row:
    target = f"<= {max_value:g} {unit}" if max_value is not None else None
    met = value <= max_value if value is not None and max_value is not None else None
    return Row(scenario, figure, unit, value, None, None, target, met, note, busy or {})


def at_most_row(scenario: str, figure: str, unit: str, value: float | None,
                baseline: float | None, max_ratio: float, note: str = "",
                busy: dict[str, float] | None = None) -> Row:
    """A figure that should stay within `max_ratio` times its baseline (a latency beside
    the same latency measured without the load in question)."""
    ratio = value / baseline if value is not None and baseline else None
    met = ratio <= max_ratio if ratio is not None else None
    return Row(scenario, figure, unit, value, baseline, ratio, f"<= {max_ratio:g} x baseline",
               met, note, busy or {})


def within_row(scenario: str, figure: str, unit: str, value: float | None, wanted: float,
               tolerance: float, note: str = "", busy: dict[str, float] | None = None) -> Row:
    """A figure that should equal `wanted` (a configured limit) within `tolerance` (0.05 =
    5 %) either way; the ratio is value / wanted."""
    ratio = value / wanted if value is not None else None
    met = abs(ratio - 1) <= tolerance if ratio is not None else None
    return Row(scenario, figure, unit, value, wanted, ratio,
               f"within {tolerance:.0%} of {wanted:g} {unit}", met, note, busy or {})


def fmt_busy(busy: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in busy.items())
