"""Speaker: the pacer and its queue, run in virtual time (deterministic, no real sleeping).

``VirtualTimeLoop`` is an asyncio loop whose clock only moves when every task is waiting:
``select(timeout)`` polls without blocking and then jumps the clock forward by ``timeout``.
The Speaker reads ``loop.time()``, so ``asyncio.sleep`` and the pacer's absolute deadlines
run exactly as in real time, only instantly. A "CPU stall" is ``loop.stall(s)``: the clock
jumps while a callback runs, as when the process is descheduled.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest
from structlog.testing import capture_logs

from voicebot_pbx.pbx.speaker import Speaker

T = TypeVar("T")
FRAME_S = 0.02
EPS = 1e-6


class _VirtualSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        events = super().select(0)
        if not events:
            if timeout is None:
                raise RuntimeError("virtual time: every task waits and no timer is set")
            self.now += max(0.0, timeout)
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now

    def stall(self, seconds: float) -> None:
        self._virtual.now += seconds


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())


def loop() -> VirtualTimeLoop:
    current = asyncio.get_running_loop()
    assert isinstance(current, VirtualTimeLoop)
    return current


class Wire:
    """A fake ``write``: records (time, pcm, is_silence); optional per-frame behaviour."""

    def __init__(self, on_write: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.frames: list[tuple[float, bytes, bool]] = []
        self._on_write = on_write

    async def __call__(self, pcm: bytes, is_silence: bool) -> None:
        self.frames.append((asyncio.get_running_loop().time(), pcm, is_silence))
        if self._on_write is not None:
            await self._on_write(len(self.frames) - 1)

    @property
    def times(self) -> list[float]:
        return [t for t, _, _ in self.frames]

    def gaps(self) -> list[float]:
        times = self.times
        return [b - a for a, b in zip(times, times[1:], strict=False)]

    def audio(self) -> list[bytes]:
        return [pcm for _, pcm, silent in self.frames if not silent]


async def pace_for(
    speaker: Speaker, wire: Callable[[bytes, bool], Awaitable[None]], seconds: float
) -> None:
    task = asyncio.create_task(speaker.run(wire))
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def frame(value: int, size: int = 320) -> bytes:
    """A recognisable non-silent frame."""
    return bytes([value & 0xFF, 0x10]) * (size // 2)


def has_burst(times: list[float], run_frames: int = 3, within_s: float = 0.002) -> bool:
    """True when ``run_frames`` consecutive frames were written within ``within_s``."""
    return any(
        times[i + run_frames - 1] - times[i] < within_s for i in range(len(times) - run_frames + 1)
    )


# --- idle -------------------------------------------------------------------------------------


def test_silence_when_idle_one_frame_per_tick() -> None:
    async def main() -> Wire:
        wire = Wire()
        await pace_for(Speaker(8000), wire, 1.01)
        return wire

    wire = run(main)
    assert len(wire.frames) == 51  # t = 0, 0.02, ..., 1.00
    assert all(silent and pcm == bytes(320) for _, pcm, silent in wire.frames)
    assert all(t == pytest.approx(i * FRAME_S, abs=EPS) for i, t in enumerate(wire.times))


def test_silence_frames_follow_the_rate() -> None:
    async def main() -> Wire:
        speaker = Speaker(8000)
        speaker.set_rate(16000)
        wire = Wire()
        await pace_for(speaker, wire, 0.05)
        return wire

    assert {len(pcm) for _, pcm, _ in run(main).frames} == {640}


def test_set_rate_refused_while_audio_is_queued() -> None:
    speaker = Speaker(8000)
    speaker.enqueue(frame(1), speaker.generation)
    with pytest.raises(RuntimeError):
        speaker.set_rate(16000)


# --- queue ------------------------------------------------------------------------------------


def test_frames_play_in_order_then_silence() -> None:
    async def main() -> tuple[Wire, Speaker]:
        speaker = Speaker(8000)
        generation = speaker.generation
        # Fed in odd-sized pieces: the speaker reframes.
        pcm = b"".join(frame(i) for i in range(1, 6))
        for start in range(0, len(pcm), 123):
            assert speaker.enqueue(pcm[start : start + 123], generation)
        assert speaker.buffered_s == pytest.approx(5 * FRAME_S)
        assert speaker.busy
        wire = Wire()
        await pace_for(speaker, wire, 0.21)
        return wire, speaker

    wire, speaker = run(main)
    assert wire.audio() == [frame(i) for i in range(1, 6)]
    assert [silent for _, _, silent in wire.frames[:5]] == [False] * 5
    assert all(silent for _, _, silent in wire.frames[5:])
    assert not speaker.busy
    assert speaker.audio_frames_written == 5
    assert speaker.frames_written == len(wire.frames)


def test_end_segment_pads_the_last_partial_frame() -> None:
    speaker = Speaker(8000)
    generation = speaker.generation
    speaker.enqueue(b"\x01\x02" * 50, generation)
    assert speaker.busy and speaker.buffered_s == 0  # a partial frame waits for more
    assert speaker.end_segment(generation)

    async def main() -> Wire:
        wire = Wire()
        await pace_for(speaker, wire, 0.01)
        return wire

    assert run(main).audio() == [b"\x01\x02" * 50 + bytes(220)]


# --- interrupt and generations -----------------------------------------------------------------


def test_interrupt_drops_everything_at_once() -> None:
    async def main() -> tuple[Wire, Speaker, float]:
        speaker = Speaker(8000)
        generation = speaker.generation
        speaker.enqueue(b"".join(frame(i) for i in range(50)) + b"\x05\x05" * 30, generation)
        wire = Wire()
        interrupted_at: list[float] = []

        def barge_in() -> None:
            interrupted_at.append(loop().time())
            new_generation = speaker.interrupt()
            assert new_generation == generation + 1
            assert not speaker.busy and speaker.buffered_s == 0

        loop().call_at(0.105, barge_in)  # between two ticks, from outside the pacer
        await pace_for(speaker, wire, 0.5)
        return wire, speaker, interrupted_at[0]

    wire, speaker, at = run(main)
    before = [f for f in wire.frames if f[0] < at]
    after = [f for f in wire.frames if f[0] > at]
    assert [pcm for _, pcm, _ in before] == [frame(i) for i in range(6)]
    assert after and all(silent for _, _, silent in after)  # nothing of the old reply
    assert speaker.generation == 1


def test_stale_generation_is_rejected() -> None:
    speaker = Speaker(8000)
    old = speaker.generation
    new = speaker.interrupt()
    fired: list[float] = []
    assert not speaker.enqueue(frame(1), old)
    assert not speaker.end_segment(old)
    assert not speaker.mark(fired.append, old)
    assert not speaker.busy and speaker.buffered_s == 0
    assert speaker.enqueue(frame(2), new)

    async def main() -> Wire:
        wire = Wire()
        await pace_for(speaker, wire, 0.05)
        return wire

    assert run(main).audio() == [frame(2)]
    assert fired == []


def test_interrupt_drops_a_partial_frame_too() -> None:
    speaker = Speaker(8000)
    speaker.enqueue(b"\x07\x07" * 10, speaker.generation)
    new = speaker.interrupt()
    assert not speaker.busy
    speaker.end_segment(new)
    assert speaker.buffered_s == 0


def test_pause_keeps_the_queue_and_resume_continues() -> None:
    async def main() -> tuple[Wire, Speaker]:
        speaker = Speaker(8000)
        speaker.enqueue(b"".join(frame(i) for i in range(6)), speaker.generation)
        wire = Wire()
        loop().call_at(0.045, speaker.pause)  # after frames 0, 1, 2
        loop().call_at(0.105, speaker.resume)
        await pace_for(speaker, wire, 0.31)
        return wire, speaker

    wire, speaker = run(main)
    played = [None if silent else pcm for _, pcm, silent in wire.frames]
    assert played[:3] == [frame(0), frame(1), frame(2)]
    assert played[3:6] == [None, None, None]  # paused: silence, nothing dropped
    assert played[6:9] == [frame(3), frame(4), frame(5)]
    assert all(p is None for p in played[9:])
    assert not speaker.paused


def test_interrupt_ends_a_pause() -> None:
    speaker = Speaker(8000)
    speaker.pause()
    assert speaker.paused
    new = speaker.interrupt()
    assert not speaker.paused
    speaker.enqueue(frame(7), new)

    async def main() -> Wire:
        wire = Wire()
        await pace_for(speaker, wire, 0.01)
        return wire

    assert run(main).audio() == [frame(7)]


# --- markers --------------------------------------------------------------------------------


def test_markers_fire_in_order_when_the_pacer_reaches_them() -> None:
    async def main() -> list[tuple[str, Any, float]]:
        speaker = Speaker(8000)
        events: list[tuple[str, Any, float]] = []

        async def on_write(index: int) -> None:
            _, pcm, silent = wire.frames[index]
            events.append(("frame", None if silent else pcm[0], loop().time()))

        wire = Wire(on_write)
        g = speaker.generation
        speaker.mark(lambda t: events.append(("mark", "start", t)), g)
        speaker.enqueue(frame(1) + frame(2) + frame(3), g)
        speaker.mark(lambda t: events.append(("mark", "a_done", t)), g)
        speaker.enqueue(frame(4) + b"\x04\x04", g)  # a partial frame: mark pads it
        speaker.mark(lambda t: events.append(("mark", "b_done", t)), g)
        await pace_for(speaker, wire, 0.13)
        return events

    events = run(main)
    assert events[:9] == [
        ("mark", "start", pytest.approx(0.0)),
        ("frame", 1, pytest.approx(0.0)),
        ("frame", 2, pytest.approx(0.02)),
        ("frame", 3, pytest.approx(0.04)),
        ("mark", "a_done", pytest.approx(0.06)),  # all of segment a is on the wire
        ("frame", 4, pytest.approx(0.06)),
        ("frame", 4, pytest.approx(0.08)),  # the padded partial frame
        ("mark", "b_done", pytest.approx(0.10)),
        ("frame", None, pytest.approx(0.10)),
    ]
    assert [e[1] for e in events if e[0] == "mark"] == ["start", "a_done", "b_done"]


def test_markers_never_fire_after_interrupt() -> None:
    async def main() -> tuple[list[str], Wire]:
        speaker = Speaker(8000)
        fired: list[str] = []
        g = speaker.generation
        speaker.enqueue(b"".join(frame(i) for i in range(10)), g)
        speaker.mark(lambda t: fired.append("old_end"), g)
        wire = Wire()

        def barge_in() -> None:
            new = speaker.interrupt()
            speaker.enqueue(frame(99), new)
            speaker.mark(lambda t: fired.append("new_end"), new)

        loop().call_at(0.05, barge_in)
        await pace_for(speaker, wire, 0.5)
        return fired, wire

    fired, wire = run(main)
    assert fired == ["new_end"]
    assert wire.audio()[-1] == frame(99)


def test_a_failing_marker_callback_does_not_stop_the_pacer() -> None:
    def boom(_t: float) -> None:
        raise RuntimeError("session bug")

    async def main() -> Wire:
        speaker = Speaker(8000)
        g = speaker.generation
        speaker.enqueue(frame(1), g)
        speaker.mark(boom, g)
        speaker.enqueue(frame(2), g)
        wire = Wire()
        await pace_for(speaker, wire, 0.21)
        return wire

    with capture_logs() as logs:
        wire = run(main)
    assert wire.audio() == [frame(1), frame(2)]
    assert len(wire.frames) == 11  # still one frame per tick
    assert [e["event"] for e in logs] == ["marker_callback_failed"]


# --- pacing: absolute deadline, no drift, no catch-up burst ---------------------------------


def test_slow_writes_do_not_drift() -> None:
    # Each write takes 5 ms: a pacer sleeping a relative 20 ms would drift to 25 ms per frame.
    async def slow(_index: int) -> None:
        await asyncio.sleep(0.005)

    async def main() -> Wire:
        wire = Wire(slow)
        await pace_for(Speaker(8000), wire, 10.001)
        return wire

    wire = run(main)
    assert len(wire.frames) == 501
    assert wire.times[-1] == pytest.approx(10.0, abs=EPS)
    assert max(abs(g - FRAME_S) for g in wire.gaps()) < EPS


@pytest.mark.parametrize("stall_s", [0.07, 0.2, 1.0])
@pytest.mark.parametrize("kind", ["await", "cpu"])
def test_stall_is_followed_by_a_re_anchor_not_a_burst(stall_s: float, kind: str) -> None:
    async def stall_once(index: int) -> None:
        if index == 10:
            if kind == "await":
                await asyncio.sleep(stall_s)  # e.g. drain() blocked on a full socket
            else:
                loop().stall(stall_s)  # the process was descheduled

    async def main() -> tuple[Wire, Speaker]:
        speaker = Speaker(8000)
        speaker.enqueue(b"".join(frame(i) for i in range(200)), speaker.generation)
        wire = Wire(stall_once)
        await pace_for(speaker, wire, 2.001)
        return wire, speaker

    wire, speaker = run(main)
    gaps = wire.gaps()
    assert gaps[10] == pytest.approx(stall_s, abs=EPS)  # the stall itself
    assert all(g == pytest.approx(FRAME_S, abs=EPS) for g in gaps[:10] + gaps[11:])
    assert not has_burst(wire.times)
    assert speaker.stalls == 1
    # Frames lost to the stall are not made up: count == elapsed / 20 ms (+1 for t = 0).
    assert len(wire.frames) == round((2.0 - stall_s) / FRAME_S) + 2
    # Audio continues in order; nothing skipped, nothing repeated.
    assert wire.audio() == [frame(i) for i in range(len(wire.frames))]


@pytest.mark.parametrize("stall_s", [0.03, 0.07, 0.2])
def test_stall_while_the_pacer_sleeps_is_not_followed_by_a_burst(stall_s: float) -> None:
    # The process is descheduled while the pacer waits for its next tick, so it wakes up
    # late. Lateness must be judged after the sleep, not only before it.
    async def main() -> tuple[Wire, Speaker]:
        speaker = Speaker(8000)
        speaker.enqueue(b"".join(frame(i) for i in range(200)), speaker.generation)
        wire = Wire()
        loop().call_at(0.205, loop().stall, stall_s)  # between tick 10 and tick 11
        await pace_for(speaker, wire, 2.001)
        return wire, speaker

    wire, speaker = run(main)
    times = wire.times
    # Never 3 frames within less than one frame period (a 2-frame catch-up is allowed only
    # when less than a frame late, by design, to keep 50 frames/s).
    spans = [times[i + 2] - times[i] for i in range(len(times) - 2)]
    assert min(spans) >= FRAME_S - EPS
    late_s = 0.205 + stall_s - 0.22
    if late_s > FRAME_S:
        # Re-anchored at the late wake-up: one frame then, then every 20 ms again.
        assert speaker.stalls == 1
        assert times[11] == pytest.approx(0.205 + stall_s, abs=EPS)
        assert all(g == pytest.approx(FRAME_S, abs=EPS) for g in wire.gaps()[11:])
    assert wire.audio() == [frame(i) for i in range(len(times))]


def test_short_stall_keeps_the_original_grid() -> None:
    # Late by less than a frame: write at once, then back on the absolute grid.
    async def stall_once(index: int) -> None:
        if index == 10:
            await asyncio.sleep(0.03)

    async def main() -> tuple[Wire, Speaker]:
        speaker = Speaker(8000)
        wire = Wire(stall_once)
        await pace_for(speaker, wire, 1.001)
        return wire, speaker

    wire, speaker = run(main)
    assert speaker.stalls == 0
    assert wire.times[11] == pytest.approx(0.23, abs=EPS)
    assert all(t == pytest.approx(i * FRAME_S, abs=EPS) for i, t in enumerate(wire.times) if i > 11)
    assert not has_burst(wire.times)


def test_burst_detector_can_fail() -> None:
    assert has_burst([0.0, 0.02, 0.0201, 0.0202, 0.06])
    assert not has_burst([0.0, 0.02, 0.0201, 0.04, 0.06])


# --- back-pressure ----------------------------------------------------------------------------


def test_wait_for_room_blocks_until_the_pacer_drains() -> None:
    async def main() -> tuple[float, int]:
        speaker = Speaker(8000, max_buffered_s=0.1)  # 5 frames
        g = speaker.generation
        assert speaker.enqueue(b"".join(frame(i) for i in range(8)), g)
        assert speaker.buffered_s == pytest.approx(0.16)
        waiter = asyncio.create_task(speaker.wait_for_room())
        await asyncio.sleep(0.001)
        assert not waiter.done()  # full: the producer must wait
        wire = Wire()
        pacer = asyncio.create_task(speaker.run(wire))
        await waiter
        woke_at = loop().time()
        written = len(wire.frames)
        pacer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pacer
        return woke_at, written

    woke_at, written = run(main)
    # 8 queued, room below 5: after the 4th frame (written at 0.001 + 3 * 20 ms).
    assert written == 4
    assert woke_at == pytest.approx(0.061, abs=EPS)


def test_interrupt_releases_a_waiting_producer() -> None:
    async def main() -> bool:
        speaker = Speaker(8000, max_buffered_s=0.1)
        speaker.enqueue(bytes(range(256)) * 20, speaker.generation)
        waiter = asyncio.create_task(speaker.wait_for_room())
        await asyncio.sleep(0.01)
        blocked = not waiter.done()
        speaker.interrupt()
        await asyncio.wait_for(waiter, 0.001)
        return blocked

    assert run(main)


def test_room_is_free_below_the_limit() -> None:
    async def main() -> None:
        speaker = Speaker(8000, max_buffered_s=0.1)
        speaker.enqueue(frame(1) * 4, speaker.generation)
        await asyncio.wait_for(speaker.wait_for_room(), 0.001)

    run(main)


# --- lead-in silence ---------------------------------------------------------------------------


def test_the_first_audio_after_silence_starts_without_the_voices_lead_in() -> None:
    # A reply as Piper renders it: 60 ms of near-silence (-90 dBFS), then the voice.
    quiet = b"\x01\x00" * 480
    voice = frame(7) * 3
    speaker = Speaker(8000)
    generation = speaker.generation
    assert speaker.enqueue(quiet + voice, generation, trim_lead_in=True)
    # 10 ms of lead-in kept before the first loud sample, then the voice as it was
    assert speaker.queued_audio_s == pytest.approx(0.010 + 0.060)
    # The next sentence queued behind it keeps its own pause (the line is not silent).
    assert speaker.enqueue(quiet + voice, generation, trim_lead_in=True)
    assert speaker.queued_audio_s == pytest.approx(0.070 + 0.120)
    speaker.end_segment(generation)

    async def main() -> Wire:
        wire = Wire()
        await pace_for(speaker, wire, 0.2)
        return wire

    audio = b"".join(run(main).audio())
    assert audio.startswith(b"\x01\x00" * 80 + voice + quiet + voice)


def test_streamed_audio_is_not_trimmed_when_the_queue_runs_dry() -> None:
    # An echo or relay queues 20 ms pieces as they arrive, so the queue is often empty
    # between them; a piece that starts quiet (a waveform crossing zero) is not a lead-in.
    speaker = Speaker(8000)
    piece = b"\x01\x00" * 100 + frame(7)[:120]  # 20 ms: quiet, then loud
    assert speaker.enqueue(piece, speaker.generation)
    assert speaker.queued_audio_s == pytest.approx(0.020)
    assert list(speaker._queue) == [piece]
    # The same piece as speech on a silent line would have been cut.
    other = Speaker(8000)
    assert other.enqueue(piece, other.generation, trim_lead_in=True)
    assert other.queued_audio_s < 0.020


def test_silence_asked_for_on_a_silent_line_is_kept() -> None:
    speaker = Speaker(8000)
    assert speaker.enqueue(bytes(800), speaker.generation, trim_lead_in=True)
    assert speaker.queued_audio_s == pytest.approx(0.05)


# --- send-ahead (a PBX that queues and re-times: chan_websocket) -------------------------------


def _ahead_speaker(frames: int) -> Speaker:
    speaker = Speaker(8000)
    speaker.send_ahead_s = 0.1
    for i in range(frames):
        speaker.enqueue(frame(i + 1), speaker.generation)
    return speaker


def paced(speaker: Speaker, seconds: float) -> Wire:
    """What ``speaker`` writes in ``seconds`` of virtual time."""
    wire = Wire()
    run(lambda: pace_for(speaker, wire, seconds))
    return wire


def test_send_ahead_keeps_that_much_speech_queued_then_one_frame_a_tick() -> None:
    wire = paced(_ahead_speaker(20), 0.205)
    audio = [(t, pcm) for t, pcm, silent in wire.frames if not silent]
    assert [pcm for _, pcm in audio] == [frame(i + 1) for i in range(16)]  # in order
    # The frame for now and 100 ms more at once, then one per tick on the grid.
    assert [t for t, _ in audio[:6]] == pytest.approx([0.0] * 6, abs=EPS)
    assert [t for t, _ in audio[6:]] == pytest.approx([0.02 * i for i in range(1, 11)], abs=EPS)
    assert not any(silent for _, _, silent in wire.frames)  # no silence while ahead


def test_send_ahead_refills_after_a_stall_and_sends_no_silence_ahead() -> None:
    async def main() -> Wire:
        speaker = _ahead_speaker(12)

        async def on_write(index: int) -> None:
            if index == 7:  # the write at t = 0.04 takes the loop 60 ms
                loop().stall(0.06)

        wire = Wire(on_write)
        await pace_for(speaker, wire, 0.4)
        return wire

    wire = run(main)
    audio = [(round(t, 3), pcm) for t, pcm, silent in wire.frames if not silent]
    assert [pcm for _, pcm in audio] == [frame(i + 1) for i in range(12)]
    # After the stall (0.04 -> 0.1: three frames played meanwhile) the next tick sends the
    # three missing frames and its own: the PBX never ran dry.
    times = [t for t, _ in audio]
    assert times[8:11] == pytest.approx([0.1] * 3, abs=EPS)
    # Nothing left to say: silence is not sent ahead, one silence frame a tick afterwards.
    silent = [t for t, _, s in wire.frames if s]
    assert silent and all(
        b - a == pytest.approx(FRAME_S, abs=EPS) for a, b in zip(silent, silent[1:], strict=False)
    )


@contextlib.asynccontextmanager
async def pacing(
    speaker: Speaker, wire: Callable[[bytes, bool], Awaitable[None]]
) -> AsyncIterator[None]:
    """``speaker``'s pacer runs into ``wire`` for the body of the block."""
    task = asyncio.create_task(speaker.run(wire))
    yield
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def pace_with_a_pause(
    speaker: Speaker,
    wire: Callable[[bytes, bool], Awaitable[None]],
    pause_at_s: float,
    on_pause: Callable[[], None] = lambda: None,
) -> None:
    """Pace ``speaker``, pause it at ``pause_at_s`` (then ``on_pause()``), resume 100 ms
    later and pace 400 ms more."""
    async with pacing(speaker, wire):
        await asyncio.sleep(pause_at_s)
        speaker.pause()
        on_pause()
        await asyncio.sleep(0.1)
        speaker.resume()
        await asyncio.sleep(0.4)


