"""Knowledge-base questions routed to the knowledge base (voicebot_pbx.answers.routing), on
the project's real knowledge files."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.routes import routed
from voicebot_pbx.answers.dialogue import (
    BotReply,
    CallInfo,
    DialogueTurn,
    RuleDialogue,
    Understanding,
)
from voicebot_pbx.answers.fallbacks import ComposingDialogue
from voicebot_pbx.answers.knowledge import KnowledgeBase, Passage
from voicebot_pbx.answers.routing import (
    KnowledgeHit,
    answering,
    knowledge_hit,
    spoken_answer,
    spoken_sentences,
)
from voicebot_pbx.config import DialogueConfig, KnowledgeConfig, RuleConfig
from voicebot_pbx.speech.tts import split_sentences
from voicebot_pbx.testing import ScriptedLlm, run_virtual

KNOWLEDGE = Path(__file__).resolve().parents[1] / "knowledge"
CONFIG = KnowledgeConfig()


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase.load(KNOWLEDGE)


def hit(kb: KnowledgeBase, passage_id: str, *, score: float, coverage: float = 1.0) -> KnowledgeHit:
    passage = next(p for p in kb.passages if p.id == passage_id)
    return KnowledgeHit(passage, score, coverage, runner_up=score / 2, hybrid=False)


def test_a_question_in_callers_words_finds_its_passage_with_strong_evidence(
    kb: KnowledgeBase,
) -> None:
    found = knowledge_hit(kb, "can I change the date my direct debit comes out")
    assert found is not None and found.passage.id == "direct-debit#2"
    assert found.score >= CONFIG.direct_min_score and found.coverage >= 0.5
    assert found.margin >= CONFIG.direct_min_margin
    assert knowledge_hit(kb, "what is the weather tomorrow") is None


def test_conversation_intents_are_never_taken_over(kb: KnowledgeBase) -> None:
    strong = hit(kb, "direct-debit#2", score=15.0)
    for intent in ("speak_to_agent", "affirm", "deny", "goodbye"):
        assert routed(intent, 0.3, strong, CONFIG) == "intent"


def test_a_strong_hit_on_another_topic_wins_over_the_nearest_intent(kb: KnowledgeBase) -> None:
    # Rasa put a smart-meter question on book_appointment with 0.90 (measured on the dev set).
    meters = hit(kb, "meter-readings#2", score=10.9)
    assert routed("book_appointment", 0.90, meters, CONFIG) == "passage"
    assert routed("opening_hours", 0.95, meters, CONFIG) == "passage"
    # ... unless the hit is the intent's own topic: a booking request keeps the booking flow.
    own = hit(kb, "appointments#1", score=15.0)
    assert routed("book_appointment", 0.6, own, CONFIG) == "intent"
    assert routed("opening_hours", 0.55, hit(kb, "opening-hours#1", score=15.0), CONFIG) == (
        "intent"
    )
    # A confident intent keeps the turn when so configured.
    sure = KnowledgeConfig(override_below_confidence=0.9)
    assert routed("opening_hours", 0.95, meters, sure) == "intent"
    # Weak evidence never takes a turn.
    assert routed("check_balance", 0.6, hit(kb, "refunds#1", score=3.0), CONFIG) == "intent"
    thin = hit(kb, "direct-debit#2", score=15.0, coverage=0.2)
    assert routed("check_balance", 0.6, thin, CONFIG) == "intent"


def test_an_unsure_information_intent_without_evidence_gets_the_honest_offer(
    kb: KnowledgeBase,
) -> None:
    """A weather question put on billing_question at 0.66: better "I'm not sure, shall
    I put you through" (the LLM path, which refuses without passages) than the billing reply."""
    weak = hit(kb, "billing#1", score=3.0)
    assert routed("billing_question", 0.66, weak, CONFIG) == "compose"
    assert routed("billing_question", 0.66, None, CONFIG) == "compose"
    assert routed("billing_question", 0.85, weak, CONFIG) == "intent"
    assert routed("check_balance", 0.66, weak, CONFIG) == "intent"  # an action


