"""The config's texts with the business facts filled in (``{{name}}``, voicebot_pbx.facts).

Every string setting that says ``{{name}}`` (the greeting, rule replies, fallbacks, the
company name) is rendered when the config loads, from ``facts.toml`` in ``[llm]
knowledge_dir`` (a profile with its own knowledge folder: its facts over those). Settings
without a placeholder are left alone and no file is read for them, so a config that states
its facts literally needs no facts file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from voicebot_pbx.config.parse import ConfigError
from voicebot_pbx.facts import FactsError, facts_path, load_facts, render

if TYPE_CHECKING:
    from voicebot_pbx.config import Config

T = TypeVar("T")


def _has_placeholder(value: object) -> bool:
    if isinstance(value, str):
        return "{{" in value
    if isinstance(value, tuple):
        return any(_has_placeholder(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return any(_has_placeholder(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


def _render_tree(value: T, facts: dict[str, str], where: str, source: str) -> T:
    if isinstance(value, str):
        if "{{" not in value:
            return value
        return render(value, facts, where=where, source=source)  # type: ignore[return-value]
    if isinstance(value, tuple):
        return tuple(  # type: ignore[return-value]
            _render_tree(item, facts, f"{where}[{i}]", source) for i, item in enumerate(value)
        )
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            old = getattr(value, f.name)
            if _has_placeholder(old):
                changes[f.name] = _render_tree(old, facts, f"{where}.{f.name}".lstrip("."), source)
        return dataclasses.replace(value, **changes) if changes else value
    return value


def _described(path: Path) -> str:
    """A facts file as an error names it: a relative one that is not there says where it
    was looked for (the bot started from another folder than the checkout's)."""
    if path.is_absolute() or path.is_file():
        return str(path)
    return f"{path}, which is not in the current folder {Path.cwd()}"


def with_facts(config: Config, source: str) -> Config:
    """``config`` with its ``{{name}}`` settings rendered; ConfigError naming
    the setting and the facts file for an unknown name or a broken facts file."""
    if not _has_placeholder(config):
        return config
    main_dir = Path(config.llm.knowledge_dir or "knowledge")
    main_source = _described(facts_path(main_dir))
    try:
        facts = load_facts(main_dir)
        rendered_profiles = []
        for i, profile in enumerate(config.profiles):
            own, own_source = facts, main_source
            if profile.knowledge_dir:
                own = {**facts, **load_facts(profile.knowledge_dir)}
                own_source = f"{_described(facts_path(profile.knowledge_dir))} or {main_source}"
            rendered_profiles.append(_render_tree(profile, own, f"profiles[{i}]", own_source))
        rest = dataclasses.replace(config, profiles=())
        rendered = _render_tree(rest, facts, "", main_source)
    except FactsError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return dataclasses.replace(rendered, profiles=tuple(rendered_profiles))
