"""The grounding post-check (pure): every number, phone number, amount, date, time and name
in a sentence the LLM produced must be in the retrieved passages, and the sentence must not
contradict them (:mod:`voicebot_pbx.answers.contradiction`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Literal

import structlog

from voicebot_pbx.answers.knowledge import Passage, search_terms
from voicebot_pbx.answers.number_words import (
    MONTHS,
    ORDINALS,
    SCALES,
    TEENS,
    TENS,
    UNITS,
    WEEKDAYS,
)
from voicebot_pbx.config import (
    DEFAULT_FALLBACK_REPLY as DEFAULT_FALLBACK_REPLY,
)
from voicebot_pbx.config import (
    DEFAULT_REFUSAL_REPLY as DEFAULT_REFUSAL_REPLY,
)
from voicebot_pbx.config import LlmConfig as LlmConfig
from voicebot_pbx.config import LlmEndpointConfig as LlmEndpointConfig

log = structlog.get_logger(__name__)


# --- grounding post-check (pure) -------------------------------------------------------------

_ZEROES = frozenset({"oh", "o", "nought"})
_MONTHS = frozenset(MONTHS)
_WEEKDAYS = frozenset(WEEKDAYS)
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
# Ways to reach the company that a caller would go and use: one the passages never name is
# invented, whatever the sentence gives as its address ("The email address for complaints
# is 12 Harbour Street": every fact in it is in the passages, the channel is not).
_CHANNELS: dict[str, re.Pattern[str]] = {
    name: re.compile(pattern, re.IGNORECASE)
    for name, pattern in {
        "email": r"\be-?mail",
        "fax": r"\bfax",
        "text message": r"\b(?:text messages?|sms|texting us)\b",
        "whatsapp": r"\bwhats ?app\b",
        "live chat": r"\b(?:live ?chat|web ?chat)\b",
        "app": r"\bapps?\b",
    }.items()
}
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
    return word in UNITS or word in TEENS or word in TENS


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
        elif word in UNITS:
            value = UNITS[word]
            if cur is not None and not self.spelled and self.last in ("tens", "scale"):
                self.current = cur + value
                self.last = "compound"
            elif self.last in ("unit", "zero"):
                self.add_digits(str(value))
            else:
                self.flush()
                self.current, self.last = value, "unit"
        elif word in TEENS or word in TENS:
            value = TEENS.get(word) or TENS[word]
            if cur is not None and not self.spelled and self.last == "scale" and cur % 100 == 0:
                self.current = cur + value
            else:
                self.flush()
                self.current = value
            self.last = "teen" if word in TEENS else "tens"
        elif word in ORDINALS:
            value = ORDINALS[word]
            if cur is not None and not self.spelled and self.last in ("tens", "scale"):
                self.current = cur + value
            else:
                self.flush()
                self.current = value
            self.run.ordinal_words.append(word)
            return False
        elif word in SCALES:
            scale = SCALES[word]
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
            or low in ORDINALS
            or low in SCALES
            or (low in ("double", "triple") and word(i + 1) in UNITS)
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
            elif w in ("double", "triple") and word(j + 1) in UNITS:
                b.add_digits(str(UNITS[word(j + 1)]) * (2 if w == "double" else 3))
                b.words.append(w)
                j += 1
            elif w in _ZEROES and (b.words or b.run.groups):
                b.add(w)
            elif w == "and" and b.last == "scale" and _is_number_word(word(j + 1)):
                pass  # "two hundred and fifty"
            elif _is_number_word(w) or w in ORDINALS or w in SCALES:
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
ClockTime = tuple[Decimal, str]  # (hour, "am"/"pm"): "6 pm" -> (6, "pm")


def _time_range_runs(tokens: Sequence[_Token], runs: Sequence[_Run]) -> list[tuple[_Run, _Run]]:
    """The pairs of runs that form a time range: two times joined by one range word."""
    pairs: list[tuple[_Run, _Run]] = []
    for first, second in zip(runs, runs[1:], strict=False):
        if _hour(first) is None or _hour(second) is None:
            continue
        between = [t.text.lower() for t in tokens[first.end_index : second.start_index]]
        between = [w for w in between if w not in (".", "m")]  # "8 a.m. to 6 p.m."
        if between[-1:] and between[-1] in _RANGE_WORDS and len(between) <= 3:
            pairs.append((first, second))
    return pairs


def _clock_time(run: _Run) -> ClockTime | None:
    hour = _hour(run)
    return None if hour is None else (hour, run.meridiem)


def _time_ranges(
    tokens: Sequence[_Token], runs: Sequence[_Run]
) -> set[tuple[ClockTime, ClockTime]]:
    """ "8 am to 6 pm" -> {((8, "am"), (6, "pm"))}: two times joined by one range word."""
    ranges: set[tuple[ClockTime, ClockTime]] = set()
    for first, second in _time_range_runs(tokens, runs):
        start, end = _clock_time(first), _clock_time(second)
        if start is not None and end is not None:
            ranges.add((start, end))
    return ranges


def _past_meridiem(tokens: Sequence[_Token], index: int) -> int:
    """The token index after a spelled-out "am"/"pm" at ``index`` ("am", "a.m.", "a m")."""
    word = _word_at(tokens, index)
    if word in ("am", "pm"):
        return index + 1
    if word in ("a", "p") and "m" in (_word_at(tokens, index + 1), _word_at(tokens, index + 2)):
        end = index + 2 if _word_at(tokens, index + 1) == "m" else index + 3
        return end + 1 if end < len(tokens) and tokens[end].text == "." else end
    return index


def words_and_times(text: str) -> list[str | tuple[ClockTime, ...]]:
    """``text`` as lower-cased words, numbers and symbols in order, with each clock time
    ("6 pm", "six p.m.") as a 1-tuple ``((6, "pm"),)`` and each time range ("8 am to 6 pm")
    as a 2-tuple ``((8, "am"), (6, "pm"))``; read the way the grounding check reads them."""
    tokens = _tokens(text)
    runs = _number_runs(tokens)
    spans: dict[int, tuple[int, tuple[ClockTime, ...]]] = {}  # start token -> (end, times)
    in_range: set[int] = set()  # start tokens of runs inside a range
    for first, second in _time_range_runs(tokens, runs):
        start, end = _clock_time(first), _clock_time(second)
        if start is not None and end is not None:
            spans[first.start_index] = (_past_meridiem(tokens, second.end_index), (start, end))
            in_range.update((first.start_index, second.start_index))
    for run in runs:
        time = _clock_time(run)
        if time is not None and run.start_index not in in_range:
            spans[run.start_index] = (_past_meridiem(tokens, run.end_index), (time,))
    items: list[str | tuple[ClockTime, ...]] = []
    index = 0
    while index < len(tokens):
        if index in spans:
            index, times = spans[index]
            items.append(times)
        else:
            items.append(tokens[index].text.lower().replace("’", "'"))
            index += 1
    return items


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
NEUTRAL_TERMS = frozenset(
    search_terms(
        "sorry help helping thank thanks sure certainly course happy glad please agent agents "
        "team call calling line phone one ask question questions information assist detail "
        "welcome great good right yes need"
    )
)


def unsupported_terms(text: str, support: str) -> tuple[list[str], int]:
    """Content terms of ``text`` (stemmed, stop words out) that ``support`` does not use,
    and how many content terms ``text`` has."""
    known = set(search_terms(support)) | NEUTRAL_TERMS
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
    and weekday names), code ("4EN"), e-mail/web address, capitalised name and way of
    reaching the company (e-mail, fax, text message, an app, live chat) must appear in
    ``passages``. ``allowed_words`` adds names that are always fine (the company's name).
    Also rejects empty text and text longer than ``max_words`` words. Pure; never raises.

    With ``min_support`` > 0, also rejects wording the passages do not support: when the
    text has 3+ content words and less than ``min_support`` of them occur in the passages
    (or the ``question``), e.g. "we also offer a cashback program" (an invented offer has no
    number or name to catch).

    Each fact must be *present* in the passages; beyond that, the contradiction check
    (:mod:`voicebot_pbx.answers.contradiction`) rejects a sentence that says the opposite of
    them (a flipped negation: "you can't pay by card", "you need to read it"; "free" against
    a stated fee; "open" against "closed"; a "Yes"/"No" opposite to the passage's, given the
    ``question``) or gives a weekday a time the passages give it not ("open Saturday 8 am to
    6 pm"). Other misattached facts still pass: "the exit fee is £5" passes when the
    passages mention a £5 discount.
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
    for name, pattern in _CHANNELS.items():
        if pattern.search(text) and not pattern.search(source.text):
            problems.append(f"contact channel {name} not in the passages")
    return problems + _contradictions(text, passages, question)


def _contradictions(text: str, passages: Sequence[Passage | str], question: str) -> list[str]:
    """:func:`contradiction_problems`, never raising: a failure of that check is logged in
    one line and the sentence is not spoken (a sentence nobody could check may be wrong)."""
    # Imported here: the contradiction module reuses this module's time reading.
    from voicebot_pbx.answers.contradiction import contradiction_problems

    try:
        return contradiction_problems(text, passages, question=question)
    except Exception as exc:
        log.error("contradiction_check_failed", error=f"{type(exc).__name__}: {exc}")
        return [f"contradiction check failed: {type(exc).__name__}"]


def _word_at(tokens: Sequence[_Token], index: int) -> str:
    if 0 <= index < len(tokens) and tokens[index].kind == "word":
        return tokens[index].text.lower()
    return ""