def test_an_intent_far_from_its_training_examples_counts_as_not_understood(
    kb: KnowledgeBase,
) -> None:
    """A classifier spreads its confidence over the intents it knows, so a question about
    none of them still lands on one, often confidently; its words far from every example of
    that intent (cosine below ``intent_min_similarity``) make it a turn not understood."""
    weak = hit(kb, "billing#1", score=3.0)
    strong = hit(kb, "refunds#1", score=9.0)
    far = CONFIG.intent_min_similarity - 0.1
    near = CONFIG.intent_min_similarity + 0.1
    # Sure of it all the same (words a phone line garbled): asked back, when it has a
    # wording; unsure, or without one, the LLM / the honest offer.
    assert routed("check_balance", 0.95, weak, CONFIG, far) == "confirm_intent"
    assert routed("check_balance", 0.95, None, CONFIG, far) == "confirm_intent"
    unsure = CONFIG.confirm_intent_min_confidence - 0.05
    assert routed("check_balance", unsure, weak, CONFIG, far) == "compose_alone"
    not_asked = dataclasses.replace(CONFIG, confirm_intents=())
    assert routed("check_balance", 0.95, weak, not_asked, far) == "compose_alone"
    assert routed("check_balance", 0.95, strong, CONFIG, far) == "passage"
    # A likely (hybrid) hit behind the far intent is asked back, as for any turn not
    # understood; the same hit behind an understood intent leaves the turn to it.
    likely = dataclasses.replace(
        hit(kb, "refunds#1", score=CONFIG.confirm_min_score + 0.05),
        runner_up=CONFIG.confirm_min_score - 0.1,
        hybrid=True,
    )
    assert routed("check_balance", 0.95, likely, CONFIG, far) == "confirm"
    assert routed("check_balance", 0.95, likely, CONFIG, near) == "intent"
    assert routed("check_balance", 0.95, weak, CONFIG, near) == "intent"
    assert routed("check_balance", 0.95, weak, CONFIG) == "intent"  # no examples
    # Conversation intents and an intent of no known topic (an admin's rule) are not doubted.
    assert routed("affirm", 0.95, weak, CONFIG, 0.0) == "intent"
    assert routed("rule0", 1.0, weak, CONFIG, 0.0) == "intent"
    off = dataclasses.replace(CONFIG, intent_min_similarity=0.0)
    assert routed("check_balance", 0.95, weak, off, far) == "intent"


def test_what_the_dialogue_did_not_understand_goes_to_the_passage_or_the_llm(
    kb: KnowledgeBase,
) -> None:
    assert routed(None, None, hit(kb, "refunds#1", score=9.0), CONFIG, fallback=True) == "passage"
    assert (
        routed("nlu_fallback", 0.4, hit(kb, "refunds#1", score=1.0), CONFIG, fallback=True)
        == "compose"
    )
    assert routed("out_of_scope", 0.9, None, CONFIG, fallback=True) == "compose"
    off = KnowledgeConfig(direct=False)
    assert routed(None, None, hit(kb, "refunds#1", score=9.0), off, fallback=True) == "compose"


def test_a_passage_is_read_as_written_up_to_the_word_budget() -> None:
    passage = Passage(
        "x#1", "X", "Q?", "Yes. You can do it online any time. " + "Word " * 50 + "end."
    )
    assert spoken_answer(passage, 45) == ["Yes.", "You can do it online any time."]
    assert spoken_answer(passage, 3) == ["Yes."]  # the first sentence always
    assert spoken_answer(Passage("y#1", "Y", "Q?", "One long first sentence here."), 2) == [
        "One long first sentence here."
    ]


