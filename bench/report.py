"""The benchmark's one table (bench/run.py): every figure with the peer beside it where there is one, the
goal it is held to (issues 15 and 27) and whether it held in this run, from a results dict."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Row = tuple[str, str, str, str, str, str]  # figure, peer, ours, ours/peer, goal, held
HEADER: Row = ("figure", "peer", "ours", "ours/peer", "goal", "held")
STAGES = ("claim", "to result")  # created -> sent, sent -> completed (bench.sql `stages`)
OLD_STAGES = ("ack", "result")  # results files from before 2026-12-01 split sent -> completed at the ack
STREAMS = {"ours": "ours (B -> agent on A)", "websockify": "websockify", "tcp": "direct TCP"}
# idle sockets on one gateway: the goals by size (issue 27), RSS in MiB and CPU in % of one core
SCALE_GOALS = {10_000: (512.0, 2.5), 50_000: (1228.8, 15.0)}
SCALE_GOAL_TEXT = {10_000: "all connected, < 512 MiB, < 2.5 %", 50_000: "all connected, < 1.2 GiB, < 15 %"}


def table(results: dict[str, Any]) -> str:
    rows: list[Row] = [HEADER]
    latencies = results.get("latency_ms", {})
    rows += latency_rows(latencies)
    rows += throughput_rows(results)
    rows += bulk_rows(results.get("bulk", {}))
    if "socket_scale" in results:
        rows += scale_rows(results["socket_scale"])
    rows += stream_rows(results.get("streams", {}).get("paths", {}))
    if latencies:
        rest, hop = latencies["REST POST round trip"], latencies["Redis hop"]
        rows.append(
            ("REST create round trip p50 / p90 / p99", "—", ms(rest), "", "p50 < 1.0 ms", held(rest["p50"] < 1.0))
        )
        rows.append(
            ("Redis hop (PUBLISH -> frame at the agent)", "—", ms(hop), "", "p50 < 0.5 ms", held(hop["p50"] < 0.5))
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def label(key: str) -> str:
    """A results key as a row's name: `ours, 1000 agents, ...` -> `1,000 agents, ...`."""
    return re.sub(r"\d{4,}", lambda number: f"{int(number.group()):,}", key.removeprefix("ours, "))


def held(ok: bool | None) -> str:
    return "—" if ok is None else "held" if ok else "NOT held"


def ms(figures: dict[str, float] | None) -> str:
    if not figures:
        return "—"
    return f"{figures['p50']:.2f} / {figures['p90']:.2f} / {figures['p99']:.2f} ms"


def ratio(ours: float | None, peer: float | None) -> str:
    return f"{ours / peer:.2f}" if ours and peer else "—"


def latency_rows(lat: dict[str, Any]) -> list[Row]:
    if not lat:
        return []
    ours, peer = lat["ours"], lat.get("peer")
    ratios = " / ".join(ratio(ours.get(k), (peer or {}).get(k)) for k in ("p50", "p90", "p99"))
    ok = ours["p50"] < 1.5 and ours["p99"] < 4.0 and (peer is None or ours["p50"] / peer["p50"] <= 0.5)
    verdict = held(ok) + ("" if peer else " (no peer: ratio unchecked)")
    names = [s for s in (*STAGES, *OLD_STAGES) if lat.get(f"ours {s}")]
    stages = " / ".join(f"{lat[f'ours {s}']['p50']:.2f}" for s in names)
    return [
        (
            "cross-replica latency p50 / p90 / p99",
            ms(peer),
            ms(ours),
            ratios,
            "p50 < 1.5, p99 < 4 ms, ≤ 0.5 of the peer",
            verdict,
        ),
        (f"  ours by stage, p50: {' / '.join(names)}", "", f"{stages} ms", "", "", ""),
    ]


def rate(figures: dict[str, Any] | None) -> str:
    """Commands/s, with the rate they were created at (when close, creating was the bound)."""
    if not figures:
        return "—"
    text = f"{figures['per_second']:,.0f} (created {figures['created_per_second']:,.0f}/s)"
    return text if figures["complete"] else f"{text}, only {figures['finished']:,} finished"


