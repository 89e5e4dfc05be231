"""The FreeSWITCH transport on 127.0.0.1 against ``FakeFreeSwitch``, a peer that behaves as
FreeSWITCH's source says (mod_event_socket.c, mod_commands.c, switch_ivr.c).

Handlers are small scripts (echo, hang-up, transfer ...) except two calls that go through the
real session with scripted engines (tone "speech"), in real time. Nothing asserts a speed:
pacing is checked statistically, and time limits are only there so a broken build fails
instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
import statistics
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import numpy as np
import pytest
from structlog.testing import capture_logs

from tests.fake_freeswitch import FakeFreeSwitch, Unicast
from voicebot_pbx.answers.dialogue import RuleDialogue
from voicebot_pbx.call.prompts import ClipLibrary, TtsCache
from voicebot_pbx.call.session import CallSession, Shared
from voicebot_pbx.config import DialogueConfig, RuleConfig, load_config
from voicebot_pbx.pbx.freeswitch import (
    UNPARK_GRACE_S,
    FreeswitchCall,
    FreeswitchConfig,
    FreeswitchServer,
)
from voicebot_pbx.pbx.media import AudioIn, CallEnded, CallMedia, DtmfIn, InboundEvent
from voicebot_pbx.pbx.unicast import LateFilter
from voicebot_pbx.testing import FakeEngines, ScriptedStt, ToneTts, tone

T = TypeVar("T")
PORT_BASE = random.randrange(41000, 48800, 200)
FRAME_S = 0.02


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())


def make_config(**overrides: Any) -> FreeswitchConfig:
    base = FreeswitchConfig(
        port=0,
        udp_port_min=PORT_BASE,
        udp_port_max=PORT_BASE + 199,
        command_timeout_s=1.0,
        media_timeout_s=1.0,
    )
    return dataclasses.replace(base, **overrides)


_fakes: list[FakeFreeSwitch] = []  # closed when the bot that served them stops


def fake(server: FreeswitchServer, **kwargs: Any) -> FakeFreeSwitch:
    fs = FakeFreeSwitch(server.port, **kwargs)
    _fakes.append(fs)
    return fs


@contextlib.asynccontextmanager
async def bot(
    handler: Callable[[CallMedia], Awaitable[None]], **overrides: Any
) -> AsyncIterator[FreeswitchServer]:
    server = FreeswitchServer(make_config(**overrides), handler, handler_grace_s=1.0)
    await server.start()
    try:
        yield server
    finally:
        await server.close(grace_s=1.0)
        while _fakes:
            await _fakes.pop().close()
        thread = server.hub_thread
        assert thread is not None and not thread.is_alive(), "the ESL thread must stop"


async def dial(server: FreeswitchServer, **kwargs: Any) -> FakeFreeSwitch:
    fs = fake(server, **kwargs)
    await fs.dial()
    return fs


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls state that has no event
            await asyncio.sleep(0.01)


class Script:
    """A handler: records inbound events, optionally echoes audio, runs ``action``."""

    def __init__(
        self,
        *,
        echo: bool = False,
        action: Callable[[CallMedia], Awaitable[None]] | None = None,
    ) -> None:
        self.echo = echo
        self.action = action
        self.events: list[InboundEvent] = []
        self.media: list[CallMedia] = []
        self.ended = asyncio.Event()

    @property
    def audio(self) -> list[AudioIn]:
        return [e for e in self.events if isinstance(e, AudioIn)]

    def others(self) -> list[InboundEvent]:
        return [e for e in self.events if not isinstance(e, AudioIn)]

    async def __call__(self, media: CallMedia) -> None:
        self.media.append(media)
        try:
            async with asyncio.TaskGroup() as group:
                if self.action is not None:
                    group.create_task(self.action(media))
                while True:
                    event = await media.inbound.get()
                    self.events.append(event)
                    if isinstance(event, AudioIn) and self.echo:
                        media.speaker.enqueue(event.pcm, media.speaker.generation)
                    if isinstance(event, CallEnded):
                        for task in list(group._tasks):  # the action may still run
                            task.cancel()
                        return
        finally:
            self.ended.set()


def voiced(frame: bytes, floor: float = 300.0) -> bool:
    samples = np.frombuffer(frame[: len(frame) // 2 * 2], dtype="<i2").astype(np.float64)
    return bool(samples.size) and float(np.sqrt(np.mean(samples * samples))) > floor


def peak_hz(pcm: bytes, rate_hz: int) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum)) * rate_hz / samples.size


def pacing_problems(times: list[float]) -> list[str]:
    if len(times) < 20:
        return [f"only {len(times)} frames"]
    gaps_ms = [(b - a) * 1000.0 for a, b in zip(times, times[1:], strict=False)]
    problems = []
    median_ms = statistics.median(gaps_ms)
    if not 17.0 <= median_ms <= 23.0:
        problems.append(f"median gap {median_ms:.1f} ms")
    if any(times[i + 3] - times[i] < 0.003 for i in range(len(times) - 3)):
        problems.append("a burst: 4 frames within 3 ms")
    expected = (times[-1] - times[0]) / FRAME_S + 1
    if len(times) > expected + 2:
        problems.append(f"{len(times)} frames in a span that holds {expected:.0f}")
    return problems


def test_pacing_check_can_fail() -> None:
    assert pacing_problems([i * FRAME_S for i in range(60)]) == []
    assert pacing_problems([i * 0.001 for i in range(60)])  # a burst
    assert pacing_problems([i * 0.04 for i in range(60)])  # half rate


# --- the normal call ----------------------------------------------------------------------------


def test_handshake_unicast_echo_and_caller_hangup() -> None:
    async def main() -> None:
        script = Script(echo=True)
        with capture_logs() as logs:
            async with bot(script) as server:
                fs = await dial(server)
                unicast = await fs.wait_unicast()
                # connect, myevents, linger, then media: in that order, nothing else.
                assert fs.command_names() == ["connect", "myevents", "linger", "sendmsg"]
                sendmsg = fs.commands[3].headers
                assert sendmsg["call-command"] == "unicast"
                assert sendmsg["transport"] == "udp" and sendmsg["local-port"] == "0"
                assert sendmsg["local-ip"] == "127.0.0.1" and sendmsg["remote-ip"] == "127.0.0.1"
                assert PORT_BASE <= int(sendmsg["remote-port"]) <= PORT_BASE + 199
                await until(lambda: bool(script.media))
                media = script.media[0]
                assert isinstance(media, FreeswitchCall)
                assert media.call_id == fs.uuid and media.pbx == "freeswitch"
                assert media.caller_id_number == "+15551234567"
                assert media.rate_hz == 8000 and await media.wait_for_rate(0.0) == 8000
                # Idle: silence frames, paced, to FreeSWITCH's own address (locked).
                await until(lambda: len(unicast.received) >= 30)
                assert all(
                    addr == ("127.0.0.1", int(sendmsg["remote-port"]))
                    for *_, addr in unicast.received
                )
                assert not any(voiced(data) for _, data, _ in unicast.received[:20])
                # Speech: 1 s of distinct samples comes back byte for byte (L16 host order in,
                # the same out: nothing is swapped on the way).
                pattern = np.arange(-4000, 4000, dtype="<i2").tobytes()  # 8000 samples
                fs.say(pattern)
                await until(lambda: pattern in unicast.bot_audio(), timeout_s=5.0)
                times = [t for t, _, _ in unicast.received]
                assert pacing_problems(times[5:]) == []
                assert {len(data) for _, data, _ in unicast.received} == {320}
                assert all(a.rate_hz == 8000 and len(a.pcm) == 320 for a in script.audio)
                await fs.hang_up()
                await asyncio.wait_for(fs.socket_closed.wait(), 5.0)
                assert fs.command_names()[-1] == "exit"
                assert "resume" not in fs.command_names()
                await until(lambda: not server.calls)
        assert [type(e) for e in script.others()] == [CallEnded]
        ended = script.others()[0]
        assert isinstance(ended, CallEnded) and ended.reason == "caller_hangup"
        closed = [e for e in logs if e["event"] == "call_closed"]
        assert len(closed) == 1 and closed[0]["reason"] == "caller_hangup"
        assert closed[0]["late_dropped"] == 0 and closed[0]["bad_input"] == {}
        assert not [e for e in logs if e["event"] == "bad_input"]

    run(main)


def test_dtmf_events_reach_the_session() -> None:
    async def main() -> None:
        script = Script()
        with capture_logs() as logs:
            async with bot(script) as server:
                fs = await dial(server)
                await fs.wait_unicast()
                for digit in ("5", "#", "*", "a", "x"):  # "#" travels URL-encoded as %23
                    await fs.press(digit)
                await until(lambda: len(script.others()) >= 4)
                await fs.hang_up()
                await asyncio.wait_for(script.ended.wait(), 5.0)
        digits = [e.digit for e in script.others() if isinstance(e, DtmfIn)]
        assert digits == ["5", "#", "*", "A"]
        bad = [e for e in logs if e["event"] == "bad_input"]
        assert [e["reason"] for e in bad] == ["bad_dtmf"]

    run(main)


@pytest.mark.parametrize("unpark_first", [False, True])
def test_a_hangup_is_the_callers_whichever_event_comes_first(unpark_first: bool) -> None:
    """The real FreeSWITCH may send CHANNEL_UNPARK before CHANNEL_HANGUP when the caller
    hangs up: the end is still the caller's hang-up, not "unparked"."""

    async def main() -> None:
        script = Script()
        async with bot(script) as server:
            fs = await dial(server)
            await fs.wait_unicast()
            await until(lambda: bool(script.media))  # the session has the call
            await fs.hang_up(unpark_first=unpark_first)
            await asyncio.wait_for(script.ended.wait(), 5.0)
        (ended,) = script.others()
        assert isinstance(ended, CallEnded) and ended.reason == "caller_hangup"

    run(main)


