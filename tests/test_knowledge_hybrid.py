"""Hybrid knowledge retrieval: the packaged all-MiniLM-L6-v2 embedder (answers/embedder.py),
hybrid scores in the knowledge base, the Rasa intent examples and the router's closeness
rule (answers/routing.py), on the project's real knowledge files and Rasa data."""

from __future__ import annotations

import asyncio
import dataclasses
import zipfile
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from tests.routes import routed
from voicebot_pbx.answers.dialogue import BotReply, CallInfo, DialogueTurn, Understanding
from voicebot_pbx.answers.embedder import EmbedderModelError, SentenceEmbedder, load_embedder
from voicebot_pbx.answers.fallbacks import ComposingDialogue
from voicebot_pbx.answers.knowledge import KnowledgeBase, question_words
from voicebot_pbx.answers.llm import load_llm
from voicebot_pbx.answers.rasa_examples import RasaExamplesError, load_intent_examples
from voicebot_pbx.answers.routing import KnowledgeHit, is_strong, knowledge_hit
from voicebot_pbx.config import KnowledgeConfig, LlmConfig, LlmEndpointConfig
from voicebot_pbx.models import MINILM_L6_V2, model_path
from voicebot_pbx.testing import ScriptedLlm

ROOT = Path(__file__).resolve().parents[1]
KNOWLEDGE = ROOT / "knowledge"
CONFIG = KnowledgeConfig()


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    loaded = load_embedder(CONFIG)
    assert loaded is not None
    return loaded


@pytest.fixture(scope="module")
def kb(embedder: SentenceEmbedder) -> KnowledgeBase:
    """The packaged knowledge base with the dialogue's words beside its own, as serve has
    it (``ops.service.add_intent_examples``): a word no passage or example has is unknown."""
    loaded = KnowledgeBase.load(KNOWLEDGE, embedder=embedder, bm25_weight=CONFIG.bm25_weight)
    examples = load_intent_examples(ROOT / "rasa_project")
    loaded.add_known_words(text for texts in examples.values() for text in texts)
    return loaded


def test_the_embedder_reproduces_sentence_similarity(embedder: SentenceEmbedder) -> None:
    vectors = [
        embedder.embed(t)
        for t in (
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The girl is carrying a baby.",
        )
    ]
    for v in vectors:
        assert v.shape == (384,) and v.dtype == np.float32
        assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-4
    # sentence-transformers' own all-MiniLM-L6-v2 gives ~0.76 for the first pair; a wrong
    # layer (gelu, attention scale, padding in the mean) moves it far off.
    assert 0.72 < float(vectors[0] @ vectors[1]) < 0.80
    assert float(vectors[0] @ vectors[2]) < 0.2
    # Deterministic, and the same text gives the same vector whatever came before.
    assert np.array_equal(embedder.embed("A man is eating food."), vectors[0])


def test_a_question_sharing_no_word_with_its_passage_finds_it(kb: KnowledgeBase) -> None:
    found = knowledge_hit(kb, "what kinds of plans do you sell")
    assert found is not None and found.hybrid
    assert found.passage.id.startswith("tariffs#")
    bm25_only = knowledge_hit(KnowledgeBase.load(KNOWLEDGE), "what kinds of plans do you sell")
    assert bm25_only is None or not bm25_only.passage.id.startswith("tariffs#")
    assert 0.0 < found.similarity <= 1.0 and found.lead > 0


def test_hybrid_scores_add_weighted_bm25_to_the_similarity(kb: KnowledgeBase) -> None:
    question = "can I change the date my direct debit comes out"
    scores = dict((p.id, s) for p, s in kb.scores(question))
    bm25 = dict((p.id, s) for p, s in KnowledgeBase.load(KNOWLEDGE).scores(question))
    passage = next(p for p in kb.passages if p.id == "direct-debit#2")
    expected = kb.similarity(passage, question) + CONFIG.bm25_weight * bm25["direct-debit#2"]
    assert scores["direct-debit#2"] == pytest.approx(expected, abs=1e-6)
    assert max(scores, key=lambda k: scores[k]) == "direct-debit#2"


def test_an_off_topic_question_is_not_a_strong_hit(kb: KnowledgeBase) -> None:
    for question in ("who won the football last night", "what is the capital of france"):
        found = knowledge_hit(kb, question)
        assert found is None or found.score < CONFIG.hybrid_direct_min_score


def test_the_rasa_examples_are_read_with_entity_markup_removed() -> None:
    examples = load_intent_examples(ROOT / "rasa_project")
    assert {"book_appointment", "report_outage", "greet"} <= examples.keys()
    assert "power cut at nw1 4en" in examples["report_outage"]
    assert not any("](" in text for texts in examples.values() for text in texts)


