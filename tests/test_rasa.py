"""Rasa brain: RasaServer lifecycle, RasaDialogue over a real Rasa server, NLU accuracy, Redis.

Server tests (marked ``rasa``) need the venv from ``scripts/install-rasa``; they train once
(model cached by project hash under ``${VOICEBOT_CACHE:-.cache}/rasa-models``) and start one
server per session. The pure tests at the top run everywhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from structlog.testing import capture_logs

from voicebot_pbx.answers.action_server import ActionServer
from voicebot_pbx.answers.dialogue import (
    WORDS_NOT_TAKEN,
    BotReply,
    CallInfo,
    DialogueTurn,
    Understanding,
)
from voicebot_pbx.answers.embedder import load_embedder
from voicebot_pbx.answers.fallbacks import ComposingDialogue
from voicebot_pbx.answers.knowledge import KnowledgeBase
from voicebot_pbx.answers.rasa import (
    FALLBACK_INTENTS,
    DialogueUnavailable,
    RasaDialogue,
    parse_bot_messages,
)
from voicebot_pbx.answers.rasa_server import (
    RASA_ENV,
    RasaServer,
    RasaServerError,
    default_rasa_venv,
    project_hash,
    redis_endpoints,
)
from voicebot_pbx.config import ActionsConfig, KnowledgeConfig, parse_config
from voicebot_pbx.ops.service import add_intent_examples
from voicebot_pbx.testing import ScriptedLlm

T = TypeVar("T")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "rasa_project"))
from actions.backend import Account  # noqa: E402
from actions.demo_data import demo_accounts  # noqa: E402
from actions.when import parse_day  # noqa: E402
from actions.wording import say_balance, say_date, say_money, say_slot, say_time  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PROJECT = REPO / "rasa_project"
CACHE = Path(os.environ.get("VOICEBOT_CACHE") or REPO / ".cache")
VENV = default_rasa_venv(REPO)
MODELS = CACHE / "rasa-models"
REPORT_DIR = CACHE / "reports" / "rasa-test"

# Held-out intent accuracy measured 0.9375 (90/96) with the shipped data; a model that lost
# an intent or its features falls well below this bar.
HELD_OUT_ACCURACY_BAR = 0.90
# At the configured FallbackClassifier threshold (0.5): measured 0.969 routing accuracy.
ROUTING_ACCURACY_BAR = 0.93

needs_rasa = pytest.mark.skipif(
    not (VENV / "bin" / "rasa").exists(),
    reason=f"Rasa venv not installed at {VENV} (run scripts/install-rasa)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- pure tests: payload mapping, endpoints, hashing, error translation --------------------


def test_parse_bot_messages_maps_custom_payloads() -> None:
    said = parse_bot_messages(
        [
            {"recipient_id": "x", "text": "Please hold."},
            {"recipient_id": "x", "custom": {"action": "play_clip", "clip": "hold"}},
            {"recipient_id": "x", "custom": {"action": "collect_dtmf", "max_digits": 8}},
            {"recipient_id": "x", "custom": {"action": "transfer", "target": "billing"}},
            {"recipient_id": "x", "custom": {"action": "dance"}},
        ]
    )
    assert said.replies == (BotReply(text="Please hold."), BotReply(clip="hold"))
    assert (said.end, said.transfer_target, said.collect_dtmf_digits) == ("transfer", "billing", 8)
    hangup = parse_bot_messages([{"custom": {"action": "hangup"}}])
    assert (hangup.end, hangup.transfer_target) == ("hangup", None)


def test_parse_bot_messages_reads_what_a_spoken_answer_is_expected_to_be() -> None:
    def expect(custom: dict[str, object]) -> tuple[str, ...]:
        return parse_bot_messages([{"custom": {"action": "collect_dtmf", **custom}}]).expect

    assert expect({"max_digits": 8, "expect": ["digits"]}) == ("digits",)
    assert expect({"max_digits": 8, "expect": "digits"}) == ("digits",)
    assert expect({"max_digits": 8, "expect": ["postcode", "date"]}) == ("postcode", "date")
    assert expect({"max_digits": 8}) == ()  # keys only: no guess at a spoken answer
    spoken = parse_bot_messages([{"custom": {"action": "expect", "expect": ["postcode"]}}])
    assert (spoken.expect, spoken.collect_dtmf_digits) == (("postcode",), None)
    with capture_logs() as logs:
        assert expect({"max_digits": 8, "expect": ["digits", "shoe size"]}) == ("digits",)
    assert [e["event"] for e in logs] == ["rasa.bad_expect"]


def test_parse_bot_messages_reads_the_actions_notes() -> None:
    said = parse_bot_messages(
        [
            {"custom": {"action": "note", "entities": {"identity_verified": "true"}}},
            {"text": "I'm sorry, I can't reach our billing system right now."},
            {"custom": {"action": "note", "fallback": "backend_timeout:billing"}},
            {"custom": {"action": "note", "entities": "not a mapping", "fallback": 3}},
        ]
    )
    assert said.entities == {"identity_verified": "true"}
    assert said.fallbacks == ("backend_timeout:billing",)
    assert said.replies == (
        BotReply(text="I'm sorry, I can't reach our billing system right now."),
    )


def test_redis_endpoints_from_url() -> None:
    ep = redis_endpoints("redis://:s3cret@127.0.0.1:6390/2", record_exp_s=3600)
    tracker, lock = ep["tracker_store"], ep["lock_store"]
    assert tracker == {
        "type": "redis",
        "url": "127.0.0.1",
        "port": 6390,
        "db": 2,
        "key_prefix": "voicebot",
        "use_ssl": False,
        "password": "s3cret",
        "record_exp": 3600,
    }
    assert lock["type"] == "redis" and "record_exp" not in lock
    assert redis_endpoints("rediss://redis.local")["lock_store"]["use_ssl"] is True
    with pytest.raises(ValueError):
        redis_endpoints("http://127.0.0.1:6379")


def test_project_hash_tracks_model_files_only(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    shutil.copytree(PROJECT, proj)
    first = project_hash(proj)
    (proj / "README.md").write_text("docs do not change the model\n")
    (proj / "tests" / "nlu_test.yml").write_text("held-out data is not training data\n")
    assert project_hash(proj) == first
    with (proj / "data" / "nlu.yml").open("a") as f:
        f.write("\n")
    assert project_hash(proj) != first


def test_rasa_env_always_disables_telemetry(tmp_path: Path) -> None:
    server = RasaServer(
        PROJECT,
        tmp_path / "venv",
        models_dir=tmp_path / "models",
        env_extra={"RASA_TELEMETRY_ENABLED": "true", "FOO": "1"},
    )
    env = server.env()
    assert env["RASA_TELEMETRY_ENABLED"] == "false" == RASA_ENV["RASA_TELEMETRY_ENABLED"]
    assert env["FOO"] == "1"
    with pytest.raises(RasaServerError, match="install-rasa"):
        server.ensure_trained()


def test_redis_endpoints_file_written(tmp_path: Path) -> None:
    server = RasaServer(
        PROJECT,
        tmp_path / "venv",
        port=5123,
        models_dir=tmp_path / "models",
        redis_url="redis://127.0.0.1:6399/0",
    )
    path = server.endpoints_file()
    assert path is not None and path.parent == tmp_path
    data = json.loads(path.read_text())  # JSON is valid YAML for Rasa
    assert data["tracker_store"]["type"] == data["lock_store"]["type"] == "redis"
    assert data["tracker_store"]["port"] == 6399
    argv = server.run_argv(tmp_path / "m.tar.gz")
    assert argv[argv.index("--endpoints") + 1] == str(path)
    assert argv[argv.index("--interface") + 1] == "127.0.0.1"
    # It may hold the Redis password: stopping the server (never started here) removes it.
    asyncio.run(server.stop())
    assert not path.exists()
    with pytest.raises(ValueError):
        RasaServer(
            PROJECT,
            tmp_path,
            models_dir=tmp_path,
            redis_url="redis://x",
            endpoints_path=tmp_path / "e.yml",
        )


def _mock_dialogue(
    handler: Callable[[httpx.Request], Coroutine[None, None, httpx.Response]],
) -> RasaDialogue:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return RasaDialogue("http://rasa.test", timeout_s=0.3, client=client)


CALL = CallInfo(call_id="call-1", caller_id="+441234567890")


@pytest.mark.parametrize(
    ("status", "body", "retryable"),
    [(500, b"boom", True), (503, b"", True), (400, b"bad", False), (200, b"not json", False)],
)
def test_http_errors_become_dialogue_unavailable(status: int, body: bytes, retryable: bool) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body)

    async def run() -> None:
        dlg = _mock_dialogue(handler)
        with pytest.raises(DialogueUnavailable) as info:
            await dlg.respond(CALL, "hello")
        assert info.value.retryable is retryable

    asyncio.run(run())


def test_timeout_and_refused_are_retryable() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json=[])

    async def run() -> None:
        t0 = time.monotonic()
        with pytest.raises(DialogueUnavailable) as info:
            await _mock_dialogue(slow).respond(CALL, "hello")
        assert info.value.retryable and time.monotonic() - t0 < 2.0
        async with RasaDialogue(f"http://127.0.0.1:{_free_port()}", timeout_s=1.0) as dlg:
            with pytest.raises(DialogueUnavailable) as info:
                await dlg.start(CALL)
            assert info.value.retryable

    asyncio.run(run())


def test_turn_uses_last_user_event_and_detects_core_fallback() -> None:
    """The tracker's latest_message is stale after a reverted turn: the events decide."""
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/webhooks/rest/webhook":
            return httpx.Response(200, json=[{"recipient_id": "call-1", "text": "Sorry?"}])
        user = {
            "event": "user",
            "text": "friday at 10:30",
            "parse_data": {
                "intent": {"name": "inform", "confidence": 0.99},
                "entities": [{"entity": "date", "value": "friday"}],
            },
        }
        return httpx.Response(
            200,
            json={
                "latest_message": {"intent": {"name": "deny", "confidence": 0.9}},
                "events": [
                    user,
                    {"event": "action", "name": "action_default_fallback"},
                    {"event": "rewind"},
                    {"event": "action", "name": "action_listen"},
                ],
            },
        )

    async def run() -> DialogueTurn:
        return await _mock_dialogue(handler).respond(CALL, "Friday at half past ten.")

    turn = asyncio.run(run())
    body = json.loads(seen[0].content)
    assert body["message"] == "friday at 10:30"  # normalised before Rasa
    assert body["sender"] == "call-1" and body["metadata"]["caller_id"] == "+441234567890"
    assert turn.intent == "inform" and turn.confidence == pytest.approx(0.99)
    assert turn.needs_fallback and turn.entities == {"date": "friday"}
    assert turn.replies == (BotReply(text="Sorry?"),) and turn.source == "rasa"


