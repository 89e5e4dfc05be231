"""Profiles with their own dialogue, voice and knowledge base (issue #6, item 7).

* A call routed to a profile (by port/channel variable) gets that profile's dialogue, voice,
  TTS cache and LLM knowledge base; a call of the default profile gets the defaults (fake
  engines, virtual time, the real session).
* ``build_profile_kits`` from a real config: a profile's voice is the loaded Piper model
  with other settings (one onnxruntime session) and really speaks slower; its knowledge base
  answers what the default one cannot; a profile without overrides gets no kit.
* The config rejects inconsistent profiles.
(A profile served by its own real Rasa server: ``tests/test_rasa.py``.)
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from voicebot_pbx.answers.dialogue import CallInfo, RuleDialogue
from voicebot_pbx.answers.knowledge import KnowledgeBase
from voicebot_pbx.answers.llm import LlmAnswerer
from voicebot_pbx.call.prompts import ClipLibrary, TtsCache
from voicebot_pbx.call.session import CallSession, Shared
from voicebot_pbx.config import (
    DialogueConfig,
    ProfileConfig,
    RuleConfig,
    load_config,
)
from voicebot_pbx.config.parse import ConfigError
from voicebot_pbx.ops.profiles import ProfileKit, build_profile_kits
from voicebot_pbx.speech.engines import Engines
from voicebot_pbx.testing import (
    FakeEngines,
    FakeMedia,
    ScriptedLlm,
    ScriptedStt,
    ToneTts,
    run_virtual,
    tone,
)

HOURS = 440
CARD = 990
PHRASES = {HOURS: "what are your opening hours", CARD: "can I pay by card"}


def make_shared() -> tuple[Shared, ToneTts, ToneTts, ScriptedLlm, ScriptedLlm]:
    base = load_config()
    config = dataclasses.replace(
        base,
        dialogue=DialogueConfig(
            greeting="Hi.",
            reprompt="Pardon?",
            rules=(RuleConfig(keywords=("hours",), reply="We open at eight."),),
        ),
        profiles=(ProfileConfig(name="billing"), ProfileConfig(name="plain")),
    )
    default_voice = ToneTts(voice_id="tone-default")
    billing_voice = ToneTts(voice_id="tone-billing", seconds_per_char=0.04)
    engines = FakeEngines(ScriptedStt(PHRASES, delay_s=0.1), default_voice)
    default_llm = ScriptedLlm([(0.2, "Default answer.")])
    billing_llm = ScriptedLlm([(0.2, "Billing answer.")])
    billing_rules = DialogueConfig(
        greeting="Billing here.",
        reprompt="Sorry?",
        rules=(RuleConfig(keywords=("hours",), reply="Billing opens at nine."),),
    )
    kit = ProfileKit(
        "billing",
        dialogue=RuleDialogue.from_config(billing_rules),
        tts=billing_voice,  # type: ignore[arg-type]
        tts_cache=TtsCache(billing_voice.voice_id, None),
        llm=billing_llm,  # type: ignore[arg-type]
    )
    shared = Shared(
        config=config,
        engines=engines,
        dialogue=RuleDialogue.from_config(config.dialogue),
        tts_cache=TtsCache(default_voice.voice_id, None),
        clips=ClipLibrary({}),
        llm=default_llm,  # type: ignore[arg-type]
        profiles={"billing": kit},
    )
    return shared, default_voice, billing_voice, default_llm, billing_llm


async def call(shared: Shared, profile: str | None) -> CallSession:
    media = FakeMedia()
    if profile is not None:
        media.profile = profile  # type: ignore[attr-defined]  # as a profile port's listener
    session = CallSession(media, shared)
    async with asyncio.TaskGroup() as group:
        pacer = group.create_task(media.speaker.run(media.write))
        runner = group.create_task(session.run())
        await media.play_caller([(2.0, tone(1.0, 8000, HOURS)), (5.0, tone(1.0, 8000, CARD))])
        await media.silence_until(9.0)
        if not runner.done():
            await media.hangup("caller_hangup")
        await runner
        pacer.cancel()
    return session


def replies(session: CallSession) -> list[str]:
    return [t.reply_text for t in session.record.turns]


def test_a_profile_call_uses_the_profile_dialogue_voice_and_knowledge() -> None:
    shared, default_voice, billing_voice, default_llm, billing_llm = make_shared()
    session = run_virtual(call(shared, "billing"))
    assert session.record.profile == "billing"
    turns = session.record.turns
    assert [t.kind for t in turns] == ["greeting", "speech", "speech"]
    assert turns[0].reply_text == "Billing here."
    assert turns[1].reply_text == "Billing opens at nine."
    # Not understood by the billing rules: the billing knowledge base's LLM answers.
    assert turns[2].dialogue == "llm"
    assert billing_llm.questions == [PHRASES[CARD]] and default_llm.questions == []
    # Everything was said in the billing voice, and cached under it only.
    assert billing_voice.sentences_made >= 2 and default_voice.sentences_made == 0
    kit = shared.profiles["billing"]
    assert kit.tts_cache is not None and kit.tts_cache.get("Billing here.", 8000) is not None
    assert shared.tts_cache.get("Billing here.", 8000) is None


@pytest.mark.parametrize("profile", [None, "plain", "unknown"])
def test_other_calls_use_the_defaults(profile: str | None) -> None:
    shared, default_voice, billing_voice, default_llm, billing_llm = make_shared()
    session = run_virtual(call(shared, profile))
    turns = session.record.turns
    assert turns[0].reply_text == "Hi."
    assert turns[1].reply_text == "We open at eight."
    assert turns[2].dialogue == "llm"
    assert default_llm.questions == [PHRASES[CARD]] and billing_llm.questions == []
    assert default_voice.sentences_made >= 2 and billing_voice.sentences_made == 0


# --- kits built from a real config -------------------------------------------------------


class _NoEngine:
    """The LLM engine is only passed through by build_profile_kits (never called here)."""


def write_knowledge(folder: Path) -> Path:
    """A small knowledge base of another business (one topic per file, as knowledge/)."""
    folder.mkdir()
    topics = {
        "parking": ("Where can I park?", "Visitors park free on Dock Street for 2 hours."),
        "wifi": ("Is there wifi for visitors?", "Yes. The network is called Dock Guest."),
        "pets": ("Can I bring my dog?", "Only assistance dogs are allowed inside the clinic."),
        "hours": ("When is the clinic open?", "From 9 am to 5 pm, Monday to Saturday."),
        "visits": ("How do I cancel a visit?", "Call reception one day before your visit."),
        "cafe": ("Is there a cafe?", "Yes, on the ground floor next to reception."),
    }
    for stem, (question, answer) in topics.items():
        text = f"# {stem.title()}\n\n## {question}\n{answer}\n"
        (folder / f"{stem}.md").write_text(text, encoding="utf-8")
    return folder


def test_build_profile_kits_shares_models_and_loads_each_knowledge_base(
    engines: Engines, tmp_path: Path
) -> None:
    base = load_config()
    config = dataclasses.replace(
        base,
        profiles=(
            ProfileConfig(name="slow", tts_length_scale=1.5, greeting="Hello, slowly."),
            ProfileConfig(
                name="visitors",
                knowledge_dir=str(write_knowledge(tmp_path / "kb")),
                company="Dock Street Clinic",
            ),
            ProfileConfig(name="rules", dialogue_engine="rules"),
            ProfileConfig(name="same", greeting="Nothing of its own but a greeting."),
        ),
    )
    default_llm = LlmAnswerer(
        _NoEngine(),  # type: ignore[arg-type]
        KnowledgeBase.load(Path(__file__).resolve().parents[1] / "knowledge"),
        base.llm,
    )
    kits = build_profile_kits(
        config, engines.tts, default_llm, tmp_path / "cache", ["Static text."]
    )
    assert set(kits) == {"slow", "visitors", "rules"}

    slow = kits["slow"]
    assert slow.tts is not None and slow.tts_cache is not None and slow.dialogue is None
    assert slow.tts._voice is engines.tts._voice  # the same loaded model and session
    assert slow.tts.voice_id != engines.tts.voice_id
    assert slow.tts_cache.voice_id == slow.tts.voice_id
    assert "Hello, slowly." in slow.texts and "Static text." in slow.texts
    # Piper's durations are stochastic (noise_w): compare totals over a few sentences.
    texts = (
        "Our opening hours are eight to six.",
        "Please hold while I put you through.",
        "Your appointment is booked for Friday.",
    )
    normal_s = sum(len(engines.tts.synthesize_all(t, 8000)) for t in texts) / 16000
    slow_s = sum(len(slow.tts.synthesize_all(t, 8000)) for t in texts) / 16000
    # Length scale 1.5: measured 1.29-1.40 (pauses and edges scale less than the words,
    # and the noise varies); the same voice unscaled stays within about 5 %.
    assert slow_s > 1.2 * normal_s

    visitors = kits["visitors"]
    assert visitors.tts is None and visitors.llm is not None
    assert visitors.llm.engine is default_llm.engine
    assert "Dock Street Clinic" in visitors.llm.system_prompt
    question = "where can I park my car"
    assert [p.id for p in visitors.llm.retrieve(question)]
    assert default_llm.retrieve(question) == []  # the default knowledge base has no parking

    assert isinstance(kits["rules"].dialogue, RuleDialogue)
    turn = asyncio.run(
        kits["rules"].dialogue.respond(CallInfo(call_id="c1"), "what are your opening hours")
    )
    assert turn.source == "rules" and not turn.needs_fallback


def test_a_missing_knowledge_folder_fails_at_start_up(engines: Engines, tmp_path: Path) -> None:
    base = load_config()
    config = dataclasses.replace(
        base, profiles=(ProfileConfig(name="x", knowledge_dir=str(tmp_path / "nope")),)
    )
    default_llm = LlmAnswerer(
        _NoEngine(),  # type: ignore[arg-type]
        KnowledgeBase.load(Path(__file__).resolve().parents[1] / "knowledge"),
        base.llm,
    )
    with pytest.raises(FileNotFoundError):
        build_profile_kits(config, engines.tts, default_llm, None)


# --- config ----------------------------------------------------------------------------


def load_profiles(tmp_path: Path, body: str) -> Any:
    file = tmp_path / "voicebot.toml"
    file.write_text(body, encoding="utf-8")
    return load_config(file)


def test_profile_overrides_load_from_toml(tmp_path: Path) -> None:
    config = load_profiles(
        tmp_path,
        """
[[profiles]]
name = "sales"
port = 9096
dialogue_engine = "rasa"
rasa_url = "http://127.0.0.1:5006"
tts_length_scale = 1.2
tts_volume = 0.6
knowledge_dir = "knowledge-sales"
company = "Northwind Sales"
""",
    )
    (sales,) = config.profiles
    assert sales.dialogue_engine == "rasa" and sales.rasa_url == "http://127.0.0.1:5006"
    assert sales.own_voice and sales.own_knowledge
    assert (sales.tts_length_scale, sales.tts_volume) == (1.2, 0.6)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('rasa_url = "http://127.0.0.1:5006"', "dialogue_engine is not 'rasa'"),
        ('dialogue_engine = "rasa"\nrasa_url = "127.0.0.1:5006"', "http(s) URL"),
        ("tts_volume = 1.5", "tts_volume in 0..1"),
        ("tts_length_scale = -1.0", "tts_length_scale must be >= 0"),
    ],
)
def test_inconsistent_profiles_are_refused(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_profiles(tmp_path, f'[[profiles]]\nname = "p"\n{entry}\n')