FEES = Passage(
    "tariffs#2",
    "Tariffs",
    "Is there a fee to leave a fixed tariff?",
    "If you leave Fixed 12 early, there is an exit fee of £30. "
    "There is no exit fee on Green Saver.",
    "exit fee, leave",
)
DATES = Passage(
    "dd#2",
    "Direct debit",
    "Can I change my direct debit date?",
    "Yes. You can choose any date between the 1st and the 28th. It takes 10 days.",
    "payment date",
)


def test_a_bare_yes_is_dropped_when_the_question_names_what_the_passage_does_not() -> None:
    """The "Yes." answers the heading; "... on the thirtieth" is not the heading's question,
    and a "Yes." would say the opposite of "between the 1st and the 28th"."""
    assert answering(DATES, "can my direct debit date be the thirtieth", (), 0.15) == [
        "You can choose any date between the 1st and the 28th.",
        "It takes 10 days.",
    ]
    # Every term of the question is the passage's own: its answer as written.
    assert answering(DATES, "can I change my direct debit date", (), 0.15)[0] == "Yes."
    assert spoken_answer(DATES, 45, "can my direct debit date be the thirtieth")[0] != "Yes."
    assert spoken_answer(DATES, 45)[0] == "Yes."  # after a yes to the heading itself


def test_a_later_sentence_clearly_closer_to_the_question_is_the_answer_alone() -> None:
    question = "will I be charged for leaving green saver"
    assert answering(FEES, question, (0.29, 0.65), 0.15) == ["There is no exit fee on Green Saver."]
    assert spoken_answer(FEES, 45, question, (0.29, 0.65), 0.15) == [
        "There is no exit fee on Green Saver."
    ]
    # Not clearly closer, or no similarities (BM25 retrieval): the passage as written.
    whole = answering(FEES, question, (), 0.15)
    assert (
        whole
        == answering(FEES, question, (0.50, 0.60), 0.15)
        == [
            "If you leave Fixed 12 early, there is an exit fee of £30.",
            "There is no exit fee on Green Saver.",
        ]
    )
    # Similarities that do not match the sentences (a changed passage) are not used.
    assert answering(FEES, question, (0.1, 0.2, 0.9), 0.15) == whole
    # A sentence that refers back comes with the one before it; the bare "Yes." (dropped
    # here) is not counted.
    assert answering(DATES, "how long does it take", (0.0, 0.1, 0.7), 0.15) == [
        "You can choose any date between the 1st and the 28th.",
        "It takes 10 days.",
    ]


def test_every_spoken_sentence_of_the_knowledge_base_is_listed_for_the_cache(
    kb: KnowledgeBase,
) -> None:
    sentences = spoken_sentences(kb, CONFIG.max_words)
    for passage in kb.passages:
        assert spoken_answer(passage, CONFIG.max_words)[0] in sentences
        # Trimmed to one sentence (or without its "Yes."), it is still cached.
        assert set(split_sentences(passage.text)) <= set(sentences)
    assert len(sentences) >= len(kb.passages)


class UnsureNlu:
    """A dialogue like Rasa: every question lands on the nearest intent, unsure (0.55);
    "agent" transfers; nonsense is nlu_fallback."""

    name = "rasa"

    def __init__(self) -> None:
        self.acted: list[str] = []

    async def start(self, call: CallInfo) -> DialogueTurn:
        return DialogueTurn(replies=(BotReply(text="Hello."),), intent="greet")

    async def understand(self, call: CallInfo, text: str) -> Understanding:
        turn = self._turn(text)
        return Understanding(turn.intent, turn.confidence, turn.needs_fallback)

    async def prepare(self, call: CallInfo, text: str) -> None:
        pass

    async def respond(
        self, call: CallInfo, text: str, alternatives: Sequence[str] = ()
    ) -> DialogueTurn:
        self.acted.append(text)  # a real Rasa would now be in this intent's form
        return self._turn(text)

    def _turn(self, text: str) -> DialogueTurn:
        if "agent" in text:
            return DialogueTurn(
                replies=(BotReply(text="Putting you through."),),
                end="transfer",
                intent="speak_to_agent",
                confidence=0.55,
            )
        if "joke" in text:
            return DialogueTurn(
                replies=(BotReply(text="Sorry?"),), intent="nlu_fallback", needs_fallback=True
            )
        return DialogueTurn(
            replies=(BotReply(text="We open at eight."),), intent="opening_hours", confidence=0.55
        )

    async def dtmf(self, call: CallInfo, digits: str) -> DialogueTurn:
        return DialogueTurn()

    async def end(self, call: CallInfo) -> None:
        return None


