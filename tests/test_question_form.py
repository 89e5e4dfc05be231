"""What a caller's words ask for, by their form (voicebot_pbx.answers.question_form), and how
the router uses it (voicebot_pbx.answers.routing). The evaluation set's own questions are
never used here (bench/answers_dataset.py checks)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.routes import routed
from voicebot_pbx.answers.dialogue import Understanding
from voicebot_pbx.answers.knowledge import KnowledgeBase
from voicebot_pbx.answers.question_form import asks_for, question_form, states
from voicebot_pbx.answers.routing import KnowledgeHit, is_likely, is_strong, knowledge_hit, route
from voicebot_pbx.config import KnowledgeConfig

KNOWLEDGE = Path(__file__).resolve().parents[1] / "knowledge"
CONFIG = KnowledgeConfig()


@pytest.mark.parametrize(
    "text",
    [
        "how long does a meter exchange usually take",
        "what day will the engineer turn up",
        "Is there a number I can text instead?",
        "we've lost power, what do I do with the freezer",
        "if the fuse has tripped should I reset it myself",
        "whereabouts is the meter cupboard usually",
        "if I pay late do I get charged extra",
        "I moved in yesterday and how much will the first bill be",
        "does the visit cost anything",
    ],
)
def test_questions_for_a_fact(text: str) -> None:
    assert question_form(text) == "information"


@pytest.mark.parametrize(
    "text",
    [
        "I'd like to know how long the visit takes",  # a want wins over the question in it
        "I need someone to come out tomorrow",
        "I want to report that my lights are off",
        "can you send an engineer",
        "could you check my balance",
        "will you book me in for Friday",
        "hi, I'd like a new meter",  # after a filler
        "the meter is broken, I need someone to look at it",  # a later clause
    ],
)
def test_requests(text: str) -> None:
    assert question_form(text) == "request"


def test_a_want_inside_a_question_is_part_of_the_question() -> None:
    assert question_form("is there anything I need to bring to the appointment") == "information"
    assert question_form("what do I need to read my meter") == "information"


@pytest.mark.parametrize(
    "text",
    [
        "can I get an engineer out on Monday",  # a task as often as a fact
        "could someone look at my meter",
        "how do I book a visit",  # the procedure is the task
        "my power has gone off",
        "the meter is making a noise",
        "",
        "I do think so",  # a subject before the auxiliary: no inversion
    ],
)
def test_unclear(text: str) -> None:
    assert question_form(text) == "unclear"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("how much is the standing charge", "amount"),
        ("how much would a new meter cost", "amount"),
        ("what's the price of a meter", "amount"),
        ("what is your night rate", "amount"),  # a rate or a fee, one word before it
        ("what's the exit fee", "amount"),
        ("how long will it take", "duration"),
        ("how many plans can I choose from", "number"),
        ("how many working days will it take", "duration"),  # a count of time is a duration
        ("what time do you shut", "clock_time"),
        ("how early can the engineer arrive", "clock_time"),
        ("how often should I read my meter", "frequency"),
        ("what percentage is wind power", "percentage"),
        ("how much warning do you need", None),  # a noun after "how much": not a price
        ("where is your office", None),
        ("can I pay by card", None),
    ],
)
def test_the_kind_of_answer_a_question_names(text: str, kind: str | None) -> None:
    assert asks_for(text) == kind


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        ("amount", "There is a fee of £30 per fuel.", True),
        ("amount", "Installation is free.", True),
        ("amount", "There is no exit fee on Standard Variable.", False),  # not a price
        ("amount", "Prices can change at any time.", False),
        ("duration", "We reply within 5 working days.", True),
        ("duration", "The fitting takes about two hours.", True),
        ("duration", "We reply by letter.", False),
        ("number", "We have 3 plans.", True),
        ("number", "We have plans for everyone.", False),
        ("number", "We have three plans and a tariff for businesses.", True),
        ("number", "An account number has 8 digits.", True),
        ("number", "We reply within 5 working days, or 8 weeks at most.", False),  # durations
        ("number", "The fee is £30 for each fuel, 2.5 percent of a bill.", False),  # amounts
        ("number", "Call 0800 555 0199 from 8 am.", False),  # a phone number, a time
        ("number", "A meter reading counts.", False),  # "a" counts nothing
        ("clock_time", "Open from 8 am to 6 pm.", True),
        ("clock_time", "The line is open 24 hours a day.", True),
        ("clock_time", "Open on weekdays.", False),
        ("frequency", "Bills are sent every month.", True),
        ("frequency", "Bills are sent by post.", False),
        ("percentage", "It is 100 percent renewable.", True),
        ("percentage", "It is renewable.", False),
    ],
)
def test_whether_a_passage_states_that_kind(kind: str, text: str, expected: bool) -> None:
    assert states(kind, text) is expected  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase.load(KNOWLEDGE)


def test_a_passage_that_cannot_answer_the_kind_asked_is_never_read_or_asked_back(
    kb: KnowledgeBase,
) -> None:
    # The tariffs overview names the plans but no price: "how much" cannot be answered.
    asked = knowledge_hit(kb, "how much do you charge per unit on the tariffs you offer")
    assert asked is not None and asked.passage.id == "tariffs#1" and not asked.fits
    answerable = knowledge_hit(kb, "which tariffs do you offer")
    assert answerable is not None and answerable.passage.id == "tariffs#1" and answerable.fits
    hybrid = dataclasses.replace(asked, hybrid=True, score=0.9, runner_up=0.1)
    assert not is_strong(hybrid, CONFIG) and not is_likely(hybrid, CONFIG)
    fitting = dataclasses.replace(hybrid, fits=True)
    assert is_strong(fitting, CONFIG) and is_likely(fitting, CONFIG)
    assert routed(None, None, hybrid, CONFIG, fallback=True) == "compose"
    assert routed(None, None, fitting, CONFIG, fallback=True) == "passage"


def test_a_question_about_a_task_reads_the_passage_on_the_tasks_topic(
    kb: KnowledgeBase,
) -> None:
    passage = next(p for p in kb.passages if p.id == "appointments#2")
    strong = KnowledgeHit(passage, 0.9, 1.0, runner_up=0.5, hybrid=True, similarity=0.5)
    # The question is closer to the booking examples (0.7) than to the passage (0.5): the
    # topic rule alone keeps the booking flow, whatever the words ask.
    assert routed("book_appointment", 0.9, strong, CONFIG, 0.7) == "intent"
    assert routed("book_appointment", 0.9, strong, CONFIG, 0.7, "request") == "intent"
    assert routed("book_appointment", 0.9, strong, CONFIG, 0.7, "unclear") == "intent"
    assert routed("book_appointment", 0.9, strong, CONFIG, 0.7, "information") == "passage"
    # A request for the task keeps the task's flow even when the passage is the closer ...
    closer = dataclasses.replace(strong, similarity=0.8)
    booking = Understanding("book_appointment", 0.9, False)
    assert route(booking, closer, CONFIG, intent_similarity=0.6, form="unclear") == "passage"
    assert route(booking, closer, CONFIG, intent_similarity=0.6, form="request") == "intent"
    # ... but not one far from every booking example: the intent is not understood.
    assert route(booking, closer, CONFIG, intent_similarity=0.3, form="request") == "passage"
    # Only the task intents named: an information intent on its topic keeps its closeness rule.
    hours = next(p for p in kb.passages if p.id == "opening-hours#1")
    on_hours = dataclasses.replace(strong, passage=hours)
    assert routed("opening_hours", 0.9, on_hours, CONFIG, 0.7, "information") == "intent"
    off = dataclasses.replace(CONFIG, question_form_intents=())
    assert routed("book_appointment", 0.9, strong, off, 0.7, "information") == "intent"


def test_a_sure_intent_on_another_topic_yields_only_to_a_question_for_a_fact(
    kb: KnowledgeBase,
) -> None:
    passage = next(p for p in kb.passages if p.id == "tariffs#2")
    strong = KnowledgeHit(passage, 0.9, 1.0, runner_up=0.5, hybrid=True, similarity=0.6)
    assert routed("billing_question", 1.0, strong, CONFIG) == "intent"
    assert routed("billing_question", 1.0, strong, CONFIG, None, "request") == "intent"
    assert routed("billing_question", 1.0, strong, CONFIG, None, "information") == "passage"
    # Unsure: the strong hit wins whatever the form, as before.
    assert routed("billing_question", 0.9, strong, CONFIG, None, "request") == "passage"
    # An intent with no topic (the rule dialogue's matched rule) keeps its own answer.
    assert routed("rule0", 1.0, strong, CONFIG, None, "information") == "intent"


def test_the_rule_dialogues_own_answer_to_a_question_is_kept(kb: KnowledgeBase) -> None:
    """An admin's rule matched a question for a fact: its reply is said, not a passage
    (the real-PBX tests' "what are your opening hours" against the rule for hours)."""
    from voicebot_pbx.answers.dialogue import CallInfo, RuleDialogue
    from voicebot_pbx.answers.fallbacks import ComposingDialogue
    from voicebot_pbx.config import DialogueConfig, RuleConfig
    from voicebot_pbx.testing import ScriptedLlm, run_virtual

    rules = RuleDialogue.from_config(
        DialogueConfig(rules=(RuleConfig(keywords=("date",), reply="Dates are on your bill."),))
    )
    question = "what date will my direct debit payment come out of my bank"
    assert question_form(question) == "information"
    found = knowledge_hit(kb, question)
    assert found is not None and is_strong(found, CONFIG)
    brain = ComposingDialogue(rules, ScriptedLlm([], kb=kb), CONFIG)
    turn = run_virtual(brain.respond(CallInfo(call_id="c"), question))
    assert turn.replies[0].text == "Dates are on your bill." and turn.source == "rules"
