"""The turn-taking evaluation set's voice families (bench/turn_dataset.py): the flite part
says what the espeak part says, with the same pauses. Plans only: no audio."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import turn_dataset  # noqa: E402


def test_flite_part_says_the_espeak_texts_with_the_same_pauses() -> None:
    espeak, flite = turn_dataset.espeak_plan(), turn_dataset.flite_plan()
    assert [(p.kind, p.segments, p.pauses_s, p.commas) for p in flite] == [
        (p.kind, p.segments, p.pauses_s, p.commas) for p in espeak
    ]
    assert [p.id for p in flite] == [p.id.replace("esp-", "fli-") for p in espeak]
    assert {p.part for p in flite} == {"flite"}
    assert {p.voice for p in flite} == {f"flite:{v}" for v in turn_dataset.FLITE_VOICES}
    low, high = turn_dataset.FLITE_STRETCH_PERCENT
    assert all(low <= p.speed < high for p in flite)
    # The espeak plan is untouched by drawing the flite one.
    assert [p.voice for p in espeak] == [p.voice for p in turn_dataset.espeak_plan()]


def test_each_family_has_its_own_folder() -> None:
    assert turn_dataset.out_dir() == turn_dataset.OUT_DIR
    assert turn_dataset.out_dir("flite") == turn_dataset.OUT_DIR.with_name("turn-bench-flite")
    with pytest.raises(ValueError, match="unknown voice family"):
        turn_dataset.out_dir("piper")