def test_a_channel_taken_out_of_the_socket_app_elsewhere_ends_the_call() -> None:
    """A lone CHANNEL_UNPARK (another app transferred the channel): "unparked", once the
    grace for a hang-up's late events is over."""

    async def main() -> float:
        script = Script()
        async with bot(script) as server:
            fs = await dial(server)
            await fs.wait_unicast()
            await until(lambda: bool(script.media))
            loop = asyncio.get_running_loop()
            sent = loop.time()
            await fs.event("CHANNEL_UNPARK")
            await asyncio.wait_for(script.ended.wait(), 5.0)
            (ended,) = script.others()
            assert isinstance(ended, CallEnded) and ended.reason == "unparked"
            return ended.at_s - sent  # loop times: time.monotonic in both threads

    waited_s = run(main)
    assert waited_s >= UNPARK_GRACE_S * 0.9


def test_transfer_uses_uuid_transfer_and_does_not_hang_up() -> None:
    async def main() -> None:
        results: list[bool] = []

        async def transfer(media: CallMedia) -> None:
            await asyncio.sleep(0.1)
            results.append(await server.transfer("no-such-call", "agents"))
            results.append(await server.set_vars("no-such-call", {"A": "b"}))
            # The handover variables go first (uuid_setvar; a value keeps its spaces).
            context = {"VOICEBOT_SUMMARY": "check balance; 2 turns", "VOICEBOT_VERIFIED": "no"}
            results.append(await server.set_vars(media.call_id, context))
            results.append(await server.transfer(media.call_id, "agents"))

        script = Script(action=transfer)
        async with bot(script, transfer_context="support") as server:
            fs = await dial(server)
            await asyncio.wait_for(script.ended.wait(), 5.0)
            await asyncio.wait_for(fs.socket_closed.wait(), 5.0)
        assert results == [False, False, True, True]
        assert fs.variables["VOICEBOT_SUMMARY"] == "check balance; 2 turns"
        assert fs.variables["VOICEBOT_VERIFIED"] == "no"
        setvar = await fs.wait_command("api", arg_prefix="uuid_setvar")
        assert setvar.arg == f"uuid_setvar {fs.uuid} VOICEBOT_SUMMARY check balance; 2 turns"
        command = await fs.wait_command("api", arg_prefix="uuid_transfer")
        assert command.arg == f"uuid_transfer {fs.uuid} agents XML support"
        assert fs.transferred_to == ("agents", "XML", "support")
        # The channel went on in the dialplan: no hangup, no resume, just exit.
        assert fs.channel_up and fs.hangup_cause is None
        assert fs.command_names()[-1] == "exit" and "resume" not in fs.command_names()
        sendmsgs = [c.headers.get("call-command") for c in fs.commands if c.name == "sendmsg"]
        assert sendmsgs == ["unicast"]
        ended = script.others()[-1]
        assert isinstance(ended, CallEnded) and ended.reason == "transferred"

    run(main)


