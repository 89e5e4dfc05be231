"""What a caller's words ask for, by their form (pure): information, or a task.

Rasa's intents for tasks ("book_appointment", "report_outage") are trained on requests ("book
me an engineer", "my power is out"); a caller's question *about* the task ("how long will the
fitter be at my house?", "should I see if next door has lost power too?") lands on the same
intent with high confidence, and the caller hears the task's reply instead of the answer the
knowledge base holds. The words' embedding cannot tell the two apart either: the question is
closer to the intent's training examples than to the passage. The grammar can:

- **information**: a question asking for a fact: a wh-word opening a clause ("what's the
  earliest time ...", "..., what should I check before calling", "whereabouts on the bill
  ..."), a how-phrase asking for a quantity anywhere ("how long", "how much", "how many",
  "how often", ...), or a yes/no question with be/do/have/should/will and a subject other
  than "you" ("is there ...", "do I have to ...", "if I close my account do I have to ...";
  "do you ..." is unclear);
- **request**: a clause opens with what the caller wants ("I'd like ...", "I need ...", "I
  want ...") or the bot is asked to do something ("can you ...", "could you ...", "will you
  ...") — these win over a question inside them ("I'd like to find out how much I owe");
- **unclear**: the rest, including "can I ..." / "could someone ...", which asks for a task
  as often as for a fact ("can I book an engineer" / "can I report a power cut on Christmas
  day"), "how do I ..." (the procedure is the task), and statements.

:func:`voicebot_pbx.answers.routing.route` uses it where an intent and a strong
knowledge-base hit compete (a question about a task reads the passage, a request keeps the
intent), and to send an unsure task intent's question without a strong hit to the honest
offer; "unclear" leaves the other rules in charge. :func:`asks_for` / :func:`states`: the kind
of answer a question names, and whether a passage states one.
"""

from __future__ import annotations

import re
from typing import Literal

from voicebot_pbx.speech.stt_split import spoken_words

QuestionForm = Literal["information", "request", "unclear"]

_CLAUSE_RE = re.compile(r"[,;:?!.]|\s-\s")

_WH = frozenset(
    "what what's whats when where whereabouts which who whose why whom".split() + ["how's"]
)
# "how" + one of these asks for a quantity or a manner that is a fact, wherever it stands.
_HOW_FACT = frozenset("long much many often late early soon quickly far big old fast".split())
# "how do I ..." asks for the procedure: the task itself.
_HOW_TASK = frozenset("do can could would should".split())
_AUX = frozenset(
    "is are was were does do did should shall will has have am isn't aren't doesn't don't".split()
)
_SUBJECTS = frozenset("i it there my the a an this that they we your our he she its".split())
# Before an inversion's auxiliary ("... do I have to"), not a subject or a wh-word.
_NOT_BEFORE_INVERSION = frozenset("you we they he she to how".split()) | _WH
# Modal questions whose subject is the bot ("will you ...") ask it to act.
_MODAL_REQUEST = frozenset("can could would will".split())
_WANTS = (
    ("i'd", "like"),
    ("i", "would", "like"),
    ("i", "want"),
    ("i", "wanna"),
    ("i", "need"),
    ("we", "need"),
    ("we", "want"),
    ("i'd", "love"),
    ("i", "wish"),
)
_FILLERS = frozenset(
    "so and but um uh er erm well hi hello hiya yeah yes oh right ok okay please hey just".split()
)


def _wants(words: list[str]) -> bool:
    """A clause that opens (after fillers: "so", "um", "hi", ...) by saying what the caller
    wants ("I'd like ...", "I need ..."); inside a question it is part of the question ("is
    there anything I need to do?")."""
    rest = list(words)
    while rest and rest[0] in _FILLERS:
        rest.pop(0)
    return any(tuple(rest[: len(phrase)]) == phrase for phrase in _WANTS)


def _clause_asks(words: list[str]) -> bool:
    """A clause that opens as a question for a fact."""
    if not words:
        return False
    first = words[0]
    second = words[1] if len(words) > 1 else ""
    if first in _WH:
        return True
    if first == "how":
        return second not in _HOW_TASK
    return first in _AUX and second in _SUBJECTS


def _inverted(words: list[str]) -> bool:
    """An aux-subject inversion inside the clause ("if I close my account do I have to
    ..."): an auxiliary followed by "I" or "there" after a word that is neither a subject
    nor a wh-word (so not "I do it", "what do I")."""
    return any(
        words[i] in _AUX
        and words[i + 1] in ("i", "there")
        and words[i - 1] not in _SUBJECTS | _NOT_BEFORE_INVERSION
        for i in range(1, len(words) - 1)
    )


