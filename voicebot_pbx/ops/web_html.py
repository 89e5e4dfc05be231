"""The calls web pages as HTML: the list (filter form, live calls, a page of stored calls),
one call (facts, the transcript as a timeline, per-turn stage latencies as CSS bars, the
recording) and the error page. Server-rendered, one small inline stylesheet, no script, no
external resource. Every value from a record or a request goes through ``esc``.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from voicebot_pbx.ops.outcomes import END_CLASSES, end_class
from voicebot_pbx.ops.records import CallRecord, TurnRecord

# Turns the caller started (the list's turn count, first intent).
CALLER_TURNS = ("speech", "dtmf")
# The per-turn latency bars: field, label, CSS class.
STAGES = (
    ("end_of_speech_to_stt_ms", "STT", "s-stt"),
    ("stt_to_dialogue_ms", "dialogue", "s-dlg"),
    ("tts_first_audio_ms", "TTS first audio", "s-tts"),
    ("end_of_speech_to_first_frame_ms", "end of speech \u2192 first frame", "s-turn"),
)
FILTER_FIELDS = ("since", "until", "outcome", "intent", "transfer", "fallback", "profile")

CSS = """
:root{--fg:#1d2733;--mut:#667;--bg:#fff;--alt:#f4f6f8;--line:#dde2e7;--acc:#1565c0}
@media (prefers-color-scheme:dark){:root{--fg:#e3e8ee;--mut:#9aa5b1;--bg:#14181d;
--alt:#1c2228;--line:#2c343c;--acc:#64b5f6}}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1200px;padding:12px 18px;color:var(--fg);background:var(--bg)}
h1{font-size:20px;margin:6px 0 12px}h2{font-size:16px;margin:18px 0 6px}
a{color:var(--acc);text-decoration:none}a:hover{text-decoration:underline}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;background:var(--alt);white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:hover td{background:var(--alt)}
.mut{color:var(--mut)}.nw{white-space:nowrap}
form.f{display:flex;flex-wrap:wrap;gap:6px 12px;align-items:end;margin:0 0 10px;padding:8px;
background:var(--alt);border:1px solid var(--line)}
form.f label{display:flex;flex-direction:column;font-size:12px;color:var(--mut)}
form.f input{font:inherit;padding:3px 5px;width:150px}
.pager{margin:10px 0;display:flex;gap:16px;align-items:center}
.lbl{display:inline-block;font-size:11px;padding:0 5px;margin:1px 2px 1px 0;border-radius:3px;
background:#eceff1;color:#37474f;border:1px solid #cfd8dc;white-space:nowrap}
.l-fb{background:#fff3e0;color:#e65100;border-color:#ffcc80}
.l-barge{background:#fce4ec;color:#ad1457;border-color:#f48fb1}
.l-dtmf{background:#e8eaf6;color:#283593;border-color:#9fa8da}
.o-error{color:#c62828}.o-transferred{color:#ef6c00}.o-in_progress{color:var(--mut)}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}
dl.facts dt{color:var(--mut)}dl.facts dd{margin:0}
.say{margin:0 0 2px}.say b{font-weight:600;color:var(--mut);font-size:12px;margin-right:4px}
.bars{min-width:260px}
.bar{display:flex;align-items:center;gap:6px;font-size:11px;height:14px}
.bar span.k{width:92px;color:var(--mut);white-space:nowrap;overflow:hidden}
.bar span.t{flex:1;background:var(--alt);height:9px;position:relative}
.bar span.t i{position:absolute;left:0;top:0;bottom:0;display:block}
.bar span.v{width:56px;text-align:right;font-variant-numeric:tabular-nums}
.s-stt{background:#42a5f5}.s-dlg{background:#66bb6a}.s-tts{background:#ffa726}
.s-turn{background:#ab47bc}
.err{border:1px solid #ef9a9a;background:#ffebee;color:#b71c1c;padding:10px 12px}
audio{width:100%;max-width:640px;margin:6px 0}
"""


def esc(value: object) -> str:
    """HTML-escaped text (quotes too: safe in attribute values)."""
    return html.escape("" if value is None else str(value), quote=True)


def local_time(ts: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return "" if ts is None else time.strftime(fmt, time.localtime(ts))


def fmt_ms(value: float | None) -> str:
    return "" if value is None else f"{value:.0f} ms"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}:{rest:02d}"


# --- links ---------------------------------------------------------------------------------


class Links:
    """The pages' URLs; with ``token`` (the caller authenticated by ``?token=``) every link
    carries it, so a browser can follow them (and the audio element can fetch)."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    def _with(self, path: str, params: Mapping[str, str] | None = None) -> str:
        query = {k: v for k, v in (params or {}).items() if v}
        if self.token:
            query["token"] = self.token
        return path + ("?" + urlencode(query) if query else "")

    def calls(self, params: Mapping[str, str] | None = None) -> str:
        return self._with("/calls", params)

    def calls_json(self, params: Mapping[str, str] | None = None) -> str:
        return self._with("/calls.json", params)

    def call(self, call_id: str) -> str:
        return self._with(f"/calls/{quote(call_id, safe='')}")

    def recording(self, call_id: str) -> str:
        return self._with(f"/calls/{quote(call_id, safe='')}/recording.wav")

    def report(self, params: Mapping[str, str] | None = None) -> str:
        return self._with("/report", params)


# --- the list ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallRow:
    """One stored call as the list shows it (and ``/calls.json`` returns it)."""

    call_id: str
    started_at: float
    duration_s: float | None
    caller_id: str | None
    profile: str
    outcome: str  # the end class (caller_hangup, transferred, ..., in_progress)
    end_reason: str
    transfer_target: str
    turns: int
    first_intent: str
    fallbacks: int
    worst_latency_ms: float | None  # max end of speech -> first bot frame
    has_recording: bool

    @classmethod
    def of(cls, call: CallRecord) -> CallRow:
        intents = [t.intent for t in call.turns if t.intent and t.kind in CALLER_TURNS]
        latencies = [
            t.end_of_speech_to_first_frame_ms
            for t in call.turns
            if t.end_of_speech_to_first_frame_ms is not None
        ]
        return cls(
            call_id=call.call_id,
            started_at=call.started_at,
            duration_s=None if call.ended_at is None else call.ended_at - call.started_at,
            caller_id=call.caller_id,
            profile=call.profile,
            outcome=end_class(call.end_reason),
            end_reason=call.end_reason,
            transfer_target=call.transfer_target or "",
            turns=sum(1 for t in call.turns if t.kind in CALLER_TURNS),
            first_intent=intents[0] if intents else "",
            fallbacks=sum(len(t.fallbacks) for t in call.turns),
            worst_latency_ms=max(latencies) if latencies else None,
            has_recording=bool(call.recording_path),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "started_at": self.started_at,
            "started": local_time(self.started_at, "%Y-%m-%dT%H:%M:%S%z"),
            "duration_s": None if self.duration_s is None else round(self.duration_s, 1),
            "caller_id": self.caller_id,
            "profile": self.profile,
            "outcome": self.outcome,
            "end_reason": self.end_reason,
            "transfer_target": self.transfer_target,
            "turns": self.turns,
            "first_intent": self.first_intent,
            "fallbacks": self.fallbacks,
            "worst_latency_ms": None
            if self.worst_latency_ms is None
            else round(self.worst_latency_ms, 1),
            "recording": self.has_recording,
        }


@dataclass(frozen=True, slots=True)
class ListView:
    rows: Sequence[CallRow]
    # The filter values as given (shown back in the form), and ``per_page`` when not the
    # default: all carried by the pager's links.
    filters: Mapping[str, str]
    page: int
    pages: int
    total: int
    per_page: int
    links: Links
    active: Sequence[Mapping[str, object]] | None = None
    notice: str = ""


def document(title: str, body: str) -> bytes:
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        '<meta name=referrer content="no-referrer">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    ).encode()


def _filter_form(view: ListView) -> str:
    hints = {
        "since": "2025-01-31 or 2025-01-31T08:00",
        "until": "2025-01-31 (whole day)",
        "outcome": "transferred, error, ...",
        "intent": "any turn's intent",
        "transfer": "transfer target",
        "fallback": "any turn's fallback contains",
        "profile": "profile",
    }
    fields = "".join(
        f'<label>{name}<input name={name} value="{esc(view.filters.get(name, ""))}" '
        f'placeholder="{esc(hints[name])}"'
        + (" list=outcomes" if name == "outcome" else "")
        + "></label>"
        for name in FILTER_FIELDS
    )
    token = (
        f'<input type=hidden name=token value="{esc(view.links.token)}">'
        if view.links.token
        else ""
    )
    if view.filters.get("per_page"):  # a page size asked for stays across filtering
        token += f'<input type=hidden name=per_page value="{esc(view.filters["per_page"])}">'

    options = "".join(f'<option value="{esc(o)}">' for o in (*END_CLASSES, "in_progress"))
    return (
        f'<form class=f method=get action="/calls">{fields}{token}'
        f"<datalist id=outcomes>{options}</datalist>"
        f'<button type=submit>Filter</button> <a href="{esc(view.links.calls())}">clear</a>'
        "</form>"
    )


_ACTIVE_ORDER = ("call_id", "started_at", "profile", "caller_id", "pbx", "turns")


def _active_table(active: Sequence[Mapping[str, object]], links: Links, now: float) -> str:
    if not active:
        return "<h2>Live calls</h2><p class=mut>No call in progress.</p>"
    keys = [k for k in _ACTIVE_ORDER if any(k in a for a in active)]
    keys += sorted({k for a in active for k in a if k not in _ACTIVE_ORDER})
    head = "".join(f"<th>{esc(k.replace('_', ' '))}</th>" for k in keys)
    if "started_at" in keys:
        head += "<th class=n>for</th>"
    rows = []
    for call in active:
        cells = []
        for key in keys:
            value = call.get(key)
            if key == "call_id" and isinstance(value, str):
                cells.append(f'<td><a href="{esc(links.call(value))}">{esc(value)}</a></td>')
            elif key == "started_at" and isinstance(value, int | float):
                cells.append(f"<td class=nw>{esc(local_time(float(value)))}</td>")
            else:
                cells.append(f"<td>{esc('' if value is None else value)}</td>")
        if "started_at" in keys:
            started = call.get("started_at")
            age = now - float(started) if isinstance(started, int | float) else None
            cells.append(f"<td class=n>{esc(fmt_duration(age))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f"<h2>Live calls ({len(active)})</h2><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _list_row(row: CallRow, links: Links) -> str:
    href = esc(links.call(row.call_id))
    duration = fmt_duration(row.duration_s) if row.duration_s is not None else "in progress"
    outcome = esc(row.outcome)
    title = f' title="{esc(row.end_reason)}"' if row.end_reason else ""
    return (
        f'<tr><td class=nw><a href="{href}">{esc(local_time(row.started_at))}</a></td>'
        f"<td class=n>{esc(duration)}</td>"
        f"<td>{esc(row.caller_id or '')}</td>"
        f"<td>{esc(row.profile)}</td>"
        f"<td class=o-{outcome}{title}>{outcome}</td>"
        f"<td>{esc(row.transfer_target)}</td>"
        f"<td class=n>{row.turns}</td>"
        f"<td>{esc(row.first_intent)}</td>"
        f"<td class=n>{row.fallbacks or ''}</td>"
        f"<td class=n>{esc(fmt_ms(row.worst_latency_ms))}</td>"
        f'<td><a href="{href}">{esc(row.call_id[:13])}</a>'
        + (" <span class=lbl title=recording>&#9835;</span>" if row.has_recording else "")
        + "</td></tr>"
    )


def render_list(view: ListView, now: float | None = None) -> bytes:
    now = time.time() if now is None else now
    params = {k: v for k, v in view.filters.items() if v}
    week = view.links.report({"since": "7d"})
    month = view.links.report({"since": "30d"})
    parts = [
        "<h1>Calls</h1>",
        f"<p>Report: <a href='{esc(week)}'>last 7 days</a> · <a href='{esc(month)}'>last 30"
        " days</a> (containment, transfers, latency percentiles, per profile)</p>",
        _filter_form(view),
    ]
    if view.active is not None:
        parts.append(_active_table(view.active, view.links, now))
    parts.append("<h2>Stored calls</h2>")
    if view.notice:
        parts.append(f"<p class=mut>{esc(view.notice)}</p>")
    first = (view.page - 1) * view.per_page
    shown = (
        f"{first + 1}\u2013{first + len(view.rows)} of {view.total}"
        if view.rows
        else f"none on this page ({view.total} in all)"
    )
    pager = [f"<span>Page {view.page} of {max(1, view.pages)}: {esc(shown)}</span>"]
    if view.page > 1:
        prev_page = min(view.page - 1, max(1, view.pages))
        href = view.links.calls({**params, "page": str(prev_page)})
        pager.insert(0, f'<a rel=prev href="{esc(href)}">&larr; previous</a>')
    if view.page < view.pages:
        href = view.links.calls({**params, "page": str(view.page + 1)})
        pager.append(f'<a rel=next href="{esc(href)}">next &rarr;</a>')
    pager.append(
        f'<a class=mut href="{esc(view.links.calls_json({**params, "page": str(view.page)}))}">'
        "JSON</a>"
    )
    pager_html = "<div class=pager>" + "".join(pager) + "</div>"
    parts.append(pager_html)
    head = (
        "<th>started</th><th class=n>duration</th><th>caller</th><th>profile</th>"
        "<th>outcome</th><th>transfer</th><th class=n>turns</th><th>first intent</th>"
        "<th class=n>fallbacks</th><th class=n>worst latency</th><th>call id</th>"
    )
    body = "".join(_list_row(row, view.links) for row in view.rows)
    parts.append(f"<table class=calls><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    if view.rows:
        parts.append(pager_html)
    return document("Calls", "\n".join(parts))


# --- one call ------------------------------------------------------------------------------


def _labels(turn: TurnRecord) -> str:
    out = []
    if turn.kind == "dtmf":
        out.append("<span class='lbl l-dtmf'>DTMF</span>")
    if turn.barged_in:
        out.append("<span class='lbl l-barge'>barge-in</span>")
    for fallback in turn.fallbacks:
        out.append(f"<span class='lbl l-fb' title=fallback>{esc(fallback)}</span>")
    return "".join(out)


def _bars(turn: TurnRecord, scale_ms: float) -> str:
    rows = []
    for field, label, css in STAGES:
        value = getattr(turn, field)
        if value is None:
            continue
        width = max(0.0, min(100.0, 100.0 * float(value) / scale_ms))
        rows.append(
            f"<div class=bar><span class=k>{esc(label)}</span>"
            f'<span class=t><i class={css} style="width:{width:.1f}%"></i></span>'
            f"<span class=v>{float(value):.0f} ms</span></div>"
        )
    return "".join(rows)


def _turn_row(call: CallRecord, turn: TurnRecord, scale_ms: float) -> str:
    offset = f"+{turn.finished_at - call.started_at:.1f} s" if turn.finished_at is not None else ""
    said = []
    if turn.transcript or turn.kind in CALLER_TURNS:
        conf = (
            f" <span class=mut>({turn.stt_confidence:.2f})</span>"
            if turn.stt_confidence is not None
            else ""
        )
        said.append(f"<p class=say><b>caller</b>{esc(turn.transcript)}{conf}</p>")
    if turn.reply_text:
        played = ""
        if turn.played_ms is not None and turn.reply_audio_ms:
            share = min(100.0, 100.0 * turn.played_ms / turn.reply_audio_ms)
            played = f" <span class=mut>(heard {share:.0f}%)</span>"
        said.append(f"<p class=say><b>bot</b>{esc(turn.reply_text)}{played}</p>")
    intent = ""
    if turn.intent:
        conf = f" {turn.confidence:.2f}" if turn.confidence is not None else ""
        intent = f"{esc(turn.intent)}<span class=mut>{esc(conf)}</span>"
    route = " / ".join(esc(v) for v in (turn.dialogue, turn.reply_source) if v)
    return (
        f"<tr id=t{turn.seq}><td class=n>{turn.seq}</td>"
        f"<td>{esc(turn.kind)}</td><td class=n>{esc(offset)}</td>"
        f"<td>{''.join(said)}{_labels(turn)}</td>"
        f"<td>{intent}<div class=mut>{route}</div></td>"
        f"<td class=bars>{_bars(turn, scale_ms)}</td></tr>"
    )


def render_call(call: CallRecord, links: Links, *, has_recording: bool) -> bytes:
    row = CallRow.of(call)
    facts: list[tuple[str, str]] = [
        ("call id", esc(call.call_id)),
        ("started", esc(local_time(call.started_at, "%Y-%m-%d %H:%M:%S %z"))),
    ]
    if call.answered_at is not None:
        facts.append(("answered", esc(f"+{call.answered_at - call.started_at:.1f} s")))
    if call.ended_at is not None:
        facts.append(
            ("ended", esc(f"{local_time(call.ended_at)} ({fmt_duration(row.duration_s)})"))
        )
    outcome = esc(row.outcome) + (
        f" <span class=mut>({esc(call.end_reason)})</span>"
        if call.end_reason and call.end_reason != row.outcome
        else ""
    )
    facts += [
        ("outcome", outcome),
        ("transfer to", esc(call.transfer_target or "")),
        ("caller", esc(call.caller_id or "")),
        ("profile", esc(call.profile)),
        ("PBX", esc(f"{call.pbx}, peer {call.peer}, {call.rate_hz} Hz")),
        ("caller turns", str(row.turns)),
        ("fallbacks", str(row.fallbacks)),
        ("worst latency", esc(fmt_ms(row.worst_latency_ms))),
    ]
    if call.errors:
        facts.append(("errors", "<br>".join(esc(e) for e in call.errors)))
    facts_html = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts if v)
    parts = [
        f'<p><a href="{esc(links.calls())}">&larr; all calls</a></p>',
        f"<h1>Call {esc(call.call_id)}</h1>",
        f"<dl class=facts>{facts_html}</dl>",
    ]
    if has_recording:
        src = esc(links.recording(call.call_id))
        parts.append(
            "<h2>Recording</h2><p class=mut>caller left, bot right</p>"
            f'<audio controls preload=none src="{src}"></audio>'
            f'<div><a href="{src}" download>download WAV</a></div>'
        )
    elif call.recording_path:
        parts.append("<p class=mut>The recording is no longer available.</p>")
    values = [
        float(getattr(t, field))
        for t in call.turns
        for field, _, _ in STAGES
        if getattr(t, field) is not None
    ]
    scale = max([1.0, *values])
    legend = "".join(
        f"<span class=lbl><i class={css} style='display:inline-block;width:8px;height:8px'>"
        f"</i> {esc(label)}</span>"
        for _, label, css in STAGES
    )
    turns = "".join(_turn_row(call, t, scale) for t in call.turns)
    parts.append(
        f"<h2>Transcript ({len(call.turns)} turns)</h2>"
        f"<p class=mut>Latency bars on one scale: the longest is {scale:.0f} ms. {legend}</p>"
        "<table class=timeline><thead><tr><th class=n>#</th><th>kind</th>"
        '<th class=n title="when the turn ended, from the call start">at</th>'
        "<th>said</th><th>intent / route</th><th>latency</th></tr></thead>"
        f"<tbody>{turns}</tbody></table>"
    )
    if not call.turns:
        parts.append("<p class=mut>No turns recorded.</p>")
    return document(f"Call {call.call_id}", "\n".join(parts))


# --- errors ----------------------------------------------------------------------------------


def render_error(status: int, message: str, links: Links) -> bytes:
    titles = {400: "Bad request", 401: "Unauthorized", 404: "Not found", 503: "Unavailable"}
    title = titles.get(status, "Error")
    back = f'<p><a href="{esc(links.calls())}">&larr; all calls</a></p>' if status != 401 else ""
    return document(title, f"{back}<h1>{esc(title)}</h1><p class=err>{esc(message)}</p>")
