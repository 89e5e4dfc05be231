"""Whisper cross-call batching with the real tiny.en model: every call gets its own
transcript, a degenerate decode inside a batch falls back for that call only, and a burst of
transcriptions from many calls leaves another call's outbound frame pacing intact (the
event loop never blocks on inference)."""

from __future__ import annotations

import asyncio
import statistics
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import pytest

from tests.speech import espeak_pcm, silence
from tests.test_audiosocket_server import has_burst, pacing_problems, serving
from tests.test_stt import words
from voicebot_pbx.config import SttConfig
from voicebot_pbx.models import WHISPER_TINY_EN, model_path
from voicebot_pbx.pbx.caller import Pause, SimulatedCaller
from voicebot_pbx.pbx.media import CallEnded, CallMedia
from voicebot_pbx.speech.stt import SttResult
from voicebot_pbx.speech.whisper import WhisperBatcher, WhisperEngine, _Decode, _Request

# (what one caller says, words its transcript must contain): six calls, six requests.
# Only words tiny.en hears reliably in espeak's voice, alone and in batches of any size
# (batch size changes the int8 kernels' rounding, so a borderline word can flip).
CALLS = [
    ("I want to speak to an agent", {"speak", "agent"}),
    ("what are your opening hours", {"opening"}),
    ("my account number is four five six seven two", {"number", "4", "5", "6", "7", "2"}),
    ("I would like to pay my bill", {"pay", "bill"}),
    ("there is no power in my house", {"power", "house"}),
    ("I am moving house next month", {"moving", "month"}),
]


def caller_pcm(text: str) -> bytes:
    return silence(300) + espeak_pcm(text, 8000, voice="en-gb", speed=140) + silence(300)


@pytest.fixture(scope="module")
def engine() -> Iterator[WhisperEngine]:
    # A batch window long enough that six requests submitted together form one batch; the
    # service's thread count (both cores), so the pacing test below covers the default.
    whisper = WhisperEngine(
        model_path(WHISPER_TINY_EN),
        max_batch=8,
        batch_wait_ms=300.0,
        cpu_threads=SttConfig().cpu_threads,
    )
    yield whisper
    whisper.close()


@pytest.mark.models
def test_batch_returns_each_call_its_own_transcript(engine: WhisperEngine) -> None:
    pcms = [caller_pcm(text) for text, _ in CALLS]
    before = (engine.stats.batches, engine.stats.batched_utterances)

    async def main() -> list[SttResult]:
        return list(await asyncio.gather(*(engine.transcribe_async(p, 8000) for p in pcms)))

    results = asyncio.run(main())
    assert engine.stats.batches == before[0] + 1  # one round ...
    assert engine.stats.batched_utterances == before[1] + len(CALLS)  # ... for all six
    for (text, expected), result in zip(CALLS, results, strict=True):
        assert expected <= words(result.text), (text, result.text)
        assert result.confidence is not None and 0.0 < result.confidence <= 1.0
    # nobody got another caller's words
    for index, result in enumerate(results):
        others = set().union(*(e for i, (_, e) in enumerate(CALLS) if i != index))
        own = CALLS[index][1]
        assert not (words(result.text) & (others - own - {"to", "my", "i"})), result.text