def test_a_missing_or_broken_rasa_project_is_named(tmp_path: Path) -> None:
    with pytest.raises(RasaExamplesError, match="does not exist"):
        load_intent_examples(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "nlu.yml").write_text("nlu:\n  - intent: x\n    examples: [\n")
    with pytest.raises(RasaExamplesError, match="nlu.yml"):
        load_intent_examples(tmp_path)


def test_a_question_about_a_topic_is_told_from_the_task_request(kb: KnowledgeBase) -> None:
    examples = load_intent_examples(ROOT / "rasa_project")
    probe = KnowledgeBase.load(KNOWLEDGE, embedder=kb.embedder, bm25_weight=kb.bm25_weight)
    assert probe.intent_similarity("book_appointment", "x") is None
    assert probe.add_intent_examples({"book_appointment": examples["book_appointment"]}) > 10
    config = dataclasses.replace(CONFIG, hybrid_direct_min_score=0.0, hybrid_direct_min_lead=0.0)

    def where(question: str) -> str:
        found = knowledge_hit(probe, question)
        assert found is not None and found.passage.id.startswith("appointments#"), found
        closeness = probe.intent_similarity("book_appointment", question)
        assert closeness is not None
        return routed("book_appointment", 0.95, found, config, closeness)

    # Without the examples the topic rule keeps the booking intent for both.
    # (The evaluation set's own questions are never used here: bench/answers_dataset.py.)
    assert where("does it cost me anything to have a smart meter fitted") == "passage"
    assert where("book me an engineer visit for next week") == "intent"


def test_the_topic_rule_applies_without_intent_examples(kb: KnowledgeBase) -> None:
    passage = next(p for p in kb.passages if p.id.startswith("appointments#"))
    strong = KnowledgeHit(passage, 0.9, 1.0, runner_up=0.5, hybrid=True, similarity=0.8)
    assert routed("book_appointment", 0.9, strong, CONFIG) == "intent"
    assert routed("book_appointment", 0.9, strong, CONFIG, 0.5) == "passage"
    assert routed("book_appointment", 0.9, strong, CONFIG, 0.85) == "intent"
    weak = dataclasses.replace(strong, score=CONFIG.hybrid_direct_min_score - 0.01)
    assert routed(None, None, weak, CONFIG, fallback=True) == "compose"
    close_call = dataclasses.replace(strong, runner_up=0.9 - CONFIG.hybrid_direct_min_lead / 2)
    assert routed(None, None, close_call, CONFIG, fallback=True) == "compose"


def test_a_broken_embedding_model_is_named_and_the_llm_falls_back_to_bm25(
    tmp_path: Path,
) -> None:
    with pytest.raises(EmbedderModelError, match="does not exist"):
        SentenceEmbedder(tmp_path / "nope.zip")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"not a zip")
    with pytest.raises(EmbedderModelError, match="not a readable zip"):
        SentenceEmbedder(broken)
    partial = tmp_path / "partial.zip"
    with zipfile.ZipFile(model_path(MINILM_L6_V2)) as source, zipfile.ZipFile(partial, "w") as out:
        for info in source.infolist():
            if not info.filename.endswith("tokenizer.json"):
                out.writestr(info, source.read(info))
    with pytest.raises(EmbedderModelError, match="no tokenizer.json"):
        SentenceEmbedder(partial)
    # The LLM's knowledge base falls back to BM25 with one error line naming the model.
    llm_config = LlmConfig(engine="openai", endpoints=(LlmEndpointConfig("http://127.0.0.1:9/v1"),))
    with capture_logs() as logs:
        llm = load_llm(
            llm_config, dataclasses.replace(CONFIG, embedding_model=str(broken)), base_dir=ROOT
        )
    assert not llm.kb.hybrid and llm.kb.passages
    errors = [e for e in logs if e["event"] == "knowledge_embedder"]
    assert len(errors) == 1 and "broken.zip" in errors[0]["error"]
    assert load_llm(llm_config, CONFIG, base_dir=ROOT).kb.hybrid
    assert load_embedder(dataclasses.replace(CONFIG, retrieval="bm25")) is None


def test_the_dialogue_reads_a_passage_found_only_by_meaning(kb: KnowledgeBase) -> None:
    """The router runs the embedding beside the dialogue's parse (a thread: real time)."""
    from tests.test_routing import UnsureNlu  # the unsure dialogue of the BM25 routing tests

    nlu = UnsureNlu()
    brain = ComposingDialogue(nlu, ScriptedLlm([(0.0, "Composed.")], kb=kb), CONFIG)
    call = CallInfo(call_id="c")
    question = "who do I talk to if I can't afford my bills"  # BM25 alone: not a strong hit
    bm25_hit = knowledge_hit(KnowledgeBase.load(KNOWLEDGE), question)
    assert not is_strong(bm25_hit, CONFIG)
    turn = asyncio.run(brain.respond(call, question))
    assert turn.source == "knowledge" and turn.sources == ("billing#3",)
    assert question not in nlu.acted


