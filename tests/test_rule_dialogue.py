"""The rule dialogue's matching (answers/dialogue.py): a hang-up phrase must close what the
caller said; other rules match anywhere."""

from __future__ import annotations

import pytest

from voicebot_pbx.answers.dialogue import RuleDialogue
from voicebot_pbx.config import DialogueConfig


@pytest.fixture(scope="module")
def rules() -> RuleDialogue:
    return RuleDialogue.from_config(DialogueConfig(engine="rules"))


@pytest.mark.parametrize(
    "text",
    [
        "goodbye",
        "That is all, goodbye.",
        "no that's all thanks",
        "ok that is all for now",  # short: a couple of words more
        "Thanks for the help, that is all, thank you very much.",
    ],
)
def test_a_closing_phrase_hangs_up(rules: RuleDialogue, text: str) -> None:
    rule = rules.match(text)
    assert rule is not None and rule.then == "hangup", text


@pytest.mark.parametrize(
    ("text", "then"),
    [
        # A mishearing of "what payment methods do you take" (bench_pbx, seed 11).
        ("What payments made that is all you take.", None),
        ("I said that is all I wanted to know about your opening hours", None),
        ("can I talk to a human please", "transfer"),  # other rules match anywhere
    ],
)
def test_a_closing_phrase_inside_a_longer_sentence_does_not(
    rules: RuleDialogue, text: str, then: str | None
) -> None:
    rule = rules.match(text)
    assert (rule.then if rule is not None else None) == then, text
