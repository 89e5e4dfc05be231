"""The real AudioSocket server on 127.0.0.1:0 against a peer that behaves as Asterisk does.

Good calls use ``SimulatedCaller`` (UUID first, real-time 20 ms frames, EOF hang-up); bad
ones use raw sockets. Pacing is measured at the peer, statistically: median gap ~20 ms, no
burst (several frames within a couple of ms), frame count ~ elapsed / 20 ms. Nothing here
asserts a speed: on a loaded machine frames may be late, never early or bunched.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import statistics
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pytest
import structlog
from structlog.testing import capture_logs

from voicebot_pbx.config import ServerConfig
from voicebot_pbx.pbx import audiosocket_codec as wire
from voicebot_pbx.pbx.audiosocket import AudioSocketServer
from voicebot_pbx.pbx.caller import Pause, Say, SendDtmf, SimulatedCaller
from voicebot_pbx.pbx.media import AudioIn, CallEnded, CallMedia, DtmfIn

T = TypeVar("T")
FRAME_S = 0.02
AUDIO_KINDS = frozenset(range(0x10, 0x19))
HANGUP = 0x00


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())


# --- pacing statistics -------------------------------------------------------------------------


def has_burst(times: list[float], run_frames: int = 4, within_s: float = 0.003) -> bool:
    """``run_frames`` consecutive frames within ``within_s`` at the peer.

    Up to 3 can bunch legitimately on a loaded machine: a pacer woken up to a frame late
    writes at once and then the next grid frame right after (2 frames, by design: it keeps
    50 frames/s), and the peer may not have read the frame before them yet. A catch-up burst
    after a stall is longer (test_speaker.py checks the pacer itself exactly, in virtual time).
    """
    return any(
        times[i + run_frames - 1] - times[i] < within_s for i in range(len(times) - run_frames + 1)
    )


def pacing_problems(times: list[float], min_frames: int = 20) -> list[str]:
    """Empty when frames arrived one per 20 ms: the robust, statistical version."""
    if len(times) < min_frames:
        return [f"only {len(times)} frames"]
    gaps_ms = [(b - a) * 1000.0 for a, b in zip(times, times[1:], strict=False)]
    problems = []
    median_ms = statistics.median(gaps_ms)
    if not 17.0 <= median_ms <= 23.0:
        problems.append(f"median gap {median_ms:.1f} ms")
    if has_burst(times):
        problems.append("a burst: 4 frames within 3 ms")
    expected = (times[-1] - times[0]) / FRAME_S + 1
    if len(times) > expected + 2:
        problems.append(f"{len(times)} frames in a span that holds {expected:.0f}: catching up")
    if len(times) < 0.85 * expected:
        problems.append(f"{len(times)} frames in a span that holds {expected:.0f}: frames missing")
    return problems


def test_pacing_checks_can_fail() -> None:
    good = [i * FRAME_S for i in range(100)]
    assert pacing_problems(good) == []
    jittered = [t + 0.004 * np.sin(i) for i, t in enumerate(good)]  # late and early, +-4 ms
    assert pacing_problems(jittered) == []
    burst = good[:50] + [good[49] + 0.0005 * k for k in range(1, 6)] + good[55:]
    assert any("burst" in p for p in pacing_problems(burst))
    late_pair = good[:50] + [good[50] + 0.0199, good[51] + 0.0001, good[51] + 0.0002] + good[53:]
    assert pacing_problems(late_pair) == []
    assert any("median" in p for p in pacing_problems([i * 0.01 for i in range(100)]))
    assert any("missing" in p for p in pacing_problems(good[::2] + [good[-1] + 1.0]))


# --- a small bot and raw peers -----------------------------------------------------------------


@dataclass
class CallLog:
    call: CallMedia
    events: list[Any] = field(default_factory=list)
    rates: set[int] = field(default_factory=set)
    returned: bool = False
    cancelled: bool = False

    @property
    def digits(self) -> str:
        return "".join(e.digit for e in self.events if isinstance(e, DtmfIn))

    @property
    def ended(self) -> CallEnded | None:
        return next((e for e in self.events if isinstance(e, CallEnded)), None)


class Bot:
    """Echo (or silence) handler; logs what every call saw."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.calls: dict[str, CallLog] = {}

    async def __call__(self, call: CallMedia) -> None:
        log = self.calls[call.call_id] = CallLog(call)
        try:
            while True:
                event = await call.inbound.get()
                log.events.append(event)
                if isinstance(event, CallEnded):
                    break
                if isinstance(event, AudioIn):
                    log.rates.add(event.rate_hz)
                    if self.echo:
                        call.speaker.enqueue(event.pcm, call.speaker.generation)
        except asyncio.CancelledError:
            log.cancelled = True
            raise
        log.returned = True


