"""Reports on the call records: ``voicebot-pbx report`` and ``voicebot-pbx calls show``.

``build_report`` turns the calls of a window into numbers an owner judges the bot by
(containment, transfers and why, top intents, fallbacks, barge-in, turn latency p50/p95/p99
with a per-stage breakdown); ``render_text`` / ``render_json`` / ``render_html`` present
them. The HTML page is self-contained: its plots are PNGs (matplotlib, Agg) embedded as
data URIs. Times are shown in the machine's local time zone.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import html
import io
import json
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from voicebot_pbx.ops.analytics import (
    SCHEMA_VERSION,
    AnalyticsConfig,
    AnalyticsError,
    SqliteStore,
    Store,
    end_class,
    fallback_name,
    fallback_stage,
    open_store,
)
from voicebot_pbx.ops.logs import configure_logging
from voicebot_pbx.ops.records import CallRecord, TurnRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Stage label -> TurnRecord field (ms), in pipeline order.
STAGES = (
    ("stt", "end_of_speech_to_stt_ms"),
    ("nlu", "nlu_ms"),
    ("dialogue", "stt_to_dialogue_ms"),
    ("llm_first_sentence", "llm_first_sentence_ms"),
    ("tts_first_audio", "tts_first_audio_ms"),
)
STAGE_TITLES = {
    "stt": "end of speech -> STT final",
    "nlu": "NLU",
    "dialogue": "dialogue (transcript -> answer)",
    "llm_first_sentence": "LLM first sentence",
    "tts_first_audio": "TTS first audio",
    "turn": "end of speech -> first bot frame",
}
# Turns the caller started (their latency is what a caller waits).
CALLER_TURNS = ("speech", "dtmf")
# Why a call was handed to a person, when the bot gave up (session fallbacks).
GIVE_UP_REASONS = frozenset(
    {"not_understood", "error", "dialogue_error", "max_duration", "tts_unavailable"}
)
TOP_INTENTS = 10


# --- numbers -----------------------------------------------------------------------------


def percentiles(values: Sequence[float]) -> dict[str, Any]:
    """count, mean, p50/p95/p99 (linear interpolation), in the values' unit, 1 decimal."""
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None}
    data = np.asarray(values, dtype=float)
    p50, p95, p99 = (float(v) for v in np.percentile(data, [50, 95, 99]))
    return {
        "count": len(values),
        "mean": round(float(data.mean()), 1),
        "p50": round(p50, 1),
        "p95": round(p95, 1),
        "p99": round(p99, 1),
    }


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def _local(ts: float, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return datetime.fromtimestamp(ts).astimezone().strftime(fmt)


def intent_label(turn: TurnRecord) -> str:
    if turn.intent:
        return turn.intent
    return f"({turn.dialogue})" if turn.dialogue else "(none)"


def transfer_reason(call: CallRecord) -> str:
    """Why the call went to a person: the bot's give-up reason, else the intent that asked."""
    for turn in reversed(call.turns):
        if turn.kind == "backchannel":
            continue
        for fallback in reversed(turn.fallbacks):
            if fallback_name(fallback) in GIVE_UP_REASONS:
                return fallback_name(fallback)
        if turn.intent:
            return f"intent:{turn.intent}"
        if turn.reply_text:
            return f"({turn.dialogue or 'unknown'})"
    return "unknown"


@dataclass(slots=True)
class Report:
    since: float
    until: float
    summary: dict[str, Any]
    turn_latencies_ms: list[float] = field(default_factory=list)
    stage_latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    # (bucket start, counts by outcome) for the calls-per-hour plot.
    buckets: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    bucket_s: float = 3600.0


def _bucket_start(ts: float, bucket_s: float) -> float:
    local = datetime.fromtimestamp(ts).astimezone()
    if bucket_s >= 86400:
        return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    return local.replace(minute=0, second=0, microsecond=0).timestamp()


def _outcome(call: CallRecord) -> str:
    cls = end_class(call.end_reason if call.ended_at is not None else "")
    return {"caller_hangup": "contained", "bot_hangup": "contained", "drained": "contained"}.get(
        cls, cls
    )


def _buckets(
    calls: Sequence[CallRecord], since: float, until: float
) -> tuple[list[tuple[float, dict[str, int]]], float]:
    if not calls:
        return [], 3600.0
    start = max(since, calls[0].started_at) if math.isfinite(since) else calls[0].started_at
    end = min(until, time.time()) if math.isfinite(until) else time.time()
    end = max(end, calls[-1].started_at)
    bucket_s = 3600.0 if end - start <= 14 * 86400 else 86400.0
    first = _bucket_start(start, bucket_s)
    counts: dict[float, Counter[str]] = {}
    for call in calls:
        counts.setdefault(_bucket_start(call.started_at, bucket_s), Counter())[_outcome(call)] += 1
    out: list[tuple[float, dict[str, int]]] = []
    last = _bucket_start(end, bucket_s)
    ts = first
    while ts <= last and len(out) < 5000:
        out.append((ts, dict(counts.get(ts, Counter()))))
        # 1.5 buckets on, floored: the next local hour/day whatever DST does.
        ts = _bucket_start(ts + 1.5 * bucket_s, bucket_s)
    return out, bucket_s


def build_report(
    calls: Sequence[CallRecord], *, since: float = -math.inf, until: float = math.inf
) -> Report:
    """The report on ``calls`` (those started in the window), oldest first."""
    calls = sorted(calls, key=lambda c: (c.started_at, c.call_id))
    finished = [c for c in calls if c.ended_at is not None]
    classes = Counter(end_class(c.end_reason) for c in finished)
    contained = sum(classes[k] for k in ("caller_hangup", "bot_hangup", "drained"))
    transferred = [c for c in finished if end_class(c.end_reason) == "transferred"]
    turns = [t for c in calls for t in c.turns]
    caller_turns = [t for t in turns if t.kind in CALLER_TURNS]
    intents = Counter(intent_label(t) for t in caller_turns)
    fallbacks_by_stage: Counter[str] = Counter()
    fallbacks_by_name: Counter[str] = Counter()
    for turn in turns:
        for fallback in turn.fallbacks:
            fallbacks_by_stage[fallback_stage(fallback)] += 1
            fallbacks_by_name[fallback_name(fallback)] += 1
    played = [t for t in turns if t.reply_text and (t.played_ms is not None or t.barged_in)]
    barged = [t for t in played if t.barged_in]
    calls_barged = sum(1 for c in calls if any(t.barged_in for t in c.turns))
    turn_latencies = [
        t.end_of_speech_to_first_frame_ms
        for t in caller_turns
        if t.end_of_speech_to_first_frame_ms is not None
    ]
    stage_latencies: dict[str, list[float]] = {}
    for stage, attr in STAGES:
        values = [getattr(t, attr) for t in caller_turns if getattr(t, attr) is not None]
        if values or stage in ("stt", "dialogue", "tts_first_audio"):
            stage_latencies[stage] = values
    durations = [c.ended_at - c.started_at for c in finished if c.ended_at is not None]
    errors: Counter[str] = Counter()
    for call in calls:
        for error in call.errors:
            errors[re.split(r"[:\s]", error, maxsplit=1)[0] or "unknown"] += 1
    buckets, bucket_s = _buckets(calls, since, until)
    summary: dict[str, Any] = {
        "window": {
            "since": _iso(since) if math.isfinite(since) else None,
            "until": _iso(until) if math.isfinite(until) else None,
        },
        "calls": {
            "total": len(calls),
            "finished": len(finished),
            "in_progress": len(calls) - len(finished),
            "turns": len(caller_turns),
            "turns_per_call": round(len(caller_turns) / len(calls), 2) if calls else None,
            "duration_s": {
                k: v for k, v in percentiles(durations).items() if k in ("mean", "p50", "p95")
            },
        },
        "containment_rate": _rate(contained, len(finished)),
        "transfer_rate": _rate(len(transferred), len(finished)),
        "error_rate": _rate(classes["error"], len(finished)),
        "end_reasons": dict(classes.most_common()),
        "end_reasons_raw": dict(Counter(c.end_reason for c in finished).most_common()),
        "profiles": dict(Counter(c.profile for c in calls).most_common()),
        "transfers": {
            "total": len(transferred),
            "by_target": dict(
                Counter(c.transfer_target or "(none)" for c in transferred).most_common()
            ),
            "by_reason": dict(Counter(transfer_reason(c) for c in transferred).most_common()),
        },
        "top_intents": [
            {"intent": name, "count": count} for name, count in intents.most_common(TOP_INTENTS)
        ],
        "reply_sources": dict(
            Counter(t.reply_source or "(none)" for t in turns if t.reply_text).most_common()
        ),
        "fallbacks": {
            "total": sum(fallbacks_by_stage.values()),
            "by_stage": dict(fallbacks_by_stage.most_common()),
            "by_name": dict(fallbacks_by_name.most_common()),
        },
        "barge_in": {
            "replies": len(played),
            "barged_in": len(barged),
            "rate": _rate(len(barged), len(played)),
            "calls_with_barge_in": calls_barged,
            "median_played_ms": percentiles([t.played_ms for t in barged if t.played_ms])["p50"],
        },
        "latency_ms": {
            "turn": percentiles(turn_latencies),
            "stages": {stage: percentiles(v) for stage, v in stage_latencies.items()},
        },
        "errors": dict(errors.most_common()),
        "calls_per_bucket": {
            "bucket": "hour" if bucket_s < 86400 else "day",
            "counts": [{"start": _iso(ts), "calls": sum(c.values())} for ts, c in buckets],
        },
    }
    return Report(
        since=since,
        until=until,
        summary=summary,
        turn_latencies_ms=turn_latencies,
        stage_latencies_ms=stage_latencies,
        buckets=buckets,
        bucket_s=bucket_s,
    )


# --- text / json -------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _counts(counts: dict[str, int], limit: int = 8) -> str:
    items = list(counts.items())
    text = ", ".join(f"{k} {v}" for k, v in items[:limit])
    if len(items) > limit:
        text += f", ... ({len(items) - limit} more)"
    return text or "-"


def render_json(report: Report) -> str:
    return json.dumps(report.summary, indent=2, ensure_ascii=False)


def render_text(report: Report) -> str:
    s = report.summary
    calls = s["calls"]
    window = s["window"]
    lines = [
        f"voicebot-pbx report: {window['since'] or 'beginning'} .. {window['until'] or 'now'}",
        "",
        f"Calls           {calls['total']} ({calls['finished']} finished, "
        f"{calls['in_progress']} in progress), {calls['turns']} caller turns",
    ]
    duration = calls["duration_s"]
    if duration["p50"] is not None:
        lines.append(
            f"Duration        p50 {duration['p50']:.1f} s, p95 {duration['p95']:.1f} s, "
            f"mean {duration['mean']:.1f} s"
        )
    transfers = s["transfers"]
    lines += [
        f"Containment     {_pct(s['containment_rate'])} (calls ending without transfer or error)",
        f"Transfers       {_pct(s['transfer_rate'])}: {_counts(transfers['by_target'])}",
        f"  reasons       {_counts(transfers['by_reason'])}",
        f"Errors          {_pct(s['error_rate'])}",
        f"End reasons     {_counts(s['end_reasons'])}",
        f"Top intents     {_counts({i['intent']: i['count'] for i in s['top_intents']}, 10)}",
        f"Reply sources   {_counts(s['reply_sources'])}",
        f"Fallbacks       {s['fallbacks']['total']}: {_counts(s['fallbacks']['by_stage'])}",
    ]
    if s["fallbacks"]["by_name"]:
        lines.append(f"  by name       {_counts(s['fallbacks']['by_name'], 12)}")
    barge = s["barge_in"]
    lines.append(
        f"Barge-in        {_pct(barge['rate'])} of {barge['replies']} replies "
        f"({barge['calls_with_barge_in']} calls; median played {_ms(barge['median_played_ms'])})"
    )
    lines += ["", "Turn latency (ms)                       n      p50      p95      p99     mean"]
    rows = [("turn", s["latency_ms"]["turn"])] + list(s["latency_ms"]["stages"].items())
    for stage, stats in rows:
        title = STAGE_TITLES.get(stage, stage)
        if stats["count"] == 0:
            lines.append(f"  {title:<34} {0:>5}        -        -        -        -")
            continue
        lines.append(
            f"  {title:<34} {stats['count']:>5} {stats['p50']:>8.0f} {stats['p95']:>8.0f} "
            f"{stats['p99']:>8.0f} {stats['mean']:>8.0f}"
        )
    if s["errors"]:
        lines += ["", f"Call errors     {_counts(s['errors'])}"]
    return "\n".join(lines) + "\n"


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
        ax.set_xticks(x[::step], [_local(ts, fmt) for ts, _ in buckets][::step], rotation=45)
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
            ("Containment", _pct(s["containment_rate"])),
            ("Transfer rate", _pct(s["transfer_rate"])),
            ("Error rate", _pct(s["error_rate"])),
            ("Barge-in rate", _pct(s["barge_in"]["rate"])),
            ("Turn latency p50", _ms(s["latency_ms"]["turn"]["p50"])),
            ("Turn latency p95", _ms(s["latency_ms"]["turn"]["p95"])),
            ("Turn latency p99", _ms(s["latency_ms"]["turn"]["p99"])),
        ]
    )
    details = _table(
        [
            ("End reasons", _counts(s["end_reasons"], 20)),
            ("Top intents", _counts({i["intent"]: i["count"] for i in s["top_intents"]}, 10)),
            ("Transfers by target", _counts(s["transfers"]["by_target"], 20)),
            ("Transfers by reason", _counts(s["transfers"]["by_reason"], 20)),
            ("Fallbacks by stage", _counts(s["fallbacks"]["by_stage"], 20)),
            ("Fallbacks by name", _counts(s["fallbacks"]["by_name"], 20)),
            ("Reply sources", _counts(s["reply_sources"], 20)),
            ("Call errors", _counts(s["errors"], 20)),
        ]
    )
    stage_rows = [("turn", s["latency_ms"]["turn"]), *s["latency_ms"]["stages"].items()]
    latency = "".join(
        f"<tr><th>{esc(STAGE_TITLES.get(k, k))}</th><td>{v['count']}</td><td>{_ms(v['p50'])}</td>"
        f"<td>{_ms(v['p95'])}</td><td>{_ms(v['p99'])}</td></tr>"
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
<h2>Plots</h2>
{figures}
<h2>Latency</h2>
<table><tr><th>stage</th><th>n</th><th>p50</th><th>p95</th><th>p99</th></tr>{latency}</table>
<h2>Details</h2>
{details}
</body></html>
"""


# --- one call ----------------------------------------------------------------------------


def _fmt_ms(label: str, value: float | None) -> str | None:
    return None if value is None else f"{label} {value:.0f}"


def render_call(call: CallRecord) -> str:
    """One call's transcript with its timings, for ``calls show``."""
    end = call.end_reason or "(in progress)"
    if call.transfer_target:
        end += f" -> {call.transfer_target}"
    lines = [f"Call {call.call_id}  ({call.pbx}, peer {call.peer}, {call.rate_hz} Hz)"]
    if call.caller_id:
        lines.append(f"Caller id  {call.caller_id}")
    started = _local(call.started_at, "%Y-%m-%d %H:%M:%S %z")
    if call.ended_at is not None:
        lines.append(
            f"Started    {started}, ended {_local(call.ended_at, '%H:%M:%S')} "
            f"({call.ended_at - call.started_at:.1f} s): {end}"
        )
    else:
        lines.append(f"Started    {started}: {end}")
    if call.answered_at is not None:
        lines.append(f"Answered   +{call.answered_at - call.started_at:.1f} s")
    if call.recording_path:
        lines.append(f"Recording  {call.recording_path}")
    lines.append("")
    pad = " " * 20
    for turn in call.turns:
        at = f"+{turn.finished_at - call.started_at:6.1f}s" if turn.finished_at else " " * 8
        head = f"{turn.seq:>3} {at} {turn.kind:<11}"
        if turn.kind in ("speech", "dtmf", "backchannel") or turn.transcript:
            conf = f" (stt conf {turn.stt_confidence:.2f})" if turn.stt_confidence else ""
            lines.append(f"{head} caller: {json.dumps(turn.transcript, ensure_ascii=False)}{conf}")
            head = " " * len(head)
        if turn.reply_text:
            route = []
            if turn.intent:
                conf = f" {turn.confidence:.2f}" if turn.confidence is not None else ""
                route.append(f"intent {turn.intent}{conf}")
            if turn.dialogue:
                route.append(f"via {turn.dialogue}")
            if turn.reply_source:
                route.append(turn.reply_source)
            lines.append(
                f"{head} bot:    {json.dumps(turn.reply_text, ensure_ascii=False)}"
                + (f" [{'; '.join(route)}]" if route else "")
            )
        timings = [
            _fmt_ms("first frame", turn.end_of_speech_to_first_frame_ms),
            _fmt_ms("stt", turn.end_of_speech_to_stt_ms),
            _fmt_ms("nlu", turn.nlu_ms),
            _fmt_ms("dialogue", turn.stt_to_dialogue_ms),
            _fmt_ms("llm", turn.llm_first_sentence_ms),
            _fmt_ms("tts", turn.tts_first_audio_ms),
        ]
        shown = [t for t in timings if t]
        if shown:
            lines.append(f"{pad}timings (ms): {', '.join(shown)}")
        if turn.barged_in:
            played = f" after {turn.played_ms / 1000:.1f} s" if turn.played_ms else ""
            total = f" of {turn.reply_audio_ms / 1000:.1f} s" if turn.reply_audio_ms else ""
            lines.append(f"{pad}barge-in{played}{total}")
        if turn.fallbacks:
            lines.append(f"{pad}fallbacks: {', '.join(turn.fallbacks)}")
    if call.errors:
        lines += ["", "Errors:"] + [f"  {e}" for e in call.errors]
    return "\n".join(lines) + "\n"


# --- command line ------------------------------------------------------------------------

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: str, now: float | None = None) -> float:
    """``now``, ``24h``/``7d``/``30m`` ago, ``2025-01-31``, ``2025-01-31T08:00[+01:00]``
    (local time unless an offset is given), or unix seconds."""
    now = time.time() if now is None else now
    text = value.strip()
    if text == "now":
        return now
    if match := _RELATIVE.match(text):
        return now - float(match.group(1)) * _UNITS_S[match.group(2)]
    if re.fullmatch(r"\d{9,}(?:\.\d+)?", text):
        return float(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"not a time: {value!r} (use 24h, 7d, 2025-01-31 or 2025-01-31T08:00)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()  # naive: local time
    return parsed.timestamp()


def _analytics_config(args: argparse.Namespace) -> tuple[AnalyticsConfig, str]:
    from voicebot_pbx.config import load_config

    config = load_config(getattr(args, "config", None))
    analytics = getattr(config, "analytics", None)
    if not isinstance(analytics, AnalyticsConfig):
        analytics = AnalyticsConfig()
    return analytics, config.state_dir


def _store(args: argparse.Namespace) -> Store:
    db = getattr(args, "db", None)
    if db:
        store: Store = SqliteStore.open(db, create=False)
        if store.schema_version() < SCHEMA_VERSION:
            store.migrate()
        return store
    analytics, state_dir = _analytics_config(args)
    return open_store(analytics, state_dir)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Warnings only, to stderr, while a command writes its output to stdout; the previous
    logging set-up is restored after."""
    previous = structlog.get_config()
    configure_logging("console", "warning")
    try:
        yield
    finally:
        structlog.configure(**previous)


def report_main(args: argparse.Namespace) -> int:
    """``voicebot-pbx report [--since --until --format text|json|html] [-o FILE]``."""
    with _quiet_logs():
        return _report(args)


def _report(args: argparse.Namespace) -> int:
    try:
        now = time.time()
        since = parse_time(args.since, now)
        until = parse_time(args.until, now)
    except ValueError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    try:
        store = _store(args)
    except AnalyticsError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 1
    try:
        calls = store.calls(since, until)
    finally:
        store.close()
    report = build_report(calls, since=since, until=until)
    renderers = {"text": render_text, "json": render_json, "html": render_html}
    output = renderers[args.format](report)
    if args.output:
        Path(args.output).write_text(output, encoding="utf-8")
        print(f"wrote {args.output} ({len(calls)} calls)", file=sys.stderr)
    else:
        sys.stdout.write(output)
    return 0


def calls_show_main(args: argparse.Namespace) -> int:
    """``voicebot-pbx calls show CALL_ID [--json]`` (a unique prefix of the id will do)."""
    with _quiet_logs():
        return _calls_show(args)


def _calls_show(args: argparse.Namespace) -> int:
    try:
        store = _store(args)
    except AnalyticsError as exc:
        print(f"calls show: {exc}", file=sys.stderr)
        return 1
    try:
        call = store.call(args.call_id)
    finally:
        store.close()
    if call is None:
        print(f"calls show: no call (or no unique call) matches {args.call_id!r}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(json.dumps(call.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render_call(call))
    return 0


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config (its [analytics] table)")
    parser.add_argument("--db", type=Path, help="read this SQLite file instead of the config's")


def register_cli(sub: Any) -> None:
    """Add ``report`` and ``calls show`` to the CLI's subparsers (``add_subparsers()``)."""
    report = sub.add_parser("report", help="call analytics for a time window")
    _store_arguments(report)
    report.add_argument("--since", default="7d", help="start: 24h, 7d, 2025-01-31 ... (7d)")
    report.add_argument("--until", default="now", help="end (now)")
    report.add_argument("--format", choices=("text", "json", "html"), default="text")
    report.add_argument("-o", "--output", type=Path, help="write to this file, not stdout")
    report.set_defaults(func=report_main)

    calls = sub.add_parser("calls", help="look at call records")
    calls_sub = calls.add_subparsers(dest="calls_command", required=True)
    show = calls_sub.add_parser("show", help="one call's transcript with timings")
    _store_arguments(show)
    show.add_argument("call_id", help="the call id (or a unique prefix)")
    show.add_argument("--json", action="store_true", help="the whole record as JSON")
    show.set_defaults(func=calls_show_main)