def test_pause_takes_back_what_was_sent_ahead_and_resume_sends_it_again() -> None:
    async def main() -> tuple[Wire, int]:
        speaker = _ahead_speaker(20)
        flushes = 0

        def flush() -> None:
            nonlocal flushes
            flushes += 1

        speaker.on_flush = flush
        wire = Wire()
        # At 0.05 frame 3 plays (0.04-0.06) and up to frame 8 has been sent.
        await pace_with_a_pause(speaker, wire, 0.05)
        return wire, flushes

    wire, flushes = run(main)
    assert flushes == 1  # the transport drops what Asterisk holds
    audio = wire.audio()
    sent_before_pause = audio[:8]
    assert sent_before_pause == [frame(i + 1) for i in range(8)]
    # After the resume the reply goes on from the frame playing at the pause (frame 3 ends
    # at 0.06): frames 4-8 are sent again, then the rest; none is lost.
    assert audio[8:] == [frame(i + 1) for i in range(3, 20)]


def test_an_interrupt_drops_what_was_sent_ahead_too() -> None:
    async def main() -> Wire:
        speaker = _ahead_speaker(20)
        wire = Wire()
        async with pacing(speaker, wire):
            await asyncio.sleep(0.05)
            speaker.interrupt()
            await asyncio.sleep(0.2)
        return wire

    audio = run(main).audio()
    assert audio == [frame(i + 1) for i in range(8)]  # nothing of the reply after it