def question_form(text: str) -> QuestionForm:
    """Whether ``text`` asks for information, asks for a task, or cannot be told (see the
    module docstring)."""
    words = spoken_words(text)
    if not words:
        return "unclear"
    clauses = [spoken_words(c) for c in _CLAUSE_RE.split(text)]
    if any(_wants(c) for c in clauses):
        return "request"
    if words[0] in _MODAL_REQUEST and len(words) > 1 and words[1] == "you":
        return "request"
    if any(_clause_asks(c) for c in clauses):
        return "information"
    if any(words[i] == "how" and words[i + 1] in _HOW_FACT for i in range(len(words) - 1)):
        return "information"
    if any(_inverted(c) for c in clauses):
        return "information"
    return "unclear"


AnswerKind = Literal["amount", "duration", "number", "clock_time", "frequency", "percentage"]

_COUNT_WORDS = (
    r"one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|"
    r"fifty|hundred"
)
_NUMBER_WORDS = _COUNT_WORDS + r"|a|an|a few|several"
_TIME_UNITS = r"(seconds?|minutes?|hours?|days?|weeks?|months?|years?)"
# A number that counts something ("3 tariffs", "three engineers"): not followed by a unit
# of time, money or a clock, nor a price, a decimal or a phone number's last group itself.
_NOT_COUNTED = (
    r"((working|full|calendar) )?" + _TIME_UNITS + r"\b"
    r"|(percent|per cent|pence|p|pounds?|am|pm|o'clock)\b"
)
# What a question asks for, when it names the kind of answer ("how much is ...").
_ASKS: tuple[tuple[AnswerKind, re.Pattern[str]], ...] = (
    (
        "amount",
        re.compile(
            r"\bhow much (is|are|does|do|will|would|did|was|has|have|'s)\b"
            r"|\bhow much\b.*\b(cost|charge|charged|pay|fee)\b"
            r"|\bwhat('s| is| are)? (the|your) (\w+ )?(price|cost|charge|fee|rate)s?\b"
        ),
    ),
    (
        "duration",
        re.compile(r"\bhow long\b(?! is my)|\bhow many (working )?" + _TIME_UNITS + r"\b"),
    ),
    ("number", re.compile(r"\bhow many\b")),
    (
        "clock_time",
        re.compile(r"\bwhat time\b|\bhow (late|early)\b|\b(earliest|latest) time\b"),
    ),
    ("frequency", re.compile(r"\bhow often\b")),
    ("percentage", re.compile(r"\bwhat percentage\b|\bwhat per ?cent\b")),
)
# Where a passage states an answer of that kind.
_STATES: dict[AnswerKind, re.Pattern[str]] = {
    "amount": re.compile(
        r"£\s?\d|\b\d+(\.\d+)?\s?(p|pence|pounds?)\b|\bfree\b|\bno charge\b|\bnothing\b"
    ),
    "duration": re.compile(
        rf"\b(\d+|{_NUMBER_WORDS})(\s(working|full|calendar))?\s{_TIME_UNITS}\b"
        r"|\bimmediately\b|\bstraight away\b|\bsame day\b|\bnext day\b"
    ),
    # "how many <things>": a count of things, not the number of days something takes
    # ("how many complaints did you get" is not answered by "we reply within 5 working days";
    # "how many days ..." asks for a duration).
    "number": re.compile(rf"(?<![£\d.])(?<!\d )\b(\d+|{_COUNT_WORDS})\s+(?!{_NOT_COUNTED})[a-z]"),
    "clock_time": re.compile(
        r"\b\d{1,2}(:\d\d)?\s?(am|pm)\b|\b\d{1,2}:\d\d\b|\bmidnight\b|\bnoon\b|\b24 hours\b"
    ),
    "frequency": re.compile(
        r"\bevery\b|\beach\b|\b(daily|weekly|monthly|quarterly|yearly|annually)\b"
        r"|\b(once|twice|\w+ times) a\b|\ba (day|week|month|year)\b"
    ),
    "percentage": re.compile(r"\bper ?cent\b|%"),
}


def asks_for(text: str) -> AnswerKind | None:
    """The kind of answer ``text`` asks for when its words name one ("how much is ..." an
    amount, "how long ..." a duration, "what time ..." a clock time; None: any answer)."""
    lowered = " ".join(spoken_words(text))
    for kind, pattern in _ASKS:
        if pattern.search(lowered):
            return kind
    return None


def states(kind: AnswerKind, passage_text: str) -> bool:
    """Whether ``passage_text`` states an answer of ``kind`` (a price, a duration, ...)."""
    return _STATES[kind].search(passage_text.lower()) is not None
