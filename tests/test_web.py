"""The calls web pages over real HTTP (the admin port's ``HealthServer`` on 127.0.0.1:0), on
a SQLite store filled by the service's recorder: a whole scripted call with its recording
(fake engines, virtual time) and hand-made calls for the filters, paging and attacks."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.test_analytics import (
    CountingSqliteStore,
    bulk_write,
    fake_shared,
    known_script,
    scripted_call,
    synthetic_calls,
)
from voicebot_pbx.config import AnalyticsConfig, Config, load_config
from voicebot_pbx.ops.analytics import AnalyticsRecorder, open_recorder
from voicebot_pbx.ops.analytics_open import recordings_dir
from voicebot_pbx.ops.health import HealthServer
from voicebot_pbx.ops.records import CallRecord, TurnRecord
from voicebot_pbx.ops.web import CallsWeb
from voicebot_pbx.testing import run_virtual

RECORDED = "00000000-0000-4000-8000-00000000beef"
BULK = 120
HOSTILE = "<script>alert('x')</script>"

Response = tuple[int, dict[str, str], bytes]


# --- the store -------------------------------------------------------------------------------


def at(text: str) -> float:
    """A local date-time as unix seconds (the pages read naive dates as local time)."""
    return datetime.fromisoformat(text).astimezone().timestamp()


def made_call(
    call_id: str,
    started: str,
    *,
    profile: str = "default",
    caller_id: str | None = None,
    end_reason: str = "caller_hangup",
    transfer_target: str | None = None,
    recording_path: str | None = None,
    turns: Sequence[TurnRecord] = (),
) -> CallRecord:
    started_at = at(started)
    call = CallRecord(
        call_id=call_id,
        pbx="asterisk",
        peer="127.0.0.1",
        caller_id=caller_id,
        profile=profile,
        started_at=started_at,
        ended_at=started_at + 30.0,
        end_reason=end_reason,
        transfer_target=transfer_target,
        recording_path=recording_path,
    )
    for seq, turn in enumerate(turns):
        turn.seq = seq
        turn.finished_at = started_at + 5.0 * (seq + 1)
        call.turns.append(turn)
    return call


def speech(text: str, intent: str | None = None, reply: str = "OK.", **kw: Any) -> TurnRecord:
    return TurnRecord(
        turn_id=0,
        transcript=text,
        intent=intent,
        reply_text=reply,
        end_of_speech_to_stt_ms=210.0,
        stt_to_dialogue_ms=40.0,
        tts_first_audio_ms=150.0,
        end_of_speech_to_first_frame_ms=420.0,
        **kw,
    )


def made_calls(state: Path, recordings: Path) -> list[CallRecord]:
    secret = state / "secret.wav"
    (recordings / "x").mkdir(parents=True, exist_ok=True)
    link = recordings / "x" / "link.wav"
    link.symlink_to(secret)
    calls = [
        made_call(
            "c-billing",
            "2025-03-01T10:00",
            profile="sales",
            caller_id="07700900123",
            turns=[
                speech("my bill please", "billing", fallbacks=["stt_low_confidence"]),
                speech("thanks", "goodbye"),
            ],
        ),
        made_call(
            "c-transfer",
            "2025-03-02T10:00",
            end_reason="transferred",
            transfer_target="sales-queue",
            turns=[
                speech("agent", "agent", reply="Transferring you.", barged_in=True),
                TurnRecord(turn_id=1, kind="dtmf", transcript="2", intent="press_two"),
            ],
        ),
        made_call(
            "c-html",
            "2025-03-03T10:00",
            profile="web",
            end_reason="error",
            turns=[speech(HOSTILE, "<b>bold</b>", reply="<img src=x onerror=alert(9)>")],
        ),
        # Recording paths that must never be served.
        made_call("c-outside", "2025-03-04T10:00", recording_path=str(secret)),
        made_call(
            "c-traversal", "2025-03-04T11:00", recording_path=str(recordings / ".." / "secret.wav")
        ),
        made_call("c-symlink", "2025-03-04T12:00", recording_path=str(link)),
        made_call("c-missing", "2025-03-04T13:00", recording_path=str(recordings / "gone.wav")),
    ]
    calls += [
        made_call(f"bulk-{i:03d}", f"2025-02-01T{8 + i // 60:02d}:{i % 60:02d}", profile="bulk")
        for i in range(BULK)
    ]
    return calls


async def record(recorder: AnalyticsRecorder, calls: Sequence[CallRecord]) -> None:
    """What the session does: call started, each turn as it finishes, call ended."""
    for call in calls:
        turns, call.turns = call.turns, []
        await recorder.call_started(call)
        for turn in turns:
            call.turns.append(turn)
            await recorder.turn_finished(call, turn)
        await recorder.call_ended(call)


@dataclasses.dataclass
class Site:
    config: Config
    state: Path
    recordings: Path
    recorded: CallRecord


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    state = tmp_path_factory.mktemp("web-state")
    analytics = AnalyticsConfig(record_audio=True)  # <state>/calls.db, <state>/recordings
    config = dataclasses.replace(load_config(), state_dir=str(state), analytics=analytics)
    recordings = recordings_dir(analytics, state)
    (state / "secret.wav").write_bytes(b"RIFF-secret")
    recorder = open_recorder(analytics, state)
    try:
        assert recorder.wait_ready()
        # A whole scripted call through the real session, recorded (WAV) like the service.
        shared = fake_shared(recorder)
        shared.config = dataclasses.replace(
            shared.config, state_dir=str(state), analytics=analytics
        )
        _media, session = run_virtual(
            scripted_call(shared, known_script(), until_s=16.0, call_id=RECORDED)
        )
        asyncio.run(record(recorder, made_calls(state, recordings)))
        assert recorder.flush()
        assert recorder.stats.write_errors == 0
    finally:
        recorder.close()
    assert session.record.recording_path is not None
    yield Site(config, state, recordings, session.record)


# --- HTTP ------------------------------------------------------------------------------------


async def _get(port: int, target: str, headers: Mapping[str, str]) -> Response:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [
        f"GET {target} HTTP/1.1",
        "Host: localhost",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in parsed.items()}, body


def fetch(web: CallsWeb, *targets: str, headers: Mapping[str, str] | None = None) -> list[Response]:
    """GET each target from a HealthServer serving ``web`` (real TCP)."""

    async def main() -> list[Response]:
        server = HealthServer(lambda: {"ready": True}, port=0, pages=web.page)
        await server.start()
        try:
            async with asyncio.timeout(30.0):
                return [await _get(server.port, t, headers or {}) for t in targets]
        finally:
            await server.close()

    try:
        return asyncio.run(main())
    finally:
        web.close()


def get(web: CallsWeb, target: str, headers: Mapping[str, str] | None = None) -> Response:
    return fetch(web, target, headers=headers)[0]


def text(response: Response) -> str:
    return response[2].decode("utf-8")


def listed(web: CallsWeb, **query: str) -> dict[str, Any]:
    status, headers, body = get(web, "/calls.json?" + urlencode(query))
    assert status == 200 and headers["content-type"] == "application/json", body
    result: dict[str, Any] = json.loads(body)
    return result


def ids(web: CallsWeb, **query: str) -> list[str]:
    return [c["call_id"] for c in listed(web, **query)["calls"]]


ROW = re.compile(r'<tr><td class=nw><a href="/calls/([^"?]+)')


# --- the list --------------------------------------------------------------------------------


def test_the_list_shows_stored_calls_newest_first_with_their_columns(site: Site) -> None:
    status, headers, body = get(CallsWeb(site.config), "/calls")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    page = body.decode()
    rows = ROW.findall(page)
    assert len(rows) == 50
    # The live recorded call (today) first, then the hand-made ones, newest first.
    assert rows[:8] == [
        RECORDED,
        "c-missing",
        "c-symlink",
        "c-traversal",
        "c-outside",
        "c-html",
        "c-transfer",
        "c-billing",
    ]
    assert rows[8:] == [f"bulk-{i:03d}" for i in range(BULK - 1, BULK - 43, -1)]
    assert "<form class=f method=get" in page and 'rel=next href="/calls?page=2"' in page
    assert "rel=prev" not in page
    assert "Page 1 of 3" in page
    # Columns: caller as stored (redacted by the recorder), profile, outcome, transfer,
    # first intent, fallbacks, worst latency.
    sales = text(get(CallsWeb(site.config), "/calls?profile=sales"))
    row_html = re.search(r"<tr><td class=nw><a href=\"/calls/c-billing\".*?</tr>", sales)
    assert row_html is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row_html.group(0))
    assert cells[1:10] == [
        "30.0 s",
        "*********23",
        "sales",
        "caller_hangup",
        "",
        "2",
        "billing",
        "1",
        "420 ms",
    ]
    assert "07700900123" not in sales


def test_each_filter_narrows_the_list(site: Site) -> None:
    web = CallsWeb(site.config)
    assert ids(web, profile="sales") == ["c-billing"]
    assert ids(web, profile="SALES") == ["c-billing"]  # any case
    assert ids(web, intent="billing") == ["c-billing"]
    assert ids(web, intent="goodbye") == ["c-billing"]  # any turn's intent, not only the first
    assert ids(web, intent="press_two") == ["c-transfer"]
    assert ids(web, transfer="sales-queue") == ["c-transfer"]
    assert ids(web, fallback="low_conf") == ["c-billing"]
    assert ids(web, outcome="error") == ["c-html"]
    transferred = ids(web, outcome="transferred")
    assert transferred == [RECORDED, "c-transfer"]
    assert ids(web, since="2025-03-02", until="2025-03-02") == ["c-transfer"]  # the whole day
    assert ids(web, since="2025-03-02T09:00", until="2025-03-03T10:00") == ["c-transfer"]
    assert ids(web, since="2025-03-04T11:30") == [RECORDED, "c-missing", "c-symlink"]
    assert ids(web, until="2025-02-01T08:02") == ["bulk-001", "bulk-000"]
    both = listed(web, profile="bulk", since="2025-02-01T09:00", until="2025-02-01T09:10")
    assert both["total"] == 10 and both["filters"]["profile"] == "bulk"
    assert ids(web, profile="nobody") == []
    # The form shows the values back.
    page = text(get(CallsWeb(site.config), "/calls?intent=billing&since=2025-03-01"))
    assert 'name=intent value="billing"' in page and 'name=since value="2025-03-01"' in page
    assert ROW.findall(page) == ["c-billing"]


def test_the_store_query_filters_exactly_as_the_python_rules(site: Site) -> None:
    """``CallFilters.query`` (run in SQL by the store) and ``CallFilters.matches`` (Python)
    agree on every filter, case folding, end classes and substrings included."""
    from voicebot_pbx.ops.analytics_open import open_store
    from voicebot_pbx.ops.web import parse_filters

    queries: list[dict[str, str]] = [
        {"profile": "SaLeS"},
        {"outcome": "caller_hangup"},
        {"outcome": "error"},
        {"outcome": "transferred", "transfer": "Q"},
        {"intent": "BILLING"},
        {"intent": "press_two", "outcome": "transferred"},
        {"fallback": "CONFIDENCE"},
        {"fallback": "_"},
        {"since": "2025-03-01", "until": "2025-03-03", "profile": "default"},
        {"transfer": "nowhere"},
    ]
    web = CallsWeb(site.config)
    store = open_store(site.config.analytics, site.state)
    try:
        for query in queries:
            filters, _raw = parse_filters(query)
            window = reversed(store.calls(filters.since, filters.until))  # matches: the rest
            expected = [c.call_id for c in window if filters.matches(c)]
            result = listed(web, per_page="200", **query)
            assert [c["call_id"] for c in result["calls"]] == expected, query
            assert result["total"] == len(expected)
    finally:
        store.close()


def test_paging_links_and_pages_past_the_end(site: Site) -> None:
    web = CallsWeb(site.config)
    first, second, third = (listed(web, profile="bulk", page=str(n)) for n in (1, 2, 3))
    assert [len(p["calls"]) for p in (first, second, third)] == [50, 50, 20]
    assert first["total"] == BULK and first["pages"] == 3 and first["per_page"] == 50
    every = [c["call_id"] for p in (first, second, third) for c in p["calls"]]
    assert every == [f"bulk-{i:03d}" for i in reversed(range(BULK))]
    assert first["previous"] is None and first["next"] == "/calls.json?profile=bulk&page=2"
    assert third["next"] is None and third["previous"] == "/calls.json?profile=bulk&page=2"
    page = text(get(CallsWeb(site.config), "/calls?profile=bulk&page=2"))
    assert 'rel=prev href="/calls?profile=bulk&amp;page=1"' in page
    assert 'rel=next href="/calls?profile=bulk&amp;page=3"' in page
    # Far past the end: an empty page, not an error.
    for huge in ("4", "99999", "9" * 40, "9" * 5000):
        far = listed(web, profile="bulk", page=huge)
        assert far["calls"] == [] and far["total"] == BULK and far["next"] is None
    status, _, body = get(CallsWeb(site.config), "/calls?page=" + "9" * 5000)
    assert status == 200 and ROW.findall(body.decode()) == []


def test_the_page_size_can_be_chosen_up_to_a_cap(site: Site) -> None:
    web = CallsWeb(site.config)
    small = listed(web, profile="bulk", per_page="7", page="2")
    assert small["per_page"] == 7 and small["pages"] == 18 and small["total"] == BULK
    assert [c["call_id"] for c in small["calls"]] == [
        f"bulk-{i:03d}" for i in range(BULK - 8, BULK - 15, -1)
    ]
    assert small["filters"] == {"profile": "bulk"}
    assert small["next"] == "/calls.json?profile=bulk&per_page=7&page=3"
    assert small["previous"] == "/calls.json?profile=bulk&per_page=7&page=1"
    for huge in ("500", "99999", "9" * 40):
        capped = listed(web, per_page=huge)
        assert capped["per_page"] == 200 and len(capped["calls"]) == capped["total"] < 200
    page = text(get(CallsWeb(site.config), "/calls?profile=bulk&per_page=7"))
    assert len(ROW.findall(page)) == 7
    assert 'rel=next href="/calls?profile=bulk&amp;per_page=7&amp;page=2"' in page
    assert '<input type=hidden name=per_page value="7">' in page  # kept when filtering


def test_ten_thousand_calls_the_list_reads_one_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list page over 10 000 stored calls: page 1 (and a far page) read one page of call
    rows from the store, not the whole window (the time is measured in the report, not
    asserted here)."""
    import voicebot_pbx.ops.web as web_module
    from voicebot_pbx.ops.analytics_sqlite import SqliteStore

    calls = synthetic_calls(10_000)
    store = SqliteStore.open(tmp_path / "calls.db")
    store.migrate()
    bulk_write(store, calls)
    store.close()
    opened: list[CountingSqliteStore] = []

    def counting_store(_analytics: AnalyticsConfig, state_dir: str) -> CountingSqliteStore:
        opened.append(CountingSqliteStore.counting(Path(state_dir) / "calls.db"))
        return opened[-1]

    monkeypatch.setattr(web_module, "open_store", counting_store)
    config = dataclasses.replace(load_config(), state_dir=str(tmp_path))
    for target, first_id in (("/calls", "syn-009999"), ("/calls?page=150", "syn-002549")):
        status, _, body = get(CallsWeb(config), target)
        page = body.decode()
        assert status == 200
        rows = ROW.findall(page)
        assert len(rows) == 50 and rows[0] == first_id
        assert "rel=next" in page and "of 10000" in page
        assert opened[-1].calls_read == 50 and opened[-1].turns_read == 100


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("page=abc", "not a page number"),
        ("page=0", "pages start at 1"),
        ("page=-2", "not a page number"),
        ("page=1.5", "not a page number"),
        ("since=yesterday-ish", "not a date"),
        ("until=2025-13-45", "not a date"),
        ("since=2025-03-02&until=2025-03-01", "until must be after since"),
        ("intent=" + "x" * 300, "longer than"),
        ("per_page=abc", "per_page: not a number"),
        ("per_page=0", "per_page: at least 1"),
        ("per_page=-5", "per_page: not a number"),
        ("per_page=1e3", "per_page: not a number"),
    ],
)
def test_malformed_queries_are_400_with_a_message(site: Site, query: str, message: str) -> None:
    html_status, html_headers, html_body = get(CallsWeb(site.config), "/calls?" + query)
    assert html_status == 400 and html_headers["content-type"].startswith("text/html")
    assert message in html_body.decode()
    json_status, json_headers, json_body = get(CallsWeb(site.config), "/calls.json?" + query)
    assert json_status == 400 and json_headers["content-type"] == "application/json"
    assert message in json.loads(json_body)["error"]