def test_bot_hangup_is_the_hangup_call_command() -> None:
    async def main() -> None:
        async def hang_up(media: CallMedia) -> None:
            await asyncio.sleep(0.2)
            await media.hangup("bot_hangup")

        script = Script(action=hang_up)
        async with bot(script) as server:
            fs = await dial(server)
            await asyncio.wait_for(fs.socket_closed.wait(), 5.0)
        hangups = [c for c in fs.commands if c.headers.get("call-command") == "hangup"]
        assert len(hangups) == 1 and hangups[0].headers["hangup-cause"] == "NORMAL_CLEARING"
        assert fs.hangup_cause == "NORMAL_CLEARING" and not fs.channel_up
        assert fs.command_names()[-1] == "exit" and "resume" not in fs.command_names()

    run(main)


def test_a_session_that_returns_hangs_up_and_one_that_crashes_hands_back() -> None:
    async def main() -> None:
        async def returns(media: CallMedia) -> None:
            await asyncio.sleep(0.05)

        async def crashes(media: CallMedia) -> None:
            raise RuntimeError("session bug")

        async with bot(returns) as server:
            fs = await dial(server)
            await asyncio.wait_for(fs.socket_closed.wait(), 5.0)
        assert fs.hangup_cause == "NORMAL_CLEARING"
        with capture_logs() as logs:
            async with bot(crashes) as server:
                fs = await dial(server)
                await asyncio.wait_for(fs.socket_closed.wait(), 5.0)
        # The dialplan continues after `socket` (resume), the caller is not hung up.
        assert fs.resumed and fs.channel_up and fs.hangup_cause is None
        assert [e["reason"] for e in logs if e["event"] == "call_closed"] == ["session_error"]

    run(main)


def test_server_close_hands_calls_back_and_stops_the_thread() -> None:
    async def main() -> None:
        from gevent import monkey

        script = Script()
        server = FreeswitchServer(make_config(), script, handler_grace_s=1.0)
        await server.start()
        fs = await dial(server)
        await fs.wait_unicast()
        await until(lambda: bool(script.media))  # the session runs
        await server.close(grace_s=1.0)
        await asyncio.wait_for(fs.socket_closed.wait(), 5.0)
        await _fakes.pop().close()
        assert fs.resumed and fs.channel_up  # back to the dialplan
        assert fs.command_names()[-2:] == ["resume", "exit"]
        thread = server.hub_thread
        assert thread is not None and not thread.is_alive()
        assert not [t for t in threading.enumerate() if t.name == "freeswitch-esl"]
        assert not monkey.is_module_patched("socket") and not monkey.is_module_patched("threading")
        ended = script.others()[-1]
        assert isinstance(ended, CallEnded) and ended.reason == "shutdown"

    run(main)


