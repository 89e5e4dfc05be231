"""Answers evaluation (issue #18 item 4): the spoken set of ``bench/answers_dataset.py`` through
the whole pipeline, as a call runs it.

Per item: the 8 kHz µ-law WAV -> the configured STT (engines loaded by
``voicebot_pbx.speech.engines.load_engines`` from ``voicebot_pbx.config.load_config()``, given
the deployment's words for ``[stt] second_opinion`` as ``serve`` does
(``voicebot_pbx.ops.service.share_vocabulary``), the transcript taken the way the listener
takes it: the engine's queued / batch / streaming interface) -> the brain a call uses:
``factory.answering(dialogue, llm)`` with ``factory.build_dialogue(config, "rasa")`` against
a real Rasa server (started here on a free port, as tests/test_rasa_call.py does) or
``--dialogue rules``, and the packaged LLM loaded by
``voicebot_pbx.ops.service.load_llm_or_none``. One fresh call per item: ``brain.start``,
``brain.respond(call, transcript)``, ``brain.end``. What the caller hears is what the session
plays (``voicebot_pbx/call/session.py``): the turn's fixed ``replies``, or, when the turn is
``composed``, only the composer's sentences (or its ``Rejected.reply``; the fallback reply when
no sentence comes within ``hard_timeout_s``). ``--text-only`` feeds the reference text instead
of the transcript (separates STT errors from routing errors).

Scores (text compared after a light normalisation: case, punctuation, ``£5`` = "5 pounds",
number words = digits, "8am" = "8 am", spaced phone digits joined):

* knowledge: **contradicted** (a contradiction marker present and not negated by one of the
  3 words before it, or, for an LLM-composed answer, a numeric fact missing while the answer
  states a number that is neither in the passage nor in the question), else
  **honest_unknown** (the fallback / refusal reply: never correct, even when it holds a fact's
  word), else **correct** (every fact group matched), else **misrouted** (a fixed intent reply
  without the facts) or **wrong_other** (a passage or an LLM answer without the facts);
* unknown: **honest** (the fallback or refusal reply), **invented** (an LLM sentence that is
  more than "I'm sorry / I'm not ..." or a passage read out), **misrouted** (a fixed intent
  reply), **other** (the LLM said only "I'm sorry ..." with no offer);
* intent: **kept** (the expected intent, answered by the dialogue: not replaced by a passage
  or the LLM) or **misrouted** (to which). ``--dialogue rules``: a default rule stands for
  opening_hours / address / speak_to_agent / goodbye; other intents are not_applicable.

First-audio proxy for knowledge answers: wall time from the transcript to the first answer
sentence's text (fixed reply: ``respond`` returned; composed: the first sentence or rejection
came out of the composer), p50/p95, separately for fixed and LLM-composed answers. TTS and
the audio path are not in it (the issue's budget is end of speech -> first frame).

    .venv/bin/python bench/eval_answers.py --text-only --dialogue rasa
    .venv/bin/python bench/eval_answers.py --split dev            # audio, STT, Rasa, LLM
    .venv/bin/python bench/eval_answers.py --dialogue rules --limit 20

Writes bench/results/answers.json (one entry per run setting, merged) and answers.md (a table
per run), prints the table and every failure (question, transcript, answer, why).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import re
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import answers_dataset  # noqa: E402

from voicebot_pbx.answers import factory  # noqa: E402
from voicebot_pbx.answers.dialogue import (  # noqa: E402
    BotReply,
    CallInfo,
    Dialogue,
    DialogueTurn,
    Rejected,
    Sentence,
)
from voicebot_pbx.answers.number_words import (  # noqa: E402
    ORDINAL_UNITS,
    ORDINALS,
    TEENS,
    TENS,
    UNITS,
)
from voicebot_pbx.answers.rasa_server import RasaServer, default_rasa_venv  # noqa: E402
from voicebot_pbx.answers.routing import offers_transfer  # noqa: E402
from voicebot_pbx.audio import read_wav  # noqa: E402
from voicebot_pbx.config import Config, load_config  # noqa: E402
from voicebot_pbx.ops.logs import configure_logging  # noqa: E402
from voicebot_pbx.ops.service import load_llm_or_none, share_vocabulary  # noqa: E402
from voicebot_pbx.speech.engines import Engines, load_engines  # noqa: E402

RESULTS = ROOT / "bench" / "results"
OUT_JSON = RESULTS / "answers.json"
OUT_MD = RESULTS / "answers.md"

# The targets (evaluation set).
TARGET_CORRECT = 0.90
TARGET_HONEST = 0.95
TARGET_FIXED_P50_MS = 350.0  # end of speech -> first frame: STT and TTS not in this proxy
TARGET_LLM_P50_MS = 900.0

# --- text normalisation ---------------------------------------------------------------------

_SMALL = {**UNITS, **TEENS}
_NEGATORS = frozenset(
    "not no never dont doesnt didnt cant cannot wont isnt arent wasnt without nor".split()
)


def _ordinal(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return str(n) + {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _numbers(tokens: list[str]) -> list[str]:
    """Number words -> digits: "twenty eight" 28, "twenty eighth" 28th, "one hundred" 100."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if t in TENS:
            if nxt in UNITS and UNITS[nxt] > 0:
                out.append(str(TENS[t] + UNITS[nxt]))
                i += 2
                continue
            if nxt in ORDINAL_UNITS:
                out.append(_ordinal(TENS[t] + ORDINAL_UNITS[nxt]))
                i += 2
                continue
            out.append(str(TENS[t]))
        elif t in _SMALL:
            if nxt == "hundred":
                out.append(str(_SMALL[t] * 100))
                i += 2
                continue
            out.append(str(_SMALL[t]))
        elif t in ORDINALS:
            out.append(_ordinal(ORDINALS[t]))
        else:
            out.append(t)
        i += 1
    return out