def test_an_intent_the_words_are_far_from_is_not_acted_on(kb: KnowledgeBase) -> None:
    """A question about none of Rasa's intents lands on one with confidence; measured
    against that intent's real training examples, words far from all of them do not start
    its form: the caller is asked whether they want it (the intent was sure) and a no gets
    the honest offer, or without that question the composer answers (the honest offer when
    nothing in the knowledge base does); the dialogue never sees the turn. A request in new
    words still starts it."""
    from tests.test_routing import UnsureNlu

    class SureBalance(UnsureNlu):
        def _turn(self, text: str) -> DialogueTurn:
            return DialogueTurn(
                replies=(BotReply(text="What's your account number?"),),
                collect_dtmf_digits=8,
                intent="check_balance",
                confidence=0.92,
            )

    probe = KnowledgeBase.load(KNOWLEDGE, embedder=kb.embedder, bm25_weight=kb.bm25_weight)
    examples = load_intent_examples(ROOT / "rasa_project")
    probe.add_intent_examples({"check_balance": examples["check_balance"]})
    nlu = SureBalance()
    brain = ComposingDialogue(nlu, ScriptedLlm([(0.0, "Composed.")], kb=probe), CONFIG)
    call = CallInfo(call_id="c")
    far = "can my son take over my account when I die"
    near = "what do I currently owe you"
    assert probe.intent_similarity("check_balance", far) < CONFIG.intent_min_similarity
    assert probe.intent_similarity("check_balance", near) >= CONFIG.intent_min_similarity
    with capture_logs() as logs:
        doubted = asyncio.run(brain.respond(call, far))
        declined = asyncio.run(brain.respond(call, "no"))
    assert doubted.source == "intent_confirm" and doubted.collect_dtmf_digits is None
    assert [r.text for r in doubted.replies] == [
        "Just to check, do you want to check your balance?"
    ]
    assert declined.replies[0].text == LlmConfig().fallback_reply
    assert far not in nlu.acted and "no" not in nlu.acted
    assert [e["intent"] for e in logs if e["event"] == "intent_confirm"] == ["check_balance"]
    asyncio.run(brain.end(call))
    unasked = ComposingDialogue(
        nlu,
        ScriptedLlm([(0.0, "Composed.")], kb=probe),
        dataclasses.replace(CONFIG, confirm_intents=()),
    )
    with capture_logs() as logs:
        doubted = asyncio.run(unasked.respond(call, far))
    assert doubted.composed is not None and doubted.needs_fallback
    assert doubted.collect_dtmf_digits is None and far not in nlu.acted
    assert [e["intent"] for e in logs if e["event"] == "intent_far_from_examples"] == [
        "check_balance"
    ]
    # Beside a passage, the caller is asked back as for a turn not understood.
    beside = "can my lodger have his own account with you"
    checked = asyncio.run(brain.respond(call, beside))
    assert checked.source == "knowledge_confirm" and beside not in nlu.acted
    asyncio.run(brain.end(call))
    asked = asyncio.run(brain.respond(call, near))
    assert asked.collect_dtmf_digits == 8 and asked.composed is None and near in nlu.acted
    off = ComposingDialogue(
        nlu,
        ScriptedLlm([], kb=probe),
        dataclasses.replace(CONFIG, intent_min_similarity=0.0),
    )
    assert asyncio.run(off.respond(call, far)).collect_dtmf_digits == 8