def test_a_marker_after_speech_sent_ahead_fires_when_it_has_been_played() -> None:
    """The end of a reply is when the caller has heard it, not when its last frame left: a
    hang-up after "goodbye" must not cut the audio still in Asterisk's queue."""

    async def main() -> tuple[Wire, list[tuple[float, float]]]:
        speaker = _ahead_speaker(10)  # 200 ms of speech, all of it sent by t = 0.08
        fired: list[tuple[float, float]] = []
        speaker.mark(lambda at_s: fired.append((at_s, loop().time())), speaker.generation)
        wire = Wire()
        await pace_for(speaker, wire, 0.4)
        return wire, fired

    wire, fired = run(main)
    last_sent_s = max(t for t, _, silent in wire.frames if not silent)
    assert last_sent_s == pytest.approx(0.08, abs=EPS)
    assert len(fired) == 1
    at_s, called_s = fired[0]
    assert at_s == pytest.approx(0.2, abs=EPS)  # the 10th frame ends playing at 0.2
    assert 0.2 - EPS <= called_s < 0.2 + FRAME_S + EPS


def _two_sentences(events: list[str]) -> Speaker:
    """Speech sent 100 ms ahead: 3 frames, a marker ("first sentence heard"), 9 frames."""
    speaker = Speaker(8000)
    speaker.send_ahead_s = 0.1
    gen = speaker.generation
    for i in range(3):
        speaker.enqueue(frame(i + 1), gen)
    speaker.mark(lambda _at: events.append("first sentence heard"), gen)
    for i in range(3, 12):
        speaker.enqueue(frame(i + 1), gen)
    return speaker


