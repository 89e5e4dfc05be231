"""The report's figures: ``build_report`` turns the calls of a window into the numbers an
owner judges the bot by (containment, transfers and why, top intents, fallbacks, barge-in,
turn latency p50/p95/p99 with a per-stage breakdown, calls per hour or day) as a ``Report``.
Presenting them is ``report_text`` (text, JSON, one call) and ``report_html`` (the page with
its plots); ``report_cli`` is ``voicebot-pbx report`` / ``calls show``. Window bounds and
buckets are in the machine's local time zone.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from voicebot_pbx.ops.outcomes import end_class, fallback_name, fallback_stage
from voicebot_pbx.ops.records import CallRecord, TurnRecord

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


# End classes of a call the bot finished without a transfer or an error.
_CONTAINED = frozenset({"caller_hangup", "bot_hangup", "drained"})


def _outcome(call: CallRecord) -> str:
    cls = end_class(call.end_reason if call.ended_at is not None else "")
    return "contained" if cls in _CONTAINED else cls


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


def _outcome_rates(calls: Sequence[CallRecord]) -> dict[str, Any]:
    classes = Counter(end_class(c.end_reason) for c in calls)
    contained = sum(classes[k] for k in _CONTAINED)
    return {
        "calls": len(calls),
        "containment_rate": _rate(contained, len(calls)),
        "transfer_rate": _rate(classes["transferred"], len(calls)),
    }


def _by_profile(finished: Sequence[CallRecord]) -> dict[str, dict[str, Any]]:
    """Per bot profile: finished calls, containment and transfer rates."""
    return {
        profile: _outcome_rates([c for c in finished if c.profile == profile])
        for profile in sorted({c.profile for c in finished})
    }


def _by_day(finished: Sequence[CallRecord]) -> dict[str, dict[str, Any]]:
    """Per local calendar day the calls started: the containment and transfer trend."""
    days: dict[str, list[CallRecord]] = {}
    for call in finished:
        day = datetime.fromtimestamp(call.started_at).strftime("%Y-%m-%d")
        days.setdefault(day, []).append(call)
    return {day: _outcome_rates(days[day]) for day in sorted(days)}


def build_report(
    calls: Sequence[CallRecord], *, since: float = -math.inf, until: float = math.inf
) -> Report:
    """The report on ``calls`` (those started in the window), oldest first."""
    calls = sorted(calls, key=lambda c: (c.started_at, c.call_id))
    finished = [c for c in calls if c.ended_at is not None]
    classes = Counter(end_class(c.end_reason) for c in finished)
    overall = _outcome_rates(finished)
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
        "containment_rate": overall["containment_rate"],
        "transfer_rate": overall["transfer_rate"],
        "error_rate": _rate(classes["error"], len(finished)),
        "end_reasons": dict(classes.most_common()),
        "end_reasons_raw": dict(Counter(c.end_reason for c in finished).most_common()),
        "profiles": dict(Counter(c.profile for c in calls).most_common()),
        "by_profile": _by_profile(finished),
        "by_day": _by_day(finished),
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