def _join_digits(tokens: list[str]) -> list[str]:
    """Spoken or spaced digit groups -> one number: "0800 111 999" and "1 oh 5"."""
    tokens = [
        "0" if t in ("oh", "o") and 0 < i < len(tokens) - 1 and tokens[i - 1].isdigit() else t
        for i, t in enumerate(tokens)
    ]
    out: list[str] = []
    i = 0
    while i < len(tokens):
        j = i
        while j < len(tokens) and tokens[j].isdigit():
            j += 1
        run = tokens[i:j]
        joined = "".join(run)
        if len(run) >= 2 and (
            len(joined) >= 7 or (len(run) >= 3 and all(len(t) == 1 for t in run))
        ):
            out.append(joined)
            i = j
        elif run:
            out.extend(run)
            i = j
        else:
            out.append(tokens[i])
            i += 1
    return out


def normalise(text: str) -> str:
    """Lower case, no punctuation or apostrophes, "£5" -> "5 pounds", "8am" -> "8 am",
    "17:00" -> "17", number words -> digits, spaced phone digits joined."""
    t = text.lower().replace("\u2019", "'")
    t = re.sub(r"£\s?(\d+)", r"\1 pounds", t)
    t = re.sub(r"(\d)\s?%", r"\1 percent", t)
    t = re.sub(r"\b([ap])\.m\.", r"\1m", t)
    t = re.sub(r"(\d)(am|pm)\b", r"\1 \2", t)
    t = re.sub(r"\b(\d{1,2}):00\b", r"\1", t)
    t = t.replace("'", "")
    t = re.sub(r"[^a-z0-9 ]+", " ", t)
    return " ".join(_join_digits(_numbers(t.split())))


def contains(text: str, phrase: str) -> bool:
    return f" {normalise(phrase)} " in f" {normalise(text)} "


def marker_hits(answer: str, markers: Sequence[str]) -> list[str]:
    """Markers present in ``answer`` and not negated by one of the 3 words before them."""
    words = normalise(answer).split()
    hits: list[str] = []
    for marker in markers:
        m = normalise(marker).split()
        if not m:
            continue
        for i in range(len(words) - len(m) + 1):
            if words[i : i + len(m)] == m and not _NEGATORS & set(words[max(0, i - 3) : i]):
                hits.append(marker)
                break
    return hits


def numbers_in(text: str) -> set[str]:
    return {re.sub(r"(st|nd|rd|th)$", "", w) for w in normalise(text).split() if w[0].isdigit()}


# --- the knowledge passages -----------------------------------------------------------------


def passage_text(topic: str, entry: str) -> str:
    """The ``## entry`` section of knowledge/<topic>.md (the whole file if it is gone)."""
    path = answers_dataset.KNOWLEDGE_DIR / f"{topic}.md"
    if not path.exists():
        return ""
    lines = path.read_text().splitlines()
    section: list[str] = []
    inside = False
    for line in lines:
        if line.startswith("## "):
            inside = line[3:].strip() == entry
            continue
        if inside and not line.startswith("Keywords:"):
            section.append(line)
    return " ".join(section) if section else " ".join(lines)