def _turn_after(events: list[dict[str, object]], intent: str) -> DialogueTurn:
    """The turn ``RasaDialogue`` makes of a tracker whose last message was given ``intent``
    and then ``events``."""
    user = {
        "event": "user",
        "text": "nw9 4rq",
        "parse_data": {"intent": {"name": intent, "confidence": 0.5}, "entities": []},
    }

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/webhooks/rest/webhook":
            return httpx.Response(200, json=[{"recipient_id": "call-1", "text": "Okay."}])
        return httpx.Response(200, json={"events": [user, *events]})

    return asyncio.run(_mock_dialogue(handler).respond(CALL, "N W 9, 4 R Q."))


def test_a_message_a_form_took_is_understood_whatever_its_intent() -> None:
    """A form (any action but listening and utterances) that set a slot after the message
    took the words: not a fallback, though the classifier said nlu_fallback. A slot the
    classifier filled from entities before any action, the form's requested_slot, a slot
    emptied, or a core fallback: not taken."""
    took = _turn_after(
        [
            {"event": "action", "name": "outage_form"},
            {"event": "slot", "name": "postcode", "value": "NW9 4RQ"},
            {"event": "slot", "name": "requested_slot", "value": None},
            {"event": "action", "name": "action_listen"},
        ],
        "nlu_fallback",
    )
    assert took.taken and not took.needs_fallback
    for events in (
        [
            {"event": "slot", "name": "postcode", "value": "NW9 4RQ"},  # from the entity
            {"event": "action", "name": "utter_default"},
            {"event": "action", "name": "balance_form"},
            {"event": "slot", "name": "requested_slot", "value": "account_number"},
            {"event": "action", "name": "action_listen"},
        ],
        [
            {"event": "action", "name": "balance_form"},
            {"event": "slot", "name": "identity_check", "value": None},
            {"event": "action", "name": "action_listen"},
        ],
        [  # the question asked again by the form's own asking action, which notes it
            {"event": "action", "name": "utter_default"},
            {"event": "action", "name": "balance_form"},
            {"event": "slot", "name": "requested_slot", "value": "identity_check"},
            {"event": "action", "name": "action_ask_identity_check"},
            {"event": "slot", "name": "account_read_back", "value": False},
            {"event": "action", "name": "action_listen"},
        ],
    ):
        turn = _turn_after(events, "nlu_fallback")
        assert not turn.taken and turn.needs_fallback
    core = _turn_after(
        [
            {"event": "slot", "name": "date", "value": "friday"},
            {"event": "action", "name": "action_default_fallback"},
            {"event": "rewind"},
            {"event": "action", "name": "action_listen"},
        ],
        "inform",
    )
    assert not core.taken and core.needs_fallback and WORDS_NOT_TAKEN in core.fallbacks


def test_dtmf_rejects_non_digits() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("must not be sent")

    with pytest.raises(ValueError):
        asyncio.run(_mock_dialogue(handler).dtmf(CALL, '1"}'))


# -- real Rasa server -----------------------------------------------------------------------


class LoopThread:
    """One event loop for the whole session (the server's supervisor task lives in it)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@pytest.fixture(scope="session")
def aloop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="session")
def actions(aloop: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ActionServer]:
    """The real action server on the demo company's SQLite (seeded on start)."""
    if not (VENV / "bin" / "rasa").exists():
        pytest.skip(f"Rasa venv not installed at {VENV} (run scripts/install-rasa)")
    config = ActionsConfig(url=f"http://127.0.0.1:{_free_port()}")
    server = ActionServer(config, state_dir=tmp_path_factory.mktemp("actions"), venv_dir=VENV)
    aloop.run(server.start(), timeout_s=90)
    yield server
    aloop.run(server.stop(), timeout_s=30)


@pytest.fixture(scope="session")
def trained(aloop: LoopThread, actions: ActionServer) -> RasaServer:
    server = RasaServer(
        PROJECT,
        VENV,
        port=_free_port(),
        models_dir=MODELS,
        restart_backoff_s=(0.5, 1.0),
        action_url=actions.webhook_url,
    )
    server.ensure_trained()
    return server


@pytest.fixture(scope="session")
def rasa(trained: RasaServer, aloop: LoopThread) -> Iterator[RasaServer]:
    aloop.run(trained.start(), timeout_s=trained.startup_timeout_s + 10)
    yield trained
    aloop.run(trained.stop(), timeout_s=30)


@pytest.fixture
def dlg(rasa: RasaServer, aloop: LoopThread) -> Iterator[RasaDialogue]:
    d = RasaDialogue(rasa.base_url, timeout_s=5.0)  # generous: 2 shared cores under test load
    yield d
    aloop.run(d.aclose())


def new_call() -> CallInfo:
    return CallInfo(call_id=f"test-{uuid.uuid4().hex[:12]}", caller_id="+441234000000")


def asking_balance(dlg: RasaDialogue, aloop: LoopThread) -> CallInfo:
    """A new call whose caller asked for their balance: the form waits for the number."""
    call = new_call()
    aloop.run(dlg.start(call))
    aloop.run(dlg.respond(call, "what's my balance"))
    return call


def texts(turn: DialogueTurn) -> str:
    return " ".join(r.text for r in turn.replies if r.text)


@needs_rasa
@pytest.mark.rasa
def test_ensure_trained_second_call_is_noop(trained: RasaServer) -> None:
    t0 = time.monotonic()
    again = trained.ensure_trained()
    assert not again.trained and again.path.is_file()
    assert again.path.name == f"model-{project_hash(PROJECT, trained.facts)[:16]}.tar.gz"
    assert time.monotonic() - t0 < 1.0


@needs_rasa
@pytest.mark.rasa
def test_server_ready_and_start_is_measured(rasa: RasaServer, aloop: LoopThread) -> None:
    assert rasa.ready and rasa.pid is not None
    assert rasa.startup_s is not None and rasa.startup_s < rasa.startup_timeout_s

    async def ping() -> str:
        async with RasaDialogue(rasa.base_url) as d:
            return await d.ping()

    assert aloop.run(ping()).startswith("model-")
    assert rasa.log_path.is_file()


# Every intent, one utterance each (as the STT would give it), through RasaDialogue.
INTENT_CASES = [
    ("hello there", "greet", "How can I help"),
    ("goodbye", "goodbye", "Goodbye"),
    ("yes", "affirm", "What can I help you with"),
    ("no", "deny", "What can I help you with"),
    ("thank you", "thank_you", "You're welcome"),
    ("What time do you open on Saturday?", "opening_hours", "Monday to Friday"),
    ("what's your address", "address", "Harbour Street"),
    ("I want to check my balance", "check_balance", "type your account number"),
    ("I have a question about my bill", "billing_question", "direct debit"),
    ("my power has gone off", "report_outage", "postcode of the property"),
    ("I forgot my password", "reset_password", "forgot password"),
    ("I'd like to book an appointment", "book_appointment", "Which day"),
    ("can I speak to a person", "speak_to_agent", "put you through"),
    ("what's the capital of France", "out_of_scope", "can't help with that"),
    (
        "my account number is one two three four five six seven eight",
        "inform",
        "What would you like to do",
    ),
]


@needs_rasa
@pytest.mark.rasa
@pytest.mark.parametrize(("utterance", "intent", "reply"), INTENT_CASES)
def test_every_intent(
    dlg: RasaDialogue, aloop: LoopThread, utterance: str, intent: str, reply: str
) -> None:
    call = new_call()
    aloop.run(dlg.start(call))
    turn = aloop.run(dlg.respond(call, utterance))
    assert turn.intent == intent, turn
    assert reply in texts(turn), turn
    assert turn.source == "rasa" and turn.confidence is not None
    assert turn.needs_fallback is (intent == "out_of_scope")