def test_a_pause_puts_markers_sent_past_back_in_their_place() -> None:
    async def main() -> tuple[list[str], Wire]:
        events: list[str] = []
        speaker = _two_sentences(events)
        wire = Wire()
        # At 0.03 frame 2 plays; frames 3-7 and the marker have been sent or passed.
        await pace_with_a_pause(speaker, wire, 0.03, lambda: events.append("paused"))
        return events, wire

    events, wire = run(main)
    # Frame 3 had not been heard at the pause, so neither had the end of the first sentence.
    assert events == ["paused", "first sentence heard"]
    assert wire.audio()[7:] == [frame(i + 1) for i in range(2, 12)]


def test_speech_sent_ahead_counts_as_still_to_be_heard() -> None:
    async def main() -> tuple[bool, float, bool, float]:
        speaker = _ahead_speaker(10)  # all sent by t = 0.08, heard until 0.2
        async with pacing(speaker, Wire()):
            await asyncio.sleep(0.11)
            during = speaker.busy, speaker.buffered_s
            await asyncio.sleep(0.15)
            after = speaker.busy, speaker.buffered_s
        return (*during, *after)

    busy, buffered_s, busy_after, buffered_after_s = run(main)
    assert busy and buffered_s == pytest.approx(0.09, abs=EPS)
    assert not busy_after and buffered_after_s == 0.0


