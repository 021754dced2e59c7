"""The plot of the latency distributions (bench/run.py --samples): one curve per figure, from raw samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from report import OLD_STAGES, STAGES


def plot(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    samples = results["samples_ms"]
    panels = [
        ("cross-replica create -> completion NOTIFY", ["ours", "peer"]),
        ("ours, by stage (row timestamps)", [f"ours {s}" for s in (*STAGES, *OLD_STAGES) if f"ours {s}" in samples]),
        ("REST round trip and Redis hop", ["REST POST round trip", "Redis hop"]),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(15, 4.5))
    for axis, (title, names) in zip(axes, panels, strict=True):
        right = 0.0
        for name in names:
            values = sorted(samples.get(name) or [])
            if values:
                fractions = [(i + 1) / len(values) for i in range(len(values))]
                p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
                axis.plot(values, fractions, label=f"{name} (n={len(values)}, max {values[-1]:.1f} ms)")
                right = max(right, 3 * p99)
        axis.set_xscale("log")
        if right:
            axis.set_xlim(right=right)  # a lone outlier (the peer's 5 s poll) would squash the curves
        axis.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(ticker.NullFormatter())
        axis.set_xlabel("ms (log)")
        axis.set_ylabel("fraction of commands")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    figure.suptitle(f"StreamSpace benchmark, {results['machine']['date']}, {results['machine']['cores']} cores")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
