"""Two passages too close to choose between are both read (voicebot_pbx.answers.routing
is_tied / tied_answer), on the project's real knowledge files and embedding model. The
evaluation set's own questions are never used here (bench/answers_dataset.py checks)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from tests.routes import routed
from voicebot_pbx.answers.dialogue import CallInfo
from voicebot_pbx.answers.embedder import load_embedder
from voicebot_pbx.answers.fallbacks import ComposingDialogue
from voicebot_pbx.answers.knowledge import KnowledgeBase
from voicebot_pbx.answers.routing import (
    is_strong,
    is_tied,
    knowledge_hit,
    spoken_sentences,
    tied_answer,
)
from voicebot_pbx.config import KnowledgeConfig
from voicebot_pbx.testing import ScriptedLlm

KNOWLEDGE = Path(__file__).resolve().parents[1] / "knowledge"
CONFIG = KnowledgeConfig()
# Ties on the shipped files: the power cut passage and "outside opening hours" both answer it.
TIED = "can I report a power cut on a sunday"


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    embedder = load_embedder(CONFIG)
    assert embedder is not None
    return KnowledgeBase.load(KNOWLEDGE, embedder=embedder, bm25_weight=CONFIG.bm25_weight)


def test_a_tie_reads_the_closest_sentence_of_both_passages(kb: KnowledgeBase) -> None:
    hit = knowledge_hit(kb, TIED)
    assert hit is not None and hit.second is not None
    assert {hit.passage.id, hit.second.id} == {"opening-hours#2", "power-cuts#1"}
    assert not is_strong(hit, CONFIG) and is_tied(hit, CONFIG)
    assert routed(None, None, hit, CONFIG, fallback=True) == "passage"
    assert (
        routed(None, None, hit, dataclasses.replace(CONFIG, read_ties=False), fallback=True)
        == "compose"
    )
    read = tied_answer(hit)
    assert len(read) == 2
    # "Yes." opens the opening-hours passage: it answers its own heading, not this question.
    assert not any(s.startswith(("Yes", "No")) for s in read)
    assert any("24 hours a day, 7 days a week" in s for s in read)
    assert any(s.startswith("You can report a power cut") for s in read)
    # Every sentence a tie can read is warmed in the TTS cache.
    assert set(read) <= set(spoken_sentences(kb, CONFIG.max_words))


def test_what_is_not_a_tie(kb: KnowledgeBase) -> None:
    hit = knowledge_hit(kb, TIED)
    assert hit is not None and is_tied(hit, CONFIG)
    floor = CONFIG.hybrid_direct_min_score
    assert not is_tied(dataclasses.replace(hit, runner_up=floor - 0.01), CONFIG)
    ahead = dataclasses.replace(hit, runner_up=hit.score - CONFIG.hybrid_direct_min_lead)
    assert not is_tied(ahead, CONFIG) and is_strong(ahead, CONFIG)  # a strong hit instead
    assert not is_tied(dataclasses.replace(hit, second_fits=False), CONFIG)
    assert not is_tied(dataclasses.replace(hit, fits=False), CONFIG)
    assert not is_tied(dataclasses.replace(hit, second=None), CONFIG)
    # The runner-up must state the kind of answer asked for too: the tariffs overview
    # names no price, so it never ties for a question about one.
    priced = knowledge_hit(kb, "how much does it cost to leave a tariff")
    assert priced is not None and priced.passage.id == "tariffs#2" and priced.fits
    assert priced.second is not None and priced.second.id == "tariffs#1"
    assert not priced.second_fits


def test_the_dialogue_reads_both_passages_of_a_tie(kb: KnowledgeBase) -> None:
    from tests.test_routing import UnsureNlu
    from voicebot_pbx.answers.dialogue import BotReply, DialogueTurn

    class NotUnderstood(UnsureNlu):
        def _turn(self, text: str) -> DialogueTurn:
            return DialogueTurn(
                replies=(BotReply(text="Sorry?"),), intent="nlu_fallback", needs_fallback=True
            )

    nlu = NotUnderstood()
    brain = ComposingDialogue(nlu, ScriptedLlm([(0.0, "Composed.")], kb=kb), CONFIG)
    turn = asyncio.run(brain.respond(CallInfo(call_id="c"), TIED))
    assert turn.source == "knowledge" and turn.composed is None
    assert set(turn.sources) == {"opening-hours#2", "power-cuts#1"}
    hit = knowledge_hit(kb, TIED)
    assert hit is not None
    assert [r.text for r in turn.replies] == tied_answer(hit)
    assert TIED not in nlu.acted