def test_calls_json_shape(site: Site) -> None:
    result = listed(CallsWeb(site.config), transfer="sales-queue")
    assert set(result) == {"page", "per_page", "pages", "total", "filters", "next", "previous",
                           "calls"}  # fmt: skip
    (call,) = result["calls"]
    assert call == {
        "call_id": "c-transfer",
        "started_at": at("2025-03-02T10:00"),
        "started": call["started"],
        "duration_s": 30.0,
        "caller_id": None,
        "profile": "default",
        "outcome": "transferred",
        "end_reason": "transferred",
        "transfer_target": "sales-queue",
        "turns": 2,
        "first_intent": "agent",
        "fallbacks": 0,
        "worst_latency_ms": 420.0,
        "recording": False,
        "url": "/calls/c-transfer",
    }
    assert call["started"].startswith("2025-03-02T10:00:00")


def test_live_calls_are_shown_above_the_stored_ones(site: Site) -> None:
    live = [{"call_id": "live-1", "started_at": time.time() - 65, "profile": "sales"}]
    page = text(get(CallsWeb(site.config, active_calls=lambda: live), "/calls"))
    assert "Live calls (1)" in page and '<a href="/calls/live-1">live-1</a>' in page
    assert page.index("Live calls") < page.index("Stored calls")
    assert "1:05" in page  # in progress for 65 s

    def broken() -> list[Mapping[str, object]]:
        raise RuntimeError("boom")

    status, _, body = get(CallsWeb(site.config, active_calls=broken), "/calls")
    assert status == 200 and "No call in progress" in body.decode()
    assert "Live calls" not in text(get(CallsWeb(site.config), "/calls"))


