"""The Rasa action server for real (issue #19): started and supervised by ``ActionServer``,
called by a real Rasa over its action endpoint, reading an HTTP back end that answers,
fails, hangs, returns junk and dies in the middle of a call. What the caller hears, and the
reason each turn carries into the call record.

Needs the Rasa venv (scripts/install-rasa), like test_rasa.py.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_backends import FakeApi, _Handler, _Server
from tests.test_rasa import (
    MODELS,
    PROJECT,
    VENV,
    LoopThread,
    _free_port,
    _no_account_near,
    needs_rasa,
    texts,
)
from voicebot_pbx.answers.action_server import ActionServer, backends_document, demo_dsn
from voicebot_pbx.answers.dialogue import CallInfo, DialogueTurn
from voicebot_pbx.answers.rasa import RasaDialogue
from voicebot_pbx.answers.rasa_server import RasaServer
from voicebot_pbx.config import ActionsConfig, ConfigError, parse_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "rasa_project"))
from actions.demo_data import demo_accounts  # noqa: E402
from actions.wording import say_balance  # noqa: E402

ACCOUNT = demo_accounts()[5]


# -- pure: what the action server is told ------------------------------------------------


def test_backends_document_from_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOICEBOT_BACKEND_DSN", raising=False)
    demo = backends_document(ActionsConfig(), "/srv/state")
    assert demo["default"] == {"kind": "sql", "dsn": demo_dsn("/srv/state"), "demo": True}
    assert demo["systems"] == {} and demo["budget_s"] == 1.5
    config = ActionsConfig(
        backend="http",
        http_url="http://crm:8080",
        billing="sql:postgresql://db/billing",
        identity_attempts=2,
    )
    doc = backends_document(config, "/srv/state")
    assert doc["default"]["kind"] == "http" and doc["default"]["url"] == "http://crm:8080"
    assert doc["systems"] == {
        "billing": {"kind": "sql", "dsn": "postgresql://db/billing", "demo": False}
    }
    assert doc["identity_attempts"] == 2
    # a DSN with a password comes from the environment, never from the config file
    monkeypatch.setenv("VOICEBOT_BACKEND_DSN", "postgresql://bot:s3cret@db/erp")
    doc = backends_document(ActionsConfig(), "/srv/state")
    assert doc["default"] == {"kind": "sql", "dsn": "postgresql://bot:s3cret@db/erp", "demo": False}


@pytest.mark.parametrize(
    ("section", "complaint"),
    [
        ({"budget_s": 0}, "budget_s"),
        ({"url": "localhost:5055"}, "actions.url"),
        ({"backend": "http"}, "http_url is empty"),
        ({"outages": "ftp:x"}, "actions.outages"),
        ({"billing": "http:"}, "actions.billing"),
    ],
)
def test_bad_actions_config_is_named(section: dict[str, object], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        parse_config({"actions": section})


# -- a real action server, a real Rasa, an HTTP back end ----------------------------------


class ApiServer:
    """The demo company's HTTP API (tests.test_backends.FakeApi) on a fixed port, which can
    be killed and brought back."""

    def __init__(self) -> None:
        self.api = FakeApi()
        self.port = _free_port()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.api = self.api
        self.api.release.clear()
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        self._server, self._thread = server, thread

    def kill(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        self.api.release.set()
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5)


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def backend() -> Iterator[ApiServer]:
    server = ApiServer()
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def actions(
    loop: LoopThread, backend: ApiServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ActionServer]:
    if not (VENV / "bin" / "rasa").exists():
        pytest.skip(f"Rasa venv not installed at {VENV} (run scripts/install-rasa)")
    config = ActionsConfig(
        url=f"http://127.0.0.1:{_free_port()}",
        backend="http",
        http_url=backend.url,
        http_retries=1,
    )
    server = ActionServer(
        config,
        state_dir=tmp_path_factory.mktemp("actions-http"),
        venv_dir=VENV,
        restart_backoff_s=(0.2,),
    )
    loop.run(server.start(), timeout_s=90)
    yield server
    loop.run(server.stop(), timeout_s=30)


@pytest.fixture(scope="module")
def rasa(loop: LoopThread, actions: ActionServer) -> Iterator[RasaServer]:
    server = RasaServer(
        PROJECT, VENV, port=_free_port(), models_dir=MODELS, action_url=actions.webhook_url
    )
    server.ensure_trained()
    loop.run(server.start(), timeout_s=server.startup_timeout_s + 10)
    yield server
    loop.run(server.stop(), timeout_s=30)


@pytest.fixture
def dlg(rasa: RasaServer, loop: LoopThread) -> Iterator[RasaDialogue]:
    d = RasaDialogue(rasa.base_url, timeout_s=5.0)
    yield d
    loop.run(d.aclose())


class Call:
    def __init__(self, dlg: RasaDialogue, loop: LoopThread) -> None:
        self.info = CallInfo(call_id=f"act-{uuid.uuid4().hex[:10]}", caller_id="+441234000001")
        self.dlg, self.loop = dlg, loop
        loop.run(dlg.start(self.info))

    def say(self, text: str, alternatives: tuple[str, ...] = ()) -> DialogueTurn:
        return self.loop.run(self.dlg.respond(self.info, text, alternatives))


def ask_balance(call: Call) -> DialogueTurn:
    call.say("what's my balance")
    call.say(" ".join(ACCOUNT.number))
    return call.say(f"it's {ACCOUNT.postcode.lower()}")


@needs_rasa
@pytest.mark.rasa
def test_balance_through_the_http_back_end(
    dlg: RasaDialogue, loop: LoopThread, backend: ApiServer
) -> None:
    before = backend.api.count("GET")
    turn = ask_balance(Call(dlg, loop))
    assert texts(turn).startswith(say_balance(ACCOUNT.balance_pence)), texts(turn)
    assert turn.fallbacks == () and turn.entities["identity_verified"] == "true"
    # One account lookup for the whole call: the identity question's (which also sent the
    # known answers to the bot); the check and the balance read what it found.
    assert backend.api.count("GET") - before == 1


@needs_rasa
@pytest.mark.rasa
def test_a_spoken_number_and_its_readings_are_looked_up_once_each(
    dlg: RasaDialogue, loop: LoopThread, backend: ApiServer
) -> None:
    """The recogniser's readings of a spoken account number are looked up once each: the
    identity question, the check of the answer and the balance read what the validation
    found for this call."""
    misheard = _no_account_near(ACCOUNT.number)
    call = Call(dlg, loop)
    call.say("what's my balance")
    before = backend.api.count("GET")
    turn = call.say(" ".join(misheard), alternatives=(ACCOUNT.number, demo_accounts()[6].number))
    assert f"That's account number {' '.join(ACCOUNT.number[:4])}," in texts(turn), texts(turn)
    assert backend.api.count("GET") - before == 2  # the number heard, then the first reading
    turn = call.say(f"it's {ACCOUNT.postcode.lower()}")
    assert texts(turn).startswith(say_balance(ACCOUNT.balance_pence)), texts(turn)
    assert backend.api.count("GET") - before == 2

    heard = Call(dlg, loop)  # heard right: one lookup, no reading looked at
    heard.say("what's my balance")
    before = backend.api.count("GET")
    turn = heard.say(" ".join(ACCOUNT.number), alternatives=(misheard,))
    assert f"That's account number {' '.join(ACCOUNT.number[:4])}," in texts(turn), texts(turn)
    assert backend.api.count("GET") - before == 1


@needs_rasa
@pytest.mark.rasa
def test_every_back_end_failure_is_spoken_with_a_transfer_offer(
    dlg: RasaDialogue, loop: LoopThread, backend: ApiServer
) -> None:
    """Each misbehaviour, then a good lookup (which closes the circuit breaker again)."""
    api = backend.api
    cases = [
        ("500", "server_error"),
        ("malformed", "malformed"),
        ("html", "malformed"),
        ("wrong_types", "malformed"),
        ("huge", "too_large"),
        ("hang", "timeout"),
    ]
    for mode, reason in cases:
        api.always = mode
        try:
            call = Call(dlg, loop)
            turn = ask_balance(call)
        finally:
            api.always = None
            api.release.set()  # a hung request lets go
        assert texts(turn) == (
            "I'm sorry, I can't reach our billing system right now. "
            "Shall I put you through to someone who can help?"
        ), (mode, texts(turn))
        assert turn.fallbacks == (f"backend_{reason}:billing",), mode
        assert turn.end is None
        transfer = call.say("yes please")
        assert (transfer.end, transfer.transfer_target) == ("transfer", "agents"), mode
        api.release.clear()
        good = ask_balance(Call(dlg, loop))
        assert texts(good).startswith(say_balance(ACCOUNT.balance_pence)), (mode, texts(good))


@needs_rasa
@pytest.mark.rasa
def test_a_failing_back_end_opens_the_breaker_and_is_not_asked_again(
    dlg: RasaDialogue, loop: LoopThread, backend: ApiServer
) -> None:
    api = backend.api
    api.always = "500"
    try:
        reasons = [ask_balance(Call(dlg, loop)).fallbacks for _ in range(4)]
        asked = api.count()
        declined = Call(dlg, loop)
        turn = ask_balance(declined)
        assert api.count() == asked  # the open breaker answered without a request
    finally:
        api.always = None
    assert reasons[:3] == [("backend_server_error:billing",)] * 3
    assert reasons[3] == ("backend_circuit_open:billing",)
    assert turn.fallbacks == ("backend_circuit_open:billing",)
    assert "can't reach our billing system" in texts(turn)
    assert "anything else" in texts(declined.say("no thanks"))


@needs_rasa
@pytest.mark.rasa
def test_back_end_killed_mid_call_then_back(
    dlg: RasaDialogue, loop: LoopThread, backend: ApiServer
) -> None:
    call = Call(dlg, loop)
    # the day came with the request: the form asks for the time
    assert "what time on" in texts(call.say("I want to book an engineer visit on wednesday"))
    backend.kill()
    try:
        turn = call.say("10 am")
        assert "can't reach our bookings system" in texts(turn), texts(turn)
        assert turn.fallbacks == ("backend_unreachable:bookings",)
        assert "Shall I put you through" in texts(turn)
        assert "anything else" in texts(call.say("no"))
    finally:
        backend.start()
    # back up: the same call books
    call.say("can i book an appointment")
    call.say("wednesday")
    turn = call.say("10 am")
    assert "Shall I book it?" in texts(turn), texts(turn)
    assert "Your appointment is booked for" in texts(call.say("yes"))
    assert any(b["start"].endswith("T10:00") for b in backend.api.booked.values())


@needs_rasa
@pytest.mark.rasa
def test_the_action_server_is_restarted_after_a_crash(
    dlg: RasaDialogue, loop: LoopThread, actions: ActionServer
) -> None:
    pid = actions.pid
    assert pid is not None and actions.ready
    before = actions.restarts
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (actions.restarts > before and actions.ready):
        time.sleep(0.2)
    assert actions.ready and actions.restarts == before + 1 and actions.pid != pid
    turn = ask_balance(Call(dlg, loop))
    assert texts(turn).startswith(say_balance(ACCOUNT.balance_pence))
    settings = json.loads(actions.config_path.read_text())
    assert settings["default"]["url"].startswith("http://127.0.0.1:")
    assert actions.config_path.stat().st_mode & 0o077 == 0  # may hold a DSN's password
    log = actions.log_path.read_text()
    assert "Action endpoint is up and running on http://127.0.0.1:" in log  # loopback only
