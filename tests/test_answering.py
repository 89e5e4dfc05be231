"""Answering-machine detection inside an outbound call (issue #23 item 2), on scripted
timelines (virtual time): a profile with ``amd`` holds its opening until the detector's
verdict; a person gets the opening after their "hello?", a machine its voicemail message
after the beep, then the bot hangs up; a silent line gets the opening as its prompt.
``tests/test_amd.py`` tests the detector itself, ``bench/eval_amd.py`` measures it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from structlog.testing import capture_logs

from tests.test_turns import HOURS, PHRASES, make_shared, timeline
from voicebot_pbx.call.session import CallSession, Shared
from voicebot_pbx.config import ProfileConfig
from voicebot_pbx.speech.stt import SttResult
from voicebot_pbx.testing import FakeMedia, ScriptedStt, run_virtual, tone

OPENING = "Hello, this is Northwind Energy about your meter. Say stop calling me to opt out."
VOICEMAIL = "This is Northwind Energy. Please call us back."


def noise(seconds: float, seed: int, level: float = 3000.0) -> bytes:
    """Speech stands in as a noise burst (a pure tone would be a beep)."""
    rng = np.random.default_rng(seed)
    return (rng.normal(0.0, level, int(seconds * 8000))).astype("<i2").tobytes()


def outbound(amd: bool = True) -> Shared:
    shared = make_shared()
    profile = ProfileConfig(name="outbound", greeting=OPENING, voicemail_message=VOICEMAIL, amd=amd)
    config = dataclasses.replace(shared.config, profiles=(profile,))
    return dataclasses.replace(shared, config=config)


def call(
    shared: Shared, script: list[tuple[float, bytes | str]], until_s: float
) -> tuple[FakeMedia, CallSession]:
    """A call that arrives with the outbound profile."""
    return run_virtual(timeline(shared, script, until_s, profile="outbound"))  # type: ignore[no-any-return]


def greeting_turn(session: object) -> object:
    return session.record.turns[0]  # type: ignore[attr-defined]


def assert_opening_then_beep_drop(session: CallSession) -> None:
    """The opening played (a person, it seemed), then a late beep made the call a
    voicemail: the message was left and the call ended as one."""
    kinds = [(t.kind, t.reply_text) for t in session.record.turns]
    assert kinds[0] == ("greeting", OPENING) and ("voicemail", VOICEMAIL) in kinds
    voicemail = next(t for t in session.record.turns if t.kind == "voicemail")
    assert voicemail.fallbacks == ["amd_machine:beep"]
    assert session.record.end_reason == "voicemail"


def test_a_person_gets_the_opening_after_their_hello() -> None:
    media, session = call(outbound(), [(0.4, noise(0.5, 1))], 8.0)
    turn = greeting_turn(session)
    assert turn.kind == "greeting" and turn.reply_text == OPENING  # type: ignore[attr-defined]
    assert turn.fallbacks == [  # type: ignore[attr-defined]
        "amd_likely_human",
        "amd_human:short_greeting_then_silence",
    ]
    first = min(media.voiced_times())  # type: ignore[attr-defined]
    # Not over the callee's "hello?" (0.4-0.9 s): after it, its 200 ms hangover and the 350 ms
    # that make a person likely; before the verdict's 600 ms.
    amd = session.config.amd  # type: ignore[attr-defined]
    likely_s = 0.9 + (amd.energy_hangover_ms + amd.likely_human_silence_ms) / 1000
    verdict_s = 0.9 + (amd.energy_hangover_ms + amd.after_greeting_silence_ms) / 1000
    assert likely_s <= first < verdict_s
    # The "hello?" was the detector's: no dialogue turn was made of it.
    assert [t.kind for t in session.record.turns] == ["greeting"]  # type: ignore[attr-defined]


def without_likely(shared: Shared) -> Shared:
    amd = dataclasses.replace(shared.config.amd, likely_human_silence_ms=0)
    return dataclasses.replace(shared, config=dataclasses.replace(shared.config, amd=amd))


def test_without_the_likely_person_rule_the_opening_waits_for_the_verdict() -> None:
    media, session = call(without_likely(outbound()), [(0.4, noise(0.5, 1))], 8.0)
    turn = greeting_turn(session)
    assert turn.fallbacks == ["amd_human:short_greeting_then_silence"]  # type: ignore[attr-defined]
    amd = session.config.amd  # type: ignore[attr-defined]
    verdict_s = 0.9 + (amd.energy_hangover_ms + amd.after_greeting_silence_ms) / 1000
    assert verdict_s <= min(media.voiced_times()) < verdict_s + 0.3  # type: ignore[attr-defined]


def test_an_opening_started_in_a_machines_pause_is_cut_before_its_beep() -> None:
    """ "Hi, you've reached Sam. [0.7 s] I can't take your call, leave a message." The pause
    makes a person likely (the opening starts); the greeting goes on and the length rule
    calls it a machine: the opening stops at once, long before the beep, and the message
    is left after the beep."""
    start, first_part, pause, rest = 0.4, 0.6, 0.7, 2.5
    beep_at = start + first_part + pause + rest + 0.2
    script: list[tuple[float, bytes | str]] = [
        (start, noise(first_part, 4)),
        (start + first_part + pause, noise(rest, 5)),
        (beep_at, tone(0.5, 8000, 1000.0, level=0.4)),
    ]
    media, session = call(outbound(), script, 16.0)
    opening = greeting_turn(session)
    amd = session.config.amd  # type: ignore[attr-defined]
    assert opening.fallbacks == [  # type: ignore[attr-defined]
        "amd_likely_human",
        "amd_opening_cut",
        "amd_machine:long_greeting",
    ]
    voiced = sorted(media.voiced_times())  # type: ignore[attr-defined]
    likely_s = start + first_part + (amd.energy_hangover_ms + amd.likely_human_silence_ms) / 1000
    cut_s = start + amd.greeting_max_ms / 1000  # the long-greeting verdict
    before_beep = [t for t in voiced if t < beep_at + 0.5]
    assert before_beep and likely_s <= before_beep[0]
    assert max(before_beep) < cut_s + 0.1  # cut at the verdict, nothing after it
    after = [t for t in voiced if t >= beep_at + 0.5]
    assert after and after[0] < beep_at + 0.5 + 0.5  # the message right after the beep
    voicemail = next(t for t in session.record.turns if t.kind == "voicemail")  # type: ignore[attr-defined]
    assert voicemail.reply_text == VOICEMAIL
    assert session.record.end_reason == "voicemail"  # type: ignore[attr-defined]


def test_a_machine_gets_the_voicemail_message_after_its_beep_then_a_hang_up() -> None:
    greeting = noise(3.5, 2)  # "You have reached ... please leave a message"
    beep = tone(0.5, 8000, 1000.0, level=0.4)
    media, session = call(outbound(), [(0.5, greeting + bytes(1600) + beep)], 16.0)
    turn = greeting_turn(session)
    assert turn.fallbacks[0].startswith("amd_machine:")  # type: ignore[attr-defined]
    assert turn.reply_text == VOICEMAIL and turn.intent == "voicemail"  # type: ignore[attr-defined]
    beep_end = 0.5 + 3.5 + 0.2 + 0.5
    first = min(media.voiced_times())  # type: ignore[attr-defined]
    assert beep_end <= first < beep_end + 0.5  # the message starts right after the beep
    assert media.hangups[0] == "bot_hangup"  # type: ignore[attr-defined]
    assert session.record.end_reason == "voicemail"  # type: ignore[attr-defined]


def test_a_silent_answer_gets_the_opening_as_its_prompt() -> None:
    media, session = call(outbound(), [], 8.0)
    turn = greeting_turn(session)
    assert turn.fallbacks[0] == "amd_silence:initial_silence"  # type: ignore[attr-defined]
    first = min(media.voiced_times())  # type: ignore[attr-defined]
    assert 2.5 <= first < 2.5 + 0.3


def test_without_amd_the_opening_is_at_once() -> None:
    media, session = call(outbound(amd=False), [(0.4, noise(0.5, 1))], 6.0)
    assert min(media.voiced_times()) < 0.3  # type: ignore[attr-defined]
    assert not greeting_turn(session).fallbacks  # type: ignore[attr-defined]


def test_a_beep_after_a_short_greeting_still_gets_the_voicemail_message() -> None:
    """ "Leave a message." is as short as a person's hello: the late beep revises it."""
    beep = tone(0.5, 8000, 1000.0, level=0.4)
    media, session = call(outbound(), [(0.4, noise(0.5, 3)), (2.6, beep)], 14.0)
    kinds = [(t.kind, t.reply_text) for t in session.record.turns]  # type: ignore[attr-defined]
    assert kinds[0][0] == "greeting" and ("voicemail", VOICEMAIL) in kinds
    voicemail = next(t for t in session.record.turns if t.kind == "voicemail")  # type: ignore[attr-defined]
    assert voicemail.fallbacks == ["amd_machine:beep"]
    assert session.record.end_reason == "voicemail"  # type: ignore[attr-defined]


