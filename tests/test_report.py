"""Reports: the numbers on a known set of calls, text/json/html output (the HTML parsed and
its plots decoded), the ``report`` and ``calls show`` commands on a recorded call."""

from __future__ import annotations

import argparse
import base64
import io
import json
import time
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from tests.test_analytics import PHRASES, TARIFF, run_known_call, sqlite_recorder
from voicebot_pbx.ops.records import CallRecord, TurnRecord
from voicebot_pbx.ops.report import build_report
from voicebot_pbx.ops.report_cli import parse_time, register_cli
from voicebot_pbx.ops.report_html import render_html
from voicebot_pbx.ops.report_text import render_call, render_json, render_text

T0 = datetime(2025, 3, 4, 9, 0).astimezone().timestamp()  # 09:00 local


def speech(
    seq: int,
    intent: str | None,
    latency_ms: float,
    *,
    barged_in: bool = False,
    fallbacks: tuple[str, ...] = (),
) -> TurnRecord:
    return TurnRecord(
        turn_id=seq,
        seq=seq,
        kind="speech",
        transcript=f"utterance {seq}",
        intent=intent,
        dialogue="rules" if intent else "fallback",
        reply_text="reply",
        reply_source="cache",
        played_ms=800.0,
        barged_in=barged_in,
        fallbacks=list(fallbacks),
        end_of_speech_to_stt_ms=latency_ms / 2,
        stt_to_dialogue_ms=5.0,
        tts_first_audio_ms=0.0,
        end_of_speech_to_first_frame_ms=latency_ms,
    )


def call(
    index: int,
    end_reason: str,
    turns: list[TurnRecord],
    *,
    hour: int = 0,
    target: str | None = None,
    ended: bool = True,
) -> CallRecord:
    started = T0 + hour * 3600 + index * 60
    greeting = TurnRecord(turn_id=0, seq=0, kind="greeting", reply_text="Hi.", played_ms=500.0)
    for turn in turns:
        turn.seq += 1
    return CallRecord(
        call_id=f"call-{index:02d}",
        pbx="asterisk",
        peer="127.0.0.1:1",
        started_at=started,
        ended_at=started + 30.0 if ended else None,
        end_reason=end_reason if ended else "",
        transfer_target=target,
        turns=[greeting, *turns],
    )


def known_calls() -> list[CallRecord]:
    """10 finished calls + 1 in progress; 100 caller turns with latencies 1..100 ms."""
    latencies = iter(range(1, 101))
    calls: list[CallRecord] = []

    def turns(n: int, intent: str, **kw: object) -> list[TurnRecord]:
        return [speech(i, intent, float(next(latencies)), **kw) for i in range(n)]  # type: ignore[arg-type]

    for i in range(6):  # contained: 5 caller hang-ups and a bot goodbye
        reason = "bot_hangup" if i == 5 else "caller_hangup"
        calls.append(call(i, reason, turns(10, "hours"), hour=i % 2))
    calls[0].turns[1].barged_in = True
    calls.append(call(6, "transferred", turns(10, "agent"), hour=2, target="agents"))
    calls.append(call(7, "transferred", turns(10, "agent"), hour=2, target="agents"))
    not_understood = turns(9, "hours") + [
        speech(9, None, float(next(latencies)), fallbacks=("stt_empty", "not_understood"))
    ]
    calls.append(call(8, "transferred", not_understood, hour=2, target="billing"))
    calls.append(call(9, "read_timeout", turns(10, "<script>x</script>"), hour=2))
    calls[9].errors.append("stt_timeout")
    calls.append(call(10, "", [], hour=2, ended=False))
    return calls


