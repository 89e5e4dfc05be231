"""The report as a self-contained HTML page: overview, latency and detail tables and four
plots (turn latency histogram, latency by stage, calls per hour/day, top intents) drawn with
matplotlib (Agg) and embedded as PNG data URIs."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from voicebot_pbx.ops.report import STAGE_TITLES, Report
from voicebot_pbx.ops.report_text import counts, local, ms, pct, rates

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# --- html --------------------------------------------------------------------------------

_COLORS = {
    "contained": "#2e7d32",
    "transferred": "#f9a825",
    "error": "#c62828",
    "in_progress": "#90a4ae",
}


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float = 7.5, height: float = 3.4) -> tuple[Figure, Axes]:
    # Lazy: matplotlib is heavy and only the HTML report needs it.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots()


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data in this window", ha="center", va="center", color="#777")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_latency_histogram(report: Report) -> str:
    fig, ax = _figure()
    values = report.turn_latencies_ms
    if not values:
        _no_data(ax)
    else:
        ax.hist(values, bins=min(40, max(5, len(values) // 2)), color="#1565c0", alpha=0.85)
        stats = report.summary["latency_ms"]["turn"]
        for key, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            ax.axvline(stats[key], color="#333", linestyle=style, label=f"{key} {stats[key]:.0f}")
        ax.legend()
        ax.set_xlabel("end of caller speech -> first bot frame (ms)")
        ax.set_ylabel("turns")
    ax.set_title("Turn latency")
    return _png(fig)


def plot_stage_breakdown(report: Report) -> str:
    fig, ax = _figure()
    stages = report.summary["latency_ms"]["stages"]
    rows = [(s, v) for s, v in stages.items() if v["count"]]
    turn = report.summary["latency_ms"]["turn"]
    if turn["count"]:
        rows.append(("turn", turn))
    if not rows:
        _no_data(ax)
    else:
        labels = [STAGE_TITLES.get(s, s) for s, _ in rows]
        y = np.arange(len(rows))
        ax.barh(y - 0.2, [v["p50"] for _, v in rows], height=0.4, label="p50", color="#1565c0")
        ax.barh(y + 0.2, [v["p95"] for _, v in rows], height=0.4, label="p95", color="#90caf9")
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set_xlabel("ms")
        ax.legend()
    ax.set_title("Latency by stage")
    return _png(fig)


def plot_calls_per_hour(report: Report) -> str:
    fig, ax = _figure()
    buckets = report.buckets
    if not buckets:
        _no_data(ax)
    else:
        x = np.arange(len(buckets))
        bottom = np.zeros(len(buckets))
        for outcome, color in _COLORS.items():
            heights = np.array([c.get(outcome, 0) for _, c in buckets], dtype=float)
            if heights.any():
                ax.bar(x, heights, bottom=bottom, color=color, label=outcome, width=0.9)
                bottom += heights
        fmt = "%m-%d %H:00" if report.bucket_s < 86400 else "%Y-%m-%d"
        step = max(1, len(buckets) // 12)
        ax.set_xticks(x[::step], [local(ts, fmt) for ts, _ in buckets][::step], rotation=45)
        ax.set_ylabel("calls")
        ax.legend()
    ax.set_title("Calls per hour" if report.bucket_s < 86400 else "Calls per day")
    return _png(fig)


def plot_intents(report: Report) -> str:
    fig, ax = _figure()
    top = report.summary["top_intents"]
    if not top:
        _no_data(ax)
    else:
        y = np.arange(len(top))
        ax.barh(y, [i["count"] for i in top], color="#6a1b9a")
        ax.set_yticks(y, [i["intent"] for i in top])
        ax.invert_yaxis()
        ax.set_xlabel("caller turns")
    ax.set_title("Top intents")
    return _png(fig)


def _table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def render_html(report: Report) -> str:
    s = report.summary
    esc = html.escape
    window = s["window"]
    title = f"voicebot-pbx report {window['since'] or 'beginning'} .. {window['until'] or 'now'}"
    overview = _table(
        [
            ("Calls", f"{s['calls']['total']} ({s['calls']['in_progress']} in progress)"),
            ("Containment", pct(s["containment_rate"])),
            ("Transfer rate", pct(s["transfer_rate"])),
            ("Error rate", pct(s["error_rate"])),
            ("Barge-in rate", pct(s["barge_in"]["rate"])),
            ("Turn latency p50", ms(s["latency_ms"]["turn"]["p50"])),
            ("Turn latency p95", ms(s["latency_ms"]["turn"]["p95"])),
            ("Turn latency p99", ms(s["latency_ms"]["turn"]["p99"])),
        ]
    )
    details = _table(
        [
            ("End reasons", counts(s["end_reasons"], 20)),
            ("Top intents", counts({i["intent"]: i["count"] for i in s["top_intents"]}, 10)),
            ("Transfers by target", counts(s["transfers"]["by_target"], 20)),
            ("Transfers by reason", counts(s["transfers"]["by_reason"], 20)),
            ("Fallbacks by stage", counts(s["fallbacks"]["by_stage"], 20)),
            ("Fallbacks by name", counts(s["fallbacks"]["by_name"], 20)),
            ("Reply sources", counts(s["reply_sources"], 20)),
            ("Call errors", counts(s["errors"], 20)),
        ]
    )
    profiles = _table([(name, rates(v)) for name, v in s["by_profile"].items()])
    days = _table([(day, rates(v)) for day, v in s["by_day"].items()])
    stage_rows = [("turn", s["latency_ms"]["turn"]), *s["latency_ms"]["stages"].items()]
    latency = "".join(
        f"<tr><th>{esc(STAGE_TITLES.get(k, k))}</th><td>{v['count']}</td><td>{ms(v['p50'])}</td>"
        f"<td>{ms(v['p95'])}</td><td>{ms(v['p99'])}</td></tr>"
        for k, v in stage_rows
    )
    plots = [
        ("Turn latency histogram", plot_latency_histogram(report)),
        ("Latency by stage", plot_stage_breakdown(report)),
        ("Calls per hour", plot_calls_per_hour(report)),
        ("Top intents", plot_intents(report)),
    ]
    figures = "".join(
        f'<figure><img alt="{esc(name)}" src="{uri}"><figcaption>{esc(name)}</figcaption></figure>'
        for name, uri in plots
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ text-align: left; padding: .25em .8em; border-bottom: 1px solid #ddd; }}
figure {{ display: inline-block; margin: .5em; }}
figcaption {{ text-align: center; color: #555; }}
</style></head>
<body>
<h1>{esc(title)}</h1>
<h2>Overview</h2>
{overview}
<p>Containment: calls ending without a transfer or an error.</p>
<h2>Per profile</h2>
{profiles}
<h2>Per day</h2>
{days}
<h2>Plots</h2>
{figures}
<h2>Latency</h2>
<table><tr><th>stage</th><th>n</th><th>p50</th><th>p95</th><th>p99</th></tr>{latency}</table>
<h2>Details</h2>
{details}
</body></html>
"""
