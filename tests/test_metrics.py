"""Prometheus metrics: names and values after known calls through the real session."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_analytics import (
    AGENT,
    HOURS,
    fake_shared,
    run_known_call,
    scripted_call,
    sqlite_recorder,
)
from voicebot_pbx.ops.metrics import (
    CONTENT_TYPE,
    Metrics,
    MetricsRecorder,
    classify_error,
    default_metrics,
    render,
    render_text,
)
from voicebot_pbx.ops.records import CallRecord, TurnRecord
from voicebot_pbx.testing import run_virtual, tone

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(metrics: Metrics) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(data: Samples, name: str, **labels: str) -> float:
    return data.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metric_names_are_exported() -> None:
    names = {name for name, _ in samples(Metrics())}
    assert {
        "voicebot_active_calls",
        "voicebot_calls_total",
        "voicebot_barge_ins_total",
    } <= names
    families = {f.name for f in text_string_to_metric_families(Metrics().render().decode())}
    assert {
        "voicebot_active_calls",
        "voicebot_calls",
        "voicebot_transfers",
        "voicebot_call_duration_seconds",
        "voicebot_turns",
        "voicebot_barge_ins",
        "voicebot_turn_latency_seconds",
        "voicebot_turn_stage_seconds",
        "voicebot_fallbacks",
        "voicebot_engine_errors",
        "voicebot_queue_wait_seconds",
    } <= families
    # Every end reason exists at 0 before the first call (dashboards need the series).
    data = samples(Metrics())
    for reason in ("caller_hangup", "bot_hangup", "transferred", "drained", "error"):
        assert ("voicebot_calls_total", (("end_reason", reason),)) in data
    assert CONTENT_TYPE.startswith("text/plain")
    assert render() == default_metrics().render()
    assert render_text() == render().decode()


def test_values_after_a_known_call(tmp_path: Path) -> None:
    metrics = Metrics()
    with sqlite_recorder(tmp_path / "calls.db") as store:
        session = run_known_call(MetricsRecorder(metrics, store))
        assert store.flush()
    data = samples(metrics)
    record = session.record
    speech = [t for t in record.turns if t.kind == "speech"]
    assert value(data, "voicebot_active_calls") == 0
    assert value(data, "voicebot_calls_total", end_reason="transferred") == 1
    assert value(data, "voicebot_calls_total", end_reason="caller_hangup") == 0
    assert value(data, "voicebot_transfers_total", target="q") == 1
    assert value(data, "voicebot_barge_ins_total") == 1
    assert value(data, "voicebot_call_duration_seconds_count") == 1
    # Each turn counted once, although call_ended hands every turn over again.
    assert value(data, "voicebot_turns_total", kind="speech", reply_source="cache") == 2
    assert value(data, "voicebot_turns_total", kind="greeting", reply_source="cache") == 1
    assert sum(v for (n, _), v in data.items() if n == "voicebot_turns_total") == len(record.turns)
    latencies = [t.end_of_speech_to_first_frame_ms for t in speech]
    assert all(v is not None for v in latencies)
    assert value(data, "voicebot_turn_latency_seconds_count", kind="speech") == len(speech)
    assert value(data, "voicebot_turn_latency_seconds_sum", kind="speech") == pytest.approx(
        sum(v for v in latencies if v is not None) / 1000.0
    )
    # The histogram's buckets hold the turns at or under each bound.
    for le, expected in ((0.1, 0), (10.0, len(speech))):
        bucket = value(data, "voicebot_turn_latency_seconds_bucket", kind="speech", le=str(le))
        assert bucket == expected
    stt = [t.end_of_speech_to_stt_ms for t in record.turns if t.end_of_speech_to_stt_ms]
    assert value(data, "voicebot_turn_stage_seconds_count", stage="stt") == len(stt)
    tts = [t for t in record.turns if t.tts_first_audio_ms is not None]
    assert value(data, "voicebot_turn_stage_seconds_count", stage="tts_first_audio") == len(tts)
    # The analytics writer's health is exported alongside.
    assert value(data, "voicebot_record_writes_total") >= len(record.turns)
    assert value(data, "voicebot_record_write_errors_total") == 0


def test_fallbacks_and_engine_errors_are_counted() -> None:
    metrics = Metrics()
    shared = fake_shared(MetricsRecorder(metrics))
    # STT slower than its timeout: every transcript times out (an engine error, and the
    # empty transcript is a stt fallback).
    config = dataclasses.replace(
        shared.config, stt=dataclasses.replace(shared.config.stt, timeout_s=0.05)
    )
    shared = dataclasses.replace(shared, config=config)
    script: list[tuple[float, bytes | str]] = [(2.0, tone(1.0, 8000, HOURS))]
    _media, session = run_virtual(scripted_call(shared, script, until_s=6.0))
    data = samples(metrics)
    timeouts = session.record.errors.count("stt_timeout")
    assert timeouts >= 1
    assert value(data, "voicebot_engine_errors_total", engine="stt", kind="timeout") == timeouts
    fallbacks = [f for t in session.record.turns for f in t.fallbacks]
    assert "stt_empty" in fallbacks
    assert value(
        data, "voicebot_fallbacks_total", stage="stt", fallback="stt_empty"
    ) == fallbacks.count("stt_empty")
    assert value(data, "voicebot_calls_total", end_reason="caller_hangup") == 1


def test_active_calls_while_calls_are_up() -> None:
    metrics = Metrics()
    recorder = MetricsRecorder(metrics)

    async def run() -> list[float]:
        seen = []
        calls = [CallRecord(call_id=f"c{i}", pbx="a", peer="p") for i in range(3)]
        for call in calls:
            await recorder.call_started(call)
            await recorder.call_started(call)  # a repeat is not another call
        seen.append(value(samples(metrics), "voicebot_active_calls"))
        for call in calls[:2]:
            call.end_reason = "caller_hangup"
            await recorder.call_ended(call)
        seen.append(value(samples(metrics), "voicebot_active_calls"))
        # A call that never "started" (its start write timed out) does not go negative.
        await recorder.call_ended(CallRecord(call_id="x", pbx="a", peer="p", end_reason="error"))
        seen.append(value(samples(metrics), "voicebot_active_calls"))
        return seen

    assert asyncio.run(run()) == [3, 1, 1]


def test_queue_wait_is_observed_when_a_job_gets_a_thread() -> None:
    metrics = Metrics()
    pool = ThreadPoolExecutor(max_workers=1)
    release = threading.Event()
    first = pool.submit(metrics.timed_job("stt", release.wait))
    second = pool.submit(metrics.timed_job("tts", lambda: 42))
    release.set()
    assert first.result(5) is True and second.result(5) == 42
    pool.shutdown()
    data = samples(metrics)
    assert value(data, "voicebot_queue_wait_seconds_count", queue="stt") == 1
    assert value(data, "voicebot_queue_wait_seconds_count", queue="tts") == 1
    assert value(data, "voicebot_queue_wait_seconds_sum", queue="tts") > 0


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("stt_timeout", ("stt", "timeout")),
        ("tts: OSError: disk full", ("tts", "OSError")),
        ("dialogue: ValueError: bad", ("dialogue", "ValueError")),
        ("RuntimeError: boom", ("session", "RuntimeError")),
        ("weird stuff", ("other", "other")),
    ],
)
def test_error_classification_has_bounded_labels(error: str, expected: tuple[str, str]) -> None:
    assert classify_error(error) == expected


def test_a_turn_counted_when_finished_is_not_counted_again_at_the_end() -> None:
    metrics = Metrics()
    recorder = MetricsRecorder(metrics)

    async def run() -> None:
        call = CallRecord(call_id="c", pbx="a", peer="p")
        await recorder.call_started(call)
        done = TurnRecord(turn_id=1, seq=0, kind="speech", end_of_speech_to_first_frame_ms=300.0)
        call.turns.append(done)
        await recorder.turn_finished(call, done)
        await recorder.turn_finished(call, done)  # a barge-in re-write of the same turn
        # A turn cut short that never "finished": counted at the end of the call.
        call.turns.append(TurnRecord(turn_id=2, seq=1, kind="speech", fallbacks=["stt_empty"]))
        call.end_reason = "caller_hangup"
        await recorder.call_ended(call)

    asyncio.run(run())
    data = samples(metrics)
    assert value(data, "voicebot_turns_total", kind="speech", reply_source="none") == 2
    assert value(data, "voicebot_turn_latency_seconds_count", kind="speech") == 1
    assert value(data, "voicebot_fallbacks_total", stage="stt", fallback="stt_empty") == 1


def test_agent_call_counts_a_transfer_once() -> None:
    metrics = Metrics()
    script: list[tuple[float, bytes | str]] = [(2.0, tone(1.0, 8000, AGENT))]
    run_virtual(scripted_call(fake_shared(MetricsRecorder(metrics)), script, until_s=6.0))
    data = samples(metrics)
    assert value(data, "voicebot_calls_total", end_reason="transferred") == 1
    assert value(data, "voicebot_transfers_total", target="q") == 1


def test_served_by_the_health_endpoint() -> None:
    """What the lead wires: ``HealthServer(readiness, metrics=...)`` serving ``/metrics``."""
    from voicebot_pbx.ops.health import HealthServer

    metrics = Metrics()
    metrics.calls.labels("transferred").inc()

    async def scrape() -> tuple[str, str]:
        server = HealthServer(
            lambda: {"ready": True}, metrics=lambda: metrics.render().decode(), port=0
        )
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            response = (await reader.read()).decode()
            writer.close()
        finally:
            await server.close()
        head, _, body = response.partition("\r\n\r\n")
        return head, body

    head, body = asyncio.run(scrape())
    assert head.startswith("HTTP/1.1 200") and "text/plain; version=0.0.4" in head
    families = {f.name: f for f in text_string_to_metric_families(body)}
    (sample,) = [
        s for s in families["voicebot_calls"].samples if s.labels == {"end_reason": "transferred"}
    ]
    assert sample.value == 1
