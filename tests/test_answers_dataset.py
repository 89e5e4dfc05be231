"""The answers evaluation set (bench/answers_dataset.py): sizes, new texts, a stable seeded
split, every knowledge file covered. Text only (no models), but for one flite item
rendered."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import answers_dataset  # noqa: E402
import turn_dataset  # noqa: E402


def test_set_sizes() -> None:
    kinds = [q.kind for q in answers_dataset.QUESTIONS]
    assert kinds.count("knowledge") >= 80
    assert kinds.count("unknown") >= 30
    assert kinds.count("intent") >= 30


def test_texts_are_new_and_unique() -> None:
    assert answers_dataset.reuse_problems([q.text for q in answers_dataset.QUESTIONS]) == []


def test_reused_text_is_caught() -> None:
    problems = answers_dataset.reuse_problems(["Where is your office?", "where is your office"])
    assert any("knowledge/address.md" in p for p in problems)
    assert any("twice" in p for p in problems)


def test_every_knowledge_file_covered_and_entries_exist() -> None:
    assert answers_dataset.coverage_problems() == []
    entries = answers_dataset.knowledge_entries()
    asked = {(q.topic, q.entry) for q in answers_dataset.KNOWLEDGE}
    total = sum(len(headings) for headings in entries.values())
    assert len(asked) >= 0.8 * total  # most entries


def test_every_knowledge_question_has_facts() -> None:
    for q in answers_dataset.KNOWLEDGE:
        assert q.facts and all(q.facts), q.text


def test_split_is_seeded_stable_and_about_a_third_dev() -> None:
    first = answers_dataset.splits()
    assert first == answers_dataset.splits()
    plan = answers_dataset.plan()
    assert [i.id for i in plan] == [i.id for i in answers_dataset.plan()]
    near = answers_dataset.near_ids()
    for kind in answers_dataset.KINDS:
        of_kind = [i for i in plan if i.kind == kind and i.id not in near]
        dev = sum(1 for i in of_kind if i.split == "dev")
        assert abs(dev - len(of_kind) / 3) <= 1
    # The questions beside a passage: their split is the list they were written in.
    assert len(near) == len(answers_dataset.NEAR_DEV) + len(answers_dataset.NEAR_TEST) == 60
    by_text = {i.text: i.split for i in plan}
    assert {by_text[q.text] for q in answers_dataset.NEAR_DEV} == {"dev"}
    assert {by_text[q.text] for q in answers_dataset.NEAR_TEST} == {"test"}


def test_voices_are_new_to_the_project() -> None:
    taken = {
        "en-us", "en-gb", "en-us+f3", "en-gb-scotland+m3", "en-029+f4", "en-us-nyc",
        "en-gb-x-rp+f2", "en-us+m3", "en-gb-x-gbcwmd+m2", "en-029+m4", "en-gb-scotland+f2",
        "en-us+f5", "en-gb-x-rp+m6", "en-gb-x-gbclan+f1", "en-gb-x-rp+f4", "en-us+Annie",
        "en-gb+Andy", "en-us+klatt3", "en-us+m7", "en-gb-x-gbcwmd+f1",
    }  # fmt: skip
    assert not taken & set(answers_dataset.VOICES)
    assert len({i.voice for i in answers_dataset.plan()}) == len(answers_dataset.VOICES)


def test_no_fact_is_in_its_own_question() -> None:
    assert answers_dataset.fact_problems() == []


def test_flite_family_speaks_the_same_items_with_its_own_voices() -> None:
    espeak = answers_dataset.plan()
    flite = answers_dataset.plan("flite")
    assert [(i.id, i.text, i.split, i.kind) for i in flite] == [
        (i.id, i.text, i.split, i.kind) for i in espeak
    ]
    assert {i.voice for i in flite} == {f"flite:{v}" for v in answers_dataset.FLITE_VOICES}
    low, high = answers_dataset.FLITE_STRETCH_PERCENT
    assert all(low <= i.speed < high and i.pitch == 0 for i in flite)
    # Its own folder and plan: building one family never rewrites the other's set.
    assert answers_dataset.out_dir("flite") != answers_dataset.out_dir("espeak")
    assert answers_dataset.plan_sha256(flite) != answers_dataset.plan_sha256(espeak)
    assert [i.voice for i in flite] == [i.voice for i in answers_dataset.plan("flite")]


def test_unknown_voice_family_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown voice family"):
        answers_dataset.plan("piper")


def test_a_flite_item_renders_repeatably_on_the_phone_line() -> None:
    item = next(i for i in answers_dataset.plan("flite") if i.voice == "flite:slt")
    first = answers_dataset.render(item)
    assert first == answers_dataset.render(item)  # the same bytes every build
    seconds = len(first) / 2 / answers_dataset.RATE_HZ
    # The line's lead and tail around the spoken question.
    assert seconds > turn_dataset.LEAD_S + turn_dataset.TAIL_S + 0.5