def test_the_dialogue_reads_the_passage_instead_of_the_nearest_intent(kb: KnowledgeBase) -> None:
    llm = ScriptedLlm([(0.0, "Composed.")], kb=kb)
    nlu = UnsureNlu()
    brain = ComposingDialogue(nlu, llm, CONFIG)
    call = CallInfo(call_id="c")

    async def turns() -> tuple[DialogueTurn, ...]:
        return (
            await brain.respond(call, "can I change the date my direct debit comes out"),
            await brain.respond(call, "what time do you open"),
            await brain.respond(call, "agent about my direct debit date please"),
            await brain.respond(call, "tell me a joke"),
        )

    faq, hours, transfer, unknown = run_virtual(turns())
    passage = next(p for p in kb.passages if p.id == "direct-debit#2")
    assert faq.source == "knowledge" and faq.sources == ("direct-debit#2",)
    # Read as written, without the heading's bare "Yes." ("comes" is not in the passage).
    assert [r.text for r in faq.replies] == spoken_answer(passage, CONFIG.max_words)[1:]
    assert faq.composed is None and not faq.needs_fallback
    assert hours.replies[0].text == "We open at eight."  # no strong hit elsewhere
    assert transfer.end == "transfer" and transfer.replies[0].text == "Putting you through."
    assert unknown.composed is not None and unknown.source != "knowledge"
    # The question answered from the knowledge base never reached the dialogue's state.
    assert "can I change the date my direct debit comes out" not in nlu.acted
    assert "agent about my direct debit date please" in nlu.acted


def test_admin_rules_keep_their_keyword_matches(kb: KnowledgeBase) -> None:
    """The rule dialogue's matches are the admin's own configuration (confidence 1.0)."""
    rules = RuleDialogue.from_config(
        DialogueConfig(rules=(RuleConfig(keywords=("date",), reply="Dates are on your bill."),))
    )
    brain = ComposingDialogue(rules, ScriptedLlm([], kb=kb), CONFIG)
    turn = run_virtual(
        brain.respond(CallInfo(call_id="c"), "can I change the date my direct debit comes out")
    )
    assert turn.replies[0].text == "Dates are on your bill." and turn.source == "rules"


def test_knowledge_answers_are_cached_after_start_up_and_a_direct_answer_plays_from_it(
    kb: KnowledgeBase,
) -> None:
    """``serve`` synthesizes every sentence a direct answer can say after start-up, so a
    knowledge answer starts as fast as an intent reply."""
    import asyncio

    from tests.test_turns import make_shared
    from voicebot_pbx.ops.service import warm_knowledge_answers

    shared = make_shared()
    shared.llm = ScriptedLlm([], kb=kb)  # type: ignore[assignment]
    sentences = spoken_sentences(kb, CONFIG.max_words)
    assert all(shared.tts_cache.get(s, 8000) is None for s in sentences)
    asyncio.run(warm_knowledge_answers(shared))
    for rate_hz in (8000, 16000):
        assert all(shared.tts_cache.get(s, rate_hz) is not None for s in sentences)

    off = make_shared()
    off.llm = ScriptedLlm([], kb=kb)  # type: ignore[assignment]
    off.config = dataclasses.replace(off.config, knowledge=KnowledgeConfig(direct=False))
    asyncio.run(warm_knowledge_answers(off))
    assert all(off.tts_cache.get(s, 8000) is None for s in sentences)