@dataclass
class Received:
    at_s: float
    kind: int
    payload: bytes


class RawPeer:
    """A TCP client that sends what it is told and records every message the server sends.

    It parses the server's bytes itself (not with the decoder under test).
    """

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.eof = asyncio.Event()
        self.leftover = b""
        self.addr = ""
        self._rx: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self, host: str, port: int) -> RawPeer:
        reader, self._writer = await asyncio.open_connection(host, port)
        sockname = self._writer.get_extra_info("sockname")
        self.addr = f"{sockname[0]}:{sockname[1]}"
        self._rx = asyncio.create_task(self._receive(reader))
        return self

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        buffer = b""
        try:
            while data := await reader.read(65536):
                buffer += data
                while len(buffer) >= 3:
                    length = int.from_bytes(buffer[1:3], "big")
                    if len(buffer) < 3 + length:
                        break
                    self.received.append(Received(loop.time(), buffer[0], buffer[3 : 3 + length]))
                    buffer = buffer[3 + length :]
        except ConnectionError:
            pass
        finally:
            self.leftover = buffer
            self.eof.set()

    async def send(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    def write_eof(self) -> None:
        assert self._writer is not None
        with contextlib.suppress(OSError):
            self._writer.write_eof()

    async def wait_eof(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self.eof.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
        if self._rx is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._rx
            self._rx.cancel()

    def kinds(self) -> set[int]:
        return {m.kind for m in self.received}

    def audio_times(self) -> list[float]:
        return [m.at_s for m in self.received if m.kind in AUDIO_KINDS]


async def stream_frames(peer: RawPeer, frames: list[bytes], rate_hz: int) -> None:
    """Send audio frames in real time on an absolute 20 ms grid, as Asterisk does."""
    loop = asyncio.get_running_loop()
    origin = loop.time()
    for index, pcm in enumerate(frames):
        await asyncio.sleep(max(0.0, origin + index * FRAME_S - loop.time()))
        await peer.send(wire.encode_audio(pcm, rate_hz))


def tone_frames(seconds: float, rate_hz: int, freq_hz: float = 440.0) -> list[bytes]:
    samples = int(seconds * rate_hz)
    signal = 0.3 * np.sin(2 * np.pi * freq_hz * np.arange(samples) / rate_hz)
    pcm = (signal * 32767).astype("<i2").tobytes()
    size = rate_hz // 50 * 2
    return [pcm[i : i + size] for i in range(0, len(pcm) - size + 1, size)]


@contextlib.asynccontextmanager
async def serving(
    handler: Callable[[CallMedia], Awaitable[None]],
    host: str = "127.0.0.1",
    **settings: Any,
) -> AsyncIterator[AudioSocketServer]:
    config = ServerConfig(host=host, port=0, **settings)
    server = AudioSocketServer(config, handler)
    await server.start()
    try:
        yield server
    finally:
        await server.close(grace_s=2.0)


async def eventually(check: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not check():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.01)
    return True


def only_this_task() -> bool:
    return asyncio.all_tasks() == {asyncio.current_task()}


def warnings_for(logs: list[dict[str, Any]], *, peer: str = "", call_id: str = "") -> list[Any]:
    return [
        (e["event"], e.get("reason"))
        for e in logs
        if e.get("log_level") in ("warning", "error", "critical")
        and ((peer and e.get("peer") == peer) or (call_id and e.get("call_id") == call_id))
    ]


def capture() -> contextlib.AbstractContextManager[list[dict[str, Any]]]:
    # With call_id bound by the server for every line of a call.
    return capture_logs(processors=[structlog.contextvars.merge_contextvars])


def good_caller(port: int, host: str = "127.0.0.1", **kwargs: Any) -> SimulatedCaller:
    kwargs.setdefault("greeting_timeout_s", 0.0)  # our test bots do not greet
    kwargs.setdefault("reply_timeout_s", 0.5)
    return SimulatedCaller(host, port, **kwargs)


# --- good calls ---------------------------------------------------------------------------------


def test_simulated_call_is_paced_one_frame_per_20_ms_at_the_peer() -> None:
    async def main() -> None:
        with capture() as logs:
            async with serving(Bot(echo=True)) as server:
                result = await good_caller(server.port).run([Pause(2.0)])
                assert await eventually(lambda: not server.calls and only_this_task())
        assert result.bad_frames == 0
        assert pacing_problems([t for t, _ in result.frames]) == []
        assert warnings_for(logs, call_id=result.call_id) == []

    run(main)


def test_echo_call_plays_the_reply_paced() -> None:
    async def main() -> None:
        bot = Bot(echo=True)
        with capture() as logs:
            async with serving(bot) as server:
                peer = await RawPeer().connect("127.0.0.1", server.port)
                call_id = uuid.uuid4()
                await peer.send(wire.encode_uuid(call_id))
                await stream_frames(peer, tone_frames(1.5, 8000), 8000)
                await stream_frames(peer, [bytes(320)] * 40, 8000)
                await peer.close()
                assert await eventually(lambda: not server.calls and only_this_task())
        assert peer.kinds() == {0x10}
        audio = [m for m in peer.received if m.kind == 0x10]
        assert {len(m.payload) for m in audio} == {320}
        assert pacing_problems(peer.audio_times()) == []
        voiced = [m for m in audio if any(m.payload)]
        assert len(voiced) == len(tone_frames(1.5, 8000))  # the tone came back, once
        assert bot.calls[str(call_id)].rates == {8000}
        assert warnings_for(logs, peer=peer.addr, call_id=str(call_id)) == []

    run(main)


def test_a_conditional_step_is_said_only_when_its_condition_holds() -> None:
    """``Say(only_if=...)`` and ``SendDtmf(only_if=...)``: asked when the step comes; False
    skips it (no turn, no audio, no keys)."""

    async def main() -> None:
        tone = b"".join(tone_frames(0.4, 8000))
        asked: list[str] = []

        def ask(name: str, answer: bool) -> Callable[[], bool]:
            def condition() -> bool:
                asked.append(name)
                return answer

            return condition

        bot = Bot(echo=True)
        async with serving(bot) as server:
            caller = good_caller(server.port, reply_gap_s=0.2, reply_timeout_s=1.0)
            result = await caller.run(
                [
                    Say(tone),
                    Say(tone, only_if=ask("skipped", False)),
                    Say(tone, only_if=ask("said", True)),
                    SendDtmf("1", only_if=ask("not keyed", False)),
                    SendDtmf("2", only_if=ask("keyed", True)),
                ]
            )
            assert await eventually(lambda: not server.calls)
        assert asked == ["skipped", "said", "not keyed", "keyed"]
        assert [t.step for t in result.turns] == [0, 2]
        events = bot.calls[result.call_id].events
        assert [e.digit for e in events if isinstance(e, DtmfIn)] == ["2"]
        heard = [e.pcm for e in events if isinstance(e, AudioIn)]
        voiced = sum(1 for pcm in heard if any(pcm))
        assert voiced == 2 * len(tone_frames(0.4, 8000))  # two tones reached the bot

    run(main)


def test_keepalive_silence_while_the_caller_sends_nothing() -> None:
    # Asterisk sends nothing at all on some paths while the caller is silent; the bot must
    # still send a frame every 20 ms, or Asterisk hangs up after 2 s of inactivity.
    async def main() -> None:
        async with serving(Bot(echo=True)) as server:
            caller = good_caller(server.port, stream_silence=False)
            result = await caller.run([Pause(5.0)])
        times = [t for t, _ in result.frames]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert pacing_problems(times) == []
        assert max(gaps) < 0.100
        assert times[-1] - times[0] > 4.8
        assert not any(voiced for _, voiced in result.frames)
        assert len(result.bot_pcm) == 320 * len(result.frames)
        assert result.bad_frames == 0

    run(main)


def test_dtmf_arrives_as_dtmf_in() -> None:
    async def main() -> None:
        bot = Bot()
        async with serving(bot) as server:
            caller = good_caller(server.port, reply_timeout_s=0.1)
            result = await caller.run([SendDtmf("12#*A", gap_s=0.04), Pause(0.1)])
            assert await eventually(lambda: not server.calls)
        log = bot.calls[result.call_id]
        assert log.digits == "12#*A"
        assert log.ended is not None and log.ended.reason == "caller_hangup"
        assert result.bad_frames == 0

    run(main)


def test_16k_call_gets_16k_frames_back() -> None:
    async def main() -> None:
        bot = Bot(echo=True)
        async with serving(bot) as server:
            peer = await RawPeer().connect("127.0.0.1", server.port)
            call_id = uuid.uuid4()
            await peer.send(wire.encode_uuid(call_id))
            await asyncio.sleep(0.1)  # a few 8 kHz keep-alive frames before the rate is known
            switched_at = asyncio.get_running_loop().time()
            await stream_frames(peer, tone_frames(0.6, 16000) + [bytes(640)] * 25, 16000)
            call = bot.calls[str(call_id)].call
            assert call.rate_hz == 16000
            await peer.close()
            assert await eventually(lambda: not server.calls)
        assert bot.calls[str(call_id)].rates == {16000}
        assert peer.kinds() <= {0x10, 0x12}
        before = [m for m in peer.received if m.at_s < switched_at]
        assert before and {(m.kind, len(m.payload)) for m in before} == {(0x10, 320)}
        first_16k = next(i for i, m in enumerate(peer.received) if m.kind == 0x12)
        after = peer.received[first_16k:]
        assert {(m.kind, len(m.payload)) for m in after} == {(0x12, 640)}  # never back to 8k
        assert sum(1 for m in after if any(m.payload)) >= 25  # the tone echoed at 16 kHz
        assert pacing_problems(peer.audio_times()) == []

    run(main)


class RateAwareBot(Bot):
    """Asks the call's rate first, as the real session does, then (optionally) speaks."""

    def __init__(self, speak_s: float) -> None:
        super().__init__(echo=False)
        self.speak_s = speak_s
        self.asked: dict[str, int] = {}

    async def __call__(self, call: CallMedia) -> None:
        rate_hz = self.asked[call.call_id] = await call.wait_for_rate(0.2)
        if self.speak_s:
            pcm = b"".join(tone_frames(self.speak_s, rate_hz))
            call.speaker.enqueue(pcm, call.speaker.generation)
        await super().__call__(call)


@pytest.mark.parametrize("speak_s", [0.0, 1.0], ids=["quiet_bot", "speaking_bot"])
def test_16k_caller_silent_at_first_keeps_the_call(speak_s: float) -> None:
    # Dial(AudioSocket/.../c(slin16)) and a caller who waits for the greeting: no inbound
    # frame tells the rate before the session starts at the default 8 kHz. The first 16 kHz
    # frame later must not end the call nor switch the bot's rate under the session.
    async def main() -> None:
        bot = RateAwareBot(speak_s)
        with capture() as logs:
            async with serving(bot) as server:
                peer = await RawPeer().connect("127.0.0.1", server.port)
                call_id = uuid.uuid4()
                await peer.send(wire.encode_uuid(call_id))
                await asyncio.sleep(0.4)  # silent: Asterisk sends nothing
                await stream_frames(peer, tone_frames(0.6, 16000) + [bytes(640)] * 25, 16000)
                assert str(call_id) in server.calls
                await peer.close()
                assert await eventually(lambda: not server.calls)
        log = bot.calls[str(call_id)]
        assert bot.asked[str(call_id)] == 8000
        assert log.rates == {16000}  # AudioIn says what arrived
        assert len([e for e in log.events if isinstance(e, AudioIn)]) == 55
        assert log.ended is not None and log.ended.reason == "caller_hangup"
        assert {(m.kind, len(m.payload)) for m in peer.received} == {(0x10, 320)}
        voiced = sum(1 for m in peer.received if any(m.payload))
        assert voiced == (50 if speak_s else 0)  # the reply played out whole
        assert pacing_problems(peer.audio_times()) == []
        assert warnings_for(logs, peer=peer.addr, call_id=str(call_id)) == []

    run(main)


def test_wait_for_rate_reports_16k_when_audio_comes_first() -> None:
    async def main() -> None:
        bot = RateAwareBot(0.2)
        async with serving(bot) as server:
            peer = await RawPeer().connect("127.0.0.1", server.port)
            call_id = uuid.uuid4()
            await peer.send(wire.encode_uuid(call_id) + wire.encode_audio(bytes(640), 16000))
            await stream_frames(peer, [bytes(640)] * 25, 16000)
            await peer.close()
            assert await eventually(lambda: not server.calls)
        assert bot.asked[str(call_id)] == 16000
        voiced = [m for m in peer.received if any(m.payload)]
        assert {(m.kind, len(m.payload)) for m in voiced} == {(0x12, 640)}
        assert len(voiced) == 10

    run(main)


def test_max_call_duration_hands_the_call_back() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with capture() as logs:
            async with serving(Bot(), max_call_duration_s=0.3) as server:
                peer = await RawPeer().connect("127.0.0.1", server.port)
                started = loop.time()
                await peer.send(wire.encode_uuid(uuid.uuid4()))
                sender = asyncio.create_task(stream_frames(peer, [bytes(320)] * 100, 8000))
                assert await peer.wait_eof(2.0)
                ended_after = loop.time() - started
                sender.cancel()
                await peer.close()
                assert await eventually(lambda: not server.calls and only_this_task())
        assert 0.25 < ended_after < 1.5
        assert peer.received[-1].kind == HANGUP
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["call_max_duration"]
        assert [e["reason"] for e in logs if e["event"] == "call_closed"] == ["max_duration"]

    run(main)


def test_a_peer_that_never_sends_its_uuid_is_closed() -> None:
    async def main() -> None:
        with capture() as logs:
            async with serving(Bot(), first_message_timeout_s=0.3) as server:
                peer = await RawPeer().connect("127.0.0.1", server.port)
                assert await peer.wait_eof(2.0)
                await peer.close()
                assert await eventually(lambda: not server.calls and only_this_task())
        assert peer.received == []  # no call, so no keep-alive either
        assert warnings_for(logs, peer=peer.addr) == [("bad_input", "no_uuid")]

    run(main)


def test_bot_hangup_sends_0x00_then_closes() -> None:
    async def handler(call: CallMedia) -> None:
        played = asyncio.Event()
        generation = call.speaker.generation
        call.speaker.enqueue(tone_frames(0.2, 8000)[0] * 10, generation)
        call.speaker.mark(lambda _t: played.set(), generation)
        await played.wait()
        await call.hangup("goodbye")

    async def main() -> None:
        with capture() as logs:
            async with serving(handler) as server:
                peer = await RawPeer().connect("127.0.0.1", server.port)
                await peer.send(wire.encode_uuid(uuid.uuid4()))
                sender = asyncio.create_task(stream_frames(peer, [bytes(320)] * 100, 8000))
                assert await peer.wait_eof(3.0)
                sender.cancel()
                await peer.close()
                assert await eventually(lambda: not server.calls and only_this_task())
        kinds = [m.kind for m in peer.received]
        assert kinds[-1] == HANGUP and kinds.count(HANGUP) == 1  # 0x00 last, then EOF
        assert set(kinds[:-1]) == {0x10}
        assert peer.received[-1].payload == b""
        assert sum(1 for m in peer.received if any(m.payload)) == 10  # the reply played out
        assert peer.leftover == b""
        closed = [e for e in logs if e["event"] == "call_closed"]
        assert [e["reason"] for e in closed] == ["goodbye"]

        async with serving(handler) as server:
            result = await good_caller(server.port).run([Pause(3.0)])
        assert result.got_hangup and result.closed_by_bot

    run(main)


def test_caller_hangup_is_not_reported_as_closed_by_bot() -> None:
    async def main() -> None:
        async with serving(Bot()) as server:
            result = await good_caller(server.port).run([Pause(0.3)])
        assert not result.got_hangup
        assert not result.closed_by_bot

    run(main)


def test_handler_crash_hands_the_call_back_with_0x00() -> None:
    async def handler(call: CallMedia) -> None:
        await asyncio.sleep(0.1)
        raise RuntimeError("session bug")

    async def main() -> None:
        with capture() as logs:
            async with serving(handler) as server:
                peer = await RawPeer().connect("127.0.0.1", server.port)
                await peer.send(wire.encode_uuid(uuid.uuid4()))
                assert await peer.wait_eof(2.0)
                await peer.close()
                assert await eventually(lambda: not server.calls and only_this_task())
        assert peer.received[-1].kind == HANGUP
        assert [e["event"] for e in logs if e["log_level"] == "error"] == ["session_crashed"]

    run(main)


def test_server_close_sends_0x00_to_live_calls() -> None:
    async def main() -> None:
        bot = Bot()
        config = ServerConfig(host="127.0.0.1", port=0)
        server = AudioSocketServer(config, bot)
        await server.start()
        port = server.port
        peers = [await RawPeer().connect("127.0.0.1", port) for _ in range(2)]
        for peer in peers:
            await peer.send(wire.encode_uuid(uuid.uuid4()))
        senders = [asyncio.create_task(stream_frames(p, [bytes(320)] * 200, 8000)) for p in peers]
        assert await eventually(lambda: len(server.calls) == 2)
        await asyncio.sleep(0.2)
        await server.close(grace_s=2.0)
        for peer in peers:
            assert await peer.wait_eof(2.0)
            assert peer.received[-1].kind == HANGUP
            assert peer.kinds() == {0x10, HANGUP}
        for sender in senders:
            sender.cancel()
        for peer in peers:
            await peer.close()
        assert not server.calls
        assert all(log.ended and log.ended.reason == "shutdown" for log in bot.calls.values())
        assert all(log.returned for log in bot.calls.values())
        with pytest.raises(OSError):
            await RawPeer().connect("127.0.0.1", port)  # no longer listening
        assert await eventually(only_this_task)

    run(main)


def test_call_cap_rejects_the_third_call_with_0x00() -> None:
    async def main() -> None:
        with capture() as logs:
            async with serving(Bot(), max_calls=2) as server:
                callers = [good_caller(server.port) for _ in range(2)]
                running = [asyncio.create_task(c.run([Pause(1.2)])) for c in callers]
                assert await eventually(lambda: len(server.calls) == 2)
                third = await RawPeer().connect("127.0.0.1", server.port)
                third_id = uuid.uuid4()
                await third.send(wire.encode_uuid(third_id))
                assert await third.wait_eof(2.0)
                await third.close()
                results = await asyncio.gather(*running)
                assert await eventually(lambda: not server.calls)
                # The cap counts live calls: a new one is taken again.
                after = await good_caller(server.port).run([Pause(0.3)])
                assert server.calls_rejected == 1
        assert [(m.kind, m.payload) for m in third.received] == [(HANGUP, b"")]
        rejected = [e for e in logs if e["event"] == "call_rejected"]
        assert len(rejected) == 1
        assert rejected[0]["call_id"] == str(third_id)
        assert rejected[0]["reason"] == "max_calls"
        for result in [*results, after]:
            assert pacing_problems([t for t, _ in result.frames], min_frames=10) == []
            assert result.bad_frames == 0

    run(main)


def test_a_full_bot_evicts_a_connection_that_never_sent_audio_for_a_new_call() -> None:
    """Issue #24 item 6: a broken PBX that connects, sends a UUID and then nothing must not
    hold slots that real callers need. The older call that streams audio is kept."""

    async def main() -> None:
        with capture() as logs:
            async with serving(Bot(), max_calls=2, evict_silent_after_s=0.3) as server:
                talker = good_caller(server.port)
                talking = asyncio.create_task(talker.run([Pause(1.5)]))
                assert await eventually(lambda: len(server.calls) == 1)
                mute = await RawPeer().connect("127.0.0.1", server.port)
                mute_id = uuid.uuid4()
                await mute.send(wire.encode_uuid(mute_id))
                assert await eventually(lambda: len(server.calls) == 2)
                await asyncio.sleep(0.4)
                newcomer = await good_caller(server.port).run([Pause(0.5)])
                assert await mute.wait_eof(2.0)  # given 0x00, its dialplan goes on
                await mute.close()
                kept = await talking
                assert server.calls_rejected == 0
        assert [(m.kind, m.payload) for m in mute.received if m.kind == HANGUP] == [(HANGUP, b"")]
        evicted = [e for e in logs if e["event"] == "call_evicted"]
        assert len(evicted) == 1 and evicted[0]["evicted_call_id"] == str(mute_id)
        assert not [e for e in logs if e["event"] == "call_rejected"]
        for result in (newcomer, kept):
            assert pacing_problems([t for t, _ in result.frames], min_frames=10) == []

    run(main)


def test_a_connection_that_never_sent_audio_is_not_evicted_before_its_time() -> None:
    async def main() -> None:
        async with serving(Bot(), max_calls=1, evict_silent_after_s=30.0) as server:
            mute = await RawPeer().connect("127.0.0.1", server.port)
            await mute.send(wire.encode_uuid(uuid.uuid4()))
            assert await eventually(lambda: len(server.calls) == 1)
            refused = await RawPeer().connect("127.0.0.1", server.port)
            await refused.send(wire.encode_uuid(uuid.uuid4()))
            assert await refused.wait_eof(2.0)
            await refused.close()
            assert len(server.calls) == 1 and server.calls_rejected == 1
            assert not mute.eof.is_set()
            await mute.close()

    run(main)


def test_max_calls_per_peer_refuses_a_second_call_from_the_same_host() -> None:
    async def main() -> None:
        with capture() as logs:
            async with serving(Bot(), max_calls=8, max_calls_per_peer=1) as server:
                first = asyncio.create_task(good_caller(server.port).run([Pause(1.0)]))
                assert await eventually(lambda: len(server.calls) == 1)
                second = await RawPeer().connect("127.0.0.1", server.port)
                await second.send(wire.encode_uuid(uuid.uuid4()))
                assert await second.wait_eof(2.0)
                await second.close()
                await first
                assert await eventually(lambda: not server.calls)
                after = await good_caller(server.port).run([Pause(0.3)])
        reasons = [e["reason"] for e in logs if e["event"] == "call_rejected"]
        assert reasons == ["max_calls_per_peer"]
        assert pacing_problems([t for t, _ in after.frames], min_frames=10) == []

    run(main)


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"IPv6 loopback unavailable: {exc}")

    async def main() -> None:
        bot = Bot()
        async with serving(bot, host="::1") as server:
            result = await good_caller(server.port, host="::1").run([SendDtmf("9"), Pause(0.6)])
        assert pacing_problems([t for t, _ in result.frames]) == []
        assert bot.calls[result.call_id].digits == "9"

    run(main)


# --- bad input: only that connection closes, one log line, nothing left running ----------------

UUID_BYTES = wire.encode_uuid(uuid.UUID("4f6f3e8a-9c1b-4d2e-8a7b-0123456789ab"))
NCS_VARIANT = bytearray(uuid.uuid4().bytes)
NCS_VARIANT[8] &= 0x3F  # variant bits 0b0x: not RFC 4122
RANDOM_BYTES = bytes([0x42]) + random.Random(1234).randbytes(300)


@dataclass(frozen=True)
class Bad:
    name: str
    data: bytes
    reason: str
    after_uuid: bool = True  # send a good UUID first (the call starts), then ``data``
    eof: bool = False  # then half-close, as a hang-up after the bad bytes


BAD_INPUTS = [
    Bad("unknown_kind", b"\x42\x00\x00", "unknown_kind"),
    Bad("oversized_audio", b"\x10\xff\xff" + bytes(100), "oversized_audio"),
    Bad("zero_length_audio", b"\x10\x00\x00", "empty_audio"),
    Bad("odd_length_audio", b"\x10\x00\x03\x01\x02\x03", "odd_audio"),
    Bad("bad_dtmf", b"\x03\x00\x01x", "bad_dtmf"),
    Bad("dtmf_header_with_huge_length", b"\x03\xff\xff", "bad_dtmf"),  # no payload follows
    Bad("second_uuid", wire.encode_uuid(uuid.uuid4()), "repeated_uuid"),
    Bad("unsupported_rate", wire.encode_audio(bytes(480), 12000), "unsupported_rate"),
    Bad("truncated_header_then_eof", b"\x10\x01", "truncated", eof=True),
    Bad("truncated_payload_then_eof", b"\x10\x01\x40" + bytes(50), "truncated", eof=True),
    Bad("random_bytes", RANDOM_BYTES, "unknown_kind", eof=True),
    Bad("first_message_not_uuid", wire.encode_audio(bytes(320)), "first_message_not_uuid", False),
    Bad("first_message_dtmf", wire.encode_dtmf("1"), "first_message_not_uuid", False),
    Bad("zero_uuid", wire.encode(wire.Kind.UUID, bytes(16)), "malformed_uuid", False),
    Bad(
        "ncs_variant_uuid", wire.encode(wire.Kind.UUID, bytes(NCS_VARIANT)), "malformed_uuid", False
    ),
    Bad("short_uuid", wire.encode(wire.Kind.UUID, bytes(15)), "bad_uuid", False),
    Bad("truncated_before_uuid", b"\x01\x00", "truncated", False, eof=True),
    Bad("random_before_uuid", RANDOM_BYTES, "unknown_kind", False, eof=True),
]


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[b.name for b in BAD_INPUTS])
def test_bad_input_closes_only_that_connection(bad: Bad) -> None:
    async def main() -> None:
        bot = Bot()
        with capture() as logs:
            async with serving(bot) as server:
                good = good_caller(server.port)
                good_run = asyncio.create_task(good.run([Pause(1.2)]))
                assert await eventually(lambda: len(server.calls) == 1)
                await asyncio.sleep(0.2)
                peer = await RawPeer().connect("127.0.0.1", server.port)
                if bad.after_uuid:
                    await peer.send(UUID_BYTES)
                    assert await eventually(lambda: len(server.calls) == 2)
                    await asyncio.sleep(0.1)
                await peer.send(bad.data)
                if bad.eof:
                    peer.write_eof()
                assert await peer.wait_eof(1.5), "the server kept the bad connection open"
                # Only the bad call is gone, and promptly; the good one goes on.
                assert await eventually(lambda: len(server.calls) == 1, 1.0)
                assert str(good.call_uuid) in server.calls
                await peer.close()
                result = await good_run
                assert await eventually(lambda: not server.calls and only_this_task())
        # Exactly one warning for the bad connection, naming the reason.
        bad_call_id = str(uuid.UUID(bytes=UUID_BYTES[3:])) if bad.after_uuid else ""
        assert warnings_for(logs, peer=peer.addr, call_id=bad_call_id) == [
            ("bad_input", bad.reason)
        ]
        if bad.after_uuid:
            ended = bot.calls[bad_call_id].ended
            assert ended is not None and ended.reason == bad.reason
            assert bot.calls[bad_call_id].returned
        # The server only ever sent audio and (possibly) 0x00 to the bad peer.
        assert peer.kinds() <= AUDIO_KINDS | {HANGUP}
        # The good call was not disturbed.
        assert warnings_for(logs, call_id=result.call_id) == []
        assert result.bad_frames == 0
        assert not result.closed_by_bot
        assert pacing_problems([t for t, _ in result.frames]) == []
        times = [t for t, _ in result.frames]
        assert max(b - a for a, b in zip(times, times[1:], strict=False)) < 0.1

    run(main)


