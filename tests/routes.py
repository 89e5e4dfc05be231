"""``route`` in the tests' short form: what the dialogue heard as plain arguments."""

from __future__ import annotations

from voicebot_pbx.answers.dialogue import Understanding
from voicebot_pbx.answers.question_form import QuestionForm
from voicebot_pbx.answers.routing import KnowledgeHit, Route, route
from voicebot_pbx.config import KnowledgeConfig


def routed(
    intent: str | None,
    confidence: float | None,
    hit: KnowledgeHit | None,
    config: KnowledgeConfig,
    similarity: float | None = None,
    form: QuestionForm = "unclear",
    *,
    fallback: bool = False,
) -> Route:
    """Where ``route`` sends a turn the dialogue heard as ``intent`` at ``confidence``
    (``fallback``: not understood), ``similarity`` from the intent's nearest example."""
    heard = Understanding(intent, confidence, fallback)
    return route(heard, hit, config, intent_similarity=similarity, form=form)