def test_numbers_on_known_calls() -> None:
    report = build_report(known_calls(), since=T0, until=T0 + 3 * 3600)
    s = report.summary
    assert s["calls"] == {
        "total": 11,
        "finished": 10,
        "in_progress": 1,
        "turns": 100,
        "turns_per_call": round(100 / 11, 2),
        "duration_s": {"mean": 30.0, "p50": 30.0, "p95": 30.0},
    }
    assert s["containment_rate"] == 0.6
    assert s["transfer_rate"] == 0.3
    assert s["error_rate"] == 0.1
    assert s["end_reasons"] == {"caller_hangup": 5, "transferred": 3, "bot_hangup": 1, "error": 1}
    assert s["transfers"]["by_target"] == {"agents": 2, "billing": 1}
    assert s["transfers"]["by_reason"] == {"intent:agent": 2, "not_understood": 1}
    assert s["top_intents"][:3] == [
        {"intent": "hours", "count": 69},
        {"intent": "agent", "count": 20},
        {"intent": "<script>x</script>", "count": 10},
    ]
    assert {"intent": "(fallback)", "count": 1} in s["top_intents"]
    assert s["fallbacks"]["by_stage"] == {"stt": 1, "dialogue": 1}
    # 100 caller turns + 11 greetings played; one barge-in.
    assert s["barge_in"]["replies"] == 111 and s["barge_in"]["barged_in"] == 1
    assert s["barge_in"]["rate"] == round(1 / 111, 4)
    assert s["barge_in"]["calls_with_barge_in"] == 1
    # Latencies 1..100 ms: linear-interpolated percentiles.
    assert s["latency_ms"]["turn"] == {
        "count": 100,
        "mean": 50.5,
        "p50": 50.5,
        "p95": 95.0,
        "p99": 99.0,
    }
    assert s["latency_ms"]["stages"]["stt"]["p50"] == 25.2
    assert s["latency_ms"]["stages"]["dialogue"]["p99"] == 5.0
    assert s["errors"] == {"stt_timeout": 1}
    assert [b["calls"] for b in s["calls_per_bucket"]["counts"]] == [3, 3, 5, 0]
    assert s["calls_per_bucket"]["bucket"] == "hour"


