"""What a greeting's words say about who answered (pure): the second opinion on a greeting the
length rules of ``call/amd`` took for a machine's.

A person who answers with a whole sentence ("Hello, Mark speaking, who is this please?")
talks as long as a short voicemail greeting, so length and word counts cannot tell them
apart; the words can. Voicemail greetings say what a machine says (leave a message, after the
tone, not available, you've reached ...); a person answering asks the caller something or
names themselves as taking the call (how can I help, who is this, ... speaking, hold on).

:func:`greeting_words` gives "machine" when any voicemail phrase is heard (those win: "thanks
for calling, please leave a message" is a machine), "human" when a person's phrase is heard or
the greeting ends as a question, and None when the words say neither (the length rule's
verdict stands). The phrase lists are written from what voicemail greetings and people
answering the phone commonly say, in lower case without apostrophes.
"""

from __future__ import annotations

import re
from typing import Literal

WordsVerdict = Literal["human", "machine"]

MACHINE_PHRASES: tuple[str, ...] = (
    "leave a message",
    "leave me a message",
    "leave your message",
    "leave your name",
    "leave a voicemail",
    "after the beep",
    "after the tone",
    "at the tone",
    "voicemail",
    "voice mail",
    "mailbox",
    "not available",
    "unavailable",
    "cant take your call",
    "cannot take your call",
    "unable to take your call",
    "cant get to the phone",
    "cant come to the phone",
    "cannot come to the phone",
    "missed your call",
    "call you back",
    "get back to you",
    "youve reached",
    "you have reached",
    "out of the office",
    "office is closed",
    "office is now closed",
    "record your message",
    "press one",
    "press 1",
)
HUMAN_PHRASES: tuple[str, ...] = (
    "how can i help",
    "how may i help",
    "can i help",
    "what can i do for you",
    "who is this",
    "whos this",
    "who is it",
    "whos it",
    "who is calling",
    "whos calling",
    "speaking",
    "hold on",
    "can you hear me",
    "hang on",
)

_NOT_WORD = re.compile(r"[^a-z0-9?]+")


def _plain(text: str) -> str:
    """Lower case, apostrophes dropped, other punctuation (but "?") as spaces."""
    lowered = text.lower().replace("'", "").replace("’", "")
    return " " + _NOT_WORD.sub(" ", lowered).strip() + " "


def _has(plain: str, phrase: str) -> bool:
    return f" {phrase} " in plain.replace("?", " ")


def greeting_words(text: str) -> WordsVerdict | None:
    """Who the greeting's words say answered (see the module docstring); None: they do not
    say."""
    plain = _plain(text)
    if not plain.strip():
        return None
    if any(_has(plain, phrase) for phrase in MACHINE_PHRASES):
        return "machine"
    if any(_has(plain, phrase) for phrase in HUMAN_PHRASES):
        return "human"
    if plain.rstrip().endswith("?"):
        return "human"
    return None
