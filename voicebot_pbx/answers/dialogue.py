"""Dialogue types shared by every brain (rule-based, Rasa, LLM) and the rule-based brain.

Pure: no asyncio, no I/O. The session asks a ``Dialogue`` for a ``DialogueTurn`` and
plays its replies; the brain never touches audio.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from voicebot_pbx.answers.knowledge import KnowledgeBase
from voicebot_pbx.config import DialogueConfig, LlmConfig

EndAction = Literal["hangup", "transfer"]
# In ``DialogueTurn.fallbacks``: the dialogue did not take the caller's words and said its
# own fallback ("Sorry, could you say that another way?"; Rasa's core fallback, the words
# taken back), whatever its classifier made of them.
WORDS_NOT_TAKEN = "dialogue_words_not_taken"


@dataclass(frozen=True, slots=True)
class BotReply:
    """One thing the bot says: TTS text, a named pre-recorded clip, or a clip followed by text."""

    text: str = ""
    clip: str | None = None


@dataclass(frozen=True, slots=True)
class DialogueTurn:
    """What the bot does after one caller turn (or at call start, or on DTMF)."""

    replies: tuple[BotReply, ...] = ()
    end: EndAction | None = None
    transfer_target: str | None = None
    collect_dtmf_digits: int | None = None
    # What the caller is expected to say next (speech/expect.py), as the dialogue said it
    # ("digits", "postcode", "date"): their answer is also decoded held to it.
    expect: tuple[str, ...] = ()
    # Answers the dialogue knows to that question (the action server's ``verify``:
    # ("postcode", "NW9 4RQ"), ("date", "1987-06-23")): the engine is asked whether the
    # caller says one (speech/verify.py). The caller's secrets: never shown in a repr.
    known: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    intent: str | None = None
    confidence: float | None = None
    source: str = "rules"
    # True when the brain could not understand (out of scope / NLU fallback): the LLM may answer.
    needs_fallback: bool = False
    # The brain took the words as the answer to its own question (a form filled a slot with
    # them), whatever its classifier made of them: its reply is the answer, not the LLM's.
    taken: bool = False
    # The brain's form asked a question and waits for its answer (Rasa: a form is still
    # active after the turn), whether or not ``expect`` says what kind: a yes or a no to
    # "I heard N W 3, 2 Q G. Is that right?" is awaited as an account number is.
    awaits_answer: bool = False
    entities: dict[str, str] = field(default_factory=dict)
    # Fallbacks taken to produce this turn (e.g. "nlu_unavailable"), for the call record.
    fallbacks: tuple[str, ...] = ()
    # Set by ``ComposingDialogue`` on a turn the brain could not answer: the LLM answers it.
    composed: ComposedReply | None = None
    # Knowledge passages the replies were read from (``source == "knowledge"``).
    sources: tuple[str, ...] = ()


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


class Composer(Protocol):
    """Composes an answer while it is spoken (the grounded LLM): ``answer(question)`` yields
    checked sentences as they are ready, or one ``Rejected`` (say its reply instead).
    ``config`` holds its hold line and time limits."""

    config: LlmConfig

    @property
    def kb(self) -> KnowledgeBase | None:
        """The knowledge base it answers from (None: it has none to route to)."""
        ...

    def answer(self, question: str) -> AsyncGenerator[Sentence | Rejected, None]: ...


@dataclass(frozen=True, slots=True)
class ComposedReply:
    """A reply that is composed while it is spoken, instead of fixed ``replies``."""

    question: str
    composer: Composer


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What the dialogue knows about the call (passed to Rasa as metadata)."""

    call_id: str
    caller_id: str | None = None
    pbx: str = "asterisk"
    profile: str = "default"


@dataclass(frozen=True, slots=True)
class Understanding:
    """What the dialogue makes of an utterance, without acting on it (no state changes)."""

    intent: str | None
    confidence: float | None
    needs_fallback: bool  # not understood: the LLM may answer


class Dialogue(Protocol):
    """A brain. Implementations: ``RuleDialogue`` (here), ``RasaDialogue`` (nlu.py)."""

    name: str

    async def start(self, call: CallInfo) -> DialogueTurn: ...

    async def understand(self, call: CallInfo, text: str) -> Understanding:
        """The intent ``respond`` would act on, for routing before the dialogue acts."""
        ...

    async def prepare(self, call: CallInfo, text: str) -> None:
        """The caller may end the turn with ``text`` (the decode at a pause, before the turn
        is over): work without side effects that ``respond`` would do for it may start now,
        and ``respond`` uses it if the turn does end so."""
        ...

    async def respond(
        self, call: CallInfo, text: str, alternatives: Sequence[str] = ()
    ) -> DialogueTurn:
        """The dialogue's turn for the caller's ``text``; ``alternatives``: the recogniser's
        other readings of a number the dialogue asked for (``SttResult.alternatives``),
        which it may check against its records."""
        ...

    async def dtmf(self, call: CallInfo, digits: str) -> DialogueTurn: ...

    async def retract(self, call: CallInfo, text: str) -> None:
        """Forget the caller's last turn, ``text``, if it was taken in: it was not finished
        (the caller went on before its answer was heard) and comes again with the rest."""
        ...

    async def end(self, call: CallInfo) -> None: ...