class MarkingPbx:
    """A PBX that queues what it is sent and plays it 20 ms a frame from ``start_s`` (later
    than the pacer's clock reckons when ``late_s``), reporting each mark as it reaches the
    head of its queue (as chan_websocket's MEDIA_MARK_PROCESSED); ``report=False``: never."""

    def __init__(self, speaker: Speaker, *, late_s: float = 0.0, report: bool = True) -> None:
        self.speaker = speaker
        self.late_s = late_s
        self.report = report
        self.sent: list[str | bytes] = []
        self.play_end_s = 0.0
        self.tasks: list[asyncio.Task[None]] = []

    async def write(self, pcm: bytes, is_silence: bool) -> None:
        if is_silence:
            return
        now_s = loop().time()
        self.sent.append(pcm)
        self.play_end_s = max(self.play_end_s, now_s + self.late_s) + FRAME_S

    async def write_mark(self, mark_id: str) -> None:
        self.sent.append(mark_id)
        if self.report:
            at_s = max(self.play_end_s, loop().time())
            self.tasks.append(asyncio.create_task(self._report(mark_id, at_s)))

    async def _report(self, mark_id: str, at_s: float) -> None:
        await asyncio.sleep(at_s - loop().time())
        self.speaker.mark_played(mark_id, loop().time())