@needs_rasa
@pytest.mark.rasa
def test_start_greets_with_keypad_menu(dlg: RasaDialogue, aloop: LoopThread) -> None:
    turn = aloop.run(dlg.start(new_call()))
    assert turn.intent == "greet" and turn.confidence == 1.0
    assert "Northwind Energy" in texts(turn) and "Press 1" in texts(turn)
    assert turn.end is None and not turn.needs_fallback


def day_after(weekday: str) -> datetime.date:
    """What the actions make of a weekday said today (the next one after today)."""
    found = parse_day(weekday, datetime.date.today())
    assert found is not None
    return found


def slot(weekday: str, hour: int, minute: int = 0) -> str:
    start = datetime.datetime.combine(day_after(weekday), datetime.time(hour, minute))
    return say_slot(start, datetime.date.today())


@needs_rasa
@pytest.mark.rasa
def test_appointment_form(dlg: RasaDialogue, aloop: LoopThread) -> None:
    """Booked into the demo back end through the action server; a second booking in the
    same call starts afresh, and a time already taken gets the nearest free ones."""
    call = new_call()

    def say(text: str) -> DialogueTurn:
        return aloop.run(dlg.respond(call, text))

    aloop.run(dlg.start(call))
    assert "Which day" in texts(say("uh i need an engineer to come out"))
    tuesday = say_date(day_after("tuesday"), datetime.date.today())
    turn = say("tuesday")
    assert turn.entities == {"date": "tuesday"} and f"what time on {tuesday}?" in texts(turn)
    # a question in the middle: answered, then the form asks again
    turn = say("what are your opening hours")
    assert turn.intent == "opening_hours"
    assert "Monday to Friday" in texts(turn) and f"what time on {tuesday}" in texts(turn)
    assert f"So that's {slot('tuesday', 14)}. Shall I book it?" in texts(say("two p m"))
    # "no": asks for another day and time; both are overwritten
    assert "Which day and time would suit you instead" in texts(say("no"))
    turn = say("friday at half past ten")
    assert f"So that's {slot('friday', 10, 30)}. Shall I book it?" in texts(turn)
    turn = say("yes please")
    assert turn.intent == "affirm"
    booked = f"Your appointment is booked for {slot('friday', 10, 30)}. Your reference is "
    assert texts(turn).startswith(booked), texts(turn)
    assert re.fullmatch(r"NW\d{6}", turn.entities["booking_reference"])
    # a second booking, at the same time: taken, so the nearest free times are offered
    assert "Which day" in texts(say("can i book an appointment"))
    say("friday")
    turn = say("half past ten")
    assert f"Sorry, {slot('friday', 10, 30)} isn't free" in texts(turn)
    assert say_time(datetime.time(10)) in texts(turn) and "Which would suit you?" in texts(turn)
    assert f"So that's {slot('friday', 11)}." in texts(say("11 am"))
    turn = say("yes")
    assert texts(turn).startswith(f"Your appointment is booked for {slot('friday', 11)}.")


