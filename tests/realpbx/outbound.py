"""Outbound calls with answering-machine detection (issue #23) through a real PBX: the bot's
outbound profile, the callee's audio, and a campaign whose contact is an answering machine.
Shared by ``tests/test_real_freeswitch.py`` and ``tests/test_real_asterisk_amd.py``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.realpbx import campaign_cli
from tests.realpbx.speech import (
    WINDOW_S,
    Recorded,
    heard_after,
    question_pcm,
    said_segments,
    voiced_windows,
)
from voicebot_pbx.ops.records import TurnRecord
from voicebot_pbx.testing import tone

OPENING = "Hello, this is Northwind Energy calling about your meter reading."
VOICEMAIL = "This is Northwind Energy. Please call us back about your meter reading."
# The profile a callee's channel names in VOICEBOT_PROFILE (the bot's [[profiles]]).
PROFILE_TOML = f"""
[[profiles]]
name = "outbound"
greeting = "{OPENING}"
voicemail_message = "{VOICEMAIL}"
amd = true
"""
BEEP_HZ = 1000.0


def machine_pcm(greeting: str) -> bytes:
    """A voicemail greeting said by espeak-ng, 0.2 s of quiet, then its 0.5 s beep (8 kHz)."""
    return question_pcm(greeting) + bytes(3200) + tone(0.5, 8000, BEEP_HZ, level=0.4)


def peak_hz(samples: np.ndarray, rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1.0 / rate_hz)[int(np.argmax(spectrum))])


def check_message_after_beep(rec: Recorded) -> None:
    """The callee's recordings: its last sound is the beep, nothing of the bot was heard
    before the beep ended, and about a message's length after."""
    beep_end_s = said_segments(rec)[-1][1]
    tail = rec.said[int((beep_end_s - 0.3) * rec.rate_hz) : int(beep_end_s * rec.rate_hz)]
    assert peak_hz(tail, rec.rate_hz) == pytest.approx(BEEP_HZ, abs=20.0)
    first = heard_after(rec, 0.0)
    assert first is not None and first >= beep_end_s, "silent until the beep has ended"
    heard_s = voiced_windows(rec.heard, rec.rate_hz).sum() * WINDOW_S
    assert heard_s > 2.0, "the message was left"


def verdict_of(turn: TurnRecord) -> str:
    """The answering-machine verdict on a call's first turn (its ``amd_<verdict>:`` fallback;
    an opening started on a likely person, ``amd_likely_human``, comes before it)."""
    return next(
        (
            f
            for f in turn.fallbacks
            if f.startswith(("amd_human:", "amd_machine:", "amd_silence:", "amd_undecided:"))
        ),
        "",
    )


def run_machine_campaign(
    config: Path,
    env: dict[str, str],
    folder: Path,
    state_dir: Path,
    number: str,
    detail: Callable[[], str],
) -> str:
    """``campaign run --once`` of one outbound-profile contact whose line is an answering
    machine (``number``); waits until ``campaign status`` counts the attempt as ``machine``
    and checks the contact is due again only after the first machine retry (7200 s by
    default; ``detail``: the bot's log, for a failure). Returns the attempt's call id."""
    from voicebot_pbx.campaign.state import CampaignStore

    contacts = folder / "machines.csv"
    contacts.write_text(f"number,name,profile\n{number},Dee,outbound\n")
    started = time.time()
    run = campaign_cli(config, env, "run", str(contacts), "--once")
    assert run.returncode == 0, run.stdout + run.stderr
    deadline = time.monotonic() + 45.0
    while True:
        status = campaign_cli(config, env, "status", "machines", "--json")
        assert status.returncode == 0, status.stderr
        (summary,) = json.loads(status.stdout)
        if summary["attempts"].get("machine"):
            break
        assert time.monotonic() < deadline, (summary, detail())
        time.sleep(0.5)
    assert summary["attempts"] == {"machine": 1}, summary
    store = CampaignStore(state_dir / "campaigns.sqlite")
    try:
        (call_id,) = store.call_ids("machines", outcome="machine")
        next_at = store.next_due_at("machines")
    finally:
        store.close()
    assert next_at is not None and next_at >= started + 7000.0
    return str(call_id)
