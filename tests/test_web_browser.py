"""The calls web pages in a real browser: Debian's chromium (headless, driven by selenium
through Debian's chromedriver) against a real ``voicebot-pbx serve`` process whose state
folder holds recorded calls with their recordings. The list shows the calls, the filter form
narrows it, a call page shows its transcript, and its ``<audio>`` element loads and plays the
recording served by the bot.

Skipped, with one reason, only when chromium, chromedriver or selenium is not installed
(``scripts/install`` installs all three on the development path; never in production)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.test_analytics import fake_shared, known_script, scripted_call
from tests.test_web import made_call, record, speech
from voicebot_pbx.config import AnalyticsConfig
from voicebot_pbx.ops.analytics import open_recorder
from voicebot_pbx.ops.analytics_open import recordings_dir
from voicebot_pbx.ops.records import CallRecord
from voicebot_pbx.testing import run_virtual

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
HAVE_SELENIUM = importlib.util.find_spec("selenium") is not None
SKIP_REASON = (
    "real-browser test: needs Debian's chromium and chromium-driver and the selenium package "
    "(scripts/install installs them)"
)
pytestmark = [
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER and HAVE_SELENIUM), reason=SKIP_REASON),
    pytest.mark.models,  # serve loads the real models while the pages are used
]

RECORDED = "00000000-0000-4000-8000-00000000b10b"  # the scripted call with its recording
WAIT_S = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hours_ago(hours: float) -> str:
    return (datetime.now() - timedelta(hours=hours)).isoformat(timespec="seconds")


def fill_state(state: Path) -> CallRecord:
    """The state folder as `serve` leaves it: the SQLite call records and the recordings.
    One call runs through the real session (fake engines, virtual time) and is recorded as
    the service records it; three more are written as the recorder writes them, two of them
    with a recording."""
    analytics = AnalyticsConfig(record_audio=True)
    recorder = open_recorder(analytics, state)
    try:
        assert recorder.wait_ready()
        shared = fake_shared(recorder)
        shared.config = dataclasses.replace(
            shared.config, state_dir=str(state), analytics=analytics
        )
        _media, session = run_virtual(
            scripted_call(shared, known_script(), until_s=16.0, call_id=RECORDED)
        )
        recorded = session.record
        assert recorded.recording_path is not None
        copies = recordings_dir(analytics, state) / "copies"
        copies.mkdir(parents=True)
        wavs = []
        for name in ("c-billing", "c-hours"):
            wavs.append(copies / f"{name}.wav")
            shutil.copyfile(recorded.recording_path, wavs[-1])
        calls = [
            made_call(
                "c-billing",
                hours_ago(3),
                profile="sales",
                recording_path=str(wavs[0]),
                turns=[speech("my bill please", "billing"), speech("thanks", "goodbye")],
            ),
            made_call(
                "c-hours",
                hours_ago(2),
                end_reason="bot_hangup",
                recording_path=str(wavs[1]),
                turns=[speech("when are you open", "hours", reply="We open at eight.")],
            ),
            made_call(
                "c-agent",
                hours_ago(1),
                end_reason="transferred",
                transfer_target="sales-queue",
                turns=[speech("somebody real", "agent", reply="Transferring you.")],
            ),
        ]
        asyncio.run(record(recorder, calls))
        assert recorder.flush() and recorder.stats.write_errors == 0
    finally:
        recorder.close()
    return recorded


@dataclasses.dataclass
class Bot:
    url: str  # the admin port: http://127.0.0.1:<port>
    recorded: CallRecord


def _get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bot]:
    """A real `voicebot-pbx serve` on free loopback ports over the recorded calls."""
    folder = tmp_path_factory.mktemp("browser")
    state = folder / "state"
    state.mkdir()
    recorded = fill_state(state)
    health_port = free_port()
    config = folder / "voicebot.toml"
    config.write_text(
        f"""
state_dir = "{state}"
[server]
port = {free_port()}
drain_s = 1.0
[health]
port = {health_port}
[dialogue]
engine = "rules"
[tts]
cache_dir = "{ROOT / ".cache" / "test-tts-cache"}"
"""
    )
    env = {k: v for k, v in os.environ.items() if k != "VOICEBOT_WEB_TOKEN"}  # open pages
    log = folder / "serve.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voicebot_pbx.cli", "serve", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    url = f"http://127.0.0.1:{health_port}"
    try:
        # The admin port (with the calls pages) answers before the models finish loading.
        deadline = time.monotonic() + 60.0
        while True:
            with contextlib.suppress(OSError):
                if _get_status(url + "/calls.json") == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("serve did not come up:\n" + log.read_text()[-3000:])
            time.sleep(0.1)
        yield Bot(url, recorded)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless chromium (Debian's) through Debian's chromedriver: no download, no network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def listed_ids(driver: Any) -> list[str]:
    """The call ids of the stored-calls table, top to bottom (from each row's id link)."""
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, "table.calls tbody tr td:last-child a")
    return [a.get_attribute("href").rsplit("/calls/", 1)[1] for a in cells]