@pytest.mark.parametrize(("rate_hz", "session_hz"), [(16000, 16000), (48000, 16000)])
def test_wideband_channels(rate_hz: int, session_hz: int) -> None:
    async def main() -> None:
        script = Script(echo=True)
        async with bot(script) as server:
            fs = await dial(server, rate_hz=rate_hz, codec="OPUS" if rate_hz == 48000 else "G722")
            unicast = await fs.wait_unicast()
            fs.say(tone(0.5, rate_hz, 1000.0))
            await until(lambda: sum(voiced(d) for _, d, _ in unicast.received) >= 15)
            await fs.hang_up()
            await asyncio.wait_for(script.ended.wait(), 5.0)
        media = script.media[0]
        assert media.rate_hz == session_hz
        assert {a.rate_hz for a in script.audio} == {session_hz}
        sizes = {len(d) for _, d, _ in unicast.received}
        assert sizes == {rate_hz * 2 // 50}  # one 20 ms frame at the channel rate per datagram
        echoed = b"".join(d for _, d, _ in unicast.received if voiced(d))
        assert peak_hz(echoed, rate_hz) == pytest.approx(1000.0, abs=30.0)

    run(main)


def test_profile_comes_from_the_channel_variable() -> None:
    async def main() -> None:
        script = Script()
        async with bot(script) as server:
            fs = await dial(server, variables={"VOICEBOT_PROFILE": "sales"})
            await until(lambda: bool(script.media))
            assert getattr(script.media[0], "profile", None) == "sales"
            await fs.hang_up()
            await asyncio.wait_for(script.ended.wait(), 5.0)

    run(main)


def test_channel_variables_come_with_the_call_or_from_uuid_getvar() -> None:
    """A campaign call's VOICEBOT_CAMPAIGN (set by the originate) is read from the connect
    reply; one set on the channel since is read with ``uuid_getvar``; an unset one, or a
    call not being served, is None (the opt-out and the machine verdict need them)."""

    async def main() -> None:
        got: list[str | None] = []

        async def read(media: CallMedia) -> None:
            await asyncio.sleep(0.1)
            got.append(await server.get_var(media.call_id, "VOICEBOT_CAMPAIGN"))
            assert await server.set_vars(media.call_id, {"LATER": "set after connect"})
            got.append(await server.get_var(media.call_id, "LATER"))
            got.append(await server.get_var(media.call_id, "NEVER_SET"))
            got.append(await server.get_var("no-such-call", "VOICEBOT_CAMPAIGN"))

        script = Script(action=read)
        async with bot(script) as server:
            fs = await dial(server, variables={"VOICEBOT_CAMPAIGN": "spring"})
            await until(lambda: len(got) == 4)
            await fs.hang_up()
            await asyncio.wait_for(script.ended.wait(), 5.0)
        assert got == ["spring", "set after connect", None, None]
        getvars = [c.arg for c in fs.commands if c.arg.startswith("uuid_getvar")]
        # The originate's variable needed no lookup.
        assert getvars == [f"uuid_getvar {fs.uuid} LATER", f"uuid_getvar {fs.uuid} NEVER_SET"]

    run(main)


# --- through the real session -------------------------------------------------------------------

HOURS = 440
TARIFF = 880
PHRASES = {HOURS: "what are your opening hours", TARIFF: "tell me about tariffs"}
LONG = "First sentence here. Second sentence here. Third sentence here. Fourth one."


def make_shared() -> Shared:
    base = load_config()
    rules = (
        RuleConfig(keywords=("hours",), reply="We open at eight."),
        RuleConfig(keywords=("tariffs",), reply=LONG),
    )
    config = dataclasses.replace(
        base, dialogue=DialogueConfig(greeting="Hi.", reprompt="Pardon?", rules=rules)
    )
    engines = FakeEngines(ScriptedStt(PHRASES, delay_s=0.1), ToneTts(0.15))
    cache = TtsCache("tone", None)
    for text in ("Hi.", "We open at eight."):
        cache.put(text, 8000, engines.script_tts.synthesize_all(text, 8000))
    return Shared(
        config=config,
        engines=engines,
        dialogue=RuleDialogue.from_config(config.dialogue),
        tts_cache=cache,
        clips=ClipLibrary({}),
    )


def voiced_times(unicast: Unicast) -> list[float]:
    return [t for t, data, _ in unicast.received if voiced(data)]


async def session_call(
    shared: Shared, scenario: Callable[[FakeFreeSwitch, Unicast], Awaitable[None]]
) -> tuple[CallSession, FakeFreeSwitch, Unicast]:
    sessions: list[CallSession] = []

    async def handler(media: CallMedia) -> None:
        session = CallSession(media, shared)
        sessions.append(session)
        await session.run()

    async with bot(handler) as server:
        shared.control = server
        fs = await dial(server)
        unicast = await fs.wait_unicast()
        async with asyncio.timeout(20.0):
            await scenario(fs, unicast)
            await fs.hang_up()
            await fs.socket_closed.wait()
            await until(lambda: not server.calls)
    return sessions[0], fs, unicast


def test_a_spoken_turn_through_the_real_session() -> None:
    async def scenario(fs: FakeFreeSwitch, unicast: Unicast) -> None:
        await until(lambda: bool(voiced_times(unicast)))  # the greeting
        await asyncio.sleep(0.5)
        fs.say(tone(1.0, 8000, HOURS))
        await until(lambda: unicast.last_speech_sent_at is not None)
        speech_end = unicast.last_speech_sent_at
        assert speech_end is not None
        await until(lambda: any(t > speech_end for t in voiced_times(unicast)), timeout_s=10.0)
        await until(lambda: not voiced(unicast.received[-1][1]), timeout_s=10.0)

    session, fs, unicast = run(lambda: session_call(make_shared(), scenario))
    turns = [t for t in session.record.turns if t.kind == "speech"]
    assert [t.transcript for t in turns] == [PHRASES[HOURS]]
    assert turns[0].reply_text == "We open at eight."
    assert session.record.pbx == "freeswitch" and session.record.call_id == fs.uuid
    speech_end = unicast.last_speech_sent_at
    assert speech_end is not None
    reply = b"".join(d for t, d, _ in unicast.received if t > speech_end and voiced(d))
    # "We open at eight." is 17 characters of 60 ms of 440 Hz tone (ToneTts), and it came
    # back from the datagrams as little-endian L16 at 440 Hz: byte order is right.
    assert len(reply) / 16000 == pytest.approx(17 * 0.06, abs=0.1)
    assert peak_hz(reply, 8000) == pytest.approx(440.0, abs=10.0)


def test_barge_in_silences_the_bot() -> None:
    """The caller talks over the bot's own (unicast) reply: the bot goes silent. Nothing
    FreeSWITCH-side plays, so no uuid_break is sent."""
    marks: dict[str, float] = {}

    async def scenario(fs: FakeFreeSwitch, unicast: Unicast) -> None:
        await until(lambda: bool(voiced_times(unicast)))
        await asyncio.sleep(0.4)
        fs.say(tone(1.0, 8000, TARIFF))
        await until(lambda: unicast.last_speech_sent_at is not None)
        question_end = unicast.last_speech_sent_at
        assert question_end is not None
        await until(lambda: any(t > question_end for t in voiced_times(unicast)), timeout_s=10.0)
        # The long reply (4.5 s of tone) is playing; the caller has heard some of it (sooner,
        # turn.went_on_within_ms would take the words as the rest of the question's).
        await asyncio.sleep(1.2)
        unicast.last_speech_sent_at = None
        marks["interrupt_start"] = time.monotonic()
        fs.say(tone(1.5, 8000, HOURS))
        await until(lambda: unicast.last_speech_sent_at is not None, timeout_s=5.0)
        marks["interrupt_end"] = time.monotonic()
        await until(lambda: any(t > marks["interrupt_end"] for t in voiced_times(unicast)), 10.0)
        await asyncio.sleep(1.3)

    session, fs, unicast = run(lambda: session_call(make_shared(), scenario))
    turns = [t for t in session.record.turns if t.kind == "speech"]
    assert turns[0].transcript == PHRASES[TARIFF] and turns[0].barged_in
    assert turns[1].transcript == PHRASES[HOURS] and turns[1].reply_text == "We open at eight."
    voiced_at = voiced_times(unicast)
    start, end = marks["interrupt_start"], marks["interrupt_end"]
    assert any(start - 0.5 < t < start for t in voiced_at)  # the bot was talking ...
    # ... and was silent for the rest of the caller's 1.5 s once it had heard enough.
    assert not [t for t in voiced_at if start + 1.0 < t < end]
    assert fs.breaks == 0


def test_the_caller_is_not_heard_while_freeswitch_plays() -> None:
    """As the real FreeSWITCH: what the caller says during a FreeSWITCH-side playback never
    reaches the bot (the park loop reads no frames for unicast meanwhile)."""

    async def scenario(fs: FakeFreeSwitch, unicast: Unicast) -> None:
        await until(lambda: bool(voiced_times(unicast)))
        await fs.play()
        fs.say(tone(1.0, 8000, HOURS))
        await until(lambda: unicast.last_speech_sent_at is not None, timeout_s=5.0)
        await asyncio.sleep(1.5)

    session, fs, _ = run(lambda: session_call(make_shared(), scenario))
    assert not [t for t in session.record.turns if t.kind == "speech"]
    assert fs.breaks == 0


@pytest.mark.parametrize("freeswitch_plays", [False, True])
def test_uuid_break_only_when_freeswitch_itself_plays(freeswitch_plays: bool) -> None:
    """A stray uuid_break would leave CF_BREAK set and cut the next playback short."""

    async def main() -> FakeFreeSwitch:
        async def talk_then_stop(media: CallMedia) -> None:
            media.speaker.enqueue(tone(1.0, 8000, 500.0), media.speaker.generation)
            await asyncio.sleep(0.4)
            media.speaker.interrupt()  # what the session does on barge-in

        script = Script(action=talk_then_stop)
        async with bot(script) as server:
            fs = await dial(server)
            unicast = await fs.wait_unicast()
            if freeswitch_plays:
                await fs.play("speak", "flite|kal|Your call may be recorded")
            await until(lambda: sum(voiced(d) for _, d, _ in unicast.received) >= 10)
            await until(lambda: not voiced(unicast.received[-1][1]))
            await asyncio.sleep(0.2)
            await fs.hang_up()
            await asyncio.wait_for(script.ended.wait(), 5.0)
        return fs

    fs = run(main)
    breaks = [c for c in fs.commands if c.arg.startswith("uuid_break")]
    assert len(breaks) == (1 if freeswitch_plays else 0)
    assert fs.playing is None if freeswitch_plays else fs.breaks == 0


# --- bad input ------------------------------------------------------------------------------


async def call_with_bad_esl(
    data: bytes | None, *, drop_on: str = "", closes: bool = False
) -> tuple[Script, list[dict[str, Any]], FakeFreeSwitch]:
    """A call that gets ``data`` on its ESL socket mid-call; then a second, normal call
    must be served by the same server."""
    script = Script()
    with capture_logs() as logs:
        async with bot(script) as server:
            fs = await dial(server)
            await fs.wait_unicast()
            await until(lambda: bool(script.media))  # the session runs
            if data is not None:
                await fs.send_raw(data)
            if closes:
                fs.drop()
            await asyncio.wait_for(script.ended.wait(), 5.0)
            await until(lambda: not server.calls)
            # The server is still fine.
            second = Script()
            server._handler = second
            fs2 = await dial(server)
            await until(lambda: bool(second.media))
            await fs2.hang_up()
            await asyncio.wait_for(second.ended.wait(), 5.0)
            assert isinstance(second.others()[-1], CallEnded)
            assert second.others()[-1].reason == "caller_hangup"  # type: ignore[union-attr]
    return script, logs, fs


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"Content-Type: text/event-plain\nthis is no header\n\n", "malformed_header"),
        (
            b"Content-Type: text/event-plain\n\nEvent-Name: DTMF\nDTMF-Digit: 1\n\n",
            "missing_content_length",
        ),
        (b"Content-Type: api/response\nContent-Length: lots\n\n", "bad_content_length"),
        (
            b"Content-Length: 12\nContent-Type: text/event-plain\n\nno event\n\n\n\n",
            "malformed_event",
        ),
        (b"Content-Type: command/reply\nReply-Text: +OK\n\n", "unexpected_reply"),
    ],
)
def test_malformed_esl_ends_the_call_cleanly(data: bytes, reason: str) -> None:
    script, logs, _fs = run(lambda: call_with_bad_esl(data))
    ended = script.others()[-1]
    assert isinstance(ended, CallEnded) and ended.reason == f"bad_input:{reason}"
    bad = [e for e in logs if e["event"] == "bad_input"]
    assert [e["reason"] for e in bad] == [reason]  # one line, with the call id
    assert bad[0]["call_id"] == script.media[0].call_id
    closed = [e for e in logs if e["event"] == "call_closed"]
    assert closed[0]["reason"] == f"bad_input:{reason}"


