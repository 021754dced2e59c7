"""The benchmark's report: the one table (ours, the peer, the original's §7 figures, the goals) and
the plot of the latency distributions, from a results dict (bench/run.py writes it as JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def ms(figures: dict[str, float] | None) -> str:
    if not figures:
        return "—"
    return f"{figures['p50']:.2f} / {figures['p90']:.2f} / {figures['p99']:.2f} ms"


def ratio(ours: float | None, peer: float | None) -> str:
    return f"{ours / peer:.2f}" if ours and peer else "—"


Row = tuple[str, str, str, str, str]
# The original StreamSpace v2's figures, from ARCHITECTURE.md §7 (its Go code is not run here).
ORIGINAL = {"latency": "~30 ms (p50)", "hop": "~5 ms"}
STAGES = ("claim", "to result")  # created -> sent, sent -> completed (bench.sql `stages`)
OLD_STAGES = ("ack", "result")  # results files from before 2026-12-01 split sent -> completed at the ack


def table(results: dict[str, Any]) -> str:
    rows: list[Row] = [("figure", "peer", "ours", "ours/peer", "goal")]
    rows += latency_rows(results.get("latency_ms", {}))
    rows += throughput_rows(results)
    rows += bulk_rows(results.get("bulk", {}))
    rows += scale_rows(results.get("socket_scale", []))
    latencies = results.get("latency_ms", {})
    if latencies:
        rows.append(
            ("REST POST .../commands round trip", "—", ms(latencies["REST POST round trip"]), "", "p50 < 1.5 ms")
        )
        rows.append(("Redis hop (PUBLISH -> frame at the agent)", "—", ms(latencies["Redis hop"]), "", "p50 < 0.5 ms"))
    originals = {"cross-replica latency p50 / p90 / p99": ORIGINAL["latency"], "Redis hop": ORIGINAL["hop"]}
    wide = [(*row[:4], next((v for k, v in originals.items() if row[0].startswith(k)), ""), row[4]) for row in rows]
    wide[0] = (*rows[0][:4], "original (§7)", rows[0][4])
    widths = [max(len(row[i]) for row in wide) for i in range(6)]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in wide]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def latency_rows(lat: dict[str, Any]) -> list[Row]:
    if not lat:
        return []
    ours, peer = lat.get("ours"), lat.get("peer")
    ratios = " / ".join(ratio((ours or {}).get(k), (peer or {}).get(k)) for k in ("p50", "p90", "p99"))
    names = [s for s in (*STAGES, *OLD_STAGES) if lat.get(f"ours {s}")]
    stages = " / ".join(f"{lat[f'ours {s}']['p50']:.2f}" for s in names)
    return [
        ("cross-replica latency p50 / p90 / p99", ms(peer), ms(ours), ratios, "< 2.5 / — / < 6 ms"),
        (f"  ours by stage, p50: {' / '.join(names)}", "", f"{stages} ms", "", ""),
    ]


def throughput_rows(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for group, label in (("throughput", "commands/s"), ("drain", "backlog drain/s")):
        for key, figures in results.get(group, {}).items():
            if key.startswith("peer"):
                continue
            peer_figures = results[group].get("peer, 1 agent") if key == "ours, 1 agent" else None
            rows.append(
                (
                    f"{label}, {key.removeprefix('ours, ')} ({figures['commands']})",
                    rate(peer_figures),
                    rate(figures),
                    ratio(figures["per_second"], peer_figures["per_second"] if peer_figures else None),
                    "≥ 3,000",
                )
            )
    floor_rates = results.get("floor_rows_per_second", {})
    if floor_rates:
        text = " / ".join(f"{floor_rates[name]:.0f}" for name in ("INSERT", "INSERT + NOTIFY") if name in floor_rates)
        rows.append(("  floor: rows/s, 20 clients, 1 per commit: INSERT / + NOTIFY", text, text, "", ""))
    return rows


def bulk_rows(bulk: dict[str, Any]) -> list[Row]:
    """The bulk path: completed/s end to end, and whether every command completed once."""
    rows: list[Row] = []
    for key, figures in bulk.items():
        once = figures["statuses"] == {"completed": figures["commands"]} and not figures["completed_twice"]
        redelivered = f", {figures['attempts_over_one']} sent again" if figures["attempts_over_one"] else ""
        verdict = "every one completed once" if once else "NOT every one completed once"
        rows.append(
            (
                f"bulk commands/s, {key.removeprefix('ours, ')} ({figures['commands']}, "
                f"{figures['commands'] // max(1, figures['requests'])} a request, {figures['clients']} clients)",
                "—",
                f"{rate(figures)}, {verdict}{redelivered}",
                "",
                "≥ 10,000",
            )
        )
    return rows


def scale_rows(scales: list[dict[str, Any]]) -> list[Row]:
    return [
        (
            f"{scale['agents']} idle agents, 1 gateway: connect / RSS / idle CPU" + limited(scale),
            "—",
            f"{scale['connect_seconds']:.1f} s / {scale['rss_mib']:.0f} MiB / "
            f"{scale['idle_cpu_percent_of_a_core']:.1f} %",
            "",
            SCALE_GOALS.get(scale.get("agents_asked", scale["agents"]), ""),
        )
        for scale in scales
    ]


def limited(scale: dict[str, Any]) -> str:
    """Fewer sockets than asked: the file limit the gateway could not go past (bench/run.py socket_scale)."""
    asked = scale.get("agents_asked", scale["agents"])
    return "" if asked == scale["agents"] else f" ({asked} asked: file limit {scale['open_files_hard_limit']})"


SCALE_GOALS = {10_000: "< 512 MiB, < 2.5 %", 50_000: "< 1.2 GiB, < 15 %"}  # issue 27


def rate(figures: dict[str, Any] | None) -> str:
    """Commands/s, with the rate the 20 clients created at (when close, creating was the bound)."""
    if not figures:
        return "—"
    text = f"{figures['per_second']:.0f} (created {figures['created_per_second']:.0f}/s)"
    return text if figures["complete"] else f"{text}, only {figures['finished']} finished"


def plot(results: dict[str, Any], path: Path) -> None:
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
    figure.suptitle(f"StreamSpace §7 benchmark, {results['machine']['date']}, {results['machine']['cores']} cores")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def redraw(path: Path) -> None:
    results = json.loads(path.read_text())
    print(table(results))
    if "samples_ms" in results:
        plot(results, path.with_suffix(".png"))
        print(f"wrote {path.with_suffix('.png')}")
