"""What the LLM is asked and how its stream becomes speech (pure): the fixed prompt prefix
with worked examples, the user turn with passages, the refusal sentence, and the sentence
splitter that cleans markdown and citations for the voice."""

from __future__ import annotations

import re
from collections.abc import Sequence

import structlog

from voicebot_pbx.answers.knowledge import Passage
from voicebot_pbx.config import (
    DEFAULT_FALLBACK_REPLY as DEFAULT_FALLBACK_REPLY,
)
from voicebot_pbx.config import (
    DEFAULT_REFUSAL_REPLY as DEFAULT_REFUSAL_REPLY,
)
from voicebot_pbx.config import LlmConfig as LlmConfig
from voicebot_pbx.config import LlmEndpointConfig as LlmEndpointConfig
from voicebot_pbx.speech.tts import pop_complete_sentences

log = structlog.get_logger(__name__)


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