def test_a_decode_at_a_pause_prepares_the_routing_and_the_turn_takes_it(
    kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``prepare`` (the session calls it with the decode at a pause) looks the question up
    and asks the dialogue what it understands, both without side effects; ``respond`` with
    the same words takes that instead of working it out again, other words are worked out
    as before, and the call's end forgets what was prepared."""
    from tests.test_routing import UnsureNlu
    from voicebot_pbx.answers import fallbacks

    class Counting(UnsureNlu):
        def __init__(self) -> None:
            super().__init__()
            self.understood: list[str] = []

        async def understand(self, call: CallInfo, text: str) -> Understanding:
            self.understood.append(text)
            return await super().understand(call, text)

    looked_up: list[str] = []

    def counted(kb: KnowledgeBase, question: str, config: KnowledgeConfig | None = None) -> object:
        looked_up.append(question)
        return knowledge_hit(kb, question, config)

    monkeypatch.setattr(fallbacks, "knowledge_hit", counted)
    nlu = Counting()
    brain = ComposingDialogue(nlu, ScriptedLlm([(0.0, "Composed.")], kb=kb), CONFIG)
    call = CallInfo(call_id="c")
    question = "who do I talk to if I can't afford my bills"

    async def calls() -> tuple[object, object, int]:
        await brain.prepare(call, question)
        await brain.prepare(call, question)  # the same words again: nothing more
        assert nlu.acted == [], "nothing acted on before the turn ended"
        prepared = await brain.respond(call, question)
        other = await brain.respond(call, "what time do you open")
        await brain.prepare(call, "tell me a joke")
        await brain.end(call)
        return prepared, other, len(brain._prepared)

    prepared, other, left = asyncio.run(calls())
    assert prepared.source == "knowledge" and prepared.sources == ("billing#3",)  # type: ignore[attr-defined]
    assert other.replies[0].text == "We open at eight."  # type: ignore[attr-defined]
    assert looked_up == [question, "what time do you open", "tell me a joke"]
    assert nlu.understood == [question, "what time do you open", "tell me a joke"]
    assert left == 0


def test_a_dialogue_error_is_raised_as_itself_beside_the_embedding(kb: KnowledgeBase) -> None:
    from tests.test_routing import UnsureNlu
    from voicebot_pbx.answers.rasa import DialogueUnavailable

    class Down(UnsureNlu):
        async def understand(self, call: CallInfo, text: str) -> Understanding:
            raise DialogueUnavailable("rasa is down", retryable=True)

    brain = ComposingDialogue(Down(), ScriptedLlm([(0.0, "Composed.")], kb=kb), CONFIG)
    with pytest.raises(DialogueUnavailable, match="rasa is down"):
        asyncio.run(brain.respond(CallInfo(call_id="c"), "who do I talk to about my bills"))


def test_a_passage_read_for_a_question_is_trimmed_to_the_sentence_that_answers_it(
    kb: KnowledgeBase,
) -> None:
    """The fee passage starts with Fixed 12's exit fee; a caller asking about Green Saver
    hears only the sentence about Green Saver (the whole passage, first "there is an exit
    fee of £30", reads like a yes)."""
    from tests.test_routing import UnsureNlu

    question = "is there a charge to walk away from green saver"
    found = knowledge_hit(kb, question)
    assert found is not None and found.passage.id == "tariffs#2"
    assert len(found.sentence_similarities) == 2
    brain = ComposingDialogue(UnsureNlu(), ScriptedLlm([(0.0, "Composed.")], kb=kb), CONFIG)
    with capture_logs() as logs:
        turn = asyncio.run(brain.respond(CallInfo(call_id="c"), question))
    assert turn.source == "knowledge"
    assert [r.text for r in turn.replies] == [
        "There is no exit fee on Standard Variable or Green Saver."
    ]
    (line,) = [e for e in logs if e["event"] == "knowledge_answer"]
    assert (line["trimmed"], line["sentences"]) == (True, 1)
    # Not trimmed when disabled (answer_sentence_lead above any cosine lead).
    whole = dataclasses.replace(CONFIG, answer_sentence_lead=2.0)
    plain = ComposingDialogue(UnsureNlu(), ScriptedLlm([(0.0, "Composed.")], kb=kb), whole)
    turn = asyncio.run(plain.respond(CallInfo(call_id="c"), question))
    assert len(turn.replies) == 2 and "£30" in turn.replies[0].text


def test_the_recognisers_capitals_and_marks_change_nothing(kb: KnowledgeBase) -> None:
    """A transcript's capitals and punctuation are the recogniser's: the same words route the
    same with or without them (they once moved a question's embedding enough to read out a
    passage for words it does not cover, which the bare words asked back)."""
    pairs = [
        ("Could you refund my missed payment charge?", "could you refund my missed payment charge"),
        ("Hello, is the power cut line free, or not?", "hello is the power cut line free or not"),
    ]
    config = dataclasses.replace(CONFIG, check_uncovered=True)
    for spoken, plain in pairs:
        a, b = knowledge_hit(kb, spoken, config), knowledge_hit(kb, plain, config)
        assert a is not None and b is not None
        assert (a.passage.id, a.score, a.lead, a.uncovered) == (
            b.passage.id,
            b.score,
            b.lead,
            b.uncovered,
        )
        assert a.sentence_similarities == b.sentence_similarities


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Can I PAY by card?", "can i pay by card"),
        ("I’m moving, what's next – £5?", "i'm moving what's next 5"),
        ("‘quoted’ and 'single' words", "quoted and single words"),
        ("...", ""),
    ],
)
def test_question_words_are_lower_case_without_marks(text: str, words: str) -> None:
    assert question_words(text) == words
