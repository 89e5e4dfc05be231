"""bench/bench_pbx.py's real voice (``--voice recorded``): every recorded prompt it plays is
answered by the bench rule of its intent, as the rule dialogue matches words, so a turn
counted as misheard is a recognition error, not a prompt another rule (or none) answers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_pbx  # noqa: E402

from voicebot_pbx.answers.dialogue import RuleDialogue  # noqa: E402
from voicebot_pbx.config import DialogueConfig, RuleConfig  # noqa: E402

pytestmark = pytest.mark.skipif(
    not bench_pbx.RECORDED_TRANSCRIPTS.is_file(),
    reason="Debian's asterisk-core-sounds-en is not installed (scripts/install installs it)",
)


def test_each_recorded_prompt_is_answered_by_its_intents_rule() -> None:
    base = DialogueConfig(engine="rules")
    bench_rules = [
        RuleConfig(keywords=bench_pbx.PAYMENT_KEYWORDS, reply=bench_pbx.PAYMENT_REPLY),
        *(RuleConfig(keywords=k, reply=r) for k, r in bench_pbx.RECORDED_RULES.values()),
    ]
    # After the service's rules, as the bench bot lists them: a prompt naming a word of
    # theirs would be answered by them.
    dialogue = RuleDialogue.from_config(
        DialogueConfig(engine="rules", rules=(*base.rules, *bench_rules))
    )
    transcripts = bench_pbx.recorded_transcripts()
    prompts = bench_pbx.recorded_prompts()
    assert all(len(names) >= 10 for names in prompts.values()), prompts
    for intent, names in prompts.items():
        reply = bench_pbx.RECORDED_RULES[intent][1]
        for name in names:
            rule = dialogue.match(transcripts[name])
            assert rule is not None and rule.reply == reply, (intent, name, transcripts[name])


def test_a_recorded_call_plan_depends_on_the_seed_and_index_only() -> None:
    plans = [bench_pbx.plan_call(7, i, "rules", "recorded") for i in range(6)]
    assert plans == [bench_pbx.plan_call(7, i, "rules", "recorded") for i in range(6)]
    assert len({tuple(p.texts) for p in plans}) > 1
    for plan in plans:
        assert plan.intents[-1] == "number"  # the long reply the barge-in talks over
        assert plan.barge in bench_pbx.recorded_prompts()["conference"]
        assert plan.barge not in plan.texts
        pcm = bench_pbx.speech_pcm(plan.texts[0], plan)
        assert 0.5 < len(pcm) / 16000 <= bench_pbx.RECORDED_S[1]


def test_a_flite_call_asks_the_espeak_calls_questions_in_a_flite_voice() -> None:
    for index in range(6):
        espeak = bench_pbx.plan_call(7, index, "rules")
        flite = bench_pbx.plan_call(7, index, "rules", "flite")
        assert (flite.texts, flite.intents, flite.barge) == (
            espeak.texts,
            espeak.intents,
            espeak.barge,
        )
        assert flite.voice.removeprefix("flite:") in bench_pbx.turn_dataset.FLITE_VOICES
        pcm = bench_pbx.speech_pcm(flite.texts[0], flite)
        assert 0.5 < len(pcm) / 16000 < 4.0