def test_eof_inside_a_message_is_truncated_input() -> None:
    script, logs, _fs = run(
        lambda: call_with_bad_esl(
            b"Content-Type: api/response\nContent-Length: 40\n\n+OK", closes=True
        )
    )
    assert [e["reason"] for e in logs if e["event"] == "bad_input"] == ["truncated_body"]


def test_connection_lost_mid_call() -> None:
    script, logs, _fs = run(lambda: call_with_bad_esl(None, closes=True))
    ended = script.others()[-1]
    assert isinstance(ended, CallEnded) and ended.reason == "connection_lost"
    assert not [e for e in logs if e["event"] == "bad_input"]


def test_peer_that_disconnects_mid_command() -> None:
    async def main() -> None:
        results: list[bool] = []

        async def transfer(media: CallMedia) -> None:
            await asyncio.sleep(0.1)
            started = time.monotonic()
            results.append(await media.transfer("agents"))  # type: ignore[attr-defined]
            results.append(time.monotonic() - started < 0.9)  # did not wait for the timeout

        script = Script(action=transfer)
        with capture_logs() as logs:
            async with bot(script) as server:
                # During set-up: the socket closes when `linger` comes.
                early = fake(server)
                early.drop_on = {"linger"}
                await early.dial()
                await asyncio.wait_for(early.socket_closed.wait(), 5.0)
                # During a call: it closes when `api uuid_transfer` comes.
                fs = fake(server)
                fs.drop_on = {"api"}
                await fs.dial()
                await asyncio.wait_for(script.ended.wait(), 5.0)
                await until(lambda: not server.calls)
        assert results == [False, True]
        assert len(script.media) == 1  # the first call never reached a session
        bad = [e["reason"] for e in logs if e["event"] == "bad_input"]
        assert bad == ["disconnected_mid_command", "disconnected_mid_command"]
        ended = script.others()[-1]
        assert isinstance(ended, CallEnded) and ended.reason == "bad_input:disconnected_mid_command"

    run(main)