class AmdVariables:
    """Call control whose channel carries Asterisk's AMD() result."""

    def __init__(self, status: str, cause: str) -> None:
        self.variables = {"AMDSTATUS": status, "AMDCAUSE": cause}
        self.reads: list[str] = []

    async def transfer(self, call_id: str, target: str) -> bool:
        return True

    async def set_vars(self, call_id: str, variables: object) -> bool:
        return True

    async def get_var(self, call_id: str, name: str) -> str | None:
        self.reads.append(name)
        return self.variables.get(name)


def test_a_person_asterisks_amd_heard_gets_the_opening_at_once() -> None:
    """The dialplan ran AMD() before handing the call over and it heard a person: the
    callee's "hello?" and pause are behind the call, the bot hears only their silence. The
    opening starts at once (not after ``initial_silence_ms``), and what the callee says
    next is the dialogue's (the question stands in as a tone: after ``late_beep_ms``, or it
    would be a beep)."""
    shared = dataclasses.replace(outbound(), control=AmdVariables("HUMAN", "HUMAN-300-800"))  # type: ignore[arg-type]
    with capture_logs() as logs:
        media, session = call(shared, [(6.5, tone(1.0, 8000, HOURS))], 10.0)
    turn = greeting_turn(session)
    assert turn.reply_text == OPENING  # type: ignore[attr-defined]
    assert turn.fallbacks == ["amd_human:asterisk:HUMAN-HUMAN"]  # type: ignore[attr-defined]
    assert min(media.voiced_times()) < 0.3  # type: ignore[attr-defined]
    verdicts = [e["reason"] for e in logs if e["event"] == "amd_verdict"]
    assert verdicts == ["asterisk:HUMAN-HUMAN"]
    speech = [t for t in session.record.turns if t.kind == "speech"]  # type: ignore[attr-defined]
    assert [t.transcript for t in speech] == [PHRASES[HOURS]]