# --- items and results ----------------------------------------------------------------------


@dataclass(slots=True)
class Result:
    id: str
    kind: str
    split: str
    question: str
    transcript: str
    intent: str | None = None
    confidence: float | None = None
    source: str = ""
    composed: bool = False
    replies: list[str] = field(default_factory=list)
    sentences: list[str] = field(default_factory=list)
    rejected: str = ""  # the Rejected reason when the composer declined
    passages: list[str] = field(default_factory=list)  # passage ids read or composed from
    answer: str = ""  # what the caller hears
    hold: bool = False  # the session would have played its hold line first
    first_ms: float | None = None  # transcript -> first answer sentence text
    respond_ms: float = 0.0
    stt_ms: float | None = None
    fallbacks: list[str] = field(default_factory=list)
    # The router asked back ("Just to check, are you asking: ..."): the passage it named and
    # the simulated caller's answer ("yes" only when it is the item's own entry).
    confirm: str = ""
    confirm_passage: str = ""
    # ... or asked whether the caller wants an intent ("Just to check, do you want to ...?":
    # words far from a sure intent's examples); the caller says "yes" only when it is the
    # item's own intent.
    confirm_intent: str = ""
    # The answer offered a transfer: did "yes please" to it transfer?
    offer_taken: bool | None = None
    outcome: str = ""
    why: str = ""


def _answer_for(result: Result) -> None:
    if not result.composed:
        result.answer = " ".join(result.replies)
    elif result.sentences:
        result.answer = " ".join(result.sentences)


# The rule dialogue names its rules "rule<N>": the intent a default rule stands for.
_RULE_HINTS = {
    "opening_hours": "hours",
    "address": "address",
    "speak_to_agent": "agent",
    "goodbye": "goodbye",
}


def rule_intents(config: Config) -> dict[str, str]:
    """ "rule<N>" -> the Rasa intent it answers (the default rules: hours, address, agent,
    goodbye); rules without one are left out."""
    found: dict[str, str] = {}
    for index, rule in enumerate(config.dialogue.rules):
        for intent, hint in _RULE_HINTS.items():
            if hint in rule.keywords:
                found[f"rule{index}"] = intent
    return found


def score(
    item: answers_dataset.Item,
    result: Result,
    config: Config,
    intent_names: dict[str, str] | None = None,
) -> None:
    """Sets ``result.outcome`` and ``result.why``. ``intent_names`` (rule dialogue): rule name
    -> intent; an intent question whose intent no rule answers is "not_applicable"."""
    answer = result.answer
    honest_texts = (config.llm.fallback_reply, config.llm.refusal_reply)
    honest = any(contains(answer, t) for t in honest_texts) or bool(
        result.composed and result.rejected
    )
    if item.kind == "intent":
        expected = item.intent
        if intent_names is not None:
            if expected not in intent_names.values():
                result.outcome, result.why = "not_applicable", "no rule for this intent"
                return
            result.intent = intent_names.get(result.intent or "", result.intent)
        taken = result.composed or result.source == "knowledge"
        if result.intent == expected and not taken:
            result.outcome, result.why = "kept", ""
        else:
            result.outcome = "misrouted"
            result.why = f"intent {result.intent} ({_conf(result.confidence)}), expected {expected}"
            if result.composed:
                result.why += "; answered by the LLM"
            elif result.source == "knowledge":
                result.why += f"; answered from passage {result.passages}"
        return
    if item.kind == "unknown":
        if honest:
            result.outcome = "honest"
            result.why = result.rejected or "honest reply"
        elif result.composed and any(_states(x) for x in result.sentences):
            result.outcome, result.why = "invented", "the LLM stated something"
        elif result.composed:
            result.outcome, result.why = "other", "the LLM said no more than sorry / not sure"
        elif result.source == "knowledge":
            result.outcome, result.why = "invented", f"read passage {result.passages}"
        else:
            result.outcome = "misrouted"
            result.why = f"fixed reply of intent {result.intent} ({_conf(result.confidence)})"
        return
    hits = marker_hits(answer, item.contradiction)
    missing = [g for g in item.facts if not any(contains(answer, alt) for alt in g)]
    if hits:
        result.outcome, result.why = "contradicted", f"says {hits}"
        return
    if honest:  # the fallback reply may hold a fact's word ("agent"): never correct
        result.outcome = "honest_unknown"
        result.why = f"{result.rejected or 'honest reply'}; passage {item.topic}: {item.entry}"
        return
    if not missing:
        result.outcome, result.why = "correct", ""
        return
    numeric = [g for g in missing if all(any(ch.isdigit() for ch in normalise(a)) for a in g)]
    if result.composed and result.sentences and numeric:
        allowed = numbers_in(passage_text(item.topic, item.entry)) | numbers_in(item.text)
        other = sorted(numbers_in(answer) - allowed)
        if other:
            result.outcome = "contradicted"
            result.why = f"says {other} where the passage says {numeric[0][0]!r}"
            return
    lacks = f"lacks {[g[0] for g in missing]}"
    if result.source == "knowledge":
        result.outcome = "wrong_other"
        result.why = f"read passage {result.passages}, {lacks}"
    elif not result.composed:
        result.outcome = "misrouted"
        result.why = f"fixed reply of intent {result.intent} ({_conf(result.confidence)}), {lacks}"
    else:
        result.outcome, result.why = "wrong_other", f"LLM answer {lacks}"


