"""Outbound calls with answering-machine detection (issue #23) through a real Asterisk 22.

One Asterisk (AMI on, ``app_amd`` loaded) and one ``voicebot-pbx serve`` with an outbound
profile (``amd = true``) for the module. The callee is the caller half of a Local channel
pair: its script plays a "hello?", a voicemail greeting and its beep, a person's long answer
and words over the voicemail message, or nothing, and
MixMonitor records what it played and heard. The bot's half (``[tobot] amd-<tag>``) names the
outbound profile in VOICEBOT_PROFILE, which the bot reads over AMI; ``amdast-<tag>`` runs
Asterisk's own ``AMD()`` first. One test runs ``voicebot-pbx campaign`` against a callee
that is an answering machine (``[callee] 73xxx``). What is checked: the bot's call records,
what the callee heard and when relative to what it said (order, not speed), astdb marks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.realpbx import asterisk_campaign_config
from tests.realpbx.asterisk import Recording
from tests.realpbx.outbound import (
    OPENING,
    PROFILE_TOML,
    VOICEMAIL,
    check_message_after_beep,
    machine_pcm,
    run_machine_campaign,
    verdict_of,
)
from tests.realpbx.speech import (
    heard_after,
    question_pcm,
    said_segments,
)
from tests.test_real_asterisk import Bed, audiosocket_bed  # the same bed
from voicebot_pbx.ops.records import CallRecord

pytestmark = [pytest.mark.realpbx, pytest.mark.models, pytest.mark.slow]

HELLO = "Hello?"
# amd.conf: after a greeting Asterisk's AMD() waits this long before it says HUMAN; the
# bot's own detector would then wait [amd] initial_silence_ms (2.5 s) more for a word.
ASTERISK_AFTER_GREETING_S = 0.8
BOT_INITIAL_SILENCE_S = 2.5


def outbound_call(
    bed: Bed, steps: list[str], mode: str = "amd"
) -> tuple[str, Recording, CallRecord]:
    """A callee running ``steps``, answered into the bot with the outbound profile: (its
    tag, its recordings, the bot's record)."""
    tag = bed.run_call(steps, mode=mode, timeout_s=60.0)
    (record,) = bed.new_records(timeout_s=20.0)
    return tag, bed.asterisk.recording(tag), record


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    yield from audiosocket_bed(tmp_path_factory.mktemp("real-asterisk-amd"), PROFILE_TOML)


def test_a_person_hears_the_opening_after_their_hello(bed: Bed) -> None:
    """The callee says "hello?" and waits: a person (its pause made one likely first, so the
    opening started before the verdict), and the opening plays after the hello, not over it;
    the profile came from the channel's VOICEBOT_PROFILE, read over AMI."""
    hello = bed.asterisk.sound("amd_hello", question_pcm(HELLO))
    _, rec, record = outbound_call(bed, ["p:silence/1", f"p:{hello}", "p:silence/8"])
    greeting = record.turns[0]
    assert record.profile == "outbound", bed.bot.log_tail()
    assert greeting.kind == "greeting" and greeting.reply_text == OPENING, greeting.fallbacks
    assert greeting.fallbacks[:1] == ["amd_likely_human"], greeting.fallbacks
    assert verdict_of(greeting).startswith("amd_human:"), greeting.fallbacks
    (said_hello, *_) = said_segments(rec)
    first = heard_after(rec, 0.0)
    assert first is not None and first >= said_hello[1], "nothing over the hello"
    assert not [t for t in record.turns if t.kind == "speech"], "the hello was the detector's"


def test_a_voicemail_greeting_gets_the_message_after_its_beep(bed: Bed) -> None:
    """A voicemail greeting, then its beep: the bot stays silent through the greeting,
    leaves the profile's message after the beep and hangs up (end reason "voicemail")."""
    machine = bed.asterisk.sound(
        "amd_machine",
        machine_pcm(
            "Hi, you have reached Priya Shah. I can't take your call right now."
            " Please leave a message after the tone."
        ),
    )
    _, rec, record = outbound_call(bed, ["p:silence/1", f"p:{machine}", "p:silence/10"])
    turn = record.turns[0]
    assert verdict_of(turn).startswith("amd_machine:"), (turn.fallbacks, bed.bot.log_tail())
    assert turn.reply_text == VOICEMAIL and turn.intent == "voicemail"
    assert record.end_reason == "voicemail"
    check_message_after_beep(rec)


def test_a_silent_line_hears_the_opening_as_its_prompt(bed: Bed) -> None:
    """Answered, then nothing (frames of silence): the opening is the prompt once
    ``[amd] initial_silence_ms`` has passed without a word, not the no-input prompt (8 s)."""
    _, rec, record = outbound_call(bed, ["p:silence/7"])
    greeting = record.turns[0]
    assert greeting.fallbacks == ["amd_silence:initial_silence"], greeting.fallbacks
    assert greeting.reply_text == OPENING
    first = heard_after(rec, 0.0)
    assert first is not None and BOT_INITIAL_SILENCE_S <= first < 4.5


def test_a_person_asterisks_amd_heard_hears_the_opening_at_once(bed: Bed) -> None:
    """The dialplan runs Asterisk's AMD() before AudioSocket (dialplans/asterisk: the
    outbound context with AMD). It hears the hello and the pause after it and says HUMAN;
    the bot reads AMDSTATUS over AMI and opens at once, instead of waiting for a word in
    the silence that follows (which would be its own initial-silence prompt)."""
    hello = bed.asterisk.sound("amd_hello", question_pcm(HELLO))
    tag, rec, record = outbound_call(
        bed, ["p:silence/1", f"p:{hello}", "p:silence/8"], mode="amdast"
    )
    assert (bed.asterisk.db_get("vbamd", tag) or "").startswith("HUMAN-HUMAN-"), tag
    greeting = record.turns[0]
    assert greeting.reply_text == OPENING, (greeting.fallbacks, bed.bot.log_tail())
    assert greeting.fallbacks == ["amd_human:asterisk:HUMAN-HUMAN"], greeting.fallbacks
    (said_hello, *_) = said_segments(rec)
    first = heard_after(rec, 0.0)
    assert first is not None and first >= said_hello[1] + ASTERISK_AFTER_GREETING_S
    # Not after the bot's own wait for a word in the silence that AMD() left it.
    assert first < said_hello[1] + ASTERISK_AFTER_GREETING_S + BOT_INITIAL_SILENCE_S


def test_a_campaign_contact_answered_by_a_machine_is_left_the_message_and_retried(
    bed: Bed, tmp_path: Path
) -> None:
    """``voicebot-pbx campaign run`` over AMI Originate dials an outbound-profile contact
    whose line is an answering machine (73xxx): the bot leaves the message after the beep
    and hangs up, and the campaign counts the attempt as ``machine``, due again later."""
    bed.asterisk.sound(
        "amd_campaign_machine",
        machine_pcm(
            "Hello, you have reached Tom. I can't come to the phone. Leave a message after"
            " the tone."
        ),
    )
    config, env = asterisk_campaign_config(bed.bot.folder, tmp_path, bed.asterisk.ami_secret)
    call_id = run_machine_campaign(
        config, env, tmp_path, bed.bot.state_dir, "73001", bed.bot.log_tail
    )
    (record,) = [r for r in bed.new_records(timeout_s=30.0) if r.call_id == call_id]
    assert record.end_reason == "voicemail" and record.turns[0].reply_text == VOICEMAIL
    assert verdict_of(record.turns[0]).startswith("amd_machine:")


def test_a_person_taken_for_a_machine_who_talks_over_the_message_hears_the_opening(
    bed: Bed,
) -> None:
    """A callee answers with a whole sentence (a machine's length; its words say neither
    a person nor a machine), no beep: the bot takes it for a machine and starts the
    voicemail message in the quiet. The callee talks over it ("hello? who am I talking to?"),
    which a recording never does: the message stops and the opening plays after the words."""
    answer = bed.asterisk.sound(
        "amd_long_answer",
        question_pcm("Morning, Alex here, I am just walking back from the station now."),
    )
    back = bed.asterisk.sound("amd_talk_back", question_pcm("Hello? Who am I talking to?"))
    _, rec, record = outbound_call(
        bed, ["p:silence/1", f"p:{answer}", "p:silence/3", f"p:{back}", "p:silence/8"]
    )
    first = record.turns[0]
    import os

    if os.environ.get("DUMP_BOT_LOG"):
        Path(os.environ["DUMP_BOT_LOG"]).write_text(bed.bot.log_tail(200000))
    assert verdict_of(first) == "amd_machine:long_greeting", (first.fallbacks, bed.bot.log_tail())
    assert first.reply_text == VOICEMAIL
    openings = [t for t in record.turns[1:] if t.kind == "greeting"]
    assert [t.fallbacks for t in openings] == [["amd_human:talked_over_message"]], (
        [(t.kind, t.transcript, t.fallbacks) for t in record.turns],
        bed.bot.log_tail(),
    )
    assert openings[0].reply_text == OPENING
    assert record.end_reason != "voicemail"
    said_answer, said_back = said_segments(rec)[:2]
    message = heard_after(rec, said_answer[1])
    assert message is not None and message < said_back[0], "the message began before the words"
    assert heard_after(rec, said_back[1]) is not None, "the opening after them"
