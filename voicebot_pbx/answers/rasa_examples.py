"""The Rasa project's intent examples (``data/*.yml`` ``nlu:`` blocks), read by the bot so the
knowledge router can compare a caller's question with what each intent was trained on
(:meth:`voicebot_pbx.answers.knowledge.KnowledgeBase.intent_similarity`). Entity markup
(``[nw1 4en](postcode)``) is reduced to its text. Pure apart from reading the files."""

from __future__ import annotations

import re
from pathlib import Path

import yaml  # type: ignore[import-untyped]

_ENTITY = re.compile(r"\[([^\]]*)\]\([^)]*\)|\[([^\]]*)\]\{[^}]*\}")


class RasaExamplesError(ValueError):
    """A Rasa NLU file that cannot be read (named with the reason)."""


def load_intent_examples(project_dir: str | Path) -> dict[str, list[str]]:
    """intent -> its example texts, from every ``*.yml``/``*.yaml`` file under
    ``<project_dir>/data`` (sorted by name; files without an ``nlu:`` list add nothing)."""
    data_dir = Path(project_dir) / "data"
    if not data_dir.is_dir():
        raise RasaExamplesError(f"Rasa data folder {data_dir} does not exist")
    examples: dict[str, list[str]] = {}
    files = sorted([*data_dir.rglob("*.yml"), *data_dir.rglob("*.yaml")])
    for file in files:
        try:
            document = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise RasaExamplesError(f"{file}: unreadable ({exc})") from None
        blocks = document.get("nlu") if isinstance(document, dict) else None
        for block in blocks or ():
            if not isinstance(block, dict) or "intent" not in block:
                continue
            texts = block.get("examples", "")
            if not isinstance(texts, str):
                raise RasaExamplesError(f"{file}: intent {block['intent']}: examples is not text")
            for line in texts.splitlines():
                line = line.strip()
                if line.startswith("- "):
                    plain = _ENTITY.sub(lambda m: m.group(1) or m.group(2) or "", line[2:])
                    examples.setdefault(str(block["intent"]), []).append(plain.strip())
    return examples