# --- one call --------------------------------------------------------------------------------


def test_the_call_page_has_the_timeline_bars_and_the_recording(site: Site) -> None:
    status, headers, body = get(CallsWeb(site.config), f"/calls/{RECORDED}")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    page = body.decode()
    call = site.recorded
    for turn in call.turns:
        if turn.transcript:
            assert turn.transcript in page
        if turn.reply_text:
            assert turn.reply_text in page
    assert "what are your opening hours" in page and "Transferring you." in page
    assert page.count("<tr id=t") == len(call.turns)
    assert "<span class='lbl l-barge'>barge-in</span>" in page  # the interrupted tariffs reply
    assert "transferred" in page and "q" in page
    # Stage latencies as bars: widths in % of the call's longest stage.
    widths = [float(w) for w in re.findall(r'<i class=s-\w+ style="width:([\d.]+)%"', page)]
    assert widths and max(widths) == 100.0 and all(0 <= w <= 100 for w in widths)
    stages = {
        "end_of_speech_to_stt_ms": "STT",
        "stt_to_dialogue_ms": "dialogue",
        "tts_first_audio_ms": "TTS first audio",
        "end_of_speech_to_first_frame_ms": "end of speech \u2192 first frame",
    }
    for field, label in stages.items():
        bars = page.count(f"<div class=bar><span class=k>{label}</span>")
        assert bars == sum(getattr(t, field) is not None for t in call.turns) > 0, label
    assert f'<audio controls preload=none src="/calls/{RECORDED}/recording.wav">' in page
    # A unique prefix of the id finds the call too (like `calls show`).
    assert get(CallsWeb(site.config), f"/calls/{RECORDED[:30]}")[0] == 200