@needs_rasa
@pytest.mark.rasa
def test_understand_reads_the_intent_without_acting_on_it(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """Routing asks Rasa's NLU first (/model/parse): the conversation must not move, so a
    question answered from the knowledge base leaves no form behind."""
    call = new_call()
    aloop.run(dlg.start(call))
    heard = aloop.run(dlg.understand(call, "uh i need an engineer to come out"))
    assert heard.intent == "book_appointment" and not heard.needs_fallback
    assert heard.confidence is not None and 0.0 < heard.confidence <= 1.0
    # Not in the booking form: an opening-hours question gets only the hours.
    turn = aloop.run(dlg.respond(call, "what are your opening hours"))
    assert "Monday to Friday" in texts(turn) and "Which day" not in texts(turn)
    # Nonsense with no word of the domain ("... fridge" read as an outage at 0.5002 on one
    # machine, 0.5 being the FallbackClassifier's threshold: a knife edge, not a test).
    assert aloop.run(dlg.understand(call, "banana telescope")).needs_fallback


@needs_rasa
@pytest.mark.rasa
def test_appointment_in_one_sentence_and_cancel(dlg: RasaDialogue, aloop: LoopThread) -> None:
    call = new_call()
    aloop.run(dlg.start(call))
    turn = aloop.run(dlg.respond(call, "Can I book an engineer for Wednesday at 9am?"))
    assert turn.entities == {"date": "wednesday", "time": "09:00"}
    assert f"So that's {slot('wednesday', 9)}. Shall I book it?" in texts(turn)
    call2 = new_call()
    aloop.run(dlg.start(call2))
    aloop.run(dlg.respond(call2, "book an appointment"))
    turn = aloop.run(dlg.respond(call2, "no"))  # while asked for the day: stop the form
    assert "I've stopped that" in texts(turn)


@needs_rasa
@pytest.mark.rasa
def test_an_unfinished_turn_taken_back_leaves_no_form_behind(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """The caller paused in the middle ("I need an engineer"), the bot sent that to Rasa,
    then the caller went on: ``retract`` rewinds the message and what Rasa did after it
    (the booking form), so the whole utterance is the conversation's only message. Text
    that is not the last message is left alone."""
    call = new_call()
    aloop.run(dlg.start(call))
    assert "Which day" in texts(aloop.run(dlg.respond(call, "uh i need an engineer")))
    aloop.run(dlg.retract(call, "something the caller never said"))  # not the last: kept
    turn = aloop.run(dlg.respond(call, "what are your opening hours"))
    assert "Monday to Friday" in texts(turn) and "Which day" in texts(turn)  # still in it
    call = new_call()
    aloop.run(dlg.start(call))
    assert "Which day" in texts(aloop.run(dlg.respond(call, "uh i need an engineer")))
    aloop.run(dlg.retract(call, "uh i need an engineer"))
    turn = aloop.run(dlg.respond(call, "uh i need an engineer what are your opening hours"))
    tracker = aloop.run(
        dlg._request(  # noqa: SLF001
            "GET", f"/conversations/{call.call_id}/tracker", params={"include_events": "APPLIED"}
        )
    )
    users = [e["text"] for e in tracker["events"] if e["event"] == "user"]
    assert users == ["/greet", "uh i need an engineer what are your opening hours"], users
    assert texts(turn), "answered"
    turn = aloop.run(dlg.respond(call, "what are your opening hours"))
    assert "Monday to Friday" in texts(turn)


DEMO = demo_accounts()


def balance_words(account: Account) -> str:
    return say_balance(account.balance_pence)


@needs_rasa
@pytest.mark.rasa
def test_dtmf_menu_balance_by_keypad(dlg: RasaDialogue, aloop: LoopThread) -> None:
    """Account keyed, postcode said: verified against the billing back end, the balance
    and last bill spoken in words, the verification noted for the transfer variables."""
    account = DEMO[1]
    call = new_call()
    aloop.run(dlg.start(call))
    turn = aloop.run(dlg.dtmf(call, "1"))
    assert turn.intent == "dtmf" and turn.entities == {"digits": "1"}
    assert turn.collect_dtmf_digits == 8 and "type your account number" in texts(turn)
    assert turn.expect == ("digits",)  # a spoken answer is decoded held to digits too
    turn = aloop.run(dlg.dtmf(call, account.number + "#"))
    assert "what's the postcode of the property, or the account holder's date of birth" in (
        texts(turn)
    )
    # The answers the back end knows, for the bot's recogniser to check what is said against
    # (action_ask_identity_check), never in the turn's repr.
    assert turn.expect == ("postcode", "date") and turn.collect_dtmf_digits == 8
    assert dict(turn.known) == {
        "postcode": account.postcode,
        "date": account.birth_date.isoformat(),
    }
    assert account.postcode not in repr(turn)
    turn = aloop.run(dlg.respond(call, f"it's {account.postcode.lower()}"))
    assert texts(turn).startswith(balance_words(account)), texts(turn)
    assert f"was {say_money(account.last_bill_pence)}." in texts(turn)
    assert "anything else" in texts(turn) and turn.end is None
    assert turn.entities["identity_verified"] == "true"
    assert turn.entities["account_number"] == account.number
    # verified once per call: asked again, the balance comes straight away
    turn = aloop.run(dlg.respond(call, "what's my balance"))
    assert texts(turn).startswith(balance_words(account))


@needs_rasa
@pytest.mark.rasa
def test_all_on_the_keypad_account_then_date_of_birth(dlg: RasaDialogue, aloop: LoopThread) -> None:
    """A caller who keys everything: the account, then the date of birth as DDMMYYYY."""
    account = DEMO[4]
    born = account.birth_date
    call = new_call()
    aloop.run(dlg.start(call))
    aloop.run(dlg.dtmf(call, "1"))
    turn = aloop.run(dlg.dtmf(call, account.number))
    assert turn.collect_dtmf_digits == 8 and "type the date of birth" in texts(turn)
    assert turn.expect == ("postcode", "date")
    wrong = born.replace(year=born.year - 1)
    turn = aloop.run(dlg.dtmf(call, f"{wrong:%d%m%Y}"))
    # A keyed date that does not match: the account number is kept and the postcode asked
    # for, the date allowed again, with the answers to check against as before.
    assert "doesn't match our records" in texts(turn)
    assert "postcode of the property instead" in texts(turn)
    assert turn.expect == ("postcode", "date") and turn.collect_dtmf_digits == 8
    assert dict(turn.known) == {
        "postcode": account.postcode,
        "date": born.isoformat(),
    }
    turn = aloop.run(dlg.dtmf(call, f"{born:%d%m%Y}"))
    assert texts(turn).startswith(balance_words(account)), texts(turn)


@needs_rasa
@pytest.mark.rasa
def test_identity_check_failures_and_refusal(dlg: RasaDialogue, aloop: LoopThread) -> None:
    account = DEMO[2]
    call = new_call()

    def say(text: str) -> DialogueTurn:
        return aloop.run(dlg.respond(call, text))

    aloop.run(dlg.start(call))
    say("what's my balance")
    turn = aloop.run(dlg.dtmf(call, "1234*678"))  # a * mistake: asked again
    assert "isn't an 8 digit account number" in texts(turn)
    assert "account_number_invalid" in turn.fallbacks
    say(account.number)
    turn = say("nw1 1aa")  # wrong postcode: the account number kept, the date of birth asked
    assert "doesn't match our records" in texts(turn) and turn.fallbacks == ("identity_mismatch",)
    assert "date of birth instead" in texts(turn) and "account number" not in texts(turn)
    turn = say("the first of january 19 70")  # wrong date of birth: from the account again
    assert "don't match our records" in texts(turn) and "account number" in texts(turn)
    unknown = say("99999999")  # an account that does not exist: the same answer, nothing revealed
    assert "postcode of the property" in texts(unknown) and unknown.known == ()
    turn = say(account.postcode.lower())
    assert "couldn't confirm your details" in texts(turn) and "anything else" not in texts(turn)
    assert (turn.end, turn.transfer_target) == ("transfer", "billing")
    assert "identity_verified" not in turn.entities

    # The retry is the same for a number with no account behind it: nothing revealed.
    nobody = asking_balance(dlg, aloop)
    aloop.run(dlg.respond(nobody, "99999999"))
    turn = aloop.run(dlg.respond(nobody, "nw1 1aa"))
    assert "doesn't match our records" in texts(turn) and "date of birth instead" in texts(turn)

    # "No" to the identity question after a keyed account number declines the check.
    refusing = asking_balance(dlg, aloop)
    turn = aloop.run(dlg.dtmf(refusing, account.number))
    assert "That's account number" not in texts(turn)  # keyed: nothing read back
    turn = aloop.run(dlg.respond(refusing, "no"))
    assert "Without checking it's you I can't read out account details" in texts(turn)
    assert "anything else" in texts(turn) and turn.end is None


@needs_rasa
@pytest.mark.rasa
def test_a_spoken_account_number_is_read_back_and_a_no_asks_for_it_again(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """A misheard account number is read back with the identity question; the caller's
    "no" asks for the number again (no identity failure counted), "yes" alone asks the
    question again; twice "no" is allowed, the third declines the check. The reading said
    "no" to, heard again, is not read back again: the keypad is offered."""
    account = DEMO[5]

    def wrong(step: int) -> str:
        return account.number[:-1] + str((int(account.number[-1]) + step) % 10)

    misheard = wrong(1)
    call = new_call()

    def say(text: str) -> DialogueTurn:
        return aloop.run(dlg.respond(call, text))

    aloop.run(dlg.start(call))
    say("what's my balance")
    turn = say(" ".join(misheard))
    back = f"That's account number {' '.join(misheard[:4])}, {' '.join(misheard[4:])}."
    assert back in texts(turn) and "what's the postcode of the property" in texts(turn)
    assert turn.expect == ("postcode", "date")
    turn = say("no that's not my account number")
    assert "take the account number again" in texts(turn), texts(turn)
    assert "type your account number" in texts(turn) and turn.expect == ("digits",)
    assert turn.fallbacks == ("account_read_back_denied",)
    turn = say(" ".join(misheard))  # the same reading again: not read back, the keypad
    assert "heard the same number again" in texts(turn), texts(turn)
    assert "That's account number" not in texts(turn) and "on the keypad" in texts(turn)
    assert turn.fallbacks == ("account_heard_again",) and turn.expect == ("digits",)
    turn = say(" ".join(wrong(2)))  # another reading: read back
    assert "That's account number" in texts(turn)
    turn = say("hmm you have got that wrong")  # words that say so, whatever the intent
    assert "take the account number again" in texts(turn), texts(turn)
    turn = say(" ".join(account.number))
    assert f"That's account number {' '.join(account.number[:4])}," in texts(turn)
    assert dict(turn.known)["postcode"] == account.postcode
    turn = say("yes")  # not an answer yet: the question again, nothing counted against it
    assert "what's the postcode of the property" in texts(turn)
    assert "match our records" not in texts(turn) and "That's account" not in texts(turn)
    turn = say(account.postcode.lower())  # the first answer after the read-back: verified
    assert texts(turn).startswith(balance_words(account)), texts(turn)

    stubborn = asking_balance(dlg, aloop)
    for step in (1, 2):
        turn = aloop.run(dlg.respond(stubborn, " ".join(wrong(step))))
        assert "That's account number" in texts(turn)
        turn = aloop.run(dlg.respond(stubborn, "no"))
        assert "take the account number again" in texts(turn)
    aloop.run(dlg.respond(stubborn, " ".join(wrong(3))))
    turn = aloop.run(dlg.respond(stubborn, "no"))
    assert "Without checking it's you I can't read out account details" in texts(turn)

    # Heard as another caller's account, said no to, then heard so again: the recogniser's
    # other reading that is an account is taken instead.
    other = DEMO[8]
    mixed = asking_balance(dlg, aloop)
    turn = aloop.run(dlg.respond(mixed, " ".join(other.number)))
    assert f"That's account number {' '.join(other.number[:4])}," in texts(turn)
    aloop.run(dlg.respond(mixed, "no"))
    turn = aloop.run(dlg.respond(mixed, " ".join(other.number), alternatives=(account.number,)))
    assert f"That's account number {' '.join(account.number[:4])}," in texts(turn), texts(turn)
    assert "account_alternative" in turn.fallbacks


def _no_account_near(number: str) -> str:
    """``number`` with its last digit changed until no demo account has it."""
    taken = {a.number for a in DEMO}
    for step in range(1, 10):
        other = number[:-1] + str((int(number[-1]) + step) % 10)
        if other not in taken:
            return other
    raise AssertionError("every neighbour is an account")


@needs_rasa
@pytest.mark.rasa
def test_a_spoken_number_that_is_no_account_takes_the_recognisers_reading_that_is(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """The bot sends the recogniser's other readings of a spoken account number with it
    (metadata); when the number heard is no account, the first reading that is one is
    taken and read back. A number heard that is an account stays, whatever the readings."""
    account, other = DEMO[6], DEMO[7]
    misheard = _no_account_near(account.number)
    nobody = _no_account_near(misheard)
    call = asking_balance(dlg, aloop)
    turn = aloop.run(
        dlg.respond(call, " ".join(misheard), alternatives=(nobody, account.number, other.number))
    )
    said = " ".join(account.number[:4]) + ", " + " ".join(account.number[4:])
    assert f"That's account number {said}." in texts(turn), texts(turn)
    assert "account_alternative" in turn.fallbacks
    assert dict(turn.known)["postcode"] == account.postcode
    turn = aloop.run(dlg.respond(call, "yes"))  # the question again ...
    assert "what's the postcode of the property" in texts(turn)
    turn = aloop.run(dlg.respond(call, "that's the wrong number"))  # ... still about the number
    assert "take the account number again" in texts(turn), texts(turn)

    # Heard as an account: kept, and no reading looked at.
    kept = asking_balance(dlg, aloop)
    turn = aloop.run(dlg.respond(kept, " ".join(other.number), alternatives=(account.number,)))
    assert f"That's account number {' '.join(other.number[:4])}," in texts(turn)
    assert "account_alternative" not in turn.fallbacks
    # Nine digits heard: not an account number, but a reading of eight that is one.
    nine = asking_balance(dlg, aloop)
    turn = aloop.run(
        dlg.respond(nine, " ".join("3" + account.number), alternatives=(account.number,))
    )
    assert f"That's account number {said}." in texts(turn), texts(turn)
    # Nine digits heard and no reading sent: the number with one digit left out that is one.
    inserted = asking_balance(dlg, aloop)
    turn = aloop.run(dlg.respond(inserted, " ".join(account.number[:3] + "0" + account.number[3:])))
    assert f"That's account number {said}." in texts(turn), texts(turn)
    assert "account_alternative" in turn.fallbacks
    # No reading is an account: the number heard is read back, as without readings.
    none = asking_balance(dlg, aloop)
    turn = aloop.run(dlg.respond(none, " ".join(misheard), alternatives=(nobody,)))
    assert f"That's account number {' '.join(misheard[:4])}," in texts(turn)
    assert "account_alternative" not in turn.fallbacks and turn.known == ()


@needs_rasa
@pytest.mark.rasa
def test_a_number_heard_as_a_phone_number_is_still_the_answer_to_the_account_question(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """A spoken account number heard as eleven digits (the recogniser's habit of writing a
    digit string as a phone number, "1-800-439-5732.") is still the answer to the account
    question: its 8-digit readings sent with it are looked up and one that is an account is
    read back; with none, the caller hears that it is no 8 digit number, not "didn't catch
    that" with the readings never looked at."""
    account = DEMO[6]
    said = " ".join(account.number[:4]) + ", " + " ".join(account.number[4:])
    call = asking_balance(dlg, aloop)
    turn = aloop.run(dlg.respond(call, "1-800-439-5732.", alternatives=(account.number,)))
    assert f"That's account number {said}." in texts(turn), texts(turn)
    assert "account_alternative" in turn.fallbacks
    alone = asking_balance(dlg, aloop)
    turn = aloop.run(dlg.respond(alone, "1-800-439-5732."))
    assert "isn't an 8 digit account number" in texts(turn), texts(turn)


@needs_rasa
@pytest.mark.rasa
def test_an_identity_answer_heard_as_odd_letters_is_checked_not_taken_for_an_intent(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """A postcode heard as odd letters (as a phone line may make of one) that Rasa puts in
    an intent the form's mapping leaves out, here a goodbye, is still the identity answer:
    checked (no match, the date of birth asked for), not a goodbye that hangs up."""
    heard = "and b y b v e v"
    domain = yaml.safe_load((PROJECT / "domain.yml").read_text(encoding="utf-8"))
    (mapping,) = [
        m for m in domain["slots"]["identity_check"]["mappings"] if m["type"] == "from_text"
    ]
    call = new_call()
    understood = aloop.run(dlg.understand(call, heard))
    # The case itself: an intent the domain's mapping does not take an answer from.
    assert understood.intent in mapping["not_intent"], (
        f"Rasa now reads {heard!r} as {understood.intent}: pick words it puts in an FAQ"
    )
    account = DEMO[3]
    aloop.run(dlg.start(call))
    aloop.run(dlg.respond(call, "what's my balance"))
    aloop.run(dlg.respond(call, " ".join(account.number)))
    turn = aloop.run(dlg.respond(call, heard))
    assert "doesn't match our records" in texts(turn), texts(turn)
    assert "date of birth instead" in texts(turn) and turn.end is None
    born = account.birth_date
    turn = aloop.run(dlg.respond(call, f"{born:%B} {born.day}th {born.year}".lower()))
    assert texts(turn).startswith(balance_words(account)), texts(turn)
    # A question in the middle is still answered, and the question asked again.
    asking = asking_balance(dlg, aloop)
    aloop.run(dlg.respond(asking, " ".join(account.number)))
    turn = aloop.run(dlg.respond(asking, "what's your address"))
    assert "Harbour Street" in texts(turn) and "postcode of the property" in texts(turn)


@needs_rasa
@pytest.mark.rasa
def test_digits_heard_in_the_identity_answer_are_not_a_new_account_number(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """A date of birth heard as eight digits is a wrong identity answer, not an account
    number said again: the account read back stays, and the other answer is asked for."""
    account = DEMO[8]
    call = asking_balance(dlg, aloop)
    turn = aloop.run(dlg.respond(call, " ".join(account.number)))
    assert f"That's account number {' '.join(account.number[:4])}," in texts(turn)
    turn = aloop.run(dlg.respond(call, "3 1 1 1 1 1 1 1"))
    assert "That's account number" not in texts(turn), texts(turn)
    assert "doesn't match our records" in texts(turn) and turn.fallbacks == ("identity_mismatch",)
    assert dict(turn.known)["postcode"] == account.postcode  # still this account's answers
    turn = aloop.run(dlg.respond(call, account.postcode.lower()))
    assert texts(turn).startswith(balance_words(account)), texts(turn)
    # Said with the request, before any form: still taken.
    early = new_call()
    aloop.run(dlg.start(early))
    turn = aloop.run(
        dlg.respond(early, f"what's my balance my account number is {' '.join(account.number)}")
    )
    assert "postcode of the property" in texts(turn), texts(turn)


@needs_rasa
@pytest.mark.rasa
def test_balance_by_voice_with_date_of_birth(dlg: RasaDialogue, aloop: LoopThread) -> None:
    account = DEMO[3]
    said_number = " ".join(account.number)
    born = account.birth_date
    call = new_call()
    aloop.run(dlg.start(call))
    turn = aloop.run(dlg.respond(call, "what's my balance"))
    assert turn.collect_dtmf_digits == 8
    turn = aloop.run(dlg.respond(call, f"it's {said_number}"))
    assert turn.entities == {"account_number": account.number}
    assert "date of birth" in texts(turn)
    turn = aloop.run(dlg.respond(call, f"{born:%B} {born.day}th {born.year}".lower()))
    assert texts(turn).startswith(balance_words(account)), texts(turn)


@needs_rasa
@pytest.mark.rasa
def test_dtmf_menu_options(dlg: RasaDialogue, aloop: LoopThread) -> None:
    call = new_call()
    aloop.run(dlg.start(call))
    turn = aloop.run(dlg.dtmf(call, "7"))
    assert "isn't one of the options" in texts(turn) and "Press 1" in texts(turn)
    assert "Press 1" in texts(aloop.run(dlg.dtmf(call, "9")))
    turn = aloop.run(dlg.dtmf(call, "2"))
    assert "power cut" in texts(turn) and "postcode" in texts(turn)
    turn = aloop.run(dlg.dtmf(call, "5"))  # a key the outage form did not ask for
    assert "isn't used here" in texts(turn) and "postcode" in texts(turn)
    turn = aloop.run(dlg.respond(call, "it's s w one a one a a"))
    assert turn.entities == {"postcode": "sw1a 1aa"}
    assert "I heard S W 1 A, 1 A A" in texts(turn)
    turn = aloop.run(dlg.respond(call, "yes"))
    assert turn.entities == {"outage": "reported"}
    assert "no known power cut at S W 1 A, 1 A A" in texts(turn)
    turn = aloop.run(dlg.dtmf(call, "0"))
    assert (turn.end, turn.transfer_target) == ("transfer", "agents")


@needs_rasa
@pytest.mark.rasa
def test_known_outage_by_postcode_then_another_report(dlg: RasaDialogue, aloop: LoopThread) -> None:
    call = new_call()
    aloop.run(dlg.start(call))
    aloop.run(dlg.respond(call, "my power has gone off"))
    turn = aloop.run(dlg.respond(call, "n w 3 2 q g"))
    assert "I heard N W 3, 2 Q G. Is that right?" in texts(turn)  # nothing looked up yet
    assert "outage" not in turn.entities
    turn = aloop.run(dlg.respond(call, "yes"))
    assert "known power cut in your area, caused by a damaged underground cable" in texts(turn)
    assert "We expect power back by about" in texts(turn) and turn.entities["outage"] == "known"
    # the postcode is cleared: a second report asks again
    turn = aloop.run(dlg.respond(call, "there's another power cut at my mum's"))
    assert "postcode of the property" in texts(turn)


@needs_rasa
@pytest.mark.rasa
def test_a_postcode_read_back_wrong_is_asked_again_and_nothing_reported(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """A line that garbles a spelled postcode must not log a power cut at another address:
    "no" to the postcode read back asks for it again (still expected as a postcode), and
    only the postcode the caller says yes to is looked up and reported; a second "no" puts
    the caller through instead of asking for ever."""
    call = new_call()
    aloop.run(dlg.start(call))
    aloop.run(dlg.respond(call, "there's no electricity in my house"))
    read_back = aloop.run(dlg.respond(call, "n w 8 2 q g"))
    assert "I heard N W 8, 2 Q G" in texts(read_back), texts(read_back)
    again = aloop.run(dlg.respond(call, "no"))
    assert "Sorry about that" in texts(again) and "postcode of the property" in texts(again)
    assert again.expect == ("postcode",) and again.end is None
    assert "outage" not in again.entities
    assert "postcode_read_back_denied" in again.fallbacks
    second = aloop.run(dlg.respond(call, "n w 3 2 q g"))
    assert "I heard N W 3, 2 Q G" in texts(second), texts(second)
    done = aloop.run(dlg.respond(call, "yes that's right"))
    assert "known power cut in your area" in texts(done), texts(done)
    assert done.entities["outage"] == "known"
    # Two postcodes said "no" to: put through, nothing reported (and the count starts
    # afresh for the next report).
    call = new_call()
    aloop.run(dlg.start(call))
    aloop.run(dlg.respond(call, "there's no electricity in my house"))
    aloop.run(dlg.respond(call, "n w 8 2 q g"))
    aloop.run(dlg.respond(call, "no"))
    aloop.run(dlg.respond(call, "n w 8 2 q e"))
    through = aloop.run(dlg.respond(call, "no"))
    assert (through.end, through.transfer_target) == ("transfer", "agents"), texts(through)
    assert "can't get the postcode right" in texts(through), texts(through)
    assert "anything else" not in texts(through) and "outage" not in through.entities
    assert "postcode_not_heard" in through.fallbacks


@needs_rasa
@pytest.mark.rasa
def test_words_not_understood_after_the_postcode_read_back_get_the_read_back_again(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """ "Is that right?" after the postcode read back says no kind of answer (a yes or a
    no), but the outage form waits for one: words the real Rasa cannot place then get
    "Sorry, I didn't catch that." and the read-back again (they used to go to the LLM,
    whose honest offer the caller's "no" would then have answered, saying no to the
    postcode), and the yes said next reports the outage. A turn with no form waiting
    awaits nothing."""
    routed = _routed(dlg)
    brain, knowledge = routed.brain, routed.knowledge
    garbled = "the kettle is in the garden shed"

    async def call_in() -> tuple[Understanding, DialogueTurn, DialogueTurn, DialogueTurn]:
        call = new_call()
        await brain.start(call)
        await brain.respond(call, "there's no electricity in my house")
        read_back = await brain.respond(call, "n w 3 2 q g")
        placed = await dlg.understand(call, garbled)
        again = await brain.respond(call, garbled)
        return placed, read_back, again, await brain.respond(call, "yes that's right")

    placed, read_back, again, done = aloop.run(call_in())
    assert placed.intent in FALLBACK_INTENTS, placed  # the premise
    assert "I heard N W 3, 2 Q G" in texts(read_back), texts(read_back)
    assert read_back.awaits_answer and not read_back.expect
    assert again.replies[0].text == knowledge.answer_reask, texts(again)
    assert again.replies[-1] == read_back.replies[-1], texts(again)
    assert again.composed is None and again.end is None
    assert "answer_question_again" in again.fallbacks
    assert "known power cut in your area" in texts(done), texts(done)
    assert not done.awaits_answer
    call = new_call()
    aloop.run(dlg.start(call))
    assert not aloop.run(dlg.respond(call, "when are you open")).awaits_answer


@needs_rasa
@pytest.mark.rasa
def test_transfer_and_hangup_payloads(dlg: RasaDialogue, aloop: LoopThread) -> None:
    call = new_call()
    aloop.run(dlg.start(call))
    aloop.run(dlg.respond(call, "book an appointment"))  # even from inside a form
    turn = aloop.run(dlg.respond(call, "let me talk to a real person"))
    assert (turn.end, turn.transfer_target) == ("transfer", "agents")
    assert turn.replies == (BotReply(text="Sure, I'll put you through to an agent now."),)

    call = new_call()
    aloop.run(dlg.start(call))
    turn = aloop.run(dlg.respond(call, "when are you open"))
    assert "anything else" in texts(turn)
    turn = aloop.run(dlg.respond(call, "no that's all"))
    assert turn.end == "hangup" and turn.transfer_target is None
    assert "Goodbye" in texts(turn)
    assert aloop.run(dlg.respond(new_call(), "bye bye")).end == "hangup"


@needs_rasa
@pytest.mark.rasa
@pytest.mark.parametrize(
    "utterance", ["who won the game last night", "what's the weather like", "zebra crossing"]
)
def test_needs_fallback_out_of_scope(dlg: RasaDialogue, aloop: LoopThread, utterance: str) -> None:
    call = new_call()
    aloop.run(dlg.start(call))
    turn = aloop.run(dlg.respond(call, utterance))
    assert turn.needs_fallback, turn
    assert turn.intent in ("out_of_scope", "nlu_fallback")
    assert turn.end is None and turn.replies


@needs_rasa
@pytest.mark.rasa
def test_end_forgets_conversation(dlg: RasaDialogue, rasa: RasaServer, aloop: LoopThread) -> None:
    call = new_call()
    aloop.run(dlg.start(call))
    aloop.run(dlg.respond(call, "book an appointment"))
    aloop.run(dlg.end(call))
    tracker = httpx.get(f"{rasa.base_url}/conversations/{call.call_id}/tracker").json()
    assert not any(e["event"] == "user" for e in tracker["events"])


@needs_rasa
@pytest.mark.rasa
def test_static_responses(dlg: RasaDialogue, aloop: LoopThread) -> None:
    responses = aloop.run(dlg.static_responses())
    assert "Thanks for calling Northwind Energy. Goodbye." in responses
    assert "Sure, I'll put you through to an agent now." in responses
    assert not any("{" in r for r in responses)
    assert len(responses) == len(set(responses)) >= 20


def _heldout(path: Path) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    intent = None
    for line in path.read_text().splitlines():
        header = re.match(r"\s+- intent: (\w+)", line)
        if header:
            intent = header.group(1)
            continue
        item = re.match(r"\s+- (.*)$", line)
        if item and intent:
            out.append((intent, re.sub(r"\[([^\]]+)\]\(\w+\)", r"\1", item.group(1))))
    return out


@needs_rasa
@pytest.mark.rasa
@pytest.mark.slow
def test_rasa_test_heldout_accuracy_and_stories(rasa: RasaServer) -> None:
    """`rasa test` (core stories + held-out NLU) and routing at the configured threshold."""
    model = rasa.model
    assert model is not None
    if REPORT_DIR.exists():
        shutil.rmtree(REPORT_DIR)
    REPORT_DIR.mkdir(parents=True)
    argv = [
        str(VENV / "bin" / "python"),
        "-c",
        "import skops.io; from rasa.__main__ import main; main()",
        "test",
        "--model",
        str(model.path),
        "--stories",
        str(PROJECT / "tests" / "test_stories.yml"),
        "--nlu",
        str(PROJECT / "tests" / "nlu_test.yml"),
        "--out",
        str(REPORT_DIR),
        "--successes",
        "--no-plot",
    ]
    with (REPORT_DIR / "rasa-test.log").open("wb") as out:
        proc = subprocess.run(
            argv, cwd=PROJECT, env=rasa.env(), stdout=out, stderr=subprocess.STDOUT, timeout=300
        )
    assert proc.returncode == 0, (REPORT_DIR / "rasa-test.log").read_text()[-3000:]
    report = json.loads((REPORT_DIR / "intent_report.json").read_text())
    failed = (REPORT_DIR / "failed_test_stories.yml").read_text()
    assert "- story:" not in failed, failed
    assert report["accuracy"] >= HELD_OUT_ACCURACY_BAR, report

    # Routing with the FallbackClassifier applied: what the live server does.
    # An out_of_scope example is routed right if it ends at out_of_scope or nlu_fallback.
    examples = _heldout(PROJECT / "tests" / "nlu_test.yml")
    routed_ok = 0
    to_fallback = 0
    with httpx.Client(base_url=rasa.base_url, timeout=10) as client:
        for gold, text in examples:
            got = client.post("/model/parse", json={"text": text}).json()["intent"]["name"]
            fallback = got in ("nlu_fallback", "out_of_scope")
            to_fallback += fallback
            routed_ok += got == gold or (gold == "out_of_scope" and fallback)
    summary = {
        "held_out_examples": len(examples),
        "intent_accuracy": report["accuracy"],
        "routing_accuracy": routed_ok / len(examples),
        "fallback_share": to_fallback / len(examples),
    }
    (REPORT_DIR / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    assert summary["routing_accuracy"] >= ROUTING_ACCURACY_BAR, summary


# The next two tests kill or replace servers: keep them last in this file.


@needs_rasa
@pytest.mark.rasa
@pytest.mark.slow
def test_supervisor_restarts_killed_server(rasa: RasaServer, aloop: LoopThread) -> None:
    old_pid = rasa.pid
    assert old_pid is not None and rasa.restarts == 0
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + rasa.startup_timeout_s
    while time.monotonic() < deadline and not (rasa.restarts >= 1 and rasa.ready):
        time.sleep(0.2)
    assert rasa.ready and rasa.restarts == 1 and rasa.pid not in (None, old_pid)

    async def talk() -> DialogueTurn:
        async with RasaDialogue(rasa.base_url, timeout_s=5.0) as d:
            return await d.respond(new_call(), "what's your address")

    assert "Harbour Street" in texts(aloop.run(talk()))


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed (Debian package redis-server)")
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@needs_rasa
@pytest.mark.rasa
@pytest.mark.slow
def test_redis_tracker_survives_restart(
    trained: RasaServer,
    actions: ActionServer,
    aloop: LoopThread,
    redis_url: str,
    tmp_path: Path,
) -> None:
    model = trained.model
    assert model is not None

    def server() -> RasaServer:
        s = RasaServer(
            PROJECT,
            VENV,
            port=_free_port(),
            models_dir=MODELS,
            work_dir=tmp_path,
            redis_url=redis_url,
            action_url=actions.webhook_url,
        )
        s.ensure_trained()  # no-op: same project hash
        return s

    call = new_call()

    async def first_half() -> None:
        async with server() as s, RasaDialogue(s.base_url, timeout_s=5.0) as d:
            await d.start(call)
            await d.respond(call, "i'd like to book an appointment")
            turn = await d.respond(call, "next monday")
            assert f"what time on {say_date(day_after('monday'), datetime.date.today())}" in (
                texts(turn)
            )

    async def second_half() -> DialogueTurn:
        # a new Rasa process (new port, nothing in memory) on the same Redis
        async with server() as s, RasaDialogue(s.base_url, timeout_s=5.0) as d:
            return await d.respond(call, "half past two")

    aloop.run(first_half(), timeout_s=180)
    turn = aloop.run(second_half(), timeout_s=180)
    assert f"So that's {slot('monday', 14, 30)}. Shall I book it?" in texts(turn)
    with socket.create_connection(
        ("127.0.0.1", int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    ) as s:
        s.sendall(b"KEYS *\r\n")
        keys = s.recv(4096)
    assert call.call_id.encode() in keys


@needs_rasa
@pytest.mark.rasa
def test_a_profile_served_by_its_own_rasa_server(rasa: RasaServer, aloop: LoopThread) -> None:
    """Profile "support" talks to the real Rasa server, profile "down" to a port where
    nothing listens (its rules answer), and the default profile keeps the process dialogue;
    the profile's Rasa responses are pre-synthesized in the profile's voice cache."""
    import dataclasses

    from voicebot_pbx.call.prompts import TtsCache
    from voicebot_pbx.config import ProfileConfig, load_config
    from voicebot_pbx.ops.service import start_rasa
    from voicebot_pbx.testing import ToneTts

    base = load_config()
    config = dataclasses.replace(
        base,
        profiles=(
            ProfileConfig(name="support", dialogue_engine="rasa", rasa_url=rasa.base_url),
            ProfileConfig(
                name="down", dialogue_engine="rasa", rasa_url=f"http://127.0.0.1:{_free_port()}"
            ),
        ),
    )
    from voicebot_pbx.ops.profiles import build_profile_kits

    kits = build_profile_kits(config, None, None, None)  # type: ignore[arg-type]  # no voices
    support, down = kits["support"], kits["down"]
    assert support.rasa is not None and support.dialogue is not None and down.dialogue is not None
    try:
        call = new_call()
        turn = aloop.run(support.dialogue.respond(call, "I need to book an engineer appointment"))
        assert turn.source == "rasa" and not turn.needs_fallback
        assert "which day" in texts(turn).lower()
        turn = aloop.run(down.dialogue.respond(new_call(), "what are your opening hours"))
        assert turn.source == "rules" and "nlu_unavailable:rasa" in turn.fallbacks
        assert "8 am" in texts(turn).lower()  # the rules read knowledge/facts.toml

        voice = ToneTts(voice_id="tone-support")
        cache = TtsCache(voice.voice_id, None)
        aloop.run(start_rasa([(voice, cache)], None, support.rasa, wait_s=0.2))
        assert cache.get("Sure, I'll put you through to an agent now.", 8000) is not None
    finally:
        for kit in kits.values():
            if kit.rasa is not None:
                aloop.run(kit.rasa.aclose())


async def at_identity_question(brain: ComposingDialogue, account: Account) -> CallInfo:
    """A new call through ``brain`` in which ``account``'s number was said: the form asks
    for the postcode or the date of birth."""
    call = new_call()
    await brain.start(call)
    await brain.respond(call, "what's my balance")
    asked = await brain.respond(call, " ".join(account.number))
    assert "postcode of the property" in texts(asked)
    return call


@dataclasses.dataclass(frozen=True)
class _Routed:
    """The real dialogue with the knowledge routing in front, as serve has it."""

    brain: ComposingDialogue
    kb: KnowledgeBase
    knowledge: KnowledgeConfig


def _routed(dlg: RasaDialogue) -> _Routed:
    """``dlg`` wrapped as serve wraps it: the packaged knowledge base with its embedder, the
    project's intent examples embedded, and an LLM that declines (its honest offer)."""
    config = parse_config({"rasa": {"project_dir": str(REPO / "rasa_project")}})
    kb = KnowledgeBase.load(REPO / "knowledge", embedder=load_embedder(config.knowledge))
    add_intent_examples(kb, config)  # as serve does
    llm = ScriptedLlm([(0.0, ("reject", "no_answer"))], kb=kb)
    return _Routed(ComposingDialogue(dlg, llm, config.knowledge), kb, config.knowledge)


@needs_rasa
@pytest.mark.rasa
def test_a_yes_to_the_honest_offer_transfers_and_a_no_does_not(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """The fallback reply asks "Would you like me to put you through to an agent?": the
    caller's "yes please", as Rasa understands it, transfers (it used to get Rasa's "affirm
    out of context": "Okay. What can I help you with?"); "no thanks" stays with Rasa."""
    import contextlib

    from voicebot_pbx.answers.dialogue import Rejected

    llm = ScriptedLlm([(0.0, ("reject", "no_answer"))], kb=KnowledgeBase.load(REPO / "knowledge"))
    brain = ComposingDialogue(dlg, llm, KnowledgeConfig())

    async def offer_then(answer: str) -> tuple[str, DialogueTurn]:
        call = new_call()
        await brain.start(call)
        turn = await brain.respond(call, "what is the best recipe for pancakes")
        assert turn.composed is not None
        said = ""
        async with contextlib.aclosing(turn.composed.composer.answer(turn.composed.question)) as s:
            async for item in s:
                said = item.reply if isinstance(item, Rejected) else item.text
        return said, await brain.respond(call, answer)

    said, yes = aloop.run(offer_then("yes please"))
    assert said == llm.config.fallback_reply
    assert yes.end == "transfer" and yes.transfer_target == "agents"
    assert texts(yes) == "Sure, I'll put you through to an agent now."
    said, no = aloop.run(offer_then("no thanks"))
    assert said == llm.config.fallback_reply and no.end is None and no.source == "rasa"


@needs_rasa
@pytest.mark.rasa
def test_an_intent_far_from_its_examples_does_not_start_its_form(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """The real Rasa puts a question about none of its intents on the balance intent; its
    words are far from every balance example (the real embedder, the project's own NLU
    data), so the turn is not understood: the balance form does not start, the honest
    offer is composed. With the rule off, the same question starts the form."""
    routed = _routed(dlg)
    kb, knowledge, llm = routed.kb, routed.knowledge, routed.brain.composer
    question = "can my son take over my account when I die"

    async def ask(config: KnowledgeConfig) -> tuple[Understanding, DialogueTurn]:
        call = new_call()
        await dlg.start(call)
        heard = await dlg.understand(call, question)
        return heard, await ComposingDialogue(dlg, llm, config).respond(call, question)

    heard, doubted = aloop.run(ask(knowledge))
    # The premise (a changed model or NLU data may need another question): Rasa's intent,
    # clearly below the closeness floor.
    assert heard.intent == "check_balance", heard
    closeness = kb.intent_similarity("check_balance", question)
    assert closeness is not None and closeness < knowledge.intent_min_similarity - 0.05
    # Rasa was not sure of it either: not asked back (confirm_intent_min_confidence).
    assert heard.confidence is not None
    assert heard.confidence < knowledge.confirm_intent_min_confidence
    assert doubted.composed is not None and doubted.collect_dtmf_digits is None
    _, acted = aloop.run(ask(dataclasses.replace(knowledge, intent_min_similarity=0.0)))
    assert acted.composed is None and acted.collect_dtmf_digits is not None


@needs_rasa
@pytest.mark.rasa
def test_garbled_words_rasa_is_sure_of_are_asked_back_and_a_yes_starts_the_task(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """A power cut reported in words a phone line garbled: the real Rasa is sure it is an
    outage, but the words are far from every outage example. The caller is asked
    "Just to check, do you want to report a power cut?", and a yes starts the outage form
    (the intent's first example goes to Rasa); a no gets the honest offer."""
    routed = _routed(dlg)
    brain, kb, knowledge = routed.brain, routed.kb, routed.knowledge
    llm = brain.composer
    garbled = "the elect tricity is gone in our flat"

    async def ask(answer: str) -> tuple[Understanding, DialogueTurn, DialogueTurn]:
        call = new_call()
        await brain.start(call)
        heard = await dlg.understand(call, garbled)
        asked = await brain.respond(call, garbled)
        return heard, asked, await brain.respond(call, answer)

    heard, asked, started = aloop.run(ask("yes"))
    # The premise (another model may need other words): sure, and far from its examples.
    assert heard.intent == "report_outage", heard
    assert heard.confidence is not None
    assert heard.confidence >= knowledge.confirm_intent_min_confidence
    closeness = kb.intent_similarity("report_outage", garbled)
    assert closeness is not None and closeness < knowledge.intent_min_similarity
    assert asked.source == "intent_confirm"
    assert texts(asked) == "Just to check, do you want to report a power cut?"
    assert started.source == "rasa" and "postcode" in texts(started), texts(started)
    _, _, declined = aloop.run(ask("no"))
    assert texts(declined) == llm.config.fallback_reply


@needs_rasa
@pytest.mark.rasa
def test_an_identity_answer_rasa_did_not_understand_gets_the_forms_reply_not_the_llms(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """With the knowledge routing in front (as serve has it), a garbled identity answer
    that Rasa's classifier could not place still fills the form's slot and is checked: the
    caller hears the form's reply (no match, the other answer asked for), not the LLM's
    honest offer, which used to replace it."""
    brain = _routed(dlg).brain
    account = DEMO[4]
    heard = "and one r u p e a d s"  # a spelled postcode as a phone line may make it

    async def call_in() -> tuple[str | None, DialogueTurn]:
        call = await at_identity_question(brain, account)
        understood = await dlg.understand(call, heard)
        return understood.intent, await brain.respond(call, heard)

    intent, turn = aloop.run(call_in())
    # The premise: Rasa could not place the words (another model may need other words).
    assert intent in FALLBACK_INTENTS, intent
    assert turn.composed is None, "the LLM answered instead of the form"
    assert "doesn't match our records" in texts(turn), texts(turn)
    assert "date of birth instead" in texts(turn)


@needs_rasa
@pytest.mark.rasa
def test_an_identity_answer_heard_as_an_unsure_goodbye_does_not_hang_up(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """With the knowledge routing in front (as serve has it), words the real Rasa takes
    for a goodbye it is not sure of, said while the form waits for the postcode, get the
    question again instead of the goodbye that ended the call; the form still takes the
    right answer next."""
    routed = _routed(dlg)
    brain, knowledge = routed.brain, routed.knowledge
    account = DEMO[4]
    heard = "bellow bellow"  # an identity answer as a phone line may garble it

    async def call_in() -> tuple[Understanding, DialogueTurn, DialogueTurn]:
        call = await at_identity_question(brain, account)
        understood = await dlg.understand(call, heard)
        again = await brain.respond(call, heard)
        return understood, again, await brain.respond(call, account.postcode.lower())

    understood, again, answered = aloop.run(call_in())
    # The premise: a goodbye Rasa is not sure of (another model may need other words).
    assert understood.intent == "goodbye", understood
    assert understood.confidence is not None
    assert understood.confidence < knowledge.end_min_confidence
    assert again.end is None, "hung up on the caller"
    assert texts(again) == knowledge.answer_reprompt
    assert "identity_verified" in answered.entities, texts(answered)


@needs_rasa
@pytest.mark.rasa
def test_a_spelled_postcode_heard_as_an_unsure_goodbye_is_checked_not_asked_again(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """With the knowledge routing in front (as serve has it), a postcode spelled as odd
    letters that the classifier took for a goodbye it is not sure of, said while the form
    waits for the identity answer, is asked for again once, then reaches the form: it is
    checked (no match here) and the other answer is asked for, rather than "say it again"
    for as long as the line garbles it (and rather than the goodbye)."""
    routed = _routed(dlg)
    brain, knowledge = routed.brain, routed.knowledge
    account = DEMO[9]
    heard = "and e double e double e"  # a spelled postcode as a phone line may make it

    async def call_in() -> tuple[Understanding, DialogueTurn]:
        call = await at_identity_question(brain, account)
        understood = await dlg.understand(call, heard)
        again = await brain.respond(call, heard)  # asked again once ...
        assert again.source == "answer_reprompt" and again.end is None, texts(again)
        return understood, await brain.respond(call, heard)  # ... then checked

    understood, turn = aloop.run(call_in())
    # The premise: an unsure goodbye (another model may need other words).
    assert understood.intent == "goodbye", understood
    assert understood.confidence is not None
    assert understood.confidence < knowledge.end_min_confidence
    assert turn.end is None and turn.source != "answer_reprompt", texts(turn)
    assert "doesn't match our records" in texts(turn), texts(turn)
    assert "date of birth instead" in texts(turn)


@needs_rasa
@pytest.mark.rasa
def test_a_postcode_the_outage_form_takes_gets_its_reply_not_the_llms(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """With the knowledge routing in front (as serve has it), the postcode asked for by the
    outage form (which expects a postcode said, no keypad entry): Rasa's classifier does not
    place a spoken postcode (nlu_fallback), but the form took it and logged the report. The
    caller hears the form's reply, not the LLM's refusal."""
    brain = _routed(dlg).brain
    postcode = DEMO[1].postcode

    async def call_in() -> tuple[Understanding, DialogueTurn, DialogueTurn]:
        call = new_call()
        await brain.start(call)
        asked = await brain.respond(call, "my power has gone off")
        assert "postcode of the property" in texts(asked), texts(asked)
        # A spoken postcode is expected (held to its words, the word hold), no keys.
        assert (asked.expect, asked.collect_dtmf_digits) == (("postcode",), None)
        understood = await dlg.understand(call, postcode.lower())
        read_back = await brain.respond(call, postcode.lower())
        return understood, read_back, await brain.respond(call, "yes")

    understood, turn, reported = aloop.run(call_in())
    assert understood.intent in FALLBACK_INTENTS, understood  # the premise
    assert turn.composed is None, "the LLM answered instead of the form"
    assert turn.taken and not turn.needs_fallback
    spelled = " ".join(postcode.split()[0]) + ", " + " ".join(postcode.split()[1])
    assert f"I heard {spelled}" in texts(turn), texts(turn)  # read back first
    assert reported.composed is None and "outage" in reported.entities, texts(reported)


@needs_rasa
@pytest.mark.rasa
def test_a_garbled_identity_answer_with_a_bare_not_is_checked_not_taken_for_a_no(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """After the account number is read back with the identity question, a spelled postcode
    as a phone line may garble it, holding a bare "not", is checked as the identity answer
    (no match: the other answer is asked for), not taken for "no, that's not my number"
    (which started the account number again). "that's the wrong number" still is a no."""
    routed = _routed(dlg)
    brain = routed.brain
    account = DEMO[3]
    garbled = "and not a new fan when say pal not a new"

    async def call_in() -> tuple[Understanding, DialogueTurn, DialogueTurn]:
        call = await at_identity_question(brain, account)
        understood = await dlg.understand(call, garbled)
        checked = await brain.respond(call, garbled)
        other = await at_identity_question(brain, account)
        return understood, checked, await brain.respond(other, "that's the wrong number")

    understood, checked, denied = aloop.run(call_in())
    assert understood.intent != "deny", understood  # the premise: Rasa hears no "no"
    assert "account_read_back_denied" not in checked.fallbacks, texts(checked)
    assert "doesn't match our records" in texts(checked), texts(checked)
    assert "account_read_back_denied" in denied.fallbacks, texts(denied)


@needs_rasa
@pytest.mark.rasa
def test_a_date_said_for_the_account_number_gets_the_question_again(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """With the knowledge routing in front (as serve has it), a date of birth said when
    the form asked for the account number: the real Rasa's form rejects it and its own
    fallback ("say it another way") asks nothing and expects nothing. The caller hears the
    account-number question again, the keypad and the digits expectation stay open, and
    the number said next moves the form on to the identity question. The postcode said
    then is taken (the balance read), though Rasa's classifier does not place it."""
    routed = _routed(dlg)
    brain, knowledge = routed.brain, routed.knowledge
    account = DEMO[0]
    postcode = account.postcode.lower()
    born = "the 14th of march 1985"

    async def call_in() -> tuple[DialogueTurn, ...]:
        call = new_call()
        await brain.start(call)
        asked = await brain.respond(call, "what's my balance")
        placed = await dlg.understand(call, born)
        assert placed.intent == "inform", placed  # the premise: a date, understood
        again = await brain.respond(call, born)
        answered = await brain.respond(call, " ".join(account.number))
        understood = await dlg.understand(call, postcode)
        assert understood.intent in FALLBACK_INTENTS, understood  # the premise
        return asked, again, answered, await brain.respond(call, postcode)

    asked, again, answered, balance = aloop.run(call_in())
    assert asked.expect == ("digits",) and asked.collect_dtmf_digits == 8, texts(asked)
    assert again.replies[0].text == knowledge.answer_reask, texts(again)
    assert again.replies[-1] == asked.replies[-1], texts(again)
    assert (again.expect, again.collect_dtmf_digits) == (asked.expect, 8)
    assert again.needs_fallback and again.end is None and again.composed is None
    assert "postcode of the property" in texts(answered), texts(answered)
    assert say_balance(account.balance_pence) in texts(balance), texts(balance)


@needs_rasa
@pytest.mark.rasa
def test_words_rasa_calls_out_of_scope_while_a_form_waits_get_its_question_again(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """The account number heard as words the real Rasa places on ``out_of_scope``: its own
    reply would be the refusal and its transfer question, then the form's question (two
    questions in one turn). With the knowledge routing in front, the caller hears "Sorry, I
    didn't catch that." and the question, the keypad and the digits still open; after
    ``question_again_max`` times in a row, the offer to put them through; the number said
    then still moves the form on."""
    routed = _routed(dlg)
    brain, knowledge = routed.brain, routed.knowledge
    account = DEMO[1]
    garbled = "what's the capital of france"

    async def call_in() -> tuple[Understanding, list[DialogueTurn]]:
        call = new_call()
        await brain.start(call)
        turns = [await brain.respond(call, "what's my balance")]
        placed = await dlg.understand(call, garbled)
        for _ in range(knowledge.question_again_max + 1):
            turns.append(await brain.respond(call, garbled))
        turns.append(await brain.respond(call, " ".join(account.number)))
        return placed, turns

    placed, (asked, *again, gave_up, answered) = aloop.run(call_in())
    assert placed.intent == "out_of_scope", placed  # the premise
    assert asked.expect == ("digits",) and asked.collect_dtmf_digits == 8, texts(asked)
    assert len(again) == knowledge.question_again_max
    for turn in again:
        assert turn.replies[0].text == knowledge.answer_reask, texts(turn)
        assert turn.replies[-1] == asked.replies[-1], texts(turn)
        assert len(turn.replies) == 2, texts(turn)
        assert (turn.expect, turn.collect_dtmf_digits) == (asked.expect, 8)
        assert turn.end is None and turn.composed is None
    assert texts(gave_up) == knowledge.answer_give_up, texts(gave_up)
    assert "answer_given_up" in gave_up.fallbacks
    assert "postcode of the property" in texts(answered), texts(answered)


@needs_rasa
@pytest.mark.rasa
def test_without_an_llm_a_yes_to_rasas_own_refusal_transfers(
    dlg: RasaDialogue, aloop: LoopThread
) -> None:
    """With no LLM in front, Rasa's out-of-scope reply is the refusal, which asks "Shall I
    put you through to an agent?": its own rule takes the yes up."""

    async def refused_then_yes() -> tuple[DialogueTurn, DialogueTurn]:
        call = new_call()
        await dlg.start(call)
        refused = await dlg.respond(call, "what's the capital of France")
        return refused, await dlg.respond(call, "yes please")

    refused, yes = aloop.run(refused_then_yes())
    assert refused.intent == "out_of_scope"
    assert texts(refused).endswith("Shall I put you through to an agent?")
    assert yes.end == "transfer" and yes.transfer_target == "agents"