def test_peer_that_never_answers_connect_times_out() -> None:
    async def main() -> None:
        script = Script()
        with capture_logs() as logs:
            async with bot(script, command_timeout_s=0.3) as server:
                fs = fake(server)
                fs.silent_on = {"connect"}
                await fs.dial()
                await asyncio.wait_for(fs.socket_closed.wait(), 5.0)
        assert not script.media
        assert [e["reason"] for e in logs if e["event"] == "bad_input"] == ["esl_timeout"]

    run(main)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"answered": False}, "no_codec"),  # no read codec yet: the dialplan did not answer
        ({"channel_uuid": "not a uuid; api x"}, "bad_channel_data"),
        ({"mode": "static"}, "not_async"),
    ],
)
def test_channels_that_cannot_be_served_go_back_to_the_dialplan(
    kwargs: dict[str, Any], reason: str
) -> None:
    async def main() -> None:
        script = Script()
        with capture_logs() as logs:
            async with bot(script) as server:
                fs = await dial(server, **kwargs)
                await asyncio.wait_for(fs.socket_closed.wait(), 5.0)
        assert not script.media
        # connect first (socket_function waits for it before parking), then resume + exit;
        # a static-mode socket gets no resume (it would strand the channel in CS_RESET).
        static = kwargs.get("mode") == "static"
        assert fs.command_names() == (
            ["connect", "exit"] if static else ["connect", "resume", "exit"]
        )
        assert fs.dialplan_continues
        assert [e["reason"] for e in logs if e["event"] == "call_rejected"] == [reason]

    run(main)


