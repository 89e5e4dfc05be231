"""Calls through a real Asterisk 22's WebSocket channel (chan_websocket) into a real
``voicebot-pbx serve`` with ``[websocket] enabled``.

The caller half of a Local channel plays espeak-ng questions and records what it hears; the
other half runs ``Dial(WebSocket/voicebot/c(slin16))`` (or ``c(slin)``): Asterisk connects to
the bot's WebSocket server (``websocket_client.conf`` [voicebot], subprotocol ``media``). What
is checked is what the caller heard and the bot's call record, never timing (that is
``bench/``'s job).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.realpbx import free_port, self_signed
from tests.realpbx.asterisk import WS_PASSWORD, Asterisk, running
from tests.realpbx.bot import BotProcess
from tests.realpbx.speech import first_voiced_after, question_pcm, segments, voiced_windows
from tests.test_real_asterisk import Bed  # the same bed: one Asterisk, one bot
from voicebot_pbx.ops.records import CallRecord

pytestmark = [pytest.mark.realpbx, pytest.mark.models, pytest.mark.slow]

GREETING_S = 6
HOURS_REPLY = "We are open Monday to Friday"


def ws_bed(folder: Path, *, tls: bool = False) -> Iterator[Bed]:
    """A real Asterisk whose websocket_client.conf dials a real bot's [websocket] listener
    (with TLS: the bot's own self-signed certificate, and one from another CA for the
    wrong-CA stanza)."""
    ws_port = free_port()
    asterisk = Asterisk(folder / "asterisk", bot_port=free_port(), ws_port=ws_port)
    toml = f'[websocket]\nenabled = true\nport = {ws_port}\nusername = "asterisk"\n'
    toml += f'incoming_url = "ws://127.0.0.1:{asterisk.http_port}/media"\n'
    if tls:
        cert, key = self_signed(folder / "asterisk" / "keys")
        other, _ = self_signed(folder / "other")
        other.rename(folder / "asterisk" / "keys" / "other-cert.pem")
        toml += f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
    bot = BotProcess(
        folder / "bot",
        ami_port=asterisk.ami_port,
        ami_secret=asterisk.ami_secret,
        extra_toml=toml,
        extra_env={"VOICEBOT_WEBSOCKET_PASSWORD": WS_PASSWORD},
    )
    with running(asterisk, bot):
        yield Bed(asterisk, bot, set())


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    yield from ws_bed(tmp_path_factory.mktemp("real-asterisk-ws"))


def hours_asked_and_answered(bed: Bed, sound: str, mode: str) -> CallRecord:
    """One call in ``mode`` asks "what are your opening hours" (the sound ``sound``) and
    hears the answer; its call record (the caller hung up, one turn)."""
    hours = bed.asterisk.sound(sound, question_pcm("what are your opening hours"))
    tag = bed.run_call([f"p:silence/{GREETING_S}", f"p:{hours}", "p:silence/5"], mode=mode)
    question_end_s, reply_s = asked_and_answered(bed, tag)
    assert reply_s < question_end_s + 5.0
    (record,) = bed.new_records()
    assert record.end_reason == "caller_hangup"
    speech = [t for t in record.turns if t.kind == "speech"]
    assert len(speech) == 1 and speech[0].reply_text.startswith(HOURS_REPLY)
    return record


def asked_and_answered(bed: Bed, tag: str) -> tuple[float, float]:
    rec = bed.asterisk.recording(tag)
    said = segments(voiced_windows(rec.said, rec.rate_hz))
    assert said, "the caller's question is not in its recording"
    heard = voiced_windows(rec.heard, rec.rate_hz)
    assert first_voiced_after(heard, 0.0) is not None, "the caller heard no greeting"
    reply_s = first_voiced_after(heard, said[0][1])
    assert reply_s is not None, f"the caller heard no answer:\n{bed.bot.log_tail()}"
    return said[0][1], reply_s


@pytest.mark.parametrize(("mode", "rate_hz"), [("ws16", 16000), ("ws8", 8000)])
def test_a_spoken_question_is_answered_over_the_websocket_channel(
    bed: Bed, mode: str, rate_hz: int
) -> None:
    record = hours_asked_and_answered(bed, f"hours-{mode}", mode)
    assert record.rate_hz == rate_hz
    assert "session_crashed" not in bed.bot.log_text()
    # Asterisk reported every MARK_MEDIA the bot put after a reply's speech sent ahead (the
    # greeting's end; the caller hangs up during the answer): its timings are what the
    # caller heard.
    closed = [
        json.loads(line) for line in bed.bot.log_text().splitlines() if '"call_closed"' in line
    ]
    mine = [c for c in closed if c["call_id"] == record.call_id]
    assert mine and mine[-1]["marks"] >= 1 and mine[-1]["marks_unconfirmed"] == 0, mine


def test_the_incoming_form_the_bot_connects_to_asterisk_and_answers(bed: Bed) -> None:
    """``Dial(WebSocket/INCOMING/c(slin16))``: Asterisk waits; AMI's VarSet event gives the
    bot the connection id and it connects to Asterisk's HTTP server at /media/<id>."""
    record = hours_asked_and_answered(bed, "hours-in", "wsi16")
    assert record.rate_hz == 16000
    started = [
        json.loads(line) for line in bed.bot.log_text().splitlines() if '"call_started"' in line
    ]
    mine = [c for c in started if c.get("call_id") == record.call_id]
    assert mine and mine[-1]["channel"].startswith("WebSocket/INCOMING/"), mine