def test_with_asterisk_prefer_own_the_detector_still_waits() -> None:
    """``asterisk_prefer = "own"``: Asterisk's HUMAN is not taken at once; the detector hears
    the silence and the opening is its prompt after ``initial_silence_ms``."""
    shared = dataclasses.replace(outbound(), control=AmdVariables("HUMAN", "HUMAN-300-800"))  # type: ignore[arg-type]
    amd = dataclasses.replace(shared.config.amd, asterisk_prefer="own")
    shared = dataclasses.replace(shared, config=dataclasses.replace(shared.config, amd=amd))
    media, session = call(shared, [], 8.0)
    turn = greeting_turn(session)
    assert turn.fallbacks == ["amd_silence:initial_silence|asterisk:HUMAN-HUMAN"]  # type: ignore[attr-defined]
    assert min(media.voiced_times()) >= amd.initial_silence_ms / 1000  # type: ignore[attr-defined]


def test_a_beep_after_asterisks_person_still_leaves_the_message() -> None:
    """AMD() said HUMAN but a beep follows (a short greeting it took for a person's): within
    ``late_beep_ms`` the opening stops and the voicemail message is left after the beep."""
    shared = dataclasses.replace(outbound(), control=AmdVariables("HUMAN", "HUMAN-300-800"))  # type: ignore[arg-type]
    beep = tone(0.5, 8000, 1000.0, level=0.4)
    media, session = call(shared, [(1.0, beep)], 12.0)
    assert_opening_then_beep_drop(session)


