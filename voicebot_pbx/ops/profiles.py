"""Per-profile pieces: a profile's own dialogue (its Rasa server), voice and knowledge base.

A :class:`ProfileKit` holds what a profile overrides; a ``None`` field means "the process
default" (``Shared.dialogue``, ``Engines.tts`` with ``Shared.tts_cache``, ``Shared.llm``).
Models are shared: a profile's voice with the default model file reuses the loaded Piper
session (:meth:`PiperTts.variant`), another model file is loaded once however many profiles
use it, and a profile's knowledge base is a new BM25 index over the same LLM engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from voicebot_pbx.answers import factory
from voicebot_pbx.answers.dialogue import Dialogue
from voicebot_pbx.answers.knowledge import KnowledgeBase
from voicebot_pbx.answers.llm import LlmAnswerer
from voicebot_pbx.answers.rasa import RasaDialogue
from voicebot_pbx.call.prompts import TtsCache
from voicebot_pbx.config import Config, ProfileConfig
from voicebot_pbx.models import PIPER_JOE, resolve_model_path
from voicebot_pbx.speech.tts import PiperTts

log = structlog.get_logger("voicebot_pbx.ops.profiles")


@dataclass(slots=True)
class ProfileKit:
    """What one profile uses instead of the process defaults (None: the default)."""

    name: str
    dialogue: Dialogue | None = None
    rasa: RasaDialogue | None = None  # the Rasa client inside ``dialogue``, to warm and watch
    tts: PiperTts | None = None
    tts_cache: TtsCache | None = None  # set whenever ``tts`` is
    llm: LlmAnswerer | None = None
    texts: list[str] = field(default_factory=list)  # what to pre-synthesize in its voice


def profile_voice(
    config: Config, profile: ProfileConfig, default: PiperTts, loaded: dict[Path, PiperTts]
) -> PiperTts | None:
    """The profile's voice, or None when it speaks with the default one. Blocking (it may
    load a model). ``loaded`` maps model files to voices already loaded (shared sessions)."""
    if not profile.own_voice:
        return None
    tts = config.tts
    volume = profile.tts_volume or tts.volume
    length_scale = profile.tts_length_scale or tts.length_scale
    model = (
        resolve_model_path(profile.tts_model_path, PIPER_JOE)
        if profile.tts_model_path
        else default.model_path
    )
    config_path = Path(profile.tts_config_path) if profile.tts_config_path else None
    same_model = model.resolve() == default.model_path.resolve() and (
        config_path is None or config_path.resolve() == default.config_path.resolve()
    )
    if same_model:
        return default.variant(volume=volume, length_scale=length_scale)
    base = loaded.get(model.resolve())
    if base is None:
        base = PiperTts(model, config_path=config_path, volume=volume, cpu_threads=tts.cpu_threads)
        loaded[model.resolve()] = base
        log.info("profile_voice_loaded", profile=profile.name, model=str(model))
    return base.variant(volume=volume, length_scale=length_scale)


def profile_llm(config: Config, profile: ProfileConfig, default: LlmAnswerer) -> LlmAnswerer:
    """The default LLM engine answering from the profile's knowledge base and company."""
    llm_config = dataclasses.replace(
        default.config,
        knowledge_dir=profile.knowledge_dir or default.config.knowledge_dir,
        company=profile.company or default.config.company,
    )
    kb = default.kb
    if profile.knowledge_dir:  # same retrieval (and embedding model) as the default
        kb = KnowledgeBase.load(
            llm_config.knowledge_dir,
            embedder=default.kb.embedder,
            bm25_weight=default.kb.bm25_weight,
        )
    return LlmAnswerer(default.engine, kb, llm_config)


def build_profile_kits(
    config: Config,
    default_tts: PiperTts,
    default_llm: LlmAnswerer | None,
    cache_dir: Path | None,
    static_texts: Sequence[str] = (),
) -> dict[str, ProfileKit]:
    """A kit for every profile that overrides its dialogue, voice or knowledge base.
    Blocking (loads models and knowledge files); raises on a broken profile (a missing
    voice or knowledge folder), so ``serve`` refuses to start with a half-working one."""
    kits: dict[str, ProfileKit] = {}
    loaded: dict[Path, PiperTts] = {}
    for profile in config.profiles:
        kit = ProfileKit(profile.name)
        if profile.dialogue_engine:
            built = factory.build_dialogue(config, profile.dialogue_engine, profile.rasa_url)
            kit.dialogue, kit.rasa = built.dialogue, built.rasa
        kit.tts = profile_voice(config, profile, default_tts, loaded)
        if kit.tts is not None:
            kit.tts_cache = TtsCache(kit.tts.voice_id, cache_dir)
        if default_llm is not None and profile.own_knowledge:
            kit.llm = profile_llm(config, profile, default_llm)
        if kit.tts is not None:
            texts = list(static_texts)
            if profile.greeting:
                texts.append(profile.greeting)
            if profile.voicemail_message:
                texts.append(profile.voicemail_message)
            if kit.llm is not None:
                texts += kit.llm.fixed_replies()
            elif default_llm is not None:
                texts += default_llm.fixed_replies()
            kit.texts = texts
        if kit.dialogue or kit.tts or kit.llm:
            kits[profile.name] = kit
            log.info(
                "profile_ready",
                profile=profile.name,
                dialogue=profile.dialogue_engine or "default",
                voice=kit.tts.voice_id if kit.tts else "default",
                knowledge=kit.llm.config.knowledge_dir if kit.llm else "default",
            )
    return kits