def test_the_bots_goodbye_hangs_up_and_the_dialplan_goes_on(bed: Bed) -> None:
    bye = bed.asterisk.sound("bye-ws", question_pcm("that is all, goodbye"))
    tag = bed.run_call([f"p:silence/{GREETING_S}", f"p:{bye}", "p:silence/10"], mode="ws16")
    (record,) = bed.new_records()
    assert record.end_reason == "bot_hangup"
    # Dial() returned (the bot's HANGUP ended the WebSocket leg) and the dialplan went on.
    globals_text = bed.asterisk.cli("dialplan show globals")
    assert f"vbnext_{tag}=ANSWER" in globals_text, globals_text[-2000:]
    rec = bed.asterisk.recording(tag)
    said = segments(voiced_windows(rec.said, rec.rate_hz))
    assert len(rec.said) / rec.rate_hz < said[0][1] + 9.0  # cut off before its 10 s


def test_dtmf_reaches_the_dialogue(bed: Bed) -> None:
    tag = bed.run_call([f"p:silence/{GREETING_S}", "d:5", "p:silence/4"], mode="ws16")
    bed.asterisk.recording(tag)
    (record,) = bed.new_records()
    assert [t.transcript for t in record.turns if t.kind == "dtmf"] == ["5"], record.turns


def test_talking_over_the_reply_flushes_asterisks_queue(bed: Bed) -> None:
    """The caller talks over the long opening-hours reply: the bot stops it with
    FLUSH_MEDIA and answers the new question."""
    hours = bed.asterisk.sound("hours-bi", question_pcm("what are your opening hours"))
    where = bed.asterisk.sound("where-bi", question_pcm("where are you located"))
    tag = bed.run_call(
        [f"p:silence/{GREETING_S}", f"p:{hours}", "p:silence/2", f"p:{where}", "p:silence/6"],
        mode="ws16",
    )
    bed.asterisk.recording(tag)
    (record,) = bed.new_records()
    speech = [t for t in record.turns if t.kind == "speech"]
    assert speech[0].reply_text.startswith(HOURS_REPLY) and speech[0].barged_in, record.turns
    assert "Harbour Street" in speech[-1].reply_text
    closed = [
        json.loads(line) for line in bed.bot.log_text().splitlines() if '"call_closed"' in line
    ]
    assert closed[-1]["call_id"] == record.call_id and closed[-1]["flushes"] >= 1, closed[-1]


def test_a_transfer_redirects_the_channel_that_dialled_the_bot_with_its_context(
    bed: Bed,
) -> None:
    """AMI maps the WebSocket call (DialBegin: the bot's call id is the WebSocket channel's
    uniqueid) to the channel that ran Dial(): the handover variables are set on it and it is
    redirected into [voicebot-transfer], as for AudioSocket calls."""
    agent = bed.asterisk.sound("agent-ws", question_pcm("can I talk to an agent please"))
    tag = bed.run_call([f"p:silence/{GREETING_S}", f"p:{agent}", "p:silence/10"], mode="ws16")
    (record,) = bed.new_records()
    assert record.end_reason == "transferred" and record.transfer_target == "agents"
    assert not record.errors, record.errors
    globals_text = bed.asterisk.cli("dialplan show globals")
    assert f"vbxfer_{tag}=agents|{record.call_id}|no" in globals_text, bed.bot.log_tail()


@pytest.fixture(scope="module")
def tls_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    """Issue #20: wss:// from the real Asterisk (websocket_client.conf ``tls_enabled``,
    ``verify_server_cert``/``verify_server_hostname``) to the bot's TLS listener."""
    yield from ws_bed(tmp_path_factory.mktemp("real-asterisk-wss"), tls=True)


def test_a_question_is_answered_over_wss_with_the_certificate_verified(tls_bed: Bed) -> None:
    record = hours_asked_and_answered(tls_bed, "hours-wss", "wss16")
    assert record.rate_hz == 16000
    listening = [
        json.loads(line)
        for line in tls_bed.bot.log_text().splitlines()
        if '"websocket_listening"' in line
    ]
    assert listening and listening[0]["tls"] is True


def test_asterisk_refuses_a_bot_certificate_it_does_not_trust(tls_bed: Bed) -> None:
    """The check above is real: a stanza trusting another CA gets no connection."""
    tag = tls_bed.asterisk.call(["p:silence/3"], mode="wssbad16")
    tls_bed.asterisk.wait_call_gone(tag, 20.0)
    globals_text = tls_bed.asterisk.cli("dialplan show globals")
    assert f"vbnext_{tag}=" in globals_text, globals_text[-2000:]
    assert f"vbnext_{tag}=ANSWER" not in globals_text
    assert "Client start error" in tls_bed.asterisk.log_tail(20000)