def test_dtmf_fallbacks_and_offsets_are_marked(site: Site) -> None:
    transfer = text(get(CallsWeb(site.config), "/calls/c-transfer"))
    assert "<span class='lbl l-dtmf'>DTMF</span>" in transfer
    assert "<span class='lbl l-barge'>barge-in</span>" in transfer
    assert "+5.0 s" in transfer and "+10.0 s" in transfer
    assert "<audio" not in transfer
    billing = text(get(CallsWeb(site.config), "/calls/c-billing"))
    assert "<span class='lbl l-fb' title=fallback>stt_low_confidence</span>" in billing


def test_unknown_and_invalid_ids_are_404_pages(site: Site) -> None:
    for target in (
        "/calls/no-such-call",
        "/calls/..",
        "/calls/%2e%2e",
        "/calls/a..b",
        "/calls/.hidden",
        "/calls/c-billing/other",
        "/calls/c-billing/recording.wav/x",
        "/calls/" + "a" * 200,
        "/calls/%3Cscript%3E",
    ):
        status, headers, body = get(CallsWeb(site.config), target)
        assert status == 404, target
        assert headers["content-type"].startswith("text/html")
        assert "<h1>Not found</h1>" in body.decode()
    assert "no call (or no unique call) matches &#x27;no-such-call&#x27;" in text(
        get(CallsWeb(site.config), "/calls/no-such-call")
    )
    # Paths that are not the calls pages are the server's plain 404.
    assert get(CallsWeb(site.config), "/callsx")[0] == 404
    assert get(CallsWeb(site.config), "/")[0] == 404