def test_a_peer_that_stops_reading_is_dropped() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with capture() as logs:
            async with serving(Bot(), write_timeout_s=0.3, read_timeout_s=60.0) as server:
                good = good_caller(server.port)
                good_run = asyncio.create_task(good.run([Pause(30.0)]))
                assert await eventually(lambda: len(server.calls) == 1)
                stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                stuck.setblocking(False)
                await loop.sock_connect(stuck, ("127.0.0.1", server.port))
                stuck_addr = "{}:{}".format(*stuck.getsockname())
                stuck_id = uuid.uuid4()
                # 16 kHz frames fill the buffers twice as fast; then never read again.
                await loop.sock_sendall(
                    stuck, wire.encode_uuid(stuck_id) + wire.encode_audio(bytes(640), 16000)
                )
                assert await eventually(lambda: str(stuck_id) in server.calls)
                assert await eventually(lambda: str(stuck_id) not in server.calls, 20.0)
                assert str(good.call_uuid) in server.calls
                stuck.close()
                await asyncio.sleep(0.5)
                good_run.cancel()  # enough: hang up the good call
                with contextlib.suppress(asyncio.CancelledError):
                    await good_run
                assert await eventually(lambda: not server.calls and only_this_task())
        assert warnings_for(logs, peer=stuck_addr, call_id=str(stuck_id)) == [
            ("bad_input", "peer_not_reading")
        ]
        assert warnings_for(logs, call_id=str(good.call_uuid)) == []
        times = [t for t, _ in good.result.frames]
        assert pacing_problems(times) == []
        assert max(b - a for a, b in zip(times, times[1:], strict=False)) < 0.1

    run(main)


