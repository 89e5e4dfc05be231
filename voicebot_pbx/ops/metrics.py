"""Prometheus metrics for ops: one registry per ``Metrics`` (the process uses
``default_metrics()``), exposed as text by ``render()`` on the health port.

Call and turn metrics come from the call records: ``MetricsRecorder`` wraps the session's
recorder (or stands alone), so the session needs no extra hooks. Inference-pool queue waits
come from ``Metrics.timed_job`` around the blocking function handed to the pool.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from voicebot_pbx.ops.analytics import AnalyticsRecorder, RecorderStats
from voicebot_pbx.ops.outcomes import END_CLASSES, end_class, fallback_name, fallback_stage
from voicebot_pbx.ops.records import CallRecord, Recorder, TurnRecord

log = structlog.get_logger("voicebot_pbx.ops.metrics")
T = TypeVar("T")

CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS_S = (
    0.05,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.6,
    0.8,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
)
QUEUE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DURATION_BUCKETS_S = (5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 1200.0, 1800.0)

# TurnRecord field -> stage label of voicebot_turn_stage_seconds.
STAGE_FIELDS = (
    ("end_of_speech_to_stt_ms", "stt"),
    ("nlu_ms", "nlu"),
    ("stt_to_dialogue_ms", "dialogue"),
    ("llm_first_sentence_ms", "llm_first_sentence"),
    ("tts_first_audio_ms", "tts_first_audio"),
)

_ERROR_TIMEOUT = re.compile(r"^([a-z]+)_timeout$")
_ERROR_STAGE = re.compile(r"^([a-z]+): ([A-Za-z_][A-Za-z0-9_]*)")
_ERROR_EXCEPTION = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*): ")
_KNOWN_ENGINES = frozenset({"stt", "tts", "vad", "nlu", "dialogue", "llm", "rasa"})


def classify_error(error: str) -> tuple[str, str]:
    """A call record's error string -> (engine, kind) with bounded values:
    ``stt_timeout`` -> (stt, timeout); ``tts: OSError: ...`` -> (tts, OSError);
    ``ValueError: ...`` (the session itself) -> (session, ValueError)."""
    if match := _ERROR_TIMEOUT.match(error):
        engine = match.group(1)
        return (engine if engine in _KNOWN_ENGINES else "other"), "timeout"
    if (match := _ERROR_STAGE.match(error)) and match.group(1) in _KNOWN_ENGINES:
        return match.group(1), match.group(2)[:64]
    if match := _ERROR_EXCEPTION.match(error):
        return "session", match.group(1)[:64]
    return "other", "other"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.active_calls = Gauge("voicebot_active_calls", "Calls in progress", registry=r)
        self.calls = Counter(
            "voicebot_calls",
            "Finished calls by end reason (caller_hangup, bot_hangup, transferred, drained, error)",
            ["end_reason"],
            registry=r,
        )
        for reason in END_CLASSES:  # every series exists from the start, at 0
            self.calls.labels(reason)
        self.transfers = Counter(
            "voicebot_transfers", "Calls transferred, by target", ["target"], registry=r
        )
        self.call_duration = Histogram(
            "voicebot_call_duration_seconds",
            "Call duration",
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.turns = Counter(
            "voicebot_turns",
            "Finished turns by kind and reply source",
            ["kind", "reply_source"],
            registry=r,
        )
        self.barge_ins = Counter(
            "voicebot_barge_ins", "Bot replies interrupted by the caller", registry=r
        )
        self.turn_latency = Histogram(
            "voicebot_turn_latency_seconds",
            "End of the caller's speech (or DTMF) to the first bot audio frame written",
            ["kind"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.stage_latency = Histogram(
            "voicebot_turn_stage_seconds",
            "Per-stage turn latency: stt (end of speech -> final transcript), nlu, "
            "dialogue (transcript -> answer), llm_first_sentence, tts_first_audio",
            ["stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.fallbacks = Counter(
            "voicebot_fallbacks",
            "Fallbacks taken, by stage and name",
            ["stage", "fallback"],
            registry=r,
        )
        self.engine_errors = Counter(
            "voicebot_engine_errors",
            "Engine errors and timeouts, by engine and kind",
            ["engine", "kind"],
            registry=r,
        )
        self.admin_refusals = Counter(
            "voicebot_admin_refused",
            "Requests the health/metrics port refused, by reason",
            ["reason"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "voicebot_queue_wait_seconds",
            "Time a blocking job waited for a thread of the shared inference pool",
            ["queue"],
            buckets=QUEUE_BUCKETS_S,
            registry=r,
        )

    def admin_refused(self, reason: str) -> None:
        """The health/metrics port refused a request (busy, forbidden, bad_request,
        slow_request, over_capacity): ``HealthServer(on_refused=...)``."""
        self.admin_refusals.labels(reason).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

    # --- observations --------------------------------------------------------------

    def call_started(self) -> None:
        self.active_calls.inc()

    def call_ended(self, call: CallRecord, *, was_active: bool = True) -> None:
        if was_active:
            self.active_calls.dec()
        self.calls.labels(end_class(call.end_reason)).inc()
        if call.end_reason == "transferred":
            self.transfers.labels(call.transfer_target or "").inc()
        if call.ended_at is not None:
            self.call_duration.observe(max(0.0, call.ended_at - call.started_at))
        for error in call.errors:
            self.engine_errors.labels(*classify_error(error)).inc()

    def turn(self, turn: TurnRecord) -> None:
        source = turn.reply_source or "none"
        self.turns.labels(turn.kind, source).inc()
        if turn.barged_in:
            self.barge_ins.inc()
        if turn.end_of_speech_to_first_frame_ms is not None:
            self.turn_latency.labels(turn.kind).observe(turn.end_of_speech_to_first_frame_ms / 1e3)
        for field, stage in STAGE_FIELDS:
            value = getattr(turn, field)
            if value is not None:
                self.stage_latency.labels(stage).observe(value / 1000.0)
        for fallback in turn.fallbacks:
            self.fallbacks.labels(fallback_stage(fallback), fallback_name(fallback)).inc()

    def observe_queue_wait(self, queue: str, seconds: float) -> None:
        self.queue_wait.labels(queue).observe(max(0.0, seconds))

    def timed_job(self, queue: str, fn: Callable[[], T]) -> Callable[[], T]:
        """Wrap a job for a thread pool: when it starts, its wait is observed.
        ``loop.run_in_executor(pool, metrics.timed_job("stt", fn))``."""
        submitted = time.perf_counter()

        def run() -> T:
            self.observe_queue_wait(queue, time.perf_counter() - submitted)
            return fn()

        return run

    def watch_recorder(self, stats: Callable[[], RecorderStats]) -> None:
        """Export the analytics writer's health (writes, errors, backlog)."""
        self.registry.register(_RecorderCollector(stats))


