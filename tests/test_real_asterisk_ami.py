"""AMI and operations through a real Asterisk 22 and a real ``voicebot-pbx serve``.

One Asterisk and one bot node (AMI enabled) for the module; the tests run in file order and
the later ones change the bed: Asterisk is restarted, its AMI secret changed, and the last
test starts a second node and SIGKILLs the first. What is checked: the bot's call records,
what the caller heard, astdb marks the dialplan writes (``vbxfer``: a Redirect landed in
``[voicebot-transfer]``; ``vbnext``: the dialplan went on after the bot), AMI events seen
by the test's own AMI session, and the bot's log lines. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.realpbx import ROOT, asterisk_campaign_config, free_port, run_campaign_through
from tests.realpbx.asterisk import AMI_SECRET, AmiWatcher, Asterisk
from tests.realpbx.bot import BotProcess
from tests.realpbx.speech import first_voiced_after, question_pcm, segments, voiced_windows
from voicebot_pbx.ops.records import CallRecord

pytestmark = [pytest.mark.realpbx, pytest.mark.models, pytest.mark.slow]

GREETING_S = 6
PAIR = "tobot-pair"  # extensions.conf: two bot nodes
HOLD_REPLY = "Please hold while I transfer you to an agent."


@dataclass
class Bed:
    asterisk: Asterisk
    bot: BotProcess
    watcher: AmiWatcher
    seen: set[str]

    def new_records(
        self, count: int = 1, timeout_s: float = 15.0, bot: BotProcess | None = None
    ) -> list[CallRecord]:
        node = bot or self.bot
        records = node.wait_records(len(self.seen & _ids(node)) + count, timeout_s)
        fresh = [r for r in records if r.call_id not in self.seen]
        self.seen.update(r.call_id for r in fresh)
        return fresh

    def run_call(
        self, steps: list[str], mode: str = "bot", timeout_s: float = 40.0, context: str = "tobot"
    ) -> str:
        tag = self.asterisk.call(steps, mode=mode, context=context)
        self.asterisk.wait_call_gone(tag, timeout_s)
        return tag

    def question(self, name: str, text: str) -> str:
        return self.asterisk.sound(name, question_pcm(text))


def _ids(bot: BotProcess) -> set[str]:
    return {r.call_id for r in bot.records() if r.ended_at}


def wait_for(
    what: str, check: Callable[[], bool], timeout_s: float, detail: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout_s} s:\n{detail()}")
        time.sleep(0.2)


def log_events(bot: BotProcess, name: str) -> list[str]:
    """The serve.log lines of structlog event ``name`` (console or JSON format)."""
    pattern = re.compile(rf"(\"event\": \"{name}\"|\b{name}\b)")
    return [line for line in bot.log_text().splitlines() if pattern.search(line)]


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    folder = tmp_path_factory.mktemp("real-asterisk-ami")
    bot_port = free_port()
    asterisk = Asterisk(folder / "asterisk", bot_port=bot_port)
    asterisk.start()
    bot = BotProcess(
        folder / "bot", port=bot_port, ami_port=asterisk.ami_port, ami_secret=asterisk.ami_secret
    )
    watcher: AmiWatcher | None = None
    try:
        bot.start()
        watcher = AmiWatcher(asterisk.ami_port, asterisk.ami_secret)
        wait_for(
            "the bot's AMI login",
            lambda: bool(log_events(bot, "ami_connected")),
            15.0,
            bot.log_tail,
        )
        yield Bed(asterisk, bot, watcher, set())
    finally:
        if watcher is not None:
            watcher.close()
        bot.stop()
        asterisk.cleanup()


def heard_after(bed: Bed, tag: str) -> tuple[float, float | None]:
    """(end of the caller's first utterance, first bot audio heard after it)."""
    rec = bed.asterisk.recording(tag)
    said = segments(voiced_windows(rec.said, rec.rate_hz))
    assert said, "the caller's question is not in its recording"
    heard = voiced_windows(rec.heard, rec.rate_hz)
    return said[0][1], first_voiced_after(heard, said[0][1])


def agent_call(bed: Bed, name: str) -> str:
    agent = bed.question(name, "can I talk to an agent please")
    return bed.run_call([f"p:silence/{GREETING_S}", f"p:{agent}", "p:silence/10"])


def assert_redirected(bed: Bed, tag: str) -> CallRecord:
    """The call was moved by an AMI Redirect into [voicebot-transfer] after the hold line."""
    assert bed.asterisk.db_get("vbxfer", tag) == "agents", bed.bot.log_tail()
    # Not the 0x00 fall-back: AudioSocket() never returned to the next priority.
    assert bed.asterisk.db_get("vbnext", tag) is None
    (record,) = bed.new_records()
    assert record.end_reason == "transferred" and record.transfer_target == "agents"
    speech = [t for t in record.turns if t.kind == "speech"]
    assert len(speech) == 1 and speech[0].reply_text == HOLD_REPLY
    question_end_s, reply_s = heard_after(bed, tag)
    assert reply_s is not None, "the caller heard nothing before the transfer"
    return record


# --- 1. DTMF ----------------------------------------------------------------------------


def test_dtmf_reaches_the_dialogue_once(bed: Bed) -> None:
    """SendDTMF on the caller half: Asterisk 22 sends the key over AudioSocket (0x03) and as
    an AMI DTMFEnd; the dialogue gets each key press once."""
    tag = bed.run_call([f"p:silence/{GREETING_S}", "d:5", "p:silence/3", "d:5", "p:silence/4"])
    (record,) = bed.new_records()
    dtmf = [t.transcript for t in record.turns if t.kind == "dtmf"]
    assert dtmf == ["5", "5"], record.turns
    # Both presses also came as AMI DTMFEnd events on the bot's channel (the copies the
    # bot's client drops): the test is not passing just because AMI stayed silent.
    received = [
        e
        for e in bed.watcher.events("DTMFEnd")
        if e.get("Direction") == "Received"
        and e.get("Channel", "").startswith(f"Local/{tag}@caller-")
        and e.get("Channel", "").endswith(";1")
    ]
    assert [e.get("Digit") for e in received] == ["5", "5"]


# --- 2. transfer ------------------------------------------------------------------------


def test_transfer_is_an_ami_redirect_into_the_transfer_context(bed: Bed) -> None:
    tag = agent_call(bed, "agent1")
    assert_redirected(bed, tag)
    assert log_events(bed.bot, "ami_transfer")
    # What the bot's AMI client keyed the Redirect on: the Newexten of AudioSocket() on the
    # tobot half (;1), the half the Redirect moved into [voicebot-transfer].
    moved = [
        e
        for e in bed.watcher.events("Newexten")
        if e.get("Channel", "").startswith(f"Local/{tag}@caller-")
        and e.get("Context") == "voicebot-transfer"
    ]
    assert moved and moved[0]["Channel"].endswith(";1") and moved[0]["Exten"] == "agents"
    # What the transfer context read from the channel: the bot's Setvar before the Redirect.
    (record,) = [r for r in bed.bot.records() if r.call_id in bed.seen][-1:]
    call_id, intent, verified, account = (bed.asterisk.db_get("vbctx", tag) or "").split("|")
    assert (call_id, verified, account) == (record.call_id, "no", "")
    summary = bed.asterisk.db_get("vbsum", tag) or ""
    assert summary.startswith(f"{intent}; 1 turn; said: ") and "agent" in summary, summary
    assert log_events(bed.bot, "handover_vars") and not record.errors


# --- 3. outbound ------------------------------------------------------------------------


def originate(bed: Bed, tag: str, secret: str) -> tuple[int, dict[str, object], str]:
    """``voicebot-pbx originate --to Local/<tag>@caller`` with the bot's own config."""
    env = {**os.environ, "VOICEBOT_AMI_SECRET": secret}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "voicebot_pbx.cli",
            "originate",
            "--config",
            str(bed.bot.folder / "voicebot.toml"),
            "--to",
            f"Local/{tag}@caller",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    stdout = done.stdout.decode(errors="replace")
    start = stdout.find("{\n")
    outcome = json.loads(stdout[start:]) if start >= 0 else {}
    return done.returncode, outcome, stdout + done.stderr.decode(errors="replace")


def test_originate_command_calls_out_and_the_bot_greets(bed: Bed) -> None:
    tag = "c" + os.urandom(6).hex()
    bed.asterisk.cli(f'database put vbscript {tag} "p:silence/{GREETING_S}"')
    code, outcome, output = originate(bed, tag, bed.asterisk.ami_secret)
    assert code == 0, output
    assert outcome["outcome"] == "answered" and outcome["reason"] == 4, output
    bed.asterisk.wait_call_gone(tag, 30.0)
    (record,) = bed.new_records()
    # The answered leg ran [voicebot-outbound] with the UUID the command chose.
    assert record.call_id == outcome["call_id"]
    assert [t.kind for t in record.turns][:1] == ["greeting"]
    rec = bed.asterisk.recording(tag)
    first = first_voiced_after(voiced_windows(rec.heard, rec.rate_hz), 0.0)
    assert first is not None and first < 3.0, "the callee did not hear the greeting"
    lines = (bed.bot.state_dir / "outbound.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["call_id"] == outcome["call_id"]


def test_a_campaign_dials_through_asterisk_and_resumes_without_redialling(
    bed: Bed, tmp_path: Path
) -> None:
    """Issue #23: ``voicebot-pbx campaign run`` with the bot's own config: an answered
    contact reaches the bot (its call record has the UUID the campaign chose), a busy one is
    retried once, a number on the do-not-call list is never dialled, and running the same
    command again dials nobody."""
    config, env = asterisk_campaign_config(bed.bot.folder, tmp_path, bed.asterisk.ami_secret)
    run_campaign_through(config, env, tmp_path)
    (record,) = bed.new_records(timeout_s=30.0)
    assert [t.kind for t in record.turns][:1] == ["greeting"]


# --- 4. Asterisk restart ----------------------------------------------------------------


def test_asterisk_restart_ami_reconnects_and_transfers_work(bed: Bed) -> None:
    connects = len(log_events(bed.bot, "ami_connected"))
    disconnects = len(log_events(bed.bot, "ami_disconnected"))
    bed.watcher.close()
    bed.asterisk.restart()
    bed.watcher = AmiWatcher(bed.asterisk.ami_port, bed.asterisk.ami_secret)
    wait_for(
        "the bot's AMI reconnect",
        lambda: len(log_events(bed.bot, "ami_connected")) > connects,
        20.0,
        bed.bot.log_tail,
    )
    assert len(log_events(bed.bot, "ami_disconnected")) == disconnects + 1
    log = bed.bot.log_text()
    assert "Traceback" not in log, bed.bot.log_tail()
    tag = agent_call(bed, "agent2")
    assert_redirected(bed, tag)


# --- 6. wrong AMI secret ----------------------------------------------------------------


def test_refused_ami_login_is_one_clear_line_and_calls_still_transfer(bed: Bed) -> None:
    before = len(bed.bot.log_text().splitlines())
    bed.asterisk.set_ami_secret("not-the-bots-secret")
    bed.asterisk.restart()  # the bot's session drops; its next Login is refused
    try:

        def refused() -> list[str]:
            lines = bed.bot.log_text().splitlines()[before:]
            return [line for line in lines if "Authentication failed" in line]

        wait_for("the refused login", lambda: bool(refused()), 20.0, bed.bot.log_tail)
        # A call now: the transfer cannot use AMI, so the bot ends its AudioSocket part with
        # 0x00 and the dialplan continues (to the queue, in production).
        tag = agent_call(bed, "agent3")
        assert bed.asterisk.db_get("vbnext", tag) is not None, bed.bot.log_tail()
        assert bed.asterisk.db_get("vbxfer", tag) is None
        (record,) = bed.new_records()
        assert record.end_reason == "transferred" and record.transfer_target == "agents"
        new = bed.bot.log_text().splitlines()[before:]
        assert "Traceback" not in "\n".join(new), "\n".join(new)
        assert len(refused()) == 1, "\n".join(refused())
        # The CLI says why, too.
        code, outcome, output = originate(bed, "c" + os.urandom(6).hex(), AMI_SECRET)
        (said,) = [line for line in output.splitlines() if "voicebot-pbx originate:" in line]
        assert code == 1 and not outcome and "Authentication failed" in said, output
    finally:
        connects = len(log_events(bed.bot, "ami_connected"))
        bed.asterisk.set_ami_secret(AMI_SECRET)
    wait_for(
        "the bot's AMI login with the restored secret",
        lambda: len(log_events(bed.bot, "ami_connected")) > connects,
        20.0,
        bed.bot.log_tail,
    )


# --- 5. two nodes (last: node 1 is killed) ----------------------------------------------


def test_two_nodes_fail_over_and_a_killed_node_hands_its_calls_back(bed: Bed) -> None:
    node1 = bed.bot
    node2 = BotProcess(
        node1.folder.parent / "bot2",
        port=bed.asterisk.bot2_port,
        ami_port=bed.asterisk.ami_port,
        ami_secret=bed.asterisk.ami_secret,
    )
    node2.start()
    try:
        # Node 1 takes two long calls through Dial(AudioSocket/...), one with Dial's g
        # option (as dialplans/asterisk/extensions.conf now has it), one without ...
        steps = [f"p:silence/{GREETING_S}", "p:silence/10"]
        busy = bed.asterisk.call(steps, mode="pair", context=PAIR)
        nog = bed.asterisk.call(steps, mode="solo", context=PAIR)
        wait_for(
            "two calls on node 1",
            lambda: bed.asterisk.channels().count(f"AudioSocket/127.0.0.1:{node1.port}-") == 2,
            15.0,
            bed.asterisk.channels,
        )
        # ... and dies in the middle of them.
        node1.kill()
        # The killed node's call: Dial() returned (ANSWER: the AudioSocket leg had
        # answered) and the dialplan went on at the next priority ...
        bed.asterisk.wait_call_gone(busy, 10.0)
        assert bed.asterisk.db_get("vbnode1", busy) == "ANSWER"
        assert bed.asterisk.db_get("vbnext", busy) is not None
        # ... only thanks to g: without it Asterisk hung the caller up (only h ran).
        bed.asterisk.wait_call_gone(nog, 10.0)
        assert bed.asterisk.db_get("vbh", nog) is not None
        assert bed.asterisk.db_get("vbnext", nog) is None
        # New calls: node 1 is down (CHANUNAVAIL), node 2 answers them.
        tag = bed.run_call([f"p:silence/{GREETING_S}"], mode="pair", context=PAIR)
        # (vbnode2 stays unset: the caller hung up while node 2 had it, and a caller's
        # hang-up ends the dialplan inside Dial.)
        assert bed.asterisk.db_get("vbnode1", tag) == "CHANUNAVAIL"
        (record,) = bed.new_records(bot=node2)
        assert [t.kind for t in record.turns][:1] == ["greeting"]
        rec = bed.asterisk.recording(tag)
        assert first_voiced_after(voiced_windows(rec.heard, rec.rate_hz), 0.0) is not None, (
            "the caller did not hear node 2's greeting"
        )
        # The same fail-over written with the AudioSocket() application does not work:
        # when it cannot connect, app_audiosocket returns -1 and the channel hangs up
        # (only the h extension runs), so no second node is ever tried.
        app = bed.run_call(["w:3"], mode="apppair", context=PAIR)
        assert bed.asterisk.db_get("vbh", app) is not None
        assert bed.asterisk.db_get("vbnode1", app) is None
        assert bed.asterisk.db_get("vbnext", app) is None
    finally:
        node2.stop()