# --- the recording ---------------------------------------------------------------------------


def test_the_recording_is_served_as_wav(site: Site) -> None:
    status, headers, body = get(CallsWeb(site.config), f"/calls/{RECORDED}/recording.wav")
    assert status == 200 and headers["content-type"] == "audio/wav"
    assert site.recorded.recording_path is not None
    assert body == Path(site.recorded.recording_path).read_bytes()
    assert body[:4] == b"RIFF" and body[8:12] == b"WAVE"
    assert int(headers["content-length"]) == len(body) > 44


def test_recordings_outside_the_folder_are_never_served(site: Site) -> None:
    web = CallsWeb(site.config)
    targets = [
        "/calls/c-outside/recording.wav",  # an absolute path elsewhere
        "/calls/c-traversal/recording.wav",  # <recordings>/../secret.wav
        "/calls/c-symlink/recording.wav",  # a link inside pointing outside
        "/calls/c-missing/recording.wav",  # inside, but gone
        "/calls/c-billing/recording.wav",  # no recording
        "/calls/../recording.wav",
        "/calls/..%2F..%2Fsecret/recording.wav",
        "/calls/%2e%2e/recording.wav",
    ]
    for target, (status, _headers, body) in zip(targets, fetch(web, *targets), strict=True):
        assert status == 404, target
        assert b"RIFF-secret" not in body
    for call_id in ("c-outside", "c-traversal", "c-symlink", "c-missing"):
        page = text(get(CallsWeb(site.config), f"/calls/{call_id}"))
        assert "<audio" not in page and "no longer available" in page


