"""Figures every bench script shares: percentile summaries, their one-line printout, and the results files.

A results file is a summary (percentiles, counts, parameters, machine load; never raw samples) named
`bench/results/YYYY-MM-DDTHHMMSSZ-<bench>-<profile>.json` (bench/README.md, "Results files"); a run of
a subset of sections goes to `bench/results/sections/`, raw samples to `bench/results/raw/` (both
git-ignored).
"""

from __future__ import annotations

import json
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS_DIR = RESULTS / "sections"  # runs of a subset of a bench's sections: git-ignored
RAW_DIR = RESULTS / "raw"  # raw samples, only when asked for: git-ignored


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary(values: list[float], digits: int | None = None) -> dict[str, float]:
    """n, p50, p90, p99, max and mean of a list (empty: nothing); rounded to `digits` if given."""
    if not values:
        return {}
    figures = {
        "n": len(values),
        "p50": statistics.median(values),
        "p90": percentile(values, 0.90),
        "p99": percentile(values, 0.99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }
    return figures if digits is None else {k: round(v, digits) for k, v in figures.items()}


def line(
    figures: dict[str, float], unit: str = "ms", spec: str = "7.1f", keys: tuple[str, ...] = ("p50", "p99", "max")
) -> str:
    """`p50 … p99 … max …` of a summary, for a printed table ("-" when empty)."""
    if not figures:
        return "-"
    return "  ".join(f"{k} {figures[k]:{spec}} {unit}".rstrip() for k in keys)


def results_path(bench: str, profile: str, sections: str = "", when: datetime | None = None) -> Path:
    """Where a run's summary goes: bench/results/<time>-<bench>-<profile>.json, or under sections/ (with
    the sections in the name) when only some of the bench's sections ran."""
    stamp = f"{when or datetime.now(UTC):%Y-%m-%dT%H%M%SZ}"
    if sections:
        return SECTIONS_DIR / f"{stamp}-{bench}-{profile}-{sections}.json"
    return RESULTS / f"{stamp}-{bench}-{profile}.json"


def write_results(path: Path, results: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(results) + "\n")
    return path


def dumps(value: Any, indent: int = 0, width: int = 110) -> str:
    """JSON, indented, with every container that fits in `width` on one line (a summary reads as one row)."""
    flat = json.dumps(value, default=str)
    if not isinstance(value, dict | list) or len(flat) + indent <= width or not value:
        return flat
    pad = " " * (indent + 1)
    if isinstance(value, dict):
        items = [f"{pad}{json.dumps(str(k))}: {dumps(v, indent + 1, width)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + dumps(v, indent + 1, width) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