def throughput_rows(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    one_dispatcher = None
    for group, what in (("throughput", "commands/s"), ("drain", "backlog drain/s")):
        for key, figures in results.get(group, {}).items():
            if key.startswith("peer"):
                continue
            peer = results[group].get("peer, 1 agent") if key == "ours, 1 agent" else None
            goal, ok = ("≥ 3,000", figures["per_second"] >= 3000) if group == "throughput" else ("", None)
            if key.endswith("1 dispatcher"):
                one_dispatcher = figures["per_second"]
            if key.endswith("2 dispatchers") and one_dispatcher is not None:
                goal, ok = "≥ 3,000, ≥ 1 dispatcher's", bool(ok) and figures["per_second"] >= one_dispatcher
            completed = figures.get("statuses", {"completed": figures["commands"]}) == {
                "completed": figures["commands"]
            }
            ok = None if ok is None else ok and completed
            name = f"{what}, {label(key)} ({figures['commands']:,})"
            rows.append(
                (
                    name,
                    rate(peer),
                    rate(figures),
                    ratio(figures["per_second"], (peer or {}).get("per_second")),
                    goal,
                    held(ok),
                )
            )
    floor_rates = results.get("floor_rows_per_second", {})
    if floor_rates:
        text = " / ".join(f"{floor_rates[name]:,.0f}" for name in ("INSERT", "INSERT + NOTIFY") if name in floor_rates)
        rows.append(("  floor: rows/s, 20 clients, 1 per commit: INSERT / + NOTIFY", text, text, "", "", ""))
    return rows


def bulk_rows(bulk: dict[str, Any]) -> list[Row]:
    """The bulk path: completed/s end to end, and whether every command completed once."""
    rows: list[Row] = []
    for key, figures in bulk.items():
        once = figures["statuses"] == {"completed": figures["commands"]} and not figures["completed_twice"]
        redelivered = f", {figures['attempts_over_one']:,} sent again" if figures["attempts_over_one"] else ""
        ended = ", ".join(f"{n:,} {status}" for status, n in sorted(figures["statuses"].items()))
        twice = f", {figures['completed_twice']:,} completed twice" if figures["completed_twice"] else ""
        verdict = "every one completed once" if once else f"NOT every one completed once ({ended}{twice})"
        name = (
            f"bulk completed/s, {label(key)} ({figures['commands']:,}, "
            f"{figures['commands'] // max(1, figures['requests']):,} a request, {figures['clients']} clients)"
        )
        ok = once and figures["per_second"] >= 10_000
        rows.append(
            (name, "—", f"{rate(figures)}, {verdict}{redelivered}", "", "≥ 10,000, all completed once", held(ok))
        )
    return rows


def scale_rows(scales: list[dict[str, Any]]) -> list[Row]:
    """Every size measured, and a row for each goal's size, measured or not (the full profile runs them)."""
    rows: list[Row] = []
    asked_sizes = {scale.get("agents_asked", scale["agents"]) for scale in scales}
    for scale in scales:
        asked = scale.get("agents_asked", scale["agents"])
        figures = (
            f"{scale['connect_seconds']:.1f} s / {scale['rss_mib']:.0f} MiB / "
            f"{scale['idle_cpu_percent_of_a_core']:.1f} %" + files_note(scale)
        )
        goal, ok = "", None
        if asked in SCALE_GOALS:
            rss, cpu = SCALE_GOALS[asked]
            goal = SCALE_GOAL_TEXT[asked]
            ok = scale["agents"] == asked and scale["rss_mib"] < rss and scale["idle_cpu_percent_of_a_core"] < cpu
        name = f"{asked:,} idle sockets, 1 gateway: connect / RSS / idle CPU"
        rows.append((name, "—", figures, "", goal, held(ok)))
    for size, goal in SCALE_GOAL_TEXT.items():
        if size not in asked_sizes:
            name = f"{size:,} idle sockets, 1 gateway: connect / RSS / idle CPU"
            rows.append((name, "—", "not run (the full profile runs it)", "", goal, "—"))
    return rows


def files_note(scale: dict[str, Any]) -> str:
    """Whether the file limit stopped the row short, and the soft limit the gateway says it raised itself to."""
    asked, soft = scale.get("agents_asked", scale["agents"]), scale.get("open_files_limit")
    said = f"; gateway's file limit {soft:,}" if soft else ""
    if asked == scale["agents"]:
        return f" (file limit not reached{said})"
    return f" (only {scale['agents']:,}: file limit {scale['open_files_hard_limit']:,} reached{said})"


def stream_rows(paths: dict[str, Any]) -> list[Row]:
    if not paths:
        return []
    ours, websockify, tcp = (paths[STREAMS[k]] for k in ("ours", "websockify", "tcp"))

    def pair(get: Callable[[dict[str, Any]], float], spec: str) -> str:
        return f"websockify {get(websockify):{spec}}, TCP {get(tcp):{spec}}"

    def mib(path: dict[str, Any]) -> float:
        return float(path["mib_per_s_each_way"])

    def added(path: dict[str, Any]) -> float:
        return float(path["rtt_p50_ms"] - tcp["rtt_p50_ms"])

    def connect(path: dict[str, Any]) -> float:  # the p50 of streams opened after the path's first
        return float(path.get("connect_p50_ms", path.get("connect_to_first_echo_ms", 0.0)))

    return [
        (
            "stream MiB/s each way",
            pair(mib, ".1f"),
            f"{mib(ours):.1f}",
            f"{mib(ours) / mib(websockify):.2f} / {mib(ours) / mib(tcp):.2f}",
            "≥ 1.5x websockify (0.8 of TCP)",
            held(mib(ours) >= 1.5 * mib(websockify)),
        ),
        (
            "stream round trip p50 added over TCP",
            f"websockify +{added(websockify):.3f} ms",
            f"+{added(ours):.3f} ms",
            ratio(added(ours), added(websockify)),
            "≤ 0.1 ms",
            held(added(ours) <= 0.1),
        ),
        (
            "stream connect p50 (to the first echoed byte; the first stream's in brackets)",
            pair(connect, ".1f") + " ms",
            f"{connect(ours):.1f} ms ({ours.get('connect_first_ms', connect(ours)):.1f})",
            ratio(connect(ours), connect(websockify)),
            "≤ 10 ms",
            held(connect(ours) <= 10),
        ),
    ]