_NON_STATEMENT = re.compile(
    r"^(i'?m sorry|sorry|i'?m not|i am not|i don'?t|i do not|i can'?t|i cannot)\b"
)


def _states(sentence: str) -> bool:
    """The sentence says something (not only "I'm sorry ..." / "I'm not sure ...")."""
    return not _NON_STATEMENT.match(sentence.strip().lower().replace("\u2019", "'"))


def _conf(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# --- running --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def transcribe(engines: Engines, config: Config, pcm: bytes, rate_hz: int) -> str:
    """As the listener does: the engine's queued, batch or streaming interface."""
    caps = engines.stt.capabilities
    if caps.queued is not None:
        async with asyncio.timeout(config.stt.timeout_s):
            return (await caps.queued.transcribe_async(pcm, rate_hz, urgent=True)).text
    if caps.batch is not None:
        fn = functools.partial(caps.batch.transcribe, pcm, rate_hz)
        return (await engines.run("stt", config.stt.timeout_s, fn)).text
    stream = engines.stt.new_stream(rate_hz)
    try:
        await engines.run("stt", config.stt.timeout_s, functools.partial(stream.accept, pcm))
        return (await engines.run("stt", config.stt.timeout_s, stream.finish)).text
    finally:
        stream.close()


async def _turn(
    brain: Dialogue, config: Config, call: CallInfo, text: str, result: Result
) -> DialogueTurn:
    """One caller turn, answered as the session answers it, into ``result``'s answer fields."""
    result.replies, result.sentences, result.passages = [], [], []
    result.composed, result.rejected, result.answer, result.hold = False, "", "", False
    started = time.perf_counter()
    try:
        async with asyncio.timeout(config.dialogue.timeout_s):
            turn = await brain.respond(call, text)
    except TimeoutError:
        turn = DialogueTurn(replies=(BotReply(text=config.dialogue.reprompt),))
        result.fallbacks.append("dialogue_timeout")
    responded = time.perf_counter()
    result.respond_ms = round((responded - started) * 1000.0, 1)
    result.intent, result.confidence, result.source = turn.intent, turn.confidence, turn.source
    result.fallbacks.extend(turn.fallbacks)
    result.replies = [r.text for r in turn.replies if r.text]
    result.passages = list(turn.sources)
    composed = turn.composed
    if composed is None:
        result.first_ms = result.respond_ms
    else:
        result.composed = True
        cfg = composed.composer.config
        async with contextlib.aclosing(composed.composer.answer(composed.question)) as stream:
            try:
                async with asyncio.timeout(cfg.hard_timeout_s):
                    item = await anext(stream, None)
            except TimeoutError:
                item = Rejected("timeout", cfg.fallback_reply, ("session hard timeout",))
            first_at = time.perf_counter()
            result.first_ms = round((first_at - started) * 1000.0, 1)
            result.hold = first_at - responded > cfg.first_sentence_timeout_s
            while item is not None:
                if isinstance(item, Rejected):
                    result.rejected = item.reason
                    result.answer = item.reply
                    result.passages = list(item.sources)
                    break
                if isinstance(item, Sentence):
                    result.sentences.append(item.text)
                    result.passages = list(item.sources)
                item = await anext(stream, None)
    _answer_for(result)
    return turn


async def ask(
    brain: Dialogue,
    config: Config,
    item: answers_dataset.Item,
    result: Result,
    headings: dict[str, str],
) -> None:
    """One call: the item's question; when the bot asks back which passage is meant, the
    caller's "yes" (the item's own entry) or "no" (anything else; every unknown and intent
    item); when it asks whether the caller wants an intent, "yes" only for an intent item's
    own intent; when the answer offers a transfer (the fallback reply, or the refusal when it
    asks), "yes please": is it taken?"""
    call = CallInfo(call_id=f"eval-answers-{item.id}-{uuid.uuid4().hex[:8]}", pbx="bench")
    await brain.start(call)
    turn = await _turn(brain, config, call, result.transcript, result)
    meant: bool | None = None  # the bot asked back: whether it named what the item asks
    if turn.source == "knowledge_confirm":
        result.confirm_passage = turn.sources[0] if turn.sources else ""
        meant = item.kind == "knowledge" and headings.get(result.confirm_passage) == item.entry
    elif turn.source == "intent_confirm":
        result.confirm_intent = turn.intent or ""
        meant = item.kind == "intent" and result.confirm_intent == item.intent
    if meant is not None:
        result.confirm = "yes" if meant else "no"
        turn = await _turn(brain, config, call, result.confirm, result)
    offers = (config.llm.fallback_reply, config.llm.refusal_reply)
    if any(contains(result.answer, t) for t in offers if offers_transfer(t)):
        taken = await brain.respond(call, "yes please")
        result.offer_taken = taken.end == "transfer"
    await brain.end(call)


@dataclass(slots=True)
class Run:
    dialogue: str
    text_only: bool
    split: str
    limit: int
    results: list[Result]
    seconds: dict[str, float]
    info: dict[str, Any]
    voices: str = "espeak"  # the spoken set's voice family (answers_dataset.VOICE_FAMILIES)

    @property
    def key(self) -> str:
        limit = f"/limit{self.limit}" if self.limit else ""
        heard = "text" if self.text_only else "audio"
        if not self.text_only and self.voices != "espeak":
            heard = f"audio-{self.voices}"
        return f"{self.dialogue}/{heard}/{self.split}{limit}"


async def evaluate(args: argparse.Namespace) -> Run:
    os.chdir(ROOT)  # knowledge_dir and rasa project_dir are relative to the checkout
    config = load_config()
    if args.dialogue == "rules":
        config = dataclasses.replace(
            config, dialogue=dataclasses.replace(config.dialogue, engine="rules")
        )
    items = answers_dataset.plan(args.voices)
    folder = answers_dataset.out_dir(args.voices)
    if not args.text_only:
        answers_dataset.build(voices=args.voices)  # skipped when the manifest matches
    if args.split != "all":
        items = [i for i in items if i.split == args.split]
    if args.limit:
        items = items[: args.limit]
    seconds: dict[str, float] = {}
    info: dict[str, Any] = {"items": len(items)}
    t0 = time.perf_counter()
    engines: Engines | None = None
    if not args.text_only:
        engines = await asyncio.to_thread(load_engines, config)
        info["stt"] = f"{config.stt.engine} {config.stt.model_dir or '(packaged default)'}" + (
            f", {config.stt.long_engine_name} from {config.stt.long_from_s:g} s of speech"
            if config.stt.long_engine_name
            else ""
        )
    seconds["engines_load"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    llm = await load_llm_or_none(config)
    seconds["llm_load"] = round(time.perf_counter() - t0, 1)
    if engines is not None:  # the speech recogniser as serve sets it up (second opinion)
        await share_vocabulary(engines, config, llm.kb if llm is not None else None)
        if config.stt.second_opinion:
            info["stt"] += ", second opinion"
    info["llm"] = (
        "unavailable" if llm is None else config.llm.model_path or "(packaged SmolLM2-135M)"
    )
    server: RasaServer | None = None
    built = None
    async with contextlib.AsyncExitStack() as stack:
        if engines is not None:
            stack.callback(engines.close)
        if llm is not None:
            stack.push_async_callback(llm.aclose)
        t0 = time.perf_counter()
        if args.dialogue == "rasa":
            venv = Path(config.rasa.venv_dir) if config.rasa.venv_dir else default_rasa_venv(ROOT)
            server = RasaServer(
                ROOT / config.rasa.project_dir,
                venv,
                port=free_port(),
                models_dir=ROOT / ".cache" / "rasa-models",
            )
            model = await asyncio.to_thread(server.ensure_trained)
            info["rasa_model"] = model.path.name
            info["rasa_trained_now"] = model.trained
            stack.push_async_callback(server.stop)
            await server.start()
            built = factory.build_dialogue(config, "rasa", rasa_url=server.base_url)
            assert built.rasa is not None
            stack.push_async_callback(built.rasa.aclose)
            await built.rasa.ping()
        else:
            built = factory.build_dialogue(config, "rules")
        seconds["dialogue_start"] = round(time.perf_counter() - t0, 1)
        brain = factory.answering(built.dialogue, llm, config.knowledge)
        headings = {p.id: p.question for p in llm.kb.passages} if llm is not None else {}
        t0 = time.perf_counter()
        names = rule_intents(config) if args.dialogue == "rules" else None
        results: list[Result] = []
        for n, item in enumerate(items, 1):
            result = Result(item.id, item.kind, item.split, item.text, item.text)
            if engines is not None:
                pcm, rate = read_wav(folder / item.wav)
                s0 = time.perf_counter()
                result.transcript = (await transcribe(engines, config, pcm, rate)).strip()
                result.stt_ms = round((time.perf_counter() - s0) * 1000.0, 1)
            try:
                await ask(brain, config, item, result, headings)
            except Exception as exc:  # one broken turn must not end the run
                result.fallbacks.append(f"error: {type(exc).__name__}: {exc}")
                result.outcome = {"knowledge": "wrong_other", "unknown": "other"}.get(
                    item.kind, "misrouted"
                )
                result.why = f"error: {type(exc).__name__}: {exc}"
            else:
                score(item, result, config, names)
            results.append(result)
            if n % 20 == 0:
                print(f"  {n}/{len(items)} items", file=sys.stderr, flush=True)
        seconds["items"] = round(time.perf_counter() - t0, 1)
    info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return Run(
        args.dialogue, args.text_only, args.split, args.limit, results, seconds, info, args.voices
    )


# --- report ---------------------------------------------------------------------------------

OUTCOMES = {
    "knowledge": ["correct", "contradicted", "honest_unknown", "misrouted", "wrong_other"],
    "unknown": ["honest", "invented", "misrouted", "other"],
    "intent": ["kept", "misrouted"],
}


def _rate(n: int, total: int) -> str:
    return f"{n}/{total} ({100.0 * n / total:.0f} %)" if total else "0/0"


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return float(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1])


def _fixed(r: dict[str, Any]) -> bool:
    return not r["composed"]


def _passage(r: dict[str, Any]) -> bool:
    return r["source"] == "knowledge" and not r["composed"]


def _composed(r: dict[str, Any]) -> bool:
    return bool(r["composed"])


ANSWER_KINDS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "fixed": _fixed,
    "passage": _passage,
    "composed": _composed,
}


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per kind and outcome, latency percentiles, per split ("dev", "test", "all")."""
    summary: dict[str, Any] = {}
    near = answers_dataset.near_ids()
    for split in ("dev", "test", "all"):
        chosen = [r for r in results if split == "all" or r["split"] == split]
        part: dict[str, Any] = {}
        for kind, outcomes in OUTCOMES.items():
            of_kind = [r for r in chosen if r["kind"] == kind]
            applicable = [r for r in of_kind if r["outcome"] != "not_applicable"]
            part[kind] = {
                "n": len(applicable),
                "not_applicable": len(of_kind) - len(applicable),
            } | {o: sum(1 for r in applicable if r["outcome"] == o) for o in outcomes}
        beside = [r for r in chosen if r["kind"] == "unknown" and r["id"] in near]
        part["unknown_near"] = {"n": len(beside)} | {
            o: sum(1 for r in beside if r["outcome"] == o) for o in OUTCOMES["unknown"]
        }
        knowledge = [r for r in chosen if r["kind"] == "knowledge" and r["first_ms"] is not None]
        for name, pick in ANSWER_KINDS.items():
            values = [float(r["first_ms"]) for r in knowledge if pick(r)]
            part[f"first_ms_{name}"] = {
                "n": len(values),
                "p50": _pct(values, 50),
                "p95": _pct(values, 95),
            }
        part["knowledge_answered_by"] = {
            name: sum(1 for r in knowledge if pick(r)) for name, pick in ANSWER_KINDS.items()
        }
        part["hold_line"] = sum(1 for r in knowledge if r["hold"])
        asked = [r for r in chosen if r.get("confirm")]
        # passages asked back ("are you asking ...") apart from intents ("do you want to ...")
        passages = [r for r in asked if not r.get("confirm_intent")]
        part["asked_back"] = {
            "knowledge_yes": sum(
                1 for r in passages if r["kind"] == "knowledge" and r["confirm"] == "yes"
            ),
            "knowledge_no": sum(
                1 for r in passages if r["kind"] == "knowledge" and r["confirm"] == "no"
            ),
            "correct_after_yes": sum(
                1 for r in passages if r["confirm"] == "yes" and r["outcome"] == "correct"
            ),
            "other_kinds": sum(1 for r in passages if r["kind"] != "knowledge"),
            "intent_yes": sum(
                1 for r in asked if r.get("confirm_intent") and r["confirm"] == "yes"
            ),
            "intent_no": sum(1 for r in asked if r.get("confirm_intent") and r["confirm"] == "no"),
            "kept_after_yes": sum(
                1
                for r in asked
                if r.get("confirm_intent") and r["confirm"] == "yes" and r["outcome"] == "kept"
            ),
        }
        offers = [r for r in chosen if r.get("offer_taken") is not None]
        part["offers"] = {"n": len(offers), "taken": sum(1 for r in offers if r["offer_taken"])}
        stt = [r for r in chosen if r["stt_ms"] is not None]
        if stt:
            exact = sum(1 for r in stt if normalise(r["transcript"]) == normalise(r["question"]))
            part["stt_exact"] = {"n": len(stt), "exact": exact}
        summary[split] = part
    return summary


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def table(run: dict[str, Any]) -> str:
    s = run["summary"]
    splits = ("dev", "test", "all")
    lines = [
        f"### {run['key']}",
        "",
        f"{run['when']}; dialogue {run['dialogue']}, "
        f"{'reference text (no STT)' if run['text_only'] else 'spoken (STT)'}; LLM "
        f"{run['info'].get('llm')}; Rasa model {run['info'].get('rasa_model', '-')}; "
        f"load average {run['info'].get('loadavg')}; run {run['seconds']} s",
        "",
        "| measure | dev | test | all | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    targets = {
        ("knowledge", "correct"): f">= {TARGET_CORRECT:.0%}",
        ("knowledge", "contradicted"): "0",
        ("unknown", "honest"): f">= {TARGET_HONEST:.0%}",
        ("intent", "kept"): "not below today's",
    }
    for kind, outcomes in OUTCOMES.items():
        for outcome in outcomes:
            cells = [_rate(s[sp][kind][outcome], s[sp][kind]["n"]) for sp in splits]
            target = targets.get((kind, outcome), "")
            lines.append(f"| {kind}: {outcome} | {' | '.join(cells)} | {target} |")
    if all("unknown_near" in s[sp] for sp in splits):
        for outcome in OUTCOMES["unknown"]:
            cells = [
                _rate(s[sp]["unknown_near"][outcome], s[sp]["unknown_near"]["n"]) for sp in splits
            ]
            lines.append(
                f"| of which beside a passage (NEAR_DEV / NEAR_TEST): {outcome} "
                f"| {' | '.join(cells)} | |"
            )
    latencies = (
        ("fixed", "fixed reply (intent or passage)", TARGET_FIXED_P50_MS),
        ("passage", "of which read from a passage", TARGET_FIXED_P50_MS),
        ("composed", "LLM-composed", TARGET_LLM_P50_MS),
    )
    for name, what, budget in latencies:
        cells = []
        for sp in splits:
            lat = s[sp][f"first_ms_{name}"]
            cells.append(f"{_ms(lat['p50'])} / {_ms(lat['p95'])} (n={lat['n']})")
        lines.append(
            f"| knowledge first answer text, {what}: p50 / p95 ms | {' | '.join(cells)} "
            f"| p50 <= {budget:.0f} ms (first frame) |"
        )
    cells = [str(s[sp]["hold_line"]) for sp in splits]
    lines.append(f"| knowledge answers with the hold line first | {' | '.join(cells)} | |")
    if all("asked_back" in s[sp] for sp in splits):
        cells = [
            "{knowledge_yes} yes ({correct_after_yes} then correct) / {knowledge_no} no; "
            "{other_kinds} other".format(**s[sp]["asked_back"])
            for sp in splits
        ]
        lines.append(
            f'| asked back ("just to check, are you asking ..."): knowledge items / unknown + '
            f"intent items | {' | '.join(cells)} | |"
        )
        cells = [
            "{intent_yes} yes ({kept_after_yes} then kept) / {intent_no} no".format(
                **{"intent_yes": 0, "intent_no": 0, "kept_after_yes": 0, **s[sp]["asked_back"]}
            )
            for sp in splits
        ]
        lines.append(
            f'| intent asked back ("just to check, do you want to ..."): its own / another '
            f"item's | {' | '.join(cells)} | |"
        )
        cells = [_rate(s[sp]["offers"]["taken"], s[sp]["offers"]["n"]) for sp in splits]
        lines.append(
            f'| transfer offers a "yes please" takes up (transfers) | {" | ".join(cells)} | all |'
        )
    if "stt_exact" in s["all"]:
        cells = [
            _rate(s[sp]["stt_exact"]["exact"], s[sp]["stt_exact"]["n"])
            if "stt_exact" in s[sp]
            else "-"
            for sp in splits
        ]
        lines.append(f"| transcript = reference (normalised) | {' | '.join(cells)} | |")
    return "\n".join(lines) + "\n"


def failures(run: dict[str, Any]) -> str:
    good = {"correct", "honest", "kept", "not_applicable"}
    out: list[str] = []
    for r in run["results"]:
        if r["outcome"] in good:
            continue
        out.append(f"[{r['id']} {r['split']} {r['kind']}] {r['outcome'].upper()}: {r['why']}")
        out.append(f"    Q: {r['question']}")
        if r["transcript"] != r["question"]:
            out.append(f"    heard: {r['transcript']}")
        route = f"intent {r['intent']} ({_conf(r['confidence'])}) via {r['source']}"
        if r["composed"]:
            route += f", composed ({r['rejected'] or 'answered'}; passages {r['passages']})"
        out.append(f"    route: {route}")
        out.append(f"    A: {r['answer']}")
    return "\n".join(out)


def save(run: Run) -> dict[str, Any]:
    data: dict[str, Any] = {"runs": {}}
    if OUT_JSON.exists():
        with contextlib.suppress(ValueError):
            data = json.loads(OUT_JSON.read_text())
    results = [dataclasses.asdict(r) for r in run.results]
    entry = {
        "key": run.key,
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "dialogue": run.dialogue,
        "text_only": run.text_only,
        "voices": None if run.text_only else run.voices,
        "split": run.split,
        "limit": run.limit,
        "seconds": run.seconds,
        "info": run.info,
        "summary": summarise(results),
        "results": results,
    }
    data.setdefault("runs", {})[run.key] = entry
    RESULTS.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(data, indent=1) + "\n")
    notes = (
        "# Answers evaluation (bench/eval_answers.py)\n\n"
        "Spoken set: bench/answers_dataset.py. Rates are n/N per split. First answer text: "
        "wall time from the transcript to the first answer sentence's text (no TTS, no audio "
        "path), for knowledge questions.\n\n"
    )
    OUT_MD.write_text(notes + "\n".join(table(r) for r in data["runs"].values()))
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--split", choices=("dev", "test", "all"), default="all")
    parser.add_argument("--dialogue", choices=("rasa", "rules"), default="rasa")
    parser.add_argument("--limit", type=int, default=0, help="first N items only")
    parser.add_argument(
        "--text-only", action="store_true", help="feed the reference text (no audio, no STT)"
    )
    parser.add_argument(
        "--voices",
        choices=answers_dataset.VOICE_FAMILIES,
        default="espeak",
        help="the spoken set's voices: espeak-ng (default) or Debian flite's",
    )
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    configure_logging("console", level=args.log_level)
    started = time.perf_counter()
    run = asyncio.run(evaluate(args))
    run.seconds["total"] = round(time.perf_counter() - started, 1)
    entry = save(run)
    print(failures(entry))
    print()
    print(table(entry))
    print(f"wrote {OUT_JSON.relative_to(ROOT)} and {OUT_MD.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