# --- the rule-based brain (last resort when Rasa is unavailable) -------------------------

_WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    phrases: tuple[tuple[str, ...], ...]  # each phrase as a word tuple
    reply: str
    then: EndAction | None = None
    target: str | None = None


def _phrase_ends(words: list[str], phrase: tuple[str, ...]) -> list[int]:
    """Where each occurrence of ``phrase`` in ``words`` ends (the index after it)."""
    n = len(phrase)
    return [i + n for i in range(len(words) - n + 1) if tuple(words[i : i + n]) == phrase]


def _contains(words: list[str], phrase: tuple[str, ...]) -> bool:
    return bool(_phrase_ends(words, phrase))


# After a closing phrase a caller may still add these ("that's all, thanks, bye").
_CLOSING_TAIL = frozenset(
    "thanks thank you very much cheers bye goodbye then ok okay for now today".split()
)
_CLOSING_MAX_EXTRA_WORDS = 2


def _says_goodbye(words: list[str], phrase: tuple[str, ...]) -> bool:
    """A hang-up phrase ends the call only when it closes what the caller said: at the
    end (but for thanks/bye words), or in an utterance little longer than it. In the middle
    of a longer sentence ("what payments made that is all you take", a mishearing) it
    is no goodbye: hanging up is not undone."""
    ends = _phrase_ends(words, phrase)
    if len(words) <= len(phrase) + _CLOSING_MAX_EXTRA_WORDS:
        return bool(ends)
    return any(all(w in _CLOSING_TAIL for w in words[end:]) for end in ends)


class RuleDialogue:
    """Keyword/phrase rules -> reply text (+ optional hang-up or transfer).

    Matching is on whole words; when several rules match, the one with the longest matched
    phrase wins (ties: the earlier rule). A hang-up rule's phrase counts only where it
    closes the utterance (``_says_goodbye``). Nothing matched -> the reprompt, with
    ``needs_fallback`` set so a smarter brain (the LLM) may answer instead. DTMF ``0``
    goes to the first transfer rule; other digits get the reprompt.
    """

    name = "rules"

    def __init__(self, greeting: str, reprompt: str, rules: list[Rule]) -> None:
        self.greeting = greeting
        self.reprompt = reprompt
        self.rules = rules

    @classmethod
    def from_config(cls, config: DialogueConfig) -> RuleDialogue:
        rules = [
            Rule(
                name=f"rule{index}",
                phrases=tuple(tuple(_words(k)) for k in rule.keywords if _words(k)),
                reply=rule.reply,
                then=rule.then or None,
                target=rule.target or None,
            )
            for index, rule in enumerate(config.rules)
        ]
        return cls(config.greeting, config.reprompt, rules)

    def static_texts(self) -> list[str]:
        """Every fixed sentence this brain can say (to warm the TTS cache)."""
        return [self.greeting, self.reprompt, *(rule.reply for rule in self.rules)]

    def match(self, text: str) -> Rule | None:
        words = _words(text)
        best: tuple[int, Rule] | None = None
        for rule in self.rules:
            found = _says_goodbye if rule.then == "hangup" else _contains
            for phrase in rule.phrases:
                if found(words, phrase) and (best is None or len(phrase) > best[0]):
                    best = (len(phrase), rule)
        return None if best is None else best[1]

    def _turn(self, rule: Rule) -> DialogueTurn:
        return DialogueTurn(
            replies=(BotReply(text=rule.reply),),
            end=rule.then,
            transfer_target=rule.target,
            intent=rule.name,
            confidence=1.0,
            source=self.name,
        )

    async def start(self, call: CallInfo) -> DialogueTurn:
        return DialogueTurn(
            replies=(BotReply(text=self.greeting),), intent="greet", source=self.name
        )

    async def understand(self, call: CallInfo, text: str) -> Understanding:
        rule = self.match(text)
        if rule is None:
            return Understanding(None, 0.0, True)
        return Understanding(rule.name, 1.0, False)

    async def prepare(self, call: CallInfo, text: str) -> None:
        """Nothing to prepare: matching the rules is instant."""

    async def respond(
        self, call: CallInfo, text: str, alternatives: Sequence[str] = ()
    ) -> DialogueTurn:
        """The matched rule's reply (no records to check ``alternatives`` against)."""
        rule = self.match(text)
        if rule is None:
            return DialogueTurn(
                replies=(BotReply(text=self.reprompt),),
                intent=None,
                confidence=0.0,
                source=self.name,
                needs_fallback=True,
            )
        return self._turn(rule)

    async def dtmf(self, call: CallInfo, digits: str) -> DialogueTurn:
        if digits.startswith("0"):
            for rule in self.rules:
                if rule.then == "transfer":
                    return self._turn(rule)
        return DialogueTurn(replies=(BotReply(text=self.reprompt),), source=self.name)

    async def retract(self, call: CallInfo, text: str) -> None:
        """Nothing to forget: the rules keep no state between turns."""

    async def end(self, call: CallInfo) -> None:
        return None