def test_max_calls_and_no_free_udp_port() -> None:
    async def main() -> None:
        script = Script()
        with capture_logs() as logs:
            async with bot(script, max_calls=1) as server:
                first = await dial(server)
                await first.wait_unicast()
                await until(lambda: bool(script.media))  # the session runs
                second = await dial(server)
                await asyncio.wait_for(second.socket_closed.wait(), 5.0)
                assert second.command_names() == ["connect", "resume", "exit"]
                assert first.channel_up and not first.socket_closed.is_set()
                await first.hang_up()
                await until(lambda: not server.calls)
        assert [e["reason"] for e in logs if e["event"] == "call_rejected"] == ["max_calls"]

        # Every port of the range taken: back to the dialplan before any media.
        held = []
        for port in (PORT_BASE, PORT_BASE + 1):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", port))
            held.append(sock)
        try:
            with capture_logs() as logs:
                async with bot(
                    script, udp_port_min=PORT_BASE, udp_port_max=PORT_BASE + 1
                ) as server:
                    fs = await dial(server)
                    await asyncio.wait_for(fs.socket_closed.wait(), 5.0)
            assert fs.command_names() == ["connect", "myevents", "linger", "resume", "exit"]
            assert [e["reason"] for e in logs if e["event"] == "bad_input"] == ["no_udp_port"]
        finally:
            for sock in held:
                sock.close()

    run(main)


def test_no_media_after_unicast_goes_back_to_the_dialplan() -> None:
    async def main() -> None:
        script = Script()
        with capture_logs() as logs:
            async with bot(script, media_timeout_s=0.3) as server:
                fs = fake(server)
                fs.media_enabled = False
                await fs.dial()
                await asyncio.wait_for(fs.socket_closed.wait(), 5.0)
        assert not script.media
        assert fs.command_names()[-2:] == ["resume", "exit"]
        assert [e["reason"] for e in logs if e["event"] == "bad_input"] == ["no_media"]

    run(main)


def test_single_channel_control_degrades_without_api() -> None:
    async def main() -> None:
        results: list[bool] = []

        async def transfer(media: CallMedia) -> None:
            await asyncio.sleep(0.1)
            results.append(await media.transfer("agents"))  # type: ignore[attr-defined]
            await media.hangup("transferred")  # what the session does when transfer fails

        script = Script(action=transfer)
        async with bot(script) as server:
            fs = await dial(server, control="single-channel")
            await asyncio.wait_for(fs.socket_closed.wait(), 5.0)
        assert results == [False]
        # Without linger and api the call still ran, and was handed back to the dialplan.
        assert fs.resumed and fs.channel_up and fs.command_names()[-2:] == ["resume", "exit"]

    run(main)


def test_udp_garbage_is_counted_logged_once_and_survived() -> None:
    async def main() -> None:
        script = Script(echo=True)
        with capture_logs() as logs:
            async with bot(script) as server:
                fs = await dial(server)
                unicast = await fs.wait_unicast()
                await until(lambda: len(unicast.received) >= 5)
                with unicast.clone_socket() as same_address:  # asyncio never sends b""
                    for junk in (b"\x01" * 321, b"", b"\x00" * 5000, b"\x01" * 321):
                        same_address.sendto(junk, unicast.remote)
                stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                stranger.bind(("127.0.0.1", 0))
                stranger.setblocking(False)
                stranger.sendto(b"\x10" * 320, unicast.remote)
                await asyncio.sleep(0.2)
                pattern = np.arange(1000, 3000, dtype="<i2").tobytes()
                fs.say(pattern)
                await until(lambda: pattern in unicast.bot_audio())  # the call goes on
                with pytest.raises(BlockingIOError):
                    stranger.recv(2000)  # the bot never answered the stranger
                stranger.close()
                call = server.calls[fs.uuid]
                counts = dict(call.bad_inputs)
                await fs.hang_up()
                await asyncio.wait_for(script.ended.wait(), 5.0)
        assert counts == {
            "odd_datagram": 2,
            "empty_datagram": 1,
            "oversized_datagram": 1,
            "foreign_datagram": 1,
        }
        bad = sorted(e["reason"] for e in logs if e["event"] == "bad_input")
        assert bad == ["empty_datagram", "foreign_datagram", "odd_datagram", "oversized_datagram"]

    run(main)