def test_asterisks_machine_waits_for_the_detector_and_the_beep() -> None:
    """AMD() said MACHINE (a long greeting it heard the start of): nothing is taken early;
    the detector hears the rest of the greeting and its beep, the message follows it."""
    control = AmdVariables("MACHINE", "LONGGREETING-1520-1500")
    shared = dataclasses.replace(outbound(), control=control)  # type: ignore[arg-type]
    beep = tone(0.5, 8000, 1000.0, level=0.4)
    media, session = call(shared, [(0.2, noise(2.5, 3) + bytes(1600) + beep)], 14.0)
    turn = greeting_turn(session)
    assert turn.fallbacks[0].startswith("amd_machine:")  # type: ignore[attr-defined]
    assert "asterisk:MACHINE-LONGGREETING" in turn.fallbacks[0]  # type: ignore[attr-defined]
    # Read once at the start (a person would open at once), used again for the verdict.
    assert [r for r in control.reads if r.startswith("AMD")] == ["AMDSTATUS", "AMDCAUSE"]
    beep_end = 0.2 + 2.5 + 0.1 + 0.5
    assert beep_end <= min(media.voiced_times()) < beep_end + 0.5  # type: ignore[attr-defined]
    assert session.record.end_reason == "voicemail"  # type: ignore[attr-defined]


def test_a_malformed_asterisk_amd_result_leaves_the_detector_alone() -> None:
    shared = dataclasses.replace(outbound(), control=AmdVariables("PERHAPS", ""))  # type: ignore[arg-type]
    media, session = call(shared, [(0.5, noise(3.5, 2))], 12.0)
    assert greeting_turn(session).fallbacks[0].startswith("amd_machine:long_greeting")  # type: ignore[attr-defined]


@dataclasses.dataclass
class GreetingStt(ScriptedStt):
    """Hears ``greeting`` in a clip of 2 s or more (the callee's greeting), nothing in a
    shorter one (a beep)."""

    greeting: str = ""
    clips: list[bytes] = dataclasses.field(default_factory=list)

    def transcribe(self, pcm: bytes, rate_hz: int) -> SttResult:
        self.decodes += 1
        self.clips.append(pcm)
        if len(pcm) < 2 * rate_hz * 2:
            return SttResult("", None)
        return SttResult(self.greeting, 0.9)


def answered_by(greeting: str) -> tuple[Shared, GreetingStt]:
    stt = GreetingStt(PHRASES, delay_s=0.1, greeting=greeting)
    shared = outbound()
    return dataclasses.replace(shared, engines=make_shared(stt=stt).engines), stt


def test_a_person_answering_with_a_sentence_gets_the_opening_after_its_words() -> None:
    """Three seconds of "Hello, Mark speaking, ... who is this please?" is a machine's length;
    its words are a person's: the opening plays once the sentence has ended."""
    shared, stt = answered_by("Hello, Mark speaking, sorry, who is this please?")
    with capture_logs() as logs:
        media, session = call(shared, [(0.5, noise(3.0, 4))], 10.0)
    turn = greeting_turn(session)
    assert turn.reply_text == OPENING  # type: ignore[attr-defined]
    assert turn.fallbacks[0] == "amd_human:long_greeting|words_human"  # type: ignore[attr-defined]
    checks = [e for e in logs if e["event"] == "amd_words"]
    assert [(e["words"], e["heard_words"]) for e in checks] == [("human", 8)]
    # The words check decoded the whole greeting, from the answer.
    assert any(len(clip) >= 3.5 * 8000 * 2 for clip in stt.clips)
    first = min(media.voiced_times())  # type: ignore[attr-defined]
    spoken_end = 0.5 + 3.0
    # After the sentence and the detector's silence (plus its hangover), and the decode.
    assert spoken_end + 0.6 <= first < spoken_end + 1.3
    assert [t.kind for t in session.record.turns] == ["greeting"]  # type: ignore[attr-defined]
    assert session.record.end_reason != "voicemail"  # type: ignore[attr-defined]


def greeting_then_beep(
    shared: Shared, greeting_s: float, seed: int, until_s: float
) -> tuple[FakeMedia, CallSession, list[str]]:
    """A machine by length: a greeting, 1 s of quiet, a beep; the voicemail message is left.
    Returns the call and what the words check said (one entry per check)."""
    beep = tone(0.5, 8000, 1000.0, level=0.4)
    with capture_logs() as logs:
        media, session = call(
            shared, [(0.5, noise(greeting_s, seed) + bytes(16000) + beep)], until_s
        )
    turn = greeting_turn(session)
    assert turn.fallbacks[0] == "amd_machine:long_greeting"  # type: ignore[attr-defined]
    assert turn.reply_text == VOICEMAIL  # type: ignore[attr-defined]
    return media, session, [e["words"] for e in logs if e["event"] == "amd_words"]