def test_text_and_json_output() -> None:
    report = build_report(known_calls(), since=T0, until=T0 + 3 * 3600)
    text = render_text(report)
    assert "Containment     60.0 %" in text
    assert "Transfers       30.0 %: agents 2, billing 1" in text
    assert "Barge-in        0.9 % of 111 replies" in text
    line = next(x for x in text.splitlines() if "end of speech -> first bot frame" in x)
    assert line.split()[-5:] == ["100", "50", "95", "99", "50"]
    assert json.loads(render_json(report)) == json.loads(json.dumps(report.summary))


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_page(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


def decode_png(src: str | None) -> Image.Image:
    assert src is not None and src.startswith("data:image/png;base64,")
    raw = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


def test_html_report_renders_with_its_plots() -> None:
    report = build_report(known_calls(), since=T0, until=T0 + 3 * 3600)
    page = render_html(report)
    parsed = parse_page(page)
    alts = [img.get("alt") for img in parsed.images]
    assert alts == ["Turn latency histogram", "Latency by stage", "Calls per hour", "Top intents"]
    for img in parsed.images:
        image = decode_png(img.get("src"))
        assert image.width > 300 and image.height > 150
        # A real plot, not a blank canvas.
        colors = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colors is not None and len(colors) > 20
    text = "".join(parsed.text)
    assert "60.0 %" in text and "Containment" in text
    assert "<script>x</script>" in text  # shown as text ...
    assert "script" not in parsed.tags  # ... never as markup
    assert "<script>" not in page


def test_an_empty_window_still_renders() -> None:
    report = build_report([], since=T0, until=T0 + 3600)
    assert report.summary["calls"]["total"] == 0
    assert report.summary["containment_rate"] is None
    assert "Containment     n/a" in render_text(report)
    json.loads(render_json(report))
    parsed = parse_page(render_html(report))
    assert len(parsed.images) == 4
    for img in parsed.images:
        decode_png(img.get("src"))


def test_parse_time() -> None:
    now = 1_750_000_000.0
    assert parse_time("now", now) == now
    assert parse_time("24h", now) == now - 86400
    assert parse_time("7d", now) == now - 7 * 86400
    assert parse_time("30m", now) == now - 1800
    assert parse_time("1700000000", now) == 1_700_000_000.0
    assert parse_time("2025-03-04T09:00", now) == T0
    assert parse_time("2025-03-04T09:00+00:00", now) == 1741078800.0
    assert parse_time("2025-03-04", now) == datetime(2025, 3, 4).astimezone().timestamp()
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday-ish", now)


# --- the commands on a recorded call -------------------------------------------------------


def cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="voicebot-pbx")
    register_cli(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_report_and_calls_show_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "calls.db"
    with sqlite_recorder(db) as recorder:
        session = run_known_call(recorder)
        assert recorder.flush()
    capsys.readouterr()  # the call's logs
    args = cli(["report", "--db", str(db), "--since", "1h", "--format", "json"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["calls"]["total"] == 1 and summary["transfer_rate"] == 1.0
    assert summary["transfers"]["by_target"] == {"q": 1}
    speech = [t for t in session.record.turns if t.kind == "speech"]
    assert summary["latency_ms"]["turn"]["count"] == len(speech)
    assert summary["barge_in"]["barged_in"] == 1

    out = tmp_path / "report.html"
    started = time.perf_counter()
    args = cli(["report", "--db", str(db), "--format", "html", "-o", str(out)])
    assert args.func(args) == 0
    html_s = time.perf_counter() - started
    assert len(parse_page(out.read_text()).images) == 4
    print(f"html report of 1 call: {html_s:.2f} s")

    args = cli(["report", "--db", str(db), "--since", "2020-01-01", "--until", "2020-01-02"])
    assert args.func(args) == 0
    assert "Calls           0 (" in capsys.readouterr().out

    args = cli(["calls", "show", session.record.call_id[:8], "--db", str(db)])
    assert args.func(args) == 0
    shown = capsys.readouterr().out
    assert session.record.call_id in shown
    assert f'caller: "{PHRASES[TARIFF]}"' in shown
    assert "barge-in after" in shown and "timings (ms): first frame" in shown
    assert "transferred -> q" in shown

    args = cli(["calls", "show", session.record.call_id, "--db", str(db), "--json"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["call_id"] == session.record.call_id

    args = cli(["calls", "show", "nope", "--db", str(db)])
    assert args.func(args) == 1
    assert "no call" in capsys.readouterr().err

    # calls list: one line per call, newest first; filters by outcome; JSON.
    args = cli(["calls", "list", "--db", str(db), "--since", "1h"])
    assert args.func(args) == 0
    listed = capsys.readouterr()
    line = [row for row in listed.out.splitlines() if session.record.call_id in row]
    assert len(line) == 1 and "transferred" in line[0] and "/ q" in line[0], listed.out
    assert "1 calls" in listed.err
    args = cli(["calls", "list", "--db", str(db), "--outcome", "caller_hangup"])
    assert args.func(args) == 0
    assert session.record.call_id not in capsys.readouterr().out
    args = cli(["calls", "list", "--db", str(db), "--json"])
    assert args.func(args) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["call_id"] == session.record.call_id and row["outcome"] == "transferred"
    assert row["transfer_target"] == "q" and row["turns"] >= 1
    args = cli(["calls", "list", "--db", str(db), "--since", "soon-ish"])
    assert args.func(args) == 2
    args = cli(["report", "--db", str(tmp_path / "missing.db")])
    assert args.func(args) == 1
    assert "no call records" in capsys.readouterr().err


def test_render_call_shows_timings_per_turn() -> None:
    record = known_calls()[8]
    record.caller_id = "*********23"
    text = render_call(record)
    assert "Caller id  *********23" in text
    assert "fallbacks: stt_empty, not_understood" in text
    assert text.count("timings (ms): first frame") == 10
    assert "transferred -> billing" in text