def test_the_list_page_shows_the_recorded_calls(bot: Bot, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(bot.url + "/calls")
    assert browser.title == "Calls"
    assert listed_ids(browser) == [RECORDED, "c-agent", "c-hours", "c-billing"]
    assert "1\u20134 of 4" in browser.find_element(By.CSS_SELECTOR, ".pager").text
    live = browser.find_element(By.XPATH, "//h2[starts-with(., 'Live calls')]")
    assert live.is_displayed()  # serve passes its active calls: none now
    billing = browser.find_element(By.XPATH, "//tr[.//a[contains(@href, '/calls/c-billing')]]")
    assert "sales" in billing.text and "billing" in billing.text


def test_the_filter_form_narrows_the_list(bot: Bot, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(bot.url + "/calls")
    outcome = browser.find_element(By.NAME, "outcome")
    outcome.send_keys("transferred")
    browser.find_element(By.CSS_SELECTOR, "form.f button[type=submit]").click()
    WebDriverWait(browser, WAIT_S).until(expected_conditions.url_contains("outcome=transferred"))
    assert listed_ids(browser) == [RECORDED, "c-agent"]
    # The form shows the value back; a second filter narrows further.
    intent = browser.find_element(By.NAME, "intent")
    assert browser.find_element(By.NAME, "outcome").get_attribute("value") == "transferred"
    intent.send_keys("agent")
    browser.find_element(By.CSS_SELECTOR, "form.f button[type=submit]").click()
    WebDriverWait(browser, WAIT_S).until(expected_conditions.url_contains("intent=agent"))
    assert listed_ids(browser) == ["c-agent"]  # the scripted call's rules name no intent
    browser.get(bot.url + "/calls?" + urlencode({"intent": "billing"}))
    assert listed_ids(browser) == ["c-billing"]
    browser.get(bot.url + "/calls?" + urlencode({"profile": "nobody"}))
    assert listed_ids(browser) == []
    assert "none on this page (0 in all)" in browser.find_element(By.CSS_SELECTOR, ".pager").text


def test_a_call_page_shows_its_transcript(bot: Bot, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(bot.url + "/calls")
    browser.find_element(By.CSS_SELECTOR, f"a[href='/calls/{RECORDED}']").click()
    heading = browser.find_element(By.TAG_NAME, "h1")
    assert heading.text == f"Call {RECORDED}"
    timeline = browser.find_element(By.CSS_SELECTOR, "table.timeline").text
    for turn in bot.recorded.turns:
        if turn.transcript:
            assert turn.transcript in timeline
        if turn.reply_text:
            assert " ".join(turn.reply_text.split()) in timeline
    assert "what are your opening hours" in timeline and "Transferring you." in timeline
    rows = browser.find_elements(By.CSS_SELECTOR, "table.timeline tbody tr")
    assert len(rows) == len(bot.recorded.turns)
    assert browser.find_elements(By.CSS_SELECTOR, ".lbl.l-barge")  # the interrupted reply
    bars = browser.find_elements(By.CSS_SELECTOR, ".bar span.t i")
    assert bars and all(b.size["width"] >= 0 for b in bars)


PLAY = """
const done = arguments[arguments.length - 1];
const audio = document.querySelector("audio");
if (!audio) { done({error: "no audio element"}); return; }
audio.muted = true;
const report = (extra) => done(Object.assign({
  readyState: audio.readyState, duration: audio.duration, currentTime: audio.currentTime,
  paused: audio.paused, error: audio.error ? audio.error.code : null}, extra || {}));
audio.addEventListener("error", () => report({event: "error"}), {once: true});
audio.addEventListener("canplay", () => {
  const start = audio.currentTime;
  audio.play().then(() => {
    const wait = () => (audio.currentTime > start + 0.2 ? report({event: "playing"})
                                                        : setTimeout(wait, 50));
    wait();
  }).catch((e) => report({event: "play refused: " + e}));
}, {once: true});
audio.load();
"""


def test_the_recording_plays_in_the_audio_element(bot: Bot, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    for call_id in (RECORDED, "c-billing"):
        browser.get(f"{bot.url}/calls/{call_id}")
        audio = browser.find_element(By.TAG_NAME, "audio")
        assert audio.get_attribute("src") == f"{bot.url}/calls/{call_id}/recording.wav"
        result = browser.execute_async_script(PLAY)
        assert result["event"] == "playing", result
        assert result["readyState"] >= 2 and result["error"] is None
        assert result["duration"] > 10.0  # the 16 s scripted call
        assert result["currentTime"] > 0.2 and not result["paused"]
    # A call without a recording has no player.
    browser.get(f"{bot.url}/calls/c-agent")
    assert browser.find_elements(By.TAG_NAME, "audio") == []