class _RecorderCollector(Collector):
    def __init__(self, stats: Callable[[], RecorderStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._stats()
        yield CounterMetricFamily(
            "voicebot_record_writes", "Call-record writes committed", value=stats.writes
        )
        yield CounterMetricFamily(
            "voicebot_record_write_errors",
            "Call-record write or connect failures",
            value=stats.write_errors,
        )
        yield CounterMetricFamily(
            "voicebot_record_writes_dropped", "Call-record writes given up", value=stats.dropped
        )
        yield GaugeMetricFamily(
            "voicebot_record_backlog", "Call-record writes waiting for retry", value=stats.backlog
        )


class _StatsSource(Protocol):
    stats: RecorderStats


class MetricsRecorder:
    """A ``Recorder`` that updates ``metrics`` from the call records, then hands each call
    to ``inner`` (the analytics store, or None). Each turn is counted once: when it
    finishes, or at the end of the call if it never did."""

    def __init__(self, metrics: Metrics, inner: Recorder | None = None) -> None:
        self.metrics = metrics
        self.inner = inner
        self._counted: dict[str, set[int]] = {}
        self._active: set[str] = set()
        self._lock = threading.Lock()
        if isinstance(inner, AnalyticsRecorder):  # the analytics writer's health
            source: _StatsSource = inner
            metrics.watch_recorder(lambda: source.stats)

    async def call_started(self, call: CallRecord) -> None:
        try:
            with self._lock:
                new = call.call_id not in self._active
                self._active.add(call.call_id)
                self._counted.setdefault(call.call_id, set())
            if new:
                self.metrics.call_started()
        except Exception as exc:
            log.error("metrics_failed", error=str(exc))
        if self.inner is not None:
            await self.inner.call_started(call)

    async def turn_finished(self, call: CallRecord, turn: TurnRecord) -> None:
        try:
            with self._lock:
                counted = self._counted.setdefault(call.call_id, set())
                new = turn.seq not in counted
                counted.add(turn.seq)
            if new:
                self.metrics.turn(turn)
        except Exception as exc:
            log.error("metrics_failed", error=str(exc))
        if self.inner is not None:
            await self.inner.turn_finished(call, turn)

    async def call_ended(self, call: CallRecord) -> None:
        try:
            with self._lock:
                counted = self._counted.pop(call.call_id, set())
                was_active = call.call_id in self._active
                self._active.discard(call.call_id)
            for turn in call.turns:
                if turn.seq not in counted:
                    self.metrics.turn(turn)
            self.metrics.call_ended(call, was_active=was_active)
        except Exception as exc:
            log.error("metrics_failed", error=str(exc))
        if self.inner is not None:
            await self.inner.call_ended(call)


_default: Metrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> Metrics:
    """The process's metrics (created on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Metrics()
        return _default


def render() -> bytes:
    """``/metrics`` body of the process's metrics (``CONTENT_TYPE`` is its content type)."""
    return default_metrics().render()


def render_text() -> str:
    """The same as text: ``HealthServer(..., metrics=render_text)``."""
    return render().decode("utf-8")