def test_a_late_burst_is_cut_to_the_last_max_late() -> None:
    async def main() -> None:
        script = Script()
        async with bot(script, max_late_ms=100) as server:
            fs = await dial(server)
            unicast = await fs.wait_unicast()
            await until(lambda: len(script.audio) >= 10)
            unicast.hold(25)  # 500 ms held back on the way, then delivered at once
            await until(lambda: unicast.sent_frames >= 60 and not unicast._held)
            await asyncio.sleep(0.2)
            unicast.muted = True  # so nothing is in flight while counting
            await asyncio.sleep(0.2)
            call = server.calls[fs.uuid]
            assert call.media is not None
            late = call.media.late_filter.late
            received = len(script.audio)
            sent = unicast.sent_frames
            await fs.hang_up()
            await asyncio.wait_for(script.ended.wait(), 5.0)
        # 500 ms late: all but the newest ~100 ms of the burst are dropped (one frame of
        # slack either way for where the hold started on FreeSWITCH's 20 ms grid).
        assert 18 <= late <= 21
        assert received == sent - late

    run(main)


@pytest.mark.parametrize("kernel_timestamps", [True, False])
def test_a_stalled_event_loop_does_not_make_datagrams_late(
    kernel_timestamps: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Datagrams keep coming on time while the bot's loop is blocked: with the kernel's
    receive timestamps none is late; judged by read time (the check can fail), many are."""
    import voicebot_pbx.pbx.unicast as unicast_module

    if kernel_timestamps and not unicast_module._kernel_timestamps_supported():
        pytest.skip("no SO_TIMESTAMPNS here")
    monkeypatch.setattr(unicast_module, "_kernel_timestamps_supported", lambda: kernel_timestamps)

    async def main() -> int:
        script = Script()
        async with bot(script) as server:
            fs = await dial(server)
            unicast = await fs.wait_unicast()
            await until(lambda: len(script.audio) >= 10)
            call = server.calls[fs.uuid]
            assert call.media is not None
            assert call.media.kernel_timestamps is kernel_timestamps
            unicast.muted = True  # FreeSWITCH's frames now come from this thread:
            sock = unicast.clone_socket()

            def freeswitch_keeps_sending() -> None:
                for _ in range(25):
                    sock.sendto(b"\x00" * 320, unicast.remote)
                    time.sleep(0.02)

            sender = threading.Thread(target=freeswitch_keeps_sending)
            before = len(script.audio)
            sender.start()
            time.sleep(0.3)  # noqa: ASYNC251 - blocks the bot's loop on purpose
            await asyncio.to_thread(sender.join)
            sock.close()
            unicast.muted = False
            await until(
                lambda: call.media is not None and call.media.stats.datagrams_in > before + 26
            )
            late = call.media.late_filter.late
            await fs.hang_up()
            await asyncio.wait_for(script.ended.wait(), 5.0)
        return late

    late = run(main)
    if kernel_timestamps:
        assert late == 0
    else:
        assert late >= 5


def test_late_filter_cases() -> None:
    frame = 0.02
    lf = LateFilter(max_late_s=0.1)
    # On time, with jitter: all kept.
    assert lf.admit([(0.0, frame)]) == [True]
    assert lf.admit([(0.05, frame)]) == [True]  # 30 ms late: jitter
    assert lf.admit([(0.045, frame), (0.06, frame)]) == [True, True]
    # A burst of 15 frames, the first 310 ms late: the stale part goes (each dropped frame
    # still takes its slot), the newest ~100 ms stay.
    now = 0.08 + 0.31
    burst = [(now + i * 1e-5, frame) for i in range(15)]
    verdicts = lf.admit(burst)
    assert verdicts == [False] * 11 + [True] * 4 and lf.late == 11
    assert lf.admit([(now + 0.02, frame)]) == [True]  # and the stream goes on
    # A lone datagram after a gap (lost packets): re-anchored and kept.
    lf2 = LateFilter(max_late_s=0.1)
    lf2.admit([(0.0, frame)])
    assert lf2.admit([(1.0, frame)]) == [True] and lf2.resyncs == 1
    assert lf2.admit([(1.02, frame)]) == [True] and lf2.late == 0
    # A sender running fast re-anchors instead of hiding later lateness.
    lf3 = LateFilter(max_late_s=0.1)
    assert all(lf3.admit([(i * 0.001, frame)]) == [True] for i in range(50))


@pytest.mark.parametrize(
    "overrides",
    [
        {"udp_port_min": 5000, "udp_port_max": 4000},
        {"rtp_host": "::1"},  # FreeSWITCH's unicast socket is AF_INET
        {"rtp_host": "0.0.0.0"},  # nothing to tell FreeSWITCH to send to
        {"allow": ("not-a-network",)},
    ],
)
def test_config_is_checked(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FreeswitchConfig(**overrides)
    FreeswitchConfig(rtp_host="0.0.0.0", rtp_advertise_host="192.0.2.5")


def test_a_port_in_use_fails_start_and_leaves_no_thread() -> None:
    async def main() -> None:
        async with bot(Script()) as first:
            second = FreeswitchServer(make_config(port=first.port), Script())
            with pytest.raises(OSError):
                await second.start()
            thread = second.hub_thread
            assert thread is not None and not thread.is_alive()

    run(main)
