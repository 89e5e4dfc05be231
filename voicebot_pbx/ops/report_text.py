"""The report as text: ``render_text`` (the console summary), ``render_json`` (the summary
as JSON) and ``render_call`` (one call's transcript with its timings, for ``calls show``),
with the small formatters (percentages, milliseconds, top counts, local times) that the
HTML page shares."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from voicebot_pbx.ops.records import CallRecord
from voicebot_pbx.ops.report import STAGE_TITLES, Report


def local(ts: float, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return datetime.fromtimestamp(ts).astimezone().strftime(fmt)


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def counts(counts: dict[str, int], limit: int = 8) -> str:
    items = list(counts.items())
    text = ", ".join(f"{k} {v}" for k, v in items[:limit])
    if len(items) > limit:
        text += f", ... ({len(items) - limit} more)"
    return text or "-"


def render_json(report: Report) -> str:
    return json.dumps(report.summary, indent=2, ensure_ascii=False)


def rates(group: dict[str, Any]) -> str:
    """A group of calls (a profile, a day): "12 calls, containment 75 %, transfers 25 %"."""
    return (
        f"{group['calls']} calls, containment {pct(group['containment_rate'])}, "
        f"transfers {pct(group['transfer_rate'])}"
    )


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
        f"Containment     {pct(s['containment_rate'])} (calls ending without transfer or error)",
        f"Transfers       {pct(s['transfer_rate'])}: {counts(transfers['by_target'])}",
        f"  reasons       {counts(transfers['by_reason'])}",
        f"Errors          {pct(s['error_rate'])}",
        f"End reasons     {counts(s['end_reasons'])}",
        f"Top intents     {counts({i['intent']: i['count'] for i in s['top_intents']}, 10)}",
        f"Reply sources   {counts(s['reply_sources'])}",
        "Per profile     "
        + ("; ".join(f"{name} {rates(v)}" for name, v in s["by_profile"].items()) or "-"),
        f"Fallbacks       {s['fallbacks']['total']}: {counts(s['fallbacks']['by_stage'])}",
    ]
    if s["fallbacks"]["by_name"]:
        lines.append(f"  by name       {counts(s['fallbacks']['by_name'], 12)}")
    barge = s["barge_in"]
    lines.append(
        f"Barge-in        {pct(barge['rate'])} of {barge['replies']} replies "
        f"({barge['calls_with_barge_in']} calls; median played {ms(barge['median_played_ms'])})"
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
        lines += ["", f"Call errors     {counts(s['errors'])}"]
    return "\n".join(lines) + "\n"


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
    started = local(call.started_at, "%Y-%m-%d %H:%M:%S %z")
    if call.ended_at is not None:
        lines.append(
            f"Started    {started}, ended {local(call.ended_at, '%H:%M:%S')} "
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
