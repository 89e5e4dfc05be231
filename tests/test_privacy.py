"""Privacy by default (issue #24): a caller speaks an account number through a whole call to
the real service on its default settings; afterwards the number is nowhere: not in the call
database, not in the logs, not in any file of the state directory, not on the calls page.
And a reply made during a call (which may carry a caller's data) is never written to the
on-disk TTS cache."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.speech import espeak_pcm, have_espeak
from tests.test_service import free_port
from tests.test_turns import HOURS, make_shared, timeline
from voicebot_pbx.answers.dialogue import RuleDialogue
from voicebot_pbx.call.prompts import TtsCache
from voicebot_pbx.config import DialogueConfig, RuleConfig
from voicebot_pbx.pbx.caller import Say, SimulatedCaller
from voicebot_pbx.testing import run_virtual, tone

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT = "15805427"
# The number written any way: "15805427", "1 5 8 0 5 4 2 7", "1-5-8-0 ...".
ACCOUNT_ANYHOW = re.compile(r"\D{0,3}".join(ACCOUNT).encode())


@pytest.mark.models
@pytest.mark.skipif(not have_espeak(), reason="needs espeak-ng and sox (scripts/install)")
def test_a_spoken_account_number_is_stored_and_logged_nowhere(tmp_path: Path) -> None:
    port, health_port = free_port(), free_port()
    state = tmp_path / "state"
    config = tmp_path / "voicebot.toml"
    # Defaults, except where a test has to differ: ports, the state dir, the rules (no Rasa
    # to wait for) and the shared test TTS cache (its warm-up is minutes otherwise).
    config.write_text(
        f"""
state_dir = "{state}"
[server]
port = {port}
drain_s = 1.0
[health]
port = {health_port}
[dialogue]
engine = "rules"
[tts]
cache_dir = "{ROOT / ".cache" / "test-tts-cache"}"
"""
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voicebot_pbx.cli", "serve", "--config", str(config)],
            env=dict(os.environ),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                with contextlib.suppress(OSError):
                    url = f"http://127.0.0.1:{health_port}/ready"
                    with urllib.request.urlopen(url, timeout=2) as r:
                        if r.status == 200:
                            break
                assert time.monotonic() < deadline, "not ready"
                time.sleep(0.5)
            said = "my account number is " + " ".join(ACCOUNT)
            result = asyncio.run(
                SimulatedCaller("127.0.0.1", port, reply_gap_s=0.5, reply_timeout_s=20).run(
                    [Say(espeak_pcm(said))], hangup_after_s=1.0
                )
            )
            assert result.call_id
            # The calls page of the admin port lists it (issue #22), masked like the rest.
            deadline = time.monotonic() + 10
            while True:
                url = f"http://127.0.0.1:{health_port}/calls"
                with urllib.request.urlopen(url, timeout=5) as r:
                    listing = r.read().decode()
                if result.call_id in listing or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert result.call_id in listing
            with urllib.request.urlopen(f"{url}/{result.call_id}", timeout=5) as r:
                call_page = r.read()
            assert b"[digits]" in call_page and not ACCOUNT_ANYHOW.search(call_page)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    # The call was heard (the transcript is stored, masked): the check below is not empty.
    with sqlite3.connect(state / "calls.db") as db:
        transcripts = [row[0] for row in db.execute("SELECT transcript FROM turns")]
    assert any("number" in t.lower() and "[digits]" in t for t in transcripts), transcripts
    logged = log_path.read_bytes()
    assert b"[digits]" in logged  # the transcript event was logged, masked
    assert not ACCOUNT_ANYHOW.search(logged), "the account number is in the log"
    for path in state.rglob("*"):
        if path.is_file():
            assert not ACCOUNT_ANYHOW.search(path.read_bytes()), f"the account number is in {path}"


def test_replies_made_during_a_call_stay_out_of_the_disk_cache(tmp_path: Path) -> None:
    """A reply the TTS made during the call (here a rule's reply that was not warmed) is kept
    in memory for later calls of this process, but never written to the cache directory."""
    base = make_shared()
    reply = "Your balance is forty-six pounds and forty pence."
    rules = (RuleConfig(keywords=("hours",), reply=reply),)
    dialogue = DialogueConfig(greeting="Hi.", reprompt="Pardon?", rules=rules)
    config = dataclasses.replace(base.config, dialogue=dialogue)
    disk = TtsCache("tone", tmp_path / "tts-cache")
    disk.put("Hi.", 8000, base.engines.script_tts.synthesize_all("Hi.", 8000))  # type: ignore[attr-defined]
    shared = dataclasses.replace(
        base, config=config, dialogue=RuleDialogue.from_config(dialogue), tts_cache=disk
    )
    warmed = sorted(p.name for p in (tmp_path / "tts-cache").iterdir())
    _, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, HOURS))], 10.0))
    spoken = [t for t in session.record.turns if t.kind == "speech"]  # type: ignore[attr-defined]
    assert spoken and spoken[0].reply_text == reply
    assert disk.get(reply, 8000) is not None  # remembered in memory ...
    assert sorted(p.name for p in (tmp_path / "tts-cache").iterdir()) == warmed  # ... only