@pytest.mark.models
def test_degenerate_decode_in_a_batch_falls_back_for_that_call_only(
    engine: WhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engine._decode_short_batch
    looping = _Decode(
        text="I want to I want to I want to I want to",
        n_tokens=24,
        avg_logprob=-0.2,
        no_speech_prob=0.0,
    )
    seen_sizes: list[int] = []

    def one_loops(audios: list[object]) -> list[tuple[_Decode, int]]:
        out = real(audios)  # type: ignore[arg-type]
        seen_sizes.append(len(out))
        out[2] = (looping, 25)  # the third caller's decode looped
        return out

    monkeypatch.setattr(engine, "_decode_short_batch", one_loops)
    calls = CALLS[:4]
    pcms = [caller_pcm(text) for text, _ in calls]
    before = (engine.stats.fallbacks, engine.stats.full_decodes)

    async def main() -> list[SttResult]:
        return list(await asyncio.gather(*(engine.transcribe_async(p, 8000) for p in pcms)))

    results = asyncio.run(main())
    assert seen_sizes == [4]  # decoded as one batch
    timings = [r.timing for r in results]
    assert all(t is not None and t.batch == 4 and t.decode_ms > 0 for t in timings)
    # the looping one needed the full window too
    assert sorted(t.windows for t in timings if t is not None) == [1, 1, 1, 2]
    # only the looping one went to the full 30 s window, and it got its own words back
    assert (engine.stats.fallbacks, engine.stats.full_decodes) == (before[0] + 1, before[1] + 1)
    for (text, expected), result in zip(calls, results, strict=True):
        assert expected <= words(result.text), (text, result.text)


@pytest.mark.models
def test_short_window_loop_is_retried_on_the_10s_window_before_the_full_one(
    engine: WhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a 5 s minimum input (capacity setting) a loop costs a 10 s retry, not 30 s.
    monkeypatch.setattr(engine, "short_min_input_s", 5.0)
    looping = _Decode(
        text="agent agent agent agent", n_tokens=8, avg_logprob=-0.2, no_speech_prob=0
    )
    monkeypatch.setattr(engine, "_decode_short", lambda audio: (looping, 25))
    before = (engine.stats.fallbacks, engine.stats.retries, engine.stats.full_decodes)
    result = engine.transcribe(caller_pcm("I want to speak to an agent"), 8000)
    after = (engine.stats.fallbacks, engine.stats.retries, engine.stats.full_decodes)
    assert after == (before[0] + 1, before[1] + 1, before[2])
    assert {"speak", "agent"} <= words(result.text), result.text
    # The transcript says why it was slow: a second encoder window (the retry).
    assert result.timing is not None and result.timing.windows == 2


def fake_model() -> tuple[list[list[bytes]], threading.Event, Callable[[list[_Request]], None]]:
    """A model for the batcher: records each round's inputs, echoes them as transcripts;
    a round starting with b"block" waits for the event, one with b"boom" fails."""
    rounds: list[list[bytes]] = []
    release = threading.Event()

    def run_batch(batch: list[_Request]) -> None:
        rounds.append([r.pcm for r in batch])
        if batch[0].pcm == b"block":
            release.wait(5.0)
        if batch[0].pcm == b"boom":
            raise RuntimeError("model failed")
        for r in batch:
            r.future.set_result(SttResult(r.pcm.decode(), 1.0))

    return rounds, release, run_batch


def hold_the_thread(batcher: WhisperBatcher, rounds: list[list[bytes]]) -> Future[SttResult]:
    """Submit b"block" and wait until the thread has taken it alone: what is submitted next
    queues until the event is set."""
    first = batcher.submit(b"block", 8000)
    while not rounds:
        threading.Event().wait(0.005)
    return first


def test_batcher_groups_queued_requests_and_isolates_failures() -> None:
    """Pure batcher behaviour with a fake model: requests queued while a round runs go
    together (up to max_batch); a cancelled request is skipped; a failing round fails only
    its own requests and the thread goes on."""
    rounds, release, run_batch = fake_model()
    batcher = WhisperBatcher(run_batch, max_batch=3)
    try:
        first = hold_the_thread(batcher, rounds)
        queued: list[Future[SttResult]] = [batcher.submit(f"u{i}".encode(), 8000) for i in range(5)]
        queued[1].cancel()  # a caller timed out before its round started
        release.set()
        assert first.result(5.0).text == "block"
        assert [f.result(5.0).text for i, f in enumerate(queued) if i != 1] == [
            "u0",
            "u2",
            "u3",
            "u4",
        ]
        assert rounds[1:] == [[b"u0", b"u2", b"u3"], [b"u4"]]  # max_batch 3, cancelled skipped
        boom = batcher.submit(b"boom", 8000)
        with pytest.raises(RuntimeError, match="model failed"):
            boom.result(5.0)
        assert batcher.submit(b"after", 8000).result(5.0).text == "after"
    finally:
        batcher.close()
    with pytest.raises(RuntimeError):
        batcher.submit(b"closed", 8000)


def test_batcher_takes_urgent_requests_before_speculative_ones() -> None:
    """A turn that has ended (a caller waits) is decoded before speculative decodes queued
    earlier by other calls; each kind keeps its order."""
    rounds, release, run_batch = fake_model()
    batcher = WhisperBatcher(run_batch, max_batch=2)
    try:
        first = hold_the_thread(batcher, rounds)
        futures = [
            batcher.submit(b"spec1", 8000),
            batcher.submit(b"spec2", 8000),
            batcher.submit(b"final1", 8000, urgent=True),
            batcher.submit(b"spec3", 8000),
            batcher.submit(b"final2", 8000, urgent=True),
        ]
        assert batcher.pending == 5
        release.set()
        first.result(5.0)
        assert [f.result(5.0).text for f in futures] == [
            "spec1",
            "spec2",
            "final1",
            "spec3",
            "final2",
        ]
        assert rounds[1:] == [[b"final1", b"final2"], [b"spec1", b"spec2"], [b"spec3"]]
    finally:
        batcher.close()


@pytest.mark.models
@pytest.mark.slow
def test_burst_of_transcriptions_leaves_another_calls_pacing_intact(
    engine: WhisperEngine,
) -> None:
    # 16 calls' utterances at once (as when many callers stop talking together), while one
    # more call is being played a prompt: its frames must stay one per 20 ms at the peer.
    burst = [caller_pcm(CALLS[i % len(CALLS)][0]) for i in range(16)]
    tone = (b"\x00\x10\x00\xf0" * 2000) * 10  # 10 s of a loud square wave at 8 kHz

    async def bot(call: CallMedia) -> None:
        rate_hz = await call.wait_for_rate(0.2)
        assert rate_hz == 8000
        call.speaker.enqueue(tone, call.speaker.generation)
        while not isinstance(await call.inbound.get(), CallEnded):
            pass

    async def main() -> tuple[list[float], float, float, list[SttResult]]:
        loop = asyncio.get_running_loop()
        async with serving(bot) as server:
            caller = SimulatedCaller(
                "127.0.0.1", server.port, greeting_timeout_s=0.0, reply_timeout_s=0.5
            )
            call = asyncio.create_task(caller.run([Pause(7.0)]))
            await asyncio.sleep(1.0)
            started = loop.time()
            results = await asyncio.gather(*(engine.transcribe_async(p, 8000) for p in burst))
            ended = loop.time()
            result = await call
        times = [t for t, _ in result.frames]
        return times, started, ended, list(results)

    before = engine.stats.batches
    times, started, ended, results = asyncio.run(main())
    assert all(r.text for r in results)
    assert engine.stats.batches - before >= 2  # 16 utterances, max_batch 8
    during = [t for t in times if started <= t <= ended]
    assert ended - started > 0.3 and len(during) >= 10, (ended - started, len(during))
    gaps_ms = [(b - a) * 1000.0 for a, b in zip(during, during[1:], strict=False)]
    assert 17.0 <= statistics.median(gaps_ms) <= 23.0
    assert not has_burst(during)
    assert sorted(gaps_ms)[int(0.99 * (len(gaps_ms) - 1))] < 60.0
    assert pacing_problems(times) == []
