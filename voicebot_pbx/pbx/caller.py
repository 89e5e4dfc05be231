"""A simulated caller that behaves as Asterisk's AudioSocket side does.

Used by ``voicebot-pbx call``, the tests and the benchmarks. Like ``res_audiosocket.c`` it
connects as the TCP client, sends the UUID first, then one slin frame every 20 ms in real
time (silence between utterances, as a live channel does), DTMF as kind 0x03, and hangs up
with plain EOF. It records every frame the bot sends with its arrival time, so it can
measure, on the PBX side of the socket, the time from the end of caller speech to the first
non-silent bot frame, the outbound frame gaps, and barge-in reaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from voicebot_pbx.audio import FRAME_MS, frame_bytes, rms_dbfs, split_frames
from voicebot_pbx.pbx import audiosocket_codec as wire

SPEECH_FLOOR_DBFS = -50.0
# A quiet run this long (300 ms) means the bot stopped; pauses between Piper's sentences
# are shorter (measured: at most ~240 ms).
QUIET_FRAMES = 15


@dataclass(frozen=True, slots=True)
class Say:
    pcm: bytes
    # Start this long after the bot's reply began (barge-in) instead of after it finished.
    barge_in_after_s: float | None = None
    # Asked when the step comes (after the previous reply): False skips it. A caller who
    # answers only what the bot asked (a benchmark's closure reads the bot's call record).
    only_if: Callable[[], bool] | None = None


@dataclass(frozen=True, slots=True)
class SendDtmf:
    digits: str
    gap_s: float = 0.25
    # As Say's: asked when the step comes; False skips it.
    only_if: Callable[[], bool] | None = None


@dataclass(frozen=True, slots=True)
class Pause:
    seconds: float


Step = Say | SendDtmf | Pause


@dataclass(slots=True)
class TurnTiming:
    step: int
    speech_start_s: float
    speech_end_s: float
    first_reply_frame_s: float | None = None
    # Barge-in: when the bot went quiet (start of a quiet run of QUIET_FRAMES) while the
    # caller talked, and any non-silent frame after that before the caller finished
    # (stale frames; must be zero).
    bot_silent_s: float | None = None
    stale_frames: int = 0

    @property
    def latency_ms(self) -> float | None:
        if self.first_reply_frame_s is None:
            return None
        return (self.first_reply_frame_s - self.speech_end_s) * 1000.0

    @property
    def barge_in_ms(self) -> float | None:
        if self.bot_silent_s is None:
            return None
        return (self.bot_silent_s - self.speech_start_s) * 1000.0


@dataclass(slots=True)
class CallResult:
    call_id: str
    rate_hz: int
    frames: list[tuple[float, bool]] = field(default_factory=list)  # (arrival_s, non_silent)
    bot_pcm: bytearray = field(default_factory=bytearray)
    turns: list[TurnTiming] = field(default_factory=list)
    got_hangup: bool = False
    closed_by_bot: bool = False
    bad_frames: int = 0
    greeting_heard: bool = False

    def gaps_ms(self) -> list[float]:
        times = [t for t, _ in self.frames]
        return [(b - a) * 1000.0 for a, b in zip(times, times[1:], strict=False)]

    def gap_stats_ms(self) -> dict[str, float]:
        gaps = sorted(self.gaps_ms())
        if not gaps:
            return {}
        return {
            "p50": statistics.median(gaps),
            "p99": gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))],
            "max": gaps[-1],
            "count": float(len(gaps)),
        }


def speech_bounds(pcm: bytes, rate_hz: int) -> tuple[float, float]:
    """Seconds from the start of ``pcm`` to its first and past its last non-silent frame."""
    frames = split_frames(pcm, rate_hz)
    loud = [i for i, f in enumerate(frames) if rms_dbfs(f) > SPEECH_FLOOR_DBFS]
    if not loud:
        return 0.0, 0.0
    return loud[0] * FRAME_MS / 1000.0, (loud[-1] + 1) * FRAME_MS / 1000.0


class SimulatedCaller:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        rate_hz: int = 8000,
        call_uuid: uuid.UUID | None = None,
        reply_gap_s: float = 0.8,
        reply_timeout_s: float = 15.0,
        greeting_timeout_s: float = 15.0,
        stream_silence: bool = True,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.rate_hz = rate_hz
        self.call_uuid = call_uuid or uuid.uuid4()
        self.reply_gap_s = reply_gap_s
        self.reply_timeout_s = reply_timeout_s
        self.greeting_timeout_s = greeting_timeout_s
        self.stream_silence = stream_silence
        self.connect_timeout_s = connect_timeout_s
        self.result = CallResult(str(self.call_uuid), rate_hz)
        self._frame_s = FRAME_MS / 1000.0
        self._silence = bytes(frame_bytes(rate_hz))
        self._last_voice_s: float | None = None
        self._voice_event = asyncio.Event()
        self._closed = asyncio.Event()
        self._hanging_up = False  # we (the caller) closed first: EOF after it is not the bot's
        self._tick = 0
        self._origin_s = 0.0
        self._writer: asyncio.StreamWriter | None = None
        self._open_turn: TurnTiming | None = None
        self._quiet_since_s: float | None = None
        self._quiet_frames = 0

    # --- receiving -------------------------------------------------------------------

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        decoder = wire.Decoder()
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                now_s = loop.time()
                for message in decoder.feed(data):
                    match message:
                        case wire.Audio(_rate, pcm):
                            self._on_bot_frame(pcm, now_s)
                        case wire.Hangup():
                            self.result.got_hangup = True
                        case _:
                            # Asterisk would tear the call down on anything else.
                            self.result.bad_frames += 1
        except wire.ProtocolError:
            self.result.bad_frames += 1
        except (ConnectionError, OSError):
            pass
        finally:
            self.result.closed_by_bot = not self._hanging_up
            self._closed.set()

    def _on_bot_frame(self, pcm: bytes, now_s: float) -> None:
        voiced = rms_dbfs(pcm) > SPEECH_FLOOR_DBFS
        self.result.frames.append((now_s, voiced))
        self.result.bot_pcm += pcm
        if voiced:
            self._last_voice_s = now_s
            self._voice_event.set()
            self._quiet_since_s = None
            self._quiet_frames = 0
        else:
            if self._quiet_since_s is None:
                self._quiet_since_s = now_s
            self._quiet_frames += 1
        turn = self._open_turn
        if turn is None:
            return
        if voiced:
            if turn.bot_silent_s is not None and now_s < turn.speech_end_s:
                turn.stale_frames += 1
            if turn.first_reply_frame_s is None and now_s >= turn.speech_end_s:
                turn.first_reply_frame_s = now_s
        elif (
            turn.bot_silent_s is None
            and self._quiet_frames >= QUIET_FRAMES
            and self._quiet_since_s is not None
            and turn.speech_start_s <= now_s < turn.speech_end_s
        ):
            # The bot has been quiet for a while (longer than the pauses inside a reply):
            # it stopped when that quiet run began.
            turn.bot_silent_s = max(self._quiet_since_s, turn.speech_start_s)

    # --- sending ---------------------------------------------------------------------

    async def _send(self, message: bytes) -> None:
        assert self._writer is not None
        self._writer.write(message)
        await self._writer.drain()

    async def _tick_wait(self) -> None:
        loop = asyncio.get_running_loop()
        deadline_s = self._origin_s + self._tick * self._frame_s
        delay_s = deadline_s - loop.time()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        self._tick += 1

    async def _send_frame(self, pcm: bytes) -> None:
        await self._tick_wait()
        if not self._closed.is_set():
            await self._send(wire.encode_audio(pcm, self.rate_hz))

    async def _idle(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        end_s = loop.time() + seconds
        while loop.time() < end_s and not self._closed.is_set():
            if self.stream_silence:
                await self._send_frame(self._silence)
            else:
                await self._tick_wait()

    async def _wait_reply_done(self, since_s: float, timeout_s: float) -> bool:
        """Stream silence until the bot spoke after ``since_s`` and then went quiet."""
        loop = asyncio.get_running_loop()
        end_s = loop.time() + timeout_s
        while loop.time() < end_s and not self._closed.is_set():
            last = self._last_voice_s
            if last is not None and last >= since_s and loop.time() - last >= self.reply_gap_s:
                return True
            await self._idle(self._frame_s)
        return False

    async def _wait_reply_start(self, since_s: float, timeout_s: float) -> float | None:
        loop = asyncio.get_running_loop()
        end_s = loop.time() + timeout_s
        while loop.time() < end_s and not self._closed.is_set():
            last = self._last_voice_s
            if last is not None and last >= since_s:
                return last
            await self._idle(self._frame_s)
        return None

    async def _say(self, index: int, step: Say) -> None:
        start_off_s, end_off_s = speech_bounds(step.pcm, self.rate_hz)
        frames = split_frames(step.pcm, self.rate_hz)
        begin_s = self._origin_s + self._tick * self._frame_s
        turn = TurnTiming(index, begin_s + start_off_s, begin_s + end_off_s)
        self.result.turns.append(turn)
        self._open_turn = turn
        for frame in frames:
            if self._closed.is_set():
                return
            await self._send_frame(frame)

    async def run(self, steps: Sequence[Step], *, hangup_after_s: float = 0.0) -> CallResult:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        async with asyncio.timeout(self.connect_timeout_s):
            reader, writer = await asyncio.open_connection(self.host, self.port, family=family)
        self._writer = writer
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        receiver = asyncio.create_task(self._receive(reader))
        try:
            await self._send(wire.encode_uuid(self.call_uuid))
            self._origin_s = loop.time()
            self._tick = 0
            start_s = loop.time()
            # The greeting: wait for it to start and end (or time out).
            if await self._wait_reply_start(start_s, self.greeting_timeout_s) is not None:
                self.result.greeting_heard = True
                await self._wait_reply_done(start_s, self.reply_timeout_s)
            for index, step in enumerate(steps):
                if self._closed.is_set():
                    break
                if (
                    isinstance(step, Say | SendDtmf)
                    and step.only_if is not None
                    and not step.only_if()
                ):
                    continue
                following = steps[index + 1] if index + 1 < len(steps) else None
                barge_next = isinstance(following, Say) and following.barge_in_after_s is not None
                match step:
                    case Say(barge_in_after_s=None):
                        await self._say(index, step)
                        if not barge_next:  # a barge-in step waits for the reply to start
                            await self._wait_reply_done(loop.time(), self.reply_timeout_s)
                    case Say(barge_in_after_s=float(delay_s)):
                        onset = await self._wait_reply_start(loop.time(), self.reply_timeout_s)
                        if onset is not None:
                            await self._idle(max(0.0, onset + delay_s - loop.time()))
                        await self._say(index, step)
                        await self._wait_reply_done(loop.time(), self.reply_timeout_s)
                    case SendDtmf(digits=digits, gap_s=gap_s):
                        for digit in digits:
                            await self._send(wire.encode_dtmf(digit))
                            await self._idle(gap_s)
                        await self._wait_reply_done(loop.time(), self.reply_timeout_s)
                    case Pause(seconds):
                        await self._idle(seconds)
            if hangup_after_s > 0:
                await self._idle(hangup_after_s)
        finally:
            self._open_turn = None
            self._hanging_up = not self._closed.is_set()
            with contextlib.suppress(ConnectionError, OSError):
                writer.close()
                async with asyncio.timeout(2.0):
                    await writer.wait_closed()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await receiver
            receiver.cancel()
        return self.result