# --- escaping and access -----------------------------------------------------------------------


def test_html_in_query_values_and_records_is_escaped(site: Site) -> None:
    hostile = {name: HOSTILE for name in ("outcome", "intent", "transfer", "fallback", "profile")}
    hostile["x"] = HOSTILE
    status, _, body = get(CallsWeb(site.config), "/calls?" + urlencode(hostile))
    page = body.decode()
    assert status == 200 and "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    status, _, body = get(CallsWeb(site.config), "/calls?" + urlencode({"since": HOSTILE}))
    assert status == 400 and "<script>" not in body.decode()
    assert "&lt;script&gt;" in body.decode()
    # Values stored in records: the transcript, intent and reply of c-html.
    call = text(get(CallsWeb(site.config), "/calls/c-html"))
    assert "<script>" not in call and "<b>bold</b>" not in call and "<img" not in call
    assert "&lt;script&gt;" in call and "&lt;b&gt;bold&lt;/b&gt;" in call
    listing = text(get(CallsWeb(site.config), "/calls?profile=web"))
    assert "&lt;b&gt;bold&lt;/b&gt;" in listing and "<b>bold" not in listing


def test_a_token_is_required_when_the_env_var_is_set(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOICEBOT_WEB_TOKEN", "s3cret-token")
    web = lambda: CallsWeb(site.config)  # noqa: E731  (reads the variable when built)
    for target in ("/calls", "/calls/c-billing", f"/calls/{RECORDED}/recording.wav"):
        status, _, body = get(web(), target)
        assert status == 401 and b"token is required" in body
        assert get(web(), target, {"Authorization": "Bearer wrong"})[0] == 401
        assert get(web(), target + "?token=wrong")[0] == 401
        assert get(web(), target, {"Authorization": "Bearer s3cret-token"})[0] == 200
        assert get(web(), target + "?token=s3cret-token")[0] == 200
    status, headers, body = get(web(), "/calls.json")
    assert status == 401 and headers["content-type"] == "application/json"
    assert "token" in json.loads(body)["error"]
    assert get(web(), "/calls.json", {"authorization": "bearer s3cret-token"})[0] == 200
    # Authenticated by the query: the links (and the audio source) carry the token on.
    page = text(get(web(), "/calls?profile=bulk&token=s3cret-token"))
    assert 'rel=next href="/calls?profile=bulk&amp;page=2&amp;token=s3cret-token"' in page
    assert '<input type=hidden name=token value="s3cret-token">' in page
    call = text(get(web(), f"/calls/{RECORDED}?token=s3cret-token"))
    assert f'src="/calls/{RECORDED}/recording.wav?token=s3cret-token"' in call
    # With the header, nothing is put in the links.
    header_page = text(get(web(), "/calls", {"Authorization": "Bearer s3cret-token"}))
    assert "s3cret-token" not in header_page
    # Set but empty: nothing is accepted (not an open door).
    monkeypatch.setenv("VOICEBOT_WEB_TOKEN", "")
    assert get(web(), "/calls", {"Authorization": "Bearer "})[0] == 401
    assert get(web(), "/calls?token=")[0] == 401


def test_without_records_yet_the_pages_say_so(tmp_path: Path) -> None:
    config = dataclasses.replace(load_config(), state_dir=str(tmp_path))
    status, _, body = get(CallsWeb(config), "/calls")
    assert status == 200 and "No call records yet" in body.decode()
    assert listed(CallsWeb(config))["calls"] == []
    assert get(CallsWeb(config), "/calls/abc")[0] == 404
    assert get(CallsWeb(config), "/calls/abc/recording.wav")[0] == 404


def test_the_report_is_served_and_linked_from_the_list(site: Site) -> None:
    """Issue #22: the report's dashboards (containment, transfers, latency percentiles, per
    profile) one click from the list, for any window."""
    web = CallsWeb(site.config)
    listing, report, bad, backwards = fetch(
        web,
        "/calls",
        "/report?since=2025-01-01",
        "/report?since=yesterday-ish",
        "/report?since=2025-03-02&until=2025-03-01",
    )
    assert "/report?since=7d" in text(listing)
    status, headers, body = report
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert "Containment" in page and "<img" in page  # the charts (the reports extra is in dev)
    assert "<h2>Per profile</h2>" in page and "default</th><td>" in page
    assert "<h2>Per day</h2>" in page and "<th>2025-03-02</th>" in page
    assert bad[0] == 400 and "not a time" in text(bad)
    assert backwards[0] == 400 and "until must be after since" in text(backwards)