# --- a session that misbehaves cannot keep a dead call (and its slot) alive --------------------


def test_bad_input_closes_the_socket_even_if_the_handler_ignores_it() -> None:
    seen: list[str] = []

    async def stubborn(call: CallMedia) -> None:
        try:
            await asyncio.sleep(3600)  # never looks at call.inbound
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def main() -> None:
        loop = asyncio.get_running_loop()
        config = ServerConfig(host="127.0.0.1", port=0)
        server = AudioSocketServer(config, stubborn, handler_grace_s=0.5)
        await server.start()
        peer = await RawPeer().connect("127.0.0.1", server.port)
        await peer.send(UUID_BYTES)
        await asyncio.sleep(0.1)
        sent_at = loop.time()
        await peer.send(b"\x42\x00\x00")
        assert await peer.wait_eof(1.0)
        closed_after = loop.time() - sent_at
        assert closed_after < 0.4  # at once, not when the handler returns
        assert await eventually(lambda: not server.calls, 3.0)  # the slot is freed
        assert seen == ["cancelled"]
        await peer.close()
        await server.close()
        assert await eventually(only_this_task)

    run(main)


def test_a_deaf_handler_does_not_stop_hang_up_detection() -> None:
    # The session stops reading call.inbound; the caller then sends more than the inbound
    # queue holds and hangs up. The server must still see the EOF (and not block Asterisk).
    async def deaf(call: CallMedia) -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        with capture() as logs:
            config = ServerConfig(host="127.0.0.1", port=0)
            server = AudioSocketServer(config, deaf, handler_grace_s=0.2)
            await server.start()
            peer = await RawPeer().connect("127.0.0.1", server.port)
            burst = wire.encode_uuid(uuid.uuid4()) + wire.encode_audio(bytes(320)) * 800
            await peer.send(burst)
            peer.write_eof()
            assert await peer.wait_eof(3.0)
            assert await eventually(lambda: not server.calls, 3.0)
            await peer.close()
            await server.close()
            assert await eventually(only_this_task)
        closed = [e for e in logs if e["event"] == "call_closed"]
        assert [e["reason"] for e in closed] == ["caller_hangup"]
        assert [e["event"] for e in logs if e["log_level"] == "warning"].count(
            "inbound_overflow"
        ) == 1

    run(main)


def test_junk_after_the_uuid_leaves_no_never_awaited_coroutine() -> None:
    """Issue #24: junk right after the UUID printed "coroutine 'CallSession._greeting' was
    never awaited" on stderr every time (the greeting's reply task was cancelled before it
    ran)."""
    import gc
    import warnings

    from tests.test_turns import make_shared
    from voicebot_pbx.call.session import make_handler

    async def main() -> None:
        shared = make_shared()
        server = AudioSocketServer(ServerConfig(port=0), make_handler(shared))
        await server.start()
        try:
            for junk in (wire.encode_uuid(uuid.uuid4()), b"\x7f\xff\xffjunk") * 2:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(wire.encode_uuid(uuid.uuid4()))
                await writer.drain()
                writer.write(junk)
                await writer.drain()
                with contextlib.suppress(ConnectionError):
                    await asyncio.wait_for(reader.read(), 5.0)
                writer.close()
            await eventually(lambda: not server.calls)
        finally:
            await server.close()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(main)
        gc.collect()
    never_awaited = [w for w in caught if "was never awaited" in str(w.message)]
    assert never_awaited == []