def test_a_machines_words_keep_the_voicemail_drop() -> None:
    shared, _ = answered_by("Hi, you've reached Sarah, please leave a message after the tone.")
    media, session, said = greeting_then_beep(shared, 3.0, 4, 14.0)
    assert said == ["machine"]
    beep_end = 0.5 + 3.0 + 1.0 + 0.5
    assert beep_end <= min(media.voiced_times()) < beep_end + 0.5  # type: ignore[attr-defined]
    assert session.record.end_reason == "voicemail"  # type: ignore[attr-defined]


def test_a_beep_after_words_that_sounded_like_a_person_still_drops_the_message() -> None:
    shared, _ = answered_by("Hello, who is this?")
    beep = tone(0.5, 8000, 1000.0, level=0.4)
    media, session = call(shared, [(0.5, noise(3.0, 4)), (5.5, beep)], 16.0)
    assert_opening_then_beep_drop(session)


def test_a_greeting_longer_than_the_words_check_is_not_transcribed() -> None:
    shared, _ = answered_by("Hello, who is this?")
    _, _, said = greeting_then_beep(shared, 7.0, 5, 18.0)
    assert said == []
    amd = dataclasses.replace(shared.config.amd, words_check=False)
    off = dataclasses.replace(shared, config=dataclasses.replace(shared.config, amd=amd))
    with capture_logs() as logs:
        _, session = call(off, [(0.5, noise(3.0, 4))], 10.0)
    assert greeting_turn(session).fallbacks[0] == "amd_machine:long_greeting"  # type: ignore[attr-defined]
    assert not [e for e in logs if e["event"] == "amd_words"]


def test_a_late_sentence_is_read_to_its_end() -> None:
    """A callee who waits 2.4 s before answering with a 5.5 s sentence: the words check reads
    all of it (its end, the question back, is where a person's words usually are)."""
    shared, stt = answered_by("Sorry, I was in the garden, who is this?")
    media, session = call(shared, [(2.4, noise(5.5, 6))], 14.0)
    assert greeting_turn(session).fallbacks[0] == "amd_human:long_greeting|words_human"  # type: ignore[attr-defined]
    spoken_end_s = 2.4 + 5.5
    assert max(len(clip) for clip in stt.clips) >= (spoken_end_s + 0.6) * 8000 * 2


def test_the_line_echo_of_the_opening_is_silence_to_the_detector() -> None:
    """Once the opening plays on a likely person, the line may carry its echo back: the
    listener's echo gate marks it, and the detector must not take it for a greeting going on
    (a person's opening cut for a "machine")."""
    import asyncio

    from voicebot_pbx.call.amd import AmdConfig
    from voicebot_pbx.call.answering import AmdGate

    async def verdict(echo: bool) -> str:
        gate = AmdGate(AmdConfig(), 8000, lambda result: None)
        frame = 320
        hello = bytes(4000) + noise(0.6, 6) + bytes(9600)  # then 0.6 s of silence
        for i in range(0, len(hello), frame):
            gate.feed(hello[i : i + frame])
        assert await gate.likely_first()
        echoed = noise(3.0, 7, level=1000.0)  # the opening, 10 dB down, as the line returns it
        for i in range(0, len(echoed), frame):
            gate.feed(echoed[i : i + frame], echo)
        return (await gate.first_verdict()).verdict

    assert asyncio.run(verdict(echo=True)) == "human"
    assert asyncio.run(verdict(echo=False)) == "machine"


@dataclasses.dataclass
class TalkBackStt(GreetingStt):
    """As ``GreetingStt``, and hears ``back`` in a clip under 2 s (what the callee says over
    the voicemail message)."""

    back: str = ""

    def transcribe(self, pcm: bytes, rate_hz: int) -> SttResult:
        heard = super().transcribe(pcm, rate_hz)
        return heard if heard.text else SttResult(self.back, 0.9 if self.back else None)


