"""Calls through a real FreeSWITCH 1.10.12 into a real ``voicebot-pbx serve``.

The caller half of a loopback channel pair runs a script (espeak-ng questions, silence,
DTMF) and records what it hears and says; the other half runs ``socket 127.0.0.1:<port>
async full`` (from the XML dialplan, or ``'&socket(...)'`` straight from ``originate``), and
the bot exchanges audio with it through ``unicast`` (L16 over UDP). What is checked is what
the caller heard, the bot's call record and the marks the dialplan leaves (global
variables): never timing beyond "before the caller hung up".
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.realpbx import CAMPAIGN_SETTINGS, campaign_cli, free_port, run_campaign_through
from tests.realpbx.bot import BotProcess
from tests.realpbx.freeswitch import Call, FreeSwitch, Recording, Step, dtmf, play, silence
from tests.realpbx.outbound import (
    OPENING,
    PROFILE_TOML,
    VOICEMAIL,
    check_message_after_beep,
    machine_pcm,
    peak_hz,
    run_machine_campaign,
    verdict_of,
)
from tests.realpbx.speech import (
    first_voiced_after,
    heard_after,
    question_pcm,
    said_segments,
    voiced_windows,
)
from voicebot_pbx.ops.records import CallRecord

pytestmark = [pytest.mark.realpbx, pytest.mark.models, pytest.mark.slow]

HOURS_REPLY = "We are open Monday to Friday"
GOODBYE_REPLY = "Thank you for calling. Goodbye!"
TRANSFER_REPLY = "Please hold while I transfer you to an agent."
GREETING_S = 6.0  # the greeting (~3.7 s) plays while the caller waits
AGENTS_TONE_HZ = 1000.0  # what the "agents" extension plays (freeswitch.xml)


@dataclass
class Bed:
    fs: FreeSwitch
    bot: BotProcess

    def run_call(self, steps: list[Step], mode: str = "dialplan", timeout_s: float = 60.0) -> Call:
        call = self.fs.call(steps, mode=mode)
        self.fs.wait_call_gone(call, timeout_s)
        return call

    def record(self, call: Call, timeout_s: float = 15.0) -> CallRecord:
        """The finished call record of ``call`` (its id is the bot half's channel UUID)."""
        return self.record_of(call.uuid, timeout_s)

    def record_of(self, call_id: str, timeout_s: float = 15.0) -> CallRecord:
        """The finished call record with this id (a campaign call's is the campaign's)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for record in self.bot.records():
                if record.call_id == call_id and record.ended_at:
                    return record
            if time.monotonic() > deadline:
                raise AssertionError(f"no call record for {call_id}: {self.bot.log_tail()}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    folder = tmp_path_factory.mktemp("real-freeswitch")
    esl_port = free_port()
    fs = FreeSwitch(folder / "freeswitch", bot_port=esl_port)
    fs.start()
    udp_min = 42000 + (esl_port % 200) * 100  # a range of its own; busy ports are skipped
    bot = BotProcess(
        folder / "bot",
        extra_toml=f"""
[freeswitch]
enabled = true
port = {esl_port}
udp_port_min = {udp_min}
udp_port_max = {udp_min + 49}
{PROFILE_TOML}""",
    )
    try:
        bot.start()
        yield Bed(fs, bot)
    finally:
        bot.stop()
        fs.cleanup()


def question(bed: Bed, name: str, text: str) -> str:
    return bed.fs.sound(name, question_pcm(text))


def speech_turns(record: CallRecord) -> list[tuple[str, str]]:
    return [(t.transcript, t.reply_text) for t in record.turns if t.kind == "speech"]


def test_greeting_and_a_question_through_socket_and_unicast(bed: Bed) -> None:
    """socket async full from the dialplan, unicast both ways: the caller hears the
    greeting, its question reaches the bot's STT and the answer reaches the caller."""
    hours = question(bed, "hours", "what are your opening hours")
    call = bed.run_call([silence(GREETING_S), play(hours), silence(6)])
    rec = bed.fs.recording(call)
    assert rec.rate_hz == 8000
    greeting_s = heard_after(rec, 0.0)
    assert greeting_s is not None and greeting_s < 2.0, "the greeting reached the caller"
    said = said_segments(rec)
    assert said, "the caller's question is not in its recording"
    reply_s = heard_after(rec, said[0][1])
    assert reply_s is not None and reply_s < said[0][1] + 5.0, "the caller heard the answer"
    record = bed.record(call)
    assert record.pbx == "freeswitch" and record.rate_hz == 8000
    assert record.end_reason == "caller_hangup"
    ((transcript, reply),) = speech_turns(record)
    assert "hour" in transcript.lower() and reply.startswith(HOURS_REPLY)
    # The caller hung up: the channel was gone, nothing ran after socket.
    assert bed.fs.global_var(f"vbnext_{call.tag}") == ""


def test_the_example_dialplan_an_admin_copies_answers_a_call(bed: Bed) -> None:
    """``dialplans/freeswitch/voicebot.xml`` as an admin installs it (only the bot's port
    changed): 5000 answers, hands the call to the bot over ``socket ... async full``, and
    the caller's question is answered."""
    hours = question(bed, "hours", "what are your opening hours")
    call = bed.run_call([silence(GREETING_S), play(hours), silence(6)], mode="example")
    record = bed.record(call)
    assert record.pbx == "freeswitch", bed.bot.log_tail()
    ((transcript, reply),) = speech_turns(record)
    assert "hour" in transcript.lower() and reply.startswith(HOURS_REPLY)
    rec = bed.fs.recording(call)
    (said, *_) = said_segments(rec)
    assert heard_after(rec, said[1]) is not None, "the caller heard the answer"


def test_inline_socket_and_a_caller_hanging_up_mid_reply(bed: Bed) -> None:
    """originate ... '&socket(127.0.0.1:<port> async full)' (no dialplan on the bot's
    side); the caller hangs up 2.5 s after the question, inside the ~6 s reply: the record
    is written. (2.5 s: with the text model on, a decode at the pause that misses the last
    word can read unfinished, and the turn waits turn.unfinished_max_silence_ms, 1.5 s.)"""
    hours = question(bed, "hours2", "when are you open")
    call = bed.run_call([silence(GREETING_S), play(hours), silence(2.5)], mode="inline")
    rec = bed.fs.recording(call)
    said = said_segments(rec)
    assert said and heard_after(rec, said[0][1]) is not None, "the reply had started"
    record = bed.record(call)
    assert record.end_reason == "caller_hangup" and record.ended_at is not None
    ((_, reply),) = speech_turns(record)
    assert reply.startswith(HOURS_REPLY)
    log = bed.bot.log_text()
    assert "session_crashed" not in log and "session_overran" not in log


def test_dtmf_from_the_caller_reaches_the_dialogue(bed: Bed) -> None:
    call = bed.run_call([silence(GREETING_S), dtmf("1"), silence(5)])
    rec = bed.fs.recording(call)
    record = bed.record(call)
    dtmf_turns = [t for t in record.turns if t.kind == "dtmf"]
    assert [t.transcript for t in dtmf_turns] == ["1"]
    assert dtmf_turns[0].reply_text.startswith("Sorry")  # the rules' reprompt
    assert heard_after(rec, GREETING_S) is not None, "the caller heard the reprompt"
    assert not speech_turns(record)


def test_barge_in_stops_the_bot(bed: Bed) -> None:
    """The caller talks over the long hours reply: the caller hears the bot stop, and the
    interruption is answered."""
    hours = question(bed, "hours3", "what are your opening hours")
    where = question(bed, "where", "where are you located")
    call = bed.run_call([silence(GREETING_S), play(hours), silence(1.5), play(where), silence(6)])
    rec = bed.fs.recording(call)
    said = said_segments(rec)
    assert len(said) == 2, said
    (_, question_end), (interrupt_start, interrupt_end) = said
    heard = voiced_windows(rec.heard, rec.rate_hz)
    reply_s = first_voiced_after(heard, question_end)
    assert reply_s is not None and reply_s < interrupt_start, "the reply was playing"
    # The ~6 s reply would still play here; the bot went silent once it heard enough.
    start, end = int((interrupt_start + 1.0) / 0.01), int(interrupt_end / 0.01)
    assert end > start and not heard[start:end].any(), "the bot kept talking over the caller"
    record = bed.record(call)
    turns = [t for t in record.turns if t.kind == "speech"]
    assert len(turns) == 2
    assert turns[0].reply_text.startswith(HOURS_REPLY) and turns[0].barged_in
    assert "Harbour Street" in turns[1].reply_text
    assert heard_after(rec, interrupt_end) is not None, "the caller heard the second answer"


def test_transfer_lands_in_the_target_extension(bed: Bed) -> None:
    """ "An agent" -> uuid_transfer <uuid> agents XML default: the channel leaves the socket
    application (the rest of tobot_<tag> never runs) and runs the agents extension."""
    agent = question(bed, "agent", "i want to talk to an agent")
    call = bed.run_call([silence(GREETING_S), play(agent), silence(8)])
    record = bed.record(call)
    assert record.end_reason == "transferred" and record.transfer_target == "agents"
    assert speech_turns(record)[0][1] == TRANSFER_REPLY
    assert bed.fs.global_var(f"vbxfer_{call.tag}") == "agents"
    # The handover variables the bot set (uuid_setvar) before uuid_transfer, read back by
    # the agents extension.
    call_id, intent, verified = bed.fs.global_var(f"vbctx_{call.tag}").split("|")
    assert (call_id, verified) == (record.call_id, "no")
    summary = bed.fs.global_var(f"vbsum_{call.tag}")
    assert summary.startswith(f"{intent}; 1 turn; said: ") and "agent" in summary, summary
    assert bed.fs.global_var(f"vbnext_{call.tag}") == ""
    rec = bed.fs.recording(call)
    # The caller heard the agents extension's tone after the bot's last words.
    last = rec.heard[-rec.rate_hz :]
    assert np.abs(last).max() > 1000 and peak_hz(last, rec.rate_hz) == pytest.approx(
        AGENTS_TONE_HZ, abs=20.0
    )


def test_a_yes_to_the_honest_offer_lands_in_the_agents_extension(bed: Bed) -> None:
    """A question nobody's knowledge covers gets the refusal, which asks "Shall I put you
    through to an agent?"; the caller's "yes please" transfers (uuid_transfer to agents)."""
    pancakes = question(bed, "pancakes", "what is the best recipe for pancakes")
    yes = question(bed, "yes", "yes please")
    call = bed.run_call([silence(GREETING_S), play(pancakes), silence(12), play(yes), silence(8)])
    record = bed.record(call)
    turns = speech_turns(record)
    assert turns[0][1].endswith("Shall I put you through to an agent?"), turns
    assert record.end_reason == "transferred" and record.transfer_target == "agents", turns
    assert turns[-1][1] == "Sure, I'll put you through to an agent now."
    assert bed.fs.global_var(f"vbxfer_{call.tag}") == "agents"
    rec = bed.fs.recording(call)
    last = rec.heard[-rec.rate_hz :]  # the agents extension's tone after the bot's words
    assert np.abs(last).max() > 1000 and peak_hz(last, rec.rate_hz) == pytest.approx(
        AGENTS_TONE_HZ, abs=20.0
    )


def test_goodbye_hangs_the_call_up(bed: Bed) -> None:
    """The bot's goodbye is sendmsg call-command hangup: the channel ends (the dialplan
    after socket does not run) and the caller is cut off long before its script ends."""
    bye = question(bed, "bye", "that is all, goodbye")
    call = bed.run_call([silence(GREETING_S), play(bye), silence(10)])
    record = bed.record(call)
    assert record.end_reason == "bot_hangup"
    assert [reply for _, reply in speech_turns(record)] == [GOODBYE_REPLY]
    assert bed.fs.global_var(f"vbnext_{call.tag}") == ""
    rec = bed.fs.recording(call)
    said = said_segments(rec)
    assert said and heard_after(rec, said[0][1]) is not None, "the caller heard the goodbye"
    assert len(rec.said) / rec.rate_hz < said[0][1] + 8.0


def test_a_channel_it_cannot_serve_is_handed_back_to_the_dialplan(bed: Bed) -> None:
    """socket without async (static mode: no park, no unicast): the bot sends resume and
    closes, and the dialplan goes on after socket."""
    call = bed.run_call([silence(3)], mode="static")
    assert bed.fs.global_var(f"vbnext_{call.tag}") == call.uuid
    assert not [r for r in bed.bot.records() if r.call_id == call.uuid]
    assert "not_async" in bed.bot.log_text()


def test_the_caller_is_not_heard_while_freeswitch_itself_plays(bed: Bed) -> None:
    """A uuid_broadcast on the bot's channel runs inside the socket app's park loop, which
    stops reading for unicast while it plays: what the caller says meanwhile never reaches
    the bot (so no barge-in, no uuid_break is possible then)."""
    where = question(bed, "where2", "where are you located")
    call = bed.fs.call([silence(GREETING_S), play(where), silence(8)])
    time.sleep(GREETING_S - 2.0)
    out = bed.fs.api(f"uuid_broadcast {call.uuid} playback::tone_stream://%(6000,0,600) aleg")
    assert "+OK" in out
    bed.fs.wait_call_gone(call, 60.0)
    rec = bed.fs.recording(call)
    said = said_segments(rec)
    assert said, "the caller spoke"
    during = rec.heard[int(said[0][0] * rec.rate_hz) : int(said[0][1] * rec.rate_hz)]
    assert peak_hz(during, rec.rate_hz) == pytest.approx(600.0, abs=20.0), "the tone played"
    record = bed.record(call)
    assert not speech_turns(record)
    assert record.end_reason == "caller_hangup"


def campaign_config(bed: Bed, folder: Path) -> tuple[Path, dict[str, str]]:
    """The bot's own config (same state_dir, so the bot can mark machines in the campaign
    store) with the campaign dialling through this FreeSWITCH's event socket."""
    import os

    text = (bed.bot.folder / "voicebot.toml").read_text()
    text = text.replace("[freeswitch]\n", f"[freeswitch]\nesl_port = {bed.fs.esl_port}\n", 1)
    text += '\n[campaign]\npbx = "freeswitch"\nchannel = "loopback/{number}/default"\n'
    config = folder / "campaign.toml"
    config.write_text(text + CAMPAIGN_SETTINGS)
    return config, {**os.environ, "VOICEBOT_FREESWITCH_PASSWORD": bed.fs.esl_password}


def test_a_campaign_dials_through_freeswitch_into_the_bot(bed: Bed, tmp_path: Path) -> None:
    """Issue #23 over the event socket: ``campaign run`` with ``pbx = "freeswitch"``
    originates each contact with ``'&socket(bot async full)'``; the answered contact reaches
    the bot under the campaign's call id, a busy one is retried once, a number on the
    do-not-call list is never dialled, and running it again dials nobody."""

    from voicebot_pbx.campaign.state import CampaignStore

    config, env = campaign_config(bed, tmp_path)
    run_campaign_through(config, env, tmp_path)
    store = CampaignStore(bed.bot.state_dir / "campaigns.sqlite")
    try:
        answered = store.call_ids("contacts", outcome="answered")
    finally:
        store.close()
    deadline = time.monotonic() + 30.0
    while not [r for r in bed.bot.records() if r.call_id in answered and r.ended_at]:
        assert time.monotonic() < deadline, bed.bot.log_tail()
        time.sleep(0.3)
    (record,) = [r for r in bed.bot.records() if r.call_id in answered]
    assert [t.kind for t in record.turns][:1] == ["greeting"]


def _outbound_call(bed: Bed, steps: list[Step]) -> tuple[Call, Recording, CallRecord]:
    call = bed.fs.call(steps, variables={"VOICEBOT_PROFILE": "outbound"})
    bed.fs.wait_call_gone(call, 60.0)
    return call, bed.fs.recording(call), bed.record(call)


def test_answering_machine_detection_lets_a_person_hear_the_opening(bed: Bed) -> None:
    """Issue #23 through the real FreeSWITCH: the callee says "hello?" and waits; the
    detector calls it a person and the opening plays after the hello, not over it."""
    hello = bed.fs.sound("amd_hello", question_pcm("Hello?"))
    call, rec, record = _outbound_call(bed, [silence(0.5), play(hello), silence(9.0)])
    greeting = record.turns[0]
    assert greeting.kind == "greeting" and greeting.reply_text == OPENING, bed.bot.log_tail()
    # The pause after "hello?" made a person likely: the opening started before the verdict.
    assert greeting.fallbacks[:1] == ["amd_likely_human"], greeting.fallbacks
    assert verdict_of(greeting).startswith("amd_human:"), greeting.fallbacks
    (said_hello, *_) = said_segments(rec)
    first = heard_after(rec, 0.0)
    assert first is not None and first >= said_hello[1], "nothing over the hello"
    # The hello was the detector's: no dialogue turn was made of it.
    assert not speech_turns(record)


def test_answering_machine_detection_hears_a_person_who_answers_with_a_sentence(
    bed: Bed,
) -> None:
    """A sentence is as long as a short voicemail greeting (a machine by length); its words
    are a person's (call/amd_words.py): the opening plays after it, no message is left."""
    words = "Hello, Mark Jones speaking, sorry, who is this please?"
    answer = bed.fs.sound("amd_sentence", question_pcm(words))
    call, rec, record = _outbound_call(bed, [silence(0.5), play(answer), silence(9.0)])
    greeting = record.turns[0]
    assert greeting.reply_text == OPENING, (greeting.fallbacks, bed.bot.log_tail())
    assert verdict_of(greeting).startswith("amd_human:long_greeting"), greeting.fallbacks
    assert "words_human" in verdict_of(greeting)
    assert record.end_reason != "voicemail"
    (said, *_) = said_segments(rec)
    first = heard_after(rec, 0.0)
    assert first is not None and first >= said[1], "nothing over the sentence"


def test_answering_machine_detection_leaves_the_message_after_the_beep(bed: Bed) -> None:
    """A voicemail greeting, then its beep: the bot stays silent through the greeting,
    leaves the profile's message after the beep and hangs up (end reason "voicemail")."""
    greeting = machine_pcm(
        "Hi, you have reached the Taylor household. We can't take your call right now."
        " Please leave a message after the tone."
    )
    machine = bed.fs.sound("amd_machine", greeting)
    call, rec, record = _outbound_call(bed, [silence(0.5), play(machine), silence(12.0)])
    turn = record.turns[0]
    assert verdict_of(turn).startswith("amd_machine:"), (turn.fallbacks, bed.bot.log_tail())
    # This greeting's pauses are too short to make a person likely: no opening was started.
    assert "amd_likely_human" not in turn.fallbacks, turn.fallbacks
    assert turn.reply_text == VOICEMAIL and turn.intent == "voicemail"
    assert record.end_reason == "voicemail"
    check_message_after_beep(rec)


def test_answering_machine_detection_prompts_a_silent_line(bed: Bed) -> None:
    """A callee who answers and says nothing (frames of silence) hears the opening as its
    prompt once ``[amd] initial_silence_ms`` (2.5 s) has passed without a word."""
    call, rec, record = _outbound_call(bed, [silence(6.0)])
    greeting = record.turns[0]
    assert greeting.fallbacks == ["amd_silence:initial_silence"], greeting.fallbacks
    assert greeting.reply_text == OPENING
    first = heard_after(rec, 0.0)
    assert first is not None and first >= 2.5, "not before the initial silence has passed"
    assert first < 4.5, "the opening is the prompt, not a later no-input prompt (8 s)"


def test_a_campaign_contact_answered_by_a_machine_is_left_the_message_and_retried(
    bed: Bed, tmp_path: Path
) -> None:
    """Issue #23 end to end through FreeSWITCH: ``campaign run`` dials a contact of the
    outbound profile whose line is an answering machine (73xxx); the bot detects it, leaves
    the message after the beep and hangs up, and the campaign's store then counts the
    attempt as ``machine`` with the contact due again after ``machine_retries_s``."""
    bed.fs.sound(
        "machine",
        machine_pcm(
            "Hello, you have reached Dee. I can't come to the phone."
            " Leave a message after the tone."
        ),
    )
    config, env = campaign_config(bed, tmp_path)
    call_id = run_machine_campaign(
        config, env, tmp_path, bed.bot.state_dir, "73001", bed.bot.log_tail
    )
    record = bed.record_of(call_id, timeout_s=30.0)
    assert [r.call_id for r in bed.bot.records()].count(call_id) == 1
    assert record.end_reason == "voicemail"
    assert record.turns[0].reply_text == VOICEMAIL
    assert verdict_of(record.turns[0]).startswith("amd_machine:")


def test_a_campaign_callee_who_says_stop_calling_me_goes_on_the_do_not_call_list(
    bed: Bed, tmp_path: Path
) -> None:
    """Issue #23 item 3 through FreeSWITCH: the callee (74xxx) hears the greeting, says
    "please stop calling me"; the bot reads the call's campaign from its channel variables,
    puts the number on the do-not-call list, confirms and hangs up."""
    from voicebot_pbx.campaign.state import CampaignStore

    bed.fs.sound("optout", question_pcm("Please stop calling me."))
    config, env = campaign_config(bed, tmp_path)
    contacts = tmp_path / "optouts.csv"
    contacts.write_text("number,name\n74001,Eve\n")
    run = campaign_cli(config, env, "run", str(contacts), "--once")
    assert run.returncode == 0, run.stdout + run.stderr
    store = CampaignStore(bed.bot.state_dir / "campaigns.sqlite")
    try:
        (call_id,) = store.call_ids("optouts", outcome="answered")
    finally:
        store.close()
    record = bed.record_of(call_id, timeout_s=40.0)
    assert [r.call_id for r in bed.bot.records()].count(call_id) == 1
    assert any(t.intent == "opt_out" for t in record.turns), [
        (t.transcript, t.intent, t.reply_text) for t in record.turns
    ]
    store = CampaignStore(bed.bot.state_dir / "campaigns.sqlite")
    try:
        listed = {number: source for number, _, source in store.dnc_numbers()}
    finally:
        store.close()
    assert listed.get("74001") == "opt_out:optouts", listed
