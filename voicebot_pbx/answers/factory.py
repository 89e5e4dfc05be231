"""The one place a dialogue is assembled from the configuration (and given its LLM).

``rules``: the rule dialogue alone. ``rasa``: Rasa (over loopback HTTP) first, the rule
dialogue when Rasa is down or slow (``FallbackDialogue``). The service builds the process's
default dialogue with it and every profile with its own ``dialogue_engine`` builds its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from voicebot_pbx.answers.dialogue import Composer, Dialogue, RuleDialogue
from voicebot_pbx.answers.fallbacks import ComposingDialogue, FallbackDialogue
from voicebot_pbx.answers.rasa import RasaDialogue
from voicebot_pbx.config import Config, KnowledgeConfig


@dataclass(frozen=True, slots=True)
class BuiltDialogue:
    dialogue: Dialogue
    rasa: RasaDialogue | None  # to watch its health and close it; None for "rules"


def build_dialogue(
    config: Config, engine: Literal["rules", "rasa"], rasa_url: str = ""
) -> BuiltDialogue:
    rules = RuleDialogue.from_config(config.dialogue)
    if engine == "rules":
        return BuiltDialogue(rules, None)
    rasa = RasaDialogue(rasa_url or config.rasa.url, timeout_s=config.rasa.timeout_s)
    return BuiltDialogue(FallbackDialogue(rasa, rules, timeout_s=config.rasa.timeout_s), rasa)


def answering(
    dialogue: Dialogue, composer: Composer | None, knowledge: KnowledgeConfig
) -> Dialogue:
    """``dialogue`` with knowledge-base questions routed to the knowledge base and the
    grounded LLM answering what it could not (when there is one)."""
    return dialogue if composer is None else ComposingDialogue(dialogue, composer, knowledge)
