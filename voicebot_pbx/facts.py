"""Business facts in one place (issue #18): ``facts.toml`` in the knowledge folder.

Opening hours, the address, phone numbers and the company name are written once, in
``<knowledge_dir>/facts.toml`` (``name = "text"``), and every text that states them says
``{{name}}`` instead: the knowledge files (rendered when the knowledge base loads), the Rasa
domain's responses (rendered into a build copy before ``rasa train``) and the bot's own texts
(greeting, rule replies, fallbacks; rendered when the config loads). A changed fact is
therefore a changed answer everywhere, and a ``{{name}}`` without a fact is an error that
names the file and line, never a placeholder read out to a caller.

Pure: no I/O beyond reading the facts file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

FACTS_FILE = "facts.toml"

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Facts = Mapping[str, str]


class FactsError(ValueError):
    """facts.toml unreadable, or a text names a fact that is not there."""


def facts_path(knowledge_dir: str | Path) -> Path:
    return Path(knowledge_dir) / FACTS_FILE


def load_facts(knowledge_dir: str | Path) -> dict[str, str]:
    """The facts of ``knowledge_dir`` ({} when it has no facts.toml)."""
    path = facts_path(knowledge_dir)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise FactsError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise FactsError(f"{path}: not valid TOML: {exc}") from None
    facts: dict[str, str] = {}
    for name, value in data.items():
        if not _NAME.match(name):
            raise FactsError(f"{path}: fact name {name!r} must be letters, digits and _")
        if not isinstance(value, str) or not value.strip():
            raise FactsError(f"{path}: fact {name!r} must be a non-empty string")
        if _PLACEHOLDER.search(value):
            raise FactsError(f"{path}: fact {name!r} must not use other facts ({{{{...}}}})")
        facts[name] = " ".join(value.split())
    return facts


def unknown_facts(text: str, facts: Facts) -> list[str]:
    """The ``{{name}}`` placeholders in ``text`` that ``facts`` does not define."""
    return [m.group(1) for m in _PLACEHOLDER.finditer(text) if m.group(1) not in facts]


def render(text: str, facts: Facts, *, where: str, source: str = FACTS_FILE) -> str:
    """``text`` with every ``{{name}}`` replaced by its fact; ``where`` names the text's
    origin (file:line, config key) and ``source`` the facts file in the error for an
    unknown name."""
    missing = unknown_facts(text, facts)
    if missing:
        known = ", ".join(sorted(facts)) or "no facts"
        raise FactsError(f"{where}: unknown fact {{{{{missing[0]}}}}} (not in {source}: {known})")
    return _PLACEHOLDER.sub(lambda m: facts[m.group(1)], text)


def text_problems(text: str, facts: Facts, *, file: str) -> list[str]:
    """``file:line: unknown fact {{name}}`` for each unknown placeholder in ``text``."""
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        problems.extend(
            f"{file}:{number}: unknown fact {{{{{name}}}}} (not in {FACTS_FILE})"
            for name in unknown_facts(line, facts)
        )
    return problems