GREETING_S = 3.0  # the callee's greeting from 0.5 s: a machine's length
TALK_AT_S = 6.2  # over the voicemail message, which starts after the greeting's 1.5 s quiet


def talked_over(
    back: str,
    *,
    beep: bool = False,
    talk_back_is_person: bool = True,
    adapt: Callable[[Shared], Shared] = lambda shared: shared,
) -> tuple[FakeMedia, CallSession, list[dict[str, object]]]:
    """A callee whose greeting is a machine's length, words that say neither, then quiet
    (with ``beep``: a beep after 1 s of it); it says ``back`` over the voicemail message.
    ``adapt``: the test's own changes to the bot."""
    stt = TalkBackStt(
        PHRASES, delay_s=0.1, greeting="Morning, Sam here, just back from the shops.", back=back
    )
    shared = outbound()
    amd = dataclasses.replace(shared.config.amd, talk_back_is_person=talk_back_is_person)
    config = dataclasses.replace(shared.config, amd=amd)
    shared = adapt(dataclasses.replace(shared, config=config, engines=make_shared(stt=stt).engines))
    greeting = noise(GREETING_S, 8)
    if beep:
        greeting += bytes(16000) + tone(0.5, 8000, 1000.0, level=0.4)
    with capture_logs() as logs:
        media, session = call(shared, [(0.5, greeting), (TALK_AT_S, noise(0.8, 9))], 14.0)
    return media, session, logs


def test_a_person_who_talks_over_the_voicemail_message_gets_the_opening() -> None:
    """A person's long answer taken for a machine's greeting (its words said neither), no
    beep, the message starts in the quiet: the callee's "hello? who's this?" over it is a
    person's (a recording does not talk back). The message stops, the opening plays."""
    media, session, logs = talked_over("Hello? Who's this?")
    first = greeting_turn(session)
    assert first.fallbacks[0] == "amd_machine:long_greeting"  # type: ignore[attr-defined]
    assert first.reply_text == VOICEMAIL and first.barged_in  # type: ignore[attr-defined]
    message_at = min(media.voiced_times())  # type: ignore[attr-defined]
    assert message_at < TALK_AT_S, "the message was playing when the callee spoke"
    (opening,) = [t for t in session.record.turns[1:] if t.kind == "greeting"]
    assert opening.reply_text == OPENING and opening.transcript == "Hello? Who's this?"
    assert opening.fallbacks == ["amd_human:talked_over_message"]
    assert session.record.end_reason != "voicemail"
    verdicts = [e for e in logs if e["event"] == "amd_verdict"]
    assert verdicts[-1]["verdict"] == "human" and verdicts[-1]["revises"] == "machine"
    # The opening after the callee's words, not the rest of the message before it.
    talk_end = TALK_AT_S + 0.8
    assert any(talk_end < t < talk_end + 1.5 for t in media.voiced_times())  # type: ignore[attr-defined]


def test_a_machines_words_over_its_message_or_a_beep_keep_the_voicemail() -> None:
    """What can still be a machine keeps the message: its greeting going on with a
    machine's words, a sound with no words, or the message's own words (its echo: the
    message paused for it, then went on); a greeting that ended in a beep, or the rule off
    (the message plays through)."""
    for back, beep, on, pauses in (
        ("Please leave your message after the tone.", False, True, True),
        ("", False, True, True),
        ("Northwind Energy please call us back", False, True, True),  # the message's echo
        ("Hello? Who's this?", True, True, False),
        ("Hello? Who's this?", False, False, False),
    ):
        case = (back, beep, on)
        media, session, logs = talked_over(back, beep=beep, talk_back_is_person=on)
        talk_s = TALK_AT_S
        voiced = media.voiced_times()  # type: ignore[attr-defined]
        assert any(talk_s - 0.5 < t < talk_s for t in voiced), "the message was playing"
        during = [t for t in voiced if talk_s + 0.3 < t < talk_s + 0.8]
        assert (not during) == pauses, case
        assert any(t > talk_s + 0.8 for t in voiced), ("the message went on", case)
        # The callee's sound was heard and set aside.
        assert any(e["event"] == "amd_turn_ignored" for e in logs), case
        kinds = [(t.kind, t.reply_text) for t in session.record.turns]
        assert ("greeting", OPENING) not in kinds, (case, kinds)
        assert session.record.end_reason == "voicemail", case
