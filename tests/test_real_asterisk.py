"""Calls through a real Asterisk 22 into a real ``voicebot-pbx serve``.

The caller half of a Local channel plays espeak-ng questions and records what it hears;
the other half runs ``AudioSocket()`` from the dialplan (8 kHz) or
``Dial(AudioSocket/.../c(slin16))`` (16 kHz). What is checked is what the caller heard and
the bot's call record: no timing is asserted here beyond "answered before the caller hung
up" (latency is ``bench/bench_pbx.py``'s job).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.realpbx import free_port
from tests.realpbx.asterisk import Asterisk, Recording, running
from tests.realpbx.bot import BotProcess
from tests.realpbx.echo import AudioSocketEcho
from tests.realpbx.speech import first_voiced_after, question_pcm, segments, voiced_windows
from voicebot_pbx.ops.records import CallRecord

pytestmark = [pytest.mark.realpbx, pytest.mark.models, pytest.mark.slow]

HOURS_REPLY = "We are open Monday to Friday"
GREETING_S = 6  # the greeting (~4.5 s) plays while the caller waits


@dataclass
class Bed:
    asterisk: Asterisk
    bot: BotProcess
    seen: set[str]

    def new_records(self, count: int = 1, timeout_s: float = 15.0) -> list[CallRecord]:
        deadline_records = self.bot.wait_records(len(self.seen) + count, timeout_s)
        fresh = [r for r in deadline_records if r.call_id not in self.seen]
        self.seen.update(r.call_id for r in fresh)
        return fresh

    def run_call(self, steps: list[str], mode: str = "bot", timeout_s: float = 40.0) -> str:
        tag = self.asterisk.call(steps, mode=mode)
        self.asterisk.wait_call_gone(tag, timeout_s)
        return tag


def audiosocket_bed(folder: Path, extra_toml: str = "") -> Iterator[Bed]:
    """One Asterisk and one bot (AMI on, ``extra_toml`` added to its config) for a module."""
    bot_port = free_port()
    asterisk = Asterisk(folder / "asterisk", bot_port=bot_port)
    bot = BotProcess(
        folder / "bot",
        port=bot_port,
        ami_port=asterisk.ami_port,
        ami_secret=asterisk.ami_secret,
        extra_toml=extra_toml,
    )
    with running(asterisk, bot):
        yield Bed(asterisk, bot, set())


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    yield from audiosocket_bed(tmp_path_factory.mktemp("real-asterisk"))


def question(bed: Bed, name: str, text: str) -> str:
    return bed.asterisk.sound(name, question_pcm(text))


def reply_after_question(rec: Recording) -> tuple[float, float]:
    """(end of the caller's question, first bot audio the caller heard after it), from the
    caller's own recording."""
    said = segments(voiced_windows(rec.said, rec.rate_hz))
    assert said, "the caller's question is not in its recording"
    question_end_s = said[0][1]
    heard = voiced_windows(rec.heard, rec.rate_hz)
    reply_s = first_voiced_after(heard, question_end_s)
    assert reply_s is not None, "the caller heard no answer to its question"
    return question_end_s, reply_s


def test_question_answered_through_audiosocket_at_8khz(bed: Bed) -> None:
    hours = question(bed, "hours", "what are your opening hours")
    tag = bed.run_call([f"p:silence/{GREETING_S}", f"p:{hours}", "p:silence/5"])
    rec = bed.asterisk.recording(tag)
    heard = voiced_windows(rec.heard, rec.rate_hz)
    assert first_voiced_after(heard, 0.0) is not None and first_voiced_after(heard, 0.0) < 3.0, (
        "the greeting reached the caller"
    )
    question_end_s, reply_s = reply_after_question(rec)
    assert reply_s < question_end_s + 5.0  # before the caller hung up
    (record,) = bed.new_records()
    assert record.rate_hz == 8000 and record.end_reason == "caller_hangup"
    speech = [t for t in record.turns if t.kind == "speech"]
    assert len(speech) == 1 and "hour" in speech[0].transcript.lower()
    assert_record_latency_is_the_callers(speech[0].end_of_speech_to_first_frame_ms, rec)
    assert speech[0].reply_text.startswith(HOURS_REPLY)


def test_caller_that_sends_no_frames_while_silent_is_answered(bed: Bed) -> None:
    """The caller half waits in Wait(): Asterisk sends the bot no frames at all after the
    question (as with silence suppression). The bot still ends the turn and answers."""
    hours = question(bed, "hours2", "when are you open")
    tag = bed.run_call([f"w:{GREETING_S}", f"p:{hours}", "w:5"])
    rec = bed.asterisk.recording(tag)
    question_end_s, reply_s = reply_after_question(rec)
    assert reply_s < question_end_s + 5.0
    (record,) = bed.new_records()
    speech = [t for t in record.turns if t.kind == "speech"]
    assert len(speech) == 1 and speech[0].reply_text.startswith(HOURS_REPLY)
    assert record.end_reason == "caller_hangup"
    assert_record_latency_is_the_callers(speech[0].end_of_speech_to_first_frame_ms, rec)


def assert_record_latency_is_the_callers(record_ms: float | None, rec: Recording) -> None:
    """Issue #24 item 5: the call record's latency is the caller's wait, measured on the
    call's wall clock from the end of speech (a caller who sends no frames while silent
    used to show ~250 ms while waiting seconds). The two clocks differ by Asterisk's
    buffering and the frame alignment of its recording (whole 20 ms frames, bounded by
    100 ms; see bench/bench_pbx.py), and VAD vs level edges: the caller's figure was
    140-160 ms the larger here (streaming and no-frames alike)."""
    question_end_s, reply_s = reply_after_question(rec)
    caller_ms = (reply_s - question_end_s) * 1000.0
    assert record_ms is not None
    assert caller_ms - 300.0 <= record_ms <= caller_ms + 100.0, (record_ms, caller_ms)


def test_question_answered_through_the_channel_driver_at_16khz(bed: Bed) -> None:
    where = question(bed, "where", "where are you located")
    tag = bed.run_call([f"p:silence/{GREETING_S}", f"p:{where}", "p:silence/5"], mode="bot16")
    rec = bed.asterisk.recording(tag)
    question_end_s, reply_s = reply_after_question(rec)
    assert reply_s < question_end_s + 5.0
    (record,) = bed.new_records()
    assert record.rate_hz == 16000
    speech = [t for t in record.turns if t.kind == "speech"]
    assert len(speech) == 1 and "Harbour Street" in speech[0].reply_text


def test_caller_hangs_up_in_the_middle_of_a_reply(bed: Bed) -> None:
    hours = question(bed, "hours3", "what are your opening hours")
    # The reply (~6 s) is still playing when the caller hangs up 1.5 s after asking.
    tag = bed.run_call([f"p:silence/{GREETING_S}", f"p:{hours}", "w:1.5"])
    bed.asterisk.recording(tag)
    (record,) = bed.new_records()
    assert record.end_reason == "caller_hangup" and record.ended_at is not None
    speech = [t for t in record.turns if t.kind == "speech"]
    assert len(speech) == 1 and speech[0].reply_text.startswith(HOURS_REPLY)
    assert "session_crashed" not in bed.bot.log_text()


def test_bot_ends_the_call_and_the_dialplan_continues(bed: Bed) -> None:
    bye = question(bed, "bye", "that is all, goodbye")
    tag = bed.run_call([f"p:silence/{GREETING_S}", f"p:{bye}", "p:silence/10"])
    (record,) = bed.new_records()
    assert record.end_reason == "bot_hangup"
    assert [t.reply_text for t in record.turns if t.kind == "speech"] == [
        "Thank you for calling. Goodbye!"
    ]
    # AudioSocket() returned and the dialplan went on at the next priority, with
    # VOICEBOT_DONE=1 set over AMI first (the example dialplan then skips the agent queue).
    assert bed.asterisk.db_get("vbnext", tag) is not None
    assert bed.asterisk.db_get("vbdone", tag) == "done:1"
    assert not record.errors
    rec = bed.asterisk.recording(tag)
    said = segments(voiced_windows(rec.said, rec.rate_hz))
    # The caller was cut off by the bot's hang-up long before its 10 s of silence ended.
    assert len(rec.said) / rec.rate_hz < said[0][1] + 9.0


def test_the_callers_recordings_hear_an_audiosocket_echo_one_frame_later(bed: Bed) -> None:
    """The yardstick of every caller-side figure (bench_pbx): a peer that writes each frame
    back as it comes is heard one 20 ms frame after the caller said it, so the recordings'
    alignment and Asterisk's own path add ~20 ms, and what is left is the bot's."""
    rate_hz = 8000
    burst = (0.3 * 32767 * np.sin(2 * np.pi * 1000 * np.arange(800) / rate_hz)).astype("<i2")
    parts = []
    for i in range(5):  # gaps not a whole number of frames: the bursts start anywhere in one
        parts += [burst, np.zeros(int((0.9 + 0.013 * i) * rate_hz), dtype="<i2")]
    tones = bed.asterisk.sound("tone-bursts", np.concatenate(parts).tobytes())
    with AudioSocketEcho(bed.asterisk.echo_port) as echo:
        tag = bed.run_call([f"p:{tones}"], mode="echo")
    assert echo.frames_echoed > 200
    rec = bed.asterisk.recording(tag)

    def onsets(samples: np.ndarray) -> list[int]:
        loud = np.abs(samples.astype(np.int32)) > 2000
        starts = np.flatnonzero(loud[1:] & ~loud[:-1]) + 1
        out: list[int] = []
        for start in starts:  # a burst's first loud sample; its later zero crossings are not
            if not out or start - out[-1] > rate_hz // 2:
                out.append(int(start))
        return out

    said, heard = onsets(rec.said), onsets(rec.heard)
    assert len(said) == 5 and len(heard) == 5, (said, heard)
    delays_ms = [(h - s) * 1000 / rate_hz for s, h in zip(said, heard, strict=True)]
    assert all(0 <= d <= 40 for d in delays_ms), delays_ms
