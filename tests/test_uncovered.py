"""A question about something beside a passage (answers/knowledge.py ``uncovered_words``,
answers/routing.py ``route``): "could you send my bills in welsh" is close to the passage about
bills in large print and braille, and no answer to it. The hit is asked back instead of read
out, and a yes reads the passage without a "Yes." that would answer the caller's own words."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.routes import routed
from tests.test_asking_back import CUTS, PRINT, WordsEmbedder, YesNoNlu
from voicebot_pbx.answers.dialogue import CallInfo, DialogueTurn
from voicebot_pbx.answers.embedder import SentenceEmbedder, load_embedder
from voicebot_pbx.answers.fallbacks import ComposingDialogue
from voicebot_pbx.answers.knowledge import KnowledgeBase, Passage
from voicebot_pbx.answers.routing import (
    KnowledgeHit,
    confirm_question,
    is_strong,
    is_tied,
    knowledge_hit,
)
from voicebot_pbx.config import KnowledgeConfig
from voicebot_pbx.testing import ScriptedLlm, run_virtual

KNOWLEDGE = Path(__file__).resolve().parents[1] / "knowledge"
CONFIG = KnowledgeConfig()


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    embedder = load_embedder(CONFIG)
    assert isinstance(embedder, SentenceEmbedder)
    return KnowledgeBase.load(KNOWLEDGE, embedder=embedder, bm25_weight=CONFIG.bm25_weight)


def _uncovered(kb: KnowledgeBase, passage_id: str, question: str) -> tuple[str, ...]:
    passage = next(p for p in kb.passages if p.id == passage_id)
    return kb.uncovered_words(
        passage, question, CONFIG.uncovered_min_weight, CONFIG.uncovered_max_gain
    )


def test_the_packaged_embedder_finds_what_the_passage_does_not_say(kb: KnowledgeBase) -> None:
    # The large-print passage: not Welsh, not a son.
    assert _uncovered(kb, "accessibility#2", "could you send my bills in welsh") == ("welsh",)
    assert _uncovered(kb, "accessibility#2", "can you send the bills to my son") == ("son",)
    # The visiting passage: not parking.
    assert _uncovered(kb, "address#2", "can I park at your customer centre") == ("park",)
    # Paraphrases the passage answers: every word either in it or bringing the question
    # closer to it.
    assert _uncovered(kb, "billing#1", "how often do bills get sent") == ()
    assert _uncovered(kb, "refunds#1", "when is a refund of credit paid into my bank") == ()
    assert _uncovered(kb, "tariffs#1", "will the standard variable price change") == ()


def test_a_word_of_the_passage_is_never_uncovered(kb: KnowledgeBase) -> None:
    # Thresholds that would take any word: only the words the passage lacks are left.
    passage = next(p for p in kb.passages if p.id == "accessibility#2")
    found = kb.uncovered_words(passage, "large print bills in welsh please", 0.0, 1.0)
    assert found == ("welsh",)  # "large", "print", "bills" are the passage's; "in" a stop word


def test_the_hit_carries_its_uncovered_words_only_when_asked(kb: KnowledgeBase) -> None:
    question = "could you send my bills in welsh"
    with_config = knowledge_hit(kb, question, CONFIG)
    assert with_config is not None and with_config.passage.id == "accessibility#2"
    assert with_config.uncovered == ("welsh",)
    assert not is_strong(with_config, CONFIG)
    assert is_strong(dataclasses.replace(with_config, uncovered=(), unknown=()), CONFIG)
    unchecked = knowledge_hit(kb, question, dataclasses.replace(CONFIG, check_uncovered=False))
    assert unchecked is not None and unchecked.uncovered == ()
    assert knowledge_hit(kb, question) == unchecked  # no config: not looked for


def _strong_hit(uncovered: tuple[str, ...]) -> KnowledgeHit:
    cuts = Passage("power-cuts#1", "Power cuts", "How do I report a power cut?", "Call 105.")
    return KnowledgeHit(cuts, 0.8, 1.0, 0.5, hybrid=True, similarity=0.7, uncovered=uncovered)


def test_a_hit_that_would_be_read_is_asked_back_when_the_question_is_beside_it() -> None:
    covered, beside = _strong_hit(()), _strong_hit(("compensation",))
    # Not understood by the dialogue: the passage, or the question back.
    assert routed(None, None, covered, CONFIG, fallback=True) == "passage"
    assert routed(None, None, beside, CONFIG, fallback=True) == "confirm"
    # An unsure intent of another topic yields to a strong hit; beside it, asked back.
    assert routed("billing_question", 0.7, covered, CONFIG) == "passage"
    assert routed("billing_question", 0.7, beside, CONFIG) == "confirm"
    # Without asking back, the LLM (or its honest offer) instead of the passage.
    no_asking = dataclasses.replace(CONFIG, confirm=False)
    assert routed(None, None, beside, no_asking, fallback=True) == "compose"
    # Conversation intents keep the turn whatever the hit.
    assert routed("speak_to_agent", 0.9, beside, CONFIG) == "intent"
    # A strong hit is not a tie either.
    assert not is_tied(beside, CONFIG)


def test_a_question_for_information_beside_the_intents_own_topic_is_asked_back() -> None:
    beside = _strong_hit(("compensation",))
    # "is there compensation for a long power cut": report_outage's topic
    # is the power cuts file, and its own reply covers compensation no better than the
    # passage.
    assert routed("report_outage", 0.99, beside, CONFIG, None, "information") == "confirm"
    # A request keeps the intent; so does a covered question on the intent's topic.
    assert routed("report_outage", 0.99, beside, CONFIG, None, "request") == "intent"
    assert routed("report_outage", 0.99, _strong_hit(()), CONFIG, None, "request") == "intent"


def _brain() -> ComposingDialogue:
    llm = ScriptedLlm([(0.0, ("reject", "no_answer"))])
    llm.kb = KnowledgeBase([PRINT], embedder=WordsEmbedder(), bm25_weight=0.0)
    return ComposingDialogue(YesNoNlu(), llm, CONFIG)


def test_a_yes_reads_the_passage_without_a_yes_to_words_it_never_mentions() -> None:
    # Bag-of-words embeddings: "braille" is beside the large-print passage ("Yes. We send
    # bills in large print."). Read out, its "Yes." would answer "braille".
    brain = _brain()
    call = CallInfo(call_id="c")
    question = "can I get my bill in large print or braille"
    assert brain.composer.kb is not None
    hit = knowledge_hit(brain.composer.kb, question, CONFIG)
    assert hit is not None and "braille" in hit.uncovered

    async def talk() -> tuple[DialogueTurn, DialogueTurn]:
        return await brain.respond(call, question), await brain.respond(call, "yes")

    asked, answered = run_virtual(talk())
    assert [r.text for r in asked.replies] == [confirm_question(PRINT, CONFIG)]
    assert [r.text for r in answered.replies] == ["We send bills in large print."]

    # A caller whose words the passage covers hears its "Yes." after a yes.
    covered = _brain()

    async def plain() -> DialogueTurn:
        await covered.respond(call, "bill print")  # likely, not strong: asked back
        return await covered.respond(call, "yes")

    assert [r.text for r in run_virtual(plain()).replies] == [
        "Yes.",
        "We send bills in large print.",
    ]


def test_a_word_no_passage_or_intent_example_has_is_unknown() -> None:
    """Words of the question that neither the passage nor any of the deployment's words
    has (another passage, the dialogue's examples) are unknown; a word sharing its first
    letters with one of them is known (the crude stemmer keeps "writing" and "written"
    apart); stop words and vague words never count."""
    kb = KnowledgeBase([PRINT, CUTS], embedder=WordsEmbedder(), bm25_weight=0.0)
    question = "can something in writing about my bill come in quibbance print"
    assert kb.unknown_words(PRINT, question) == ("writing", "quibbance")
    assert kb.unknown_words(PRINT, "can my bill come by phone") == ()  # the other passage's
    kb.add_known_words(["I would like it written down"])
    assert kb.unknown_words(PRINT, question) == ("quibbance",)
    kb.add_known_words(["what is the quibbance on my bill"])
    assert kb.unknown_words(PRINT, question) == ()


def test_the_hit_carries_its_unknown_words_when_asked(kb: KnowledgeBase) -> None:
    question = "i want to know the quibbance of my online account"
    hit = knowledge_hit(kb, question, CONFIG)
    assert hit is not None and hit.passage.id == "online-account#2"
    assert hit.unknown == ("quibbance",) and not is_strong(hit, CONFIG)
    assert is_strong(dataclasses.replace(hit, unknown=()), CONFIG)  # the premise
    off = knowledge_hit(kb, question, dataclasses.replace(CONFIG, uncovered_unknown_words=False))
    assert off is not None and off.unknown == () and is_strong(off, CONFIG)


def test_a_passage_with_unknown_words_is_asked_back_but_its_topics_intent_answers() -> None:
    known, unknown = _strong_hit(()), dataclasses.replace(_strong_hit(()), unknown=("quib",))
    assert routed(None, None, known, CONFIG, fallback=True) == "passage"
    assert routed(None, None, unknown, CONFIG, fallback=True) == "confirm"
    assert routed("billing_question", 0.7, unknown, CONFIG) == "confirm"
    assert not is_tied(unknown, CONFIG)
    # Unlike a word the passage does not cover, an unknown word leaves the intent of the
    # passage's own topic to answer a question for information ("what hours are your
    # phones staffed": the opening hours).
    hours = Passage("opening-hours#1", "Hours", "When are your lines open?", "8 to 6.")
    known_hours = KnowledgeHit(hours, 0.8, 1.0, 0.5, hybrid=True, similarity=0.7)
    unknown_hours = dataclasses.replace(known_hours, unknown=("quib",))
    beside_hours = dataclasses.replace(known_hours, uncovered=("quib",))
    assert routed("opening_hours", 0.99, known_hours, CONFIG, None, "information") == "intent"
    assert routed("opening_hours", 0.99, unknown_hours, CONFIG, None, "information") == "intent"
    assert routed("opening_hours", 0.99, beside_hours, CONFIG, None, "information") == "confirm"