def _marking(late_s: float = 0.0, report: bool = True) -> tuple[Speaker, MarkingPbx]:
    speaker = _ahead_speaker(10)  # 200 ms of speech, all of it sent by t = 0.08
    pbx = MarkingPbx(speaker, late_s=late_s, report=report)
    speaker.mark_writer = pbx.write_mark
    return speaker, pbx


def test_a_marker_fires_when_the_pbx_reports_its_mark_played() -> None:
    """With a PBX that reports marks the end of a reply is when it says so: here it plays
    60 ms later than the pacer reckons, and the marker waits for it."""

    async def main() -> tuple[list[float], MarkingPbx, Speaker]:
        speaker, pbx = _marking(late_s=0.06)
        fired: list[float] = []
        speaker.mark(fired.append, speaker.generation)
        await pace_for(speaker, pbx.write, 0.5)
        return fired, pbx, speaker

    fired, pbx, speaker = run(main)
    assert pbx.sent[:10] == [frame(i + 1) for i in range(10)] and pbx.sent[10] == "m1"
    assert fired == [pytest.approx(0.26, abs=EPS)]  # not 0.2, the pacer's own reckoning
    assert (speaker.marks_sent, speaker.marks_unconfirmed) == (1, 0)


def test_a_mark_never_reported_fires_on_the_clock_after_the_grace() -> None:
    async def main() -> tuple[list[float], Speaker]:
        speaker, pbx = _marking(report=False)
        speaker.mark_grace_s = 0.1
        fired: list[float] = []
        speaker.mark(lambda at_s: fired.append(loop().time()), speaker.generation)
        await pace_for(speaker, pbx.write, 0.5)
        return fired, speaker

    fired, speaker = run(main)
    assert len(fired) == 1 and 0.3 - EPS <= fired[0] < 0.3 + FRAME_S + EPS
    assert speaker.marks_unconfirmed == 1


def test_a_pause_drops_the_mark_and_the_marker_goes_out_again_with_a_new_one() -> None:
    """The flush at a pause drops the mark at the PBX (no report ever comes for it); the
    marker goes back in its place and is marked anew when its frames are sent again."""

    async def main() -> tuple[list[str], MarkingPbx, Speaker]:
        events: list[str] = []
        speaker = _two_sentences(events)
        pbx = MarkingPbx(speaker, report=False)
        speaker.mark_writer = pbx.write_mark

        def on_pause() -> None:
            events.append("paused")
            speaker.mark_played("m1", loop().time())  # a report of the flushed mark: ignored
            pbx.report = True

        await pace_with_a_pause(speaker, pbx.write, 0.03, on_pause)
        return events, pbx, speaker

    events, pbx, speaker = run(main)
    assert events == ["paused", "first sentence heard"]
    assert [m for m in pbx.sent if isinstance(m, str)] == ["m1", "m2"]
    assert (speaker.marks_sent, speaker.marks_unconfirmed) == (2, 0)
