"""Evaluates answering-machine detection (``voicebot_pbx.call.amd``) on the seeded set of
``bench/amd_dataset.py``: writes ``bench/results/amd.json`` and ``bench/results/amd.md``.

Every item's WAV is fed to a fresh :class:`AmdDetector` in 20 ms frames from the answer, as a
call would feed it, with the default :class:`AmdConfig`, in two speech modes:

* ``energy``: the detector's own energy test (no model);
* ``silero``: the project's silero VAD (``voicebot_pbx.speech.vad``) run on the same frames,
  its latest 32 ms window probability passed as ``speech_prob`` (skipped when the model is not
  installed).

Reported per mode, per split (dev: the thresholds were tuned on it; test: reported) and per
true class, as n/N: the **first** verdict (the one the bot acts on) and the **final** one (after
a late beep revised a human/silence verdict to machine); the confusion matrix; the issue's
targets (machine detection >= 90 %, humans taken for machines <= 3 %; the hard kinds, a
person answering with a whole sentence and a one-phrase greeting, also shown apart); the
decision time of humans from the end of their first utterance (the human-answer budget) and
from the answer; beep-end error (detected end - true end) and the voicemail drop cue's delay
after the true beep end (target <= 500 ms).

``--sweep`` instead runs a grid of the main thresholds on the **dev** split only (energy
mode) and writes ``bench/results/amd_sweep.json`` / ``.md``: how the defaults were chosen.

    .venv/bin/python bench/eval_amd.py            # builds the set when needed, then evaluates
    .venv/bin/python bench/eval_amd.py --sweep    # dev-only threshold grid
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import amd_dataset  # noqa: E402

from voicebot_pbx.audio import read_wav  # noqa: E402
from voicebot_pbx.call.amd import (  # noqa: E402
    CHECKABLE_REASONS,
    VERDICTS,
    AmdConfig,
    AmdResult,
    DropCue,
    GreetingEnd,
    LikelyHuman,
    detect,
)
from voicebot_pbx.call.amd_words import greeting_words  # noqa: E402

# A clip's transcript (the service's default speech recognition), for the words check.
Transcribe = Callable[[bytes, int], str]

RESULTS = ROOT / "bench" / "results"
VOICE_NAMES = {"espeak": "espeak-ng voices", "flite": "Debian flite's voices"}
CLASSES = ("human", "machine", "silence")
SPLITS = ("dev", "test")
BEEP_MATCH_S = 0.3  # a detected beep ending this close to the true end is that beep


def speech_probs_silero(pcm: bytes, rate_hz: int, vad: Any) -> list[float]:
    """One probability per 20 ms frame: the latest silero window's when the frame arrives."""
    stream = vad.new_stream(rate_hz)
    size = rate_hz * 20 // 1000 * 2
    probs: list[float] = []
    last = 0.0
    for k in range(len(pcm) // size):
        out = stream.process(pcm[k * size : (k + 1) * size])
        if out:
            last = float(out[-1])
        probs.append(last)
    return probs


def load_silero() -> Any | None:
    try:
        from voicebot_pbx.models import SILERO_VAD, model_path
        from voicebot_pbx.speech.vad import SileroVad

        return SileroVad(model_path(SILERO_VAD))
    except Exception as exc:  # model or onnxruntime missing: energy mode only
        print(f"silero VAD unavailable ({exc}); energy mode only", file=sys.stderr)
        return None


def run_item(
    item: dict[str, Any],
    pcm: bytes,
    rate_hz: int,
    config: AmdConfig,
    probs: list[float] | None,
    transcribe: Transcribe | None = None,
) -> dict[str, Any]:
    """One item as the session runs it: the detector, and with ``transcribe`` the words check
    of a greeting the length rule took for a machine's (``call/amd_words.py``)."""
    events, detector = detect(pcm, rate_hz, config, speech_probs=probs)
    results = [e for e in events if isinstance(e, AmdResult)]
    cues = [e for e in events if isinstance(e, DropCue)]
    first = results[0] if results else None
    final = results[-1] if results else None
    row: dict[str, Any] = {
        "id": item["id"],
        "cls": item["cls"],
        "kind": item["kind"],
        "split": item["split"],
        "first": first.verdict if first else "undecided",
        "first_reason": first.reason if first else "no_verdict",
        "decided_at_s": first.decided_at_s if first else None,
        "final": final.verdict if final else "undecided",
        "final_reason": final.reason if final else "no_verdict",
        "revised_at_s": final.decided_at_s if final and final.revises else None,
        "words": first.words if first else 0,
        "greeting_s": first.greeting_s if first else None,
        "cue": None,
        "beeps": [dataclasses.asdict(b) for b in detector.beeps],
    }
    # The opening may start at the first LikelyHuman before the first verdict; a machine
    # verdict then cuts it (talk-over: from that start to the verdict).
    likely = [
        e
        for e in events
        if isinstance(e, LikelyHuman) and (first is None or e.at_s <= first.decided_at_s)
    ]
    row["likely_at_s"] = likely[0].at_s if likely else None
    if likely and first is not None and first.verdict == "machine":
        row["talk_over_s"] = round(first.decided_at_s - likely[0].at_s, 3)
    ends = [e for e in events if isinstance(e, GreetingEnd)]
    checked = (
        transcribe is not None
        and first is not None
        and first.verdict == "machine"
        and first.reason in CHECKABLE_REASONS
        and ends
        and not (cues and cues[0].at_s <= ends[0].at_s)
    )
    if checked and transcribe is not None:
        end = ends[0]
        started = time.perf_counter()
        heard = transcribe(pcm[: int(end.at_s * rate_hz) * 2], rate_hz)
        stt_s = time.perf_counter() - started
        said = greeting_words(heard)
        row["words_check"] = {"heard": heard, "verdict": said, "at_s": end.at_s}
        if said == "human":
            # The session speaks the opening; only a beep afterwards still makes a machine.
            row["first"], row["first_reason"] = "human", f"{first.reason}|words_human"
            row["decided_at_s"] = round(end.at_s + stt_s, 3)
            beeped = [c for c in cues if c.cause == "beep"]
            row["final"] = "machine" if beeped else "human"
            row["final_reason"] = "beep" if beeped else row["first_reason"]
            if item.get("speech_end_s") is not None:
                row["words_after_speech_end_s"] = round(
                    row["decided_at_s"] - float(item["speech_end_s"]), 3
                )
            row["after_talk_back"] = row["final"]
            return _cue_fields(row, item, detector, cues)
    if first and item.get("first_end_s") is not None:
        row["after_first_end_s"] = round(first.decided_at_s - float(item["first_end_s"]), 3)
        if first.verdict == "human" and likely:
            row["opening_after_first_end_s"] = round(likely[0].at_s - float(item["first_end_s"]), 3)
        else:
            row["opening_after_first_end_s"] = row["after_first_end_s"]
    _talk_back(row, item, pcm, rate_hz, config, cues, transcribe)
    return _cue_fields(row, item, detector, cues)


def _talk_back(
    row: dict[str, Any],
    item: dict[str, Any],
    pcm: bytes,
    rate_hz: int,
    config: AmdConfig,
    cues: list[DropCue],
    transcribe: Transcribe | None,
) -> None:
    """``talk_back_is_person`` as the session applies it: a machine by length or words
    whose drop cue was its greeting's silence gets the message from the cue on; a callee
    who speaks after the cue (the set's own speech end, not a VAD: an offline stand-in for
    the listener's turn) is transcribed from the cue to 0.5 s after that speech, and words
    none of which a machine says make it a person (``after_talk_back``)."""
    row["after_talk_back"] = row["final"]
    speech_end = item.get("speech_end_s")
    if (
        transcribe is None
        or not config.talk_back_is_person
        or row["final"] != "machine"
        or row["final_reason"] not in CHECKABLE_REASONS
        or not cues
        or cues[0].cause != "silence"
        or speech_end is None
        or float(speech_end) <= cues[0].at_s + 0.1
    ):
        return
    start = int(cues[0].at_s * rate_hz) * 2
    end = min(len(pcm), int((float(speech_end) + 0.5) * rate_hz) * 2)
    heard = transcribe(pcm[start:end], rate_hz)
    said = greeting_words(heard)
    person = any(c.isalnum() for c in heard) and said != "machine"
    row["talk_back"] = {"at_s": cues[0].at_s, "heard": heard, "person": person}
    if person:
        row["after_talk_back"] = "human"


def _cue_fields(
    row: dict[str, Any], item: dict[str, Any], detector: Any, cues: list[DropCue]
) -> dict[str, Any]:
    if cues:
        cue = cues[0]
        row["cue"] = {"at_s": cue.at_s, "cause": cue.cause, "beep_end_s": cue.beep_end_s}
    true_end = item.get("beep_end_s")
    if true_end is not None:
        match = [b for b in detector.beeps if abs(b.end_s - float(true_end)) <= BEEP_MATCH_S]
        row["beep_found"] = bool(match)
        if match:
            row["beep_end_err_ms"] = round((match[0].end_s - float(true_end)) * 1000, 1)
        if cues and cues[0].cause == "beep":
            row["cue_after_beep_ms"] = round((cues[0].at_s - float(true_end)) * 1000, 1)
    else:
        row["false_beeps"] = len(detector.beeps)
    if item["cls"] == "machine" and true_end is None and cues and item.get("speech_end_s"):
        row["cue_after_speech_s"] = round(cues[0].at_s - float(item["speech_end_s"]), 3)
    return row


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def _frac(rows: list[dict[str, Any]], key: str, want: str) -> dict[str, Any]:
    n = sum(1 for r in rows if r[key] == want)
    return {"n": n, "N": len(rows), "rate": round(n / len(rows), 3) if rows else None}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n_items": len(rows)}
    for key in ("first", "final"):
        per_class = {c: _frac([r for r in rows if r["cls"] == c], key, c) for c in CLASSES}
        easy = [r for r in rows if r["kind"] not in amd_dataset.HARD_KINDS]
        per_class_easy = {c: _frac([r for r in easy if r["cls"] == c], key, c) for c in CLASSES}
        per_kind = {
            k: _frac([r for r in rows if r["kind"] == k], key, amd_dataset.CLASS_OF[k])
            for k in amd_dataset.KINDS
        }
        humans = [r for r in rows if r["cls"] == "human"]
        humans_easy = [r for r in humans if r["kind"] not in amd_dataset.HARD_KINDS]
        confusion = {
            c: {v: sum(1 for r in rows if r["cls"] == c and r[key] == v) for v in VERDICTS}
            for c in CLASSES
        }
        total_ok = sum(1 for r in rows if r[key] == r["cls"])
        out[key] = {
            "accuracy": {"n": total_ok, "N": len(rows)},
            "per_class": per_class,
            "per_class_without_hard": per_class_easy,
            "per_kind": per_kind,
            "human_as_machine": _frac(humans, key, "machine"),
            "human_as_machine_without_hard": _frac(humans_easy, key, "machine"),
            "confusion": confusion,
        }
    ok_humans = [r for r in rows if r["cls"] == "human" and r["first"] == "human"]
    after_end = [r["after_first_end_s"] for r in ok_humans if "after_first_end_s" in r]
    from_answer = [r["decided_at_s"] for r in ok_humans]
    out["human_decision"] = {
        "n": len(after_end),
        "after_first_end_p50_s": _pct(after_end, 50),
        "after_first_end_p95_s": _pct(after_end, 95),
        "after_first_end_max_s": round(max(after_end), 3) if after_end else None,
        "from_answer_p50_s": _pct(from_answer, 50),
        "from_answer_p95_s": _pct(from_answer, 95),
    }
    opening = [
        r["opening_after_first_end_s"] for r in ok_humans if "opening_after_first_end_s" in r
    ]
    out["human_decision"].update(
        {
            "opening_after_first_end_p50_s": _pct(opening, 50),
            "opening_after_first_end_p95_s": _pct(opening, 95),
            "opening_early": sum(1 for r in ok_humans if r.get("likely_at_s") is not None),
        }
    )
    talked_over = [r for r in rows if "talk_over_s" in r]
    out["talk_over"] = {
        "by_class": {c: sum(1 for r in talked_over if r["cls"] == c) for c in CLASSES},
        "N": {c: sum(1 for r in rows if r["cls"] == c) for c in CLASSES},
        "p50_s": _pct([r["talk_over_s"] for r in talked_over], 50),
        "max_s": round(max(r["talk_over_s"] for r in talked_over), 3) if talked_over else None,
        "with_beep_after": sum(1 for r in talked_over if r["cue"] and r["cue"]["cause"] == "beep"),
    }
    checked = [r for r in rows if "words_check" in r]
    by_words = [r["words_after_speech_end_s"] for r in checked if "words_after_speech_end_s" in r]
    out["words_check"] = {
        "checked": {c: sum(1 for r in checked if r["cls"] == c) for c in CLASSES},
        "to_human": {
            c: sum(1 for r in checked if r["cls"] == c and r["words_check"]["verdict"] == "human")
            for c in CLASSES
        },
        "human_after_speech_end_p50_s": _pct(by_words, 50),
    }
    talked = [r for r in rows if "talk_back" in r]
    out["talk_back"] = {
        "checked": {c: sum(1 for r in talked if r["cls"] == c) for c in CLASSES},
        "to_human": {
            c: sum(1 for r in talked if r["cls"] == c and r["talk_back"]["person"]) for c in CLASSES
        },
        "human_as_machine_after": _frac(
            [r for r in rows if r["cls"] == "human"], "after_talk_back", "machine"
        ),
        "machine_after": _frac(
            [r for r in rows if r["cls"] == "machine"], "after_talk_back", "machine"
        ),
    }
    machines = [r for r in rows if r["cls"] == "machine" and r["first"] == "machine"]
    machine_at = [r["decided_at_s"] for r in machines]
    out["machine_decision"] = {
        "n": len(machine_at),
        "from_answer_p50_s": _pct(machine_at, 50),
        "from_answer_p95_s": _pct(machine_at, 95),
    }
    beep_rows = [r for r in rows if "beep_found" in r]
    errors = [r["beep_end_err_ms"] for r in beep_rows if "beep_end_err_ms" in r]
    cue_delays = [r["cue_after_beep_ms"] for r in beep_rows if "cue_after_beep_ms" in r]
    out["beep"] = {
        "found": {"n": len(errors), "N": len(beep_rows)},
        "end_err_abs_p50_ms": _pct([abs(e) for e in errors], 50),
        "end_err_abs_p95_ms": _pct([abs(e) for e in errors], 95),
        "end_err_abs_max_ms": round(max(abs(e) for e in errors), 1) if errors else None,
        "end_err_mean_ms": round(float(np.mean(errors)), 1) if errors else None,
        "cue_on_beep": {"n": len(cue_delays), "N": len(beep_rows)},
        "cue_after_beep_p50_ms": _pct(cue_delays, 50),
        "cue_after_beep_p95_ms": _pct(cue_delays, 95),
        "cue_after_beep_max_ms": round(max(cue_delays), 1) if cue_delays else None,
        "false_beep_items": sum(1 for r in rows if r.get("false_beeps")),
        "no_beep_items": sum(1 for r in rows if "false_beeps" in r),
    }
    no_beep = [r for r in rows if r["cls"] == "machine" and "false_beeps" in r]
    after_speech = [r["cue_after_speech_s"] for r in no_beep if "cue_after_speech_s" in r]
    out["drop_without_beep"] = {
        "n": len(after_speech),
        "N": len(no_beep),
        "causes": {
            c: sum(1 for r in no_beep if r["cue"] and r["cue"]["cause"] == c)
            for c in ("beep", "silence", "timeout")
        },
        "after_speech_end_p50_s": _pct(after_speech, 50),
        "after_speech_end_max_s": round(max(after_speech), 3) if after_speech else None,
    }
    return out


def evaluate(
    items: list[dict[str, Any]],
    audio: dict[str, bytes],
    rate_hz: int,
    config: AmdConfig,
    probs: dict[str, list[float]] | None,
    transcribe: Transcribe | None = None,
) -> list[dict[str, Any]]:
    return [
        run_item(
            item,
            audio[item["id"]],
            rate_hz,
            config,
            probs[item["id"]] if probs else None,
            transcribe,
        )
        for item in items
    ]


def default_transcriber() -> Transcribe:
    """The service's speech recognition on its defaults (Whisper, Moonshine base from 2 s)."""
    from voicebot_pbx.config import Config
    from voicebot_pbx.speech.engines import load_engines

    batch = load_engines(Config()).stt.capabilities.batch
    assert batch is not None

    def transcribe(pcm: bytes, rate_hz: int) -> str:
        return batch.transcribe(pcm, rate_hz).text

    return transcribe


def load_set(voices: str = "espeak") -> tuple[list[dict[str, Any]], dict[str, bytes], int]:
    manifest, _ = amd_dataset.build(voices=voices)
    items: list[dict[str, Any]] = amd_dataset.load_manifest(manifest.parent)
    audio: dict[str, bytes] = {}
    rate_hz = amd_dataset.RATE_HZ
    for item in items:
        pcm, rate_hz = read_wav(manifest.parent / str(item["wav"]))
        audio[item["id"]] = pcm
    return items, audio, rate_hz


# --- report ---------------------------------------------------------------------------------


def _nN(d: dict[str, Any]) -> str:
    return f"{d['n']}/{d['N']}" if d["N"] else "-"


def _pc(d: dict[str, Any]) -> str:
    return f"{d['n']}/{d['N']} ({100 * d['n'] / d['N']:.0f} %)" if d["N"] else "-"


# (label, summary section, key, scale to ms)
_TIMING_ROWS = [
    ("human decided, after the end of their first utterance, p50", "human_decision",
     "after_first_end_p50_s", 1000),
    ("... p95", "human_decision", "after_first_end_p95_s", 1000),
    ("... max", "human_decision", "after_first_end_max_s", 1000),
    ("human: opening starts (LikelyHuman, else the verdict), after their first utterance, p50",
     "human_decision", "opening_after_first_end_p50_s", 1000),
    ("... p95", "human_decision", "opening_after_first_end_p95_s", 1000),
    ("human decided, from the answer, p50", "human_decision", "from_answer_p50_s", 1000),
    ("machine decided, from the answer, p50", "machine_decision", "from_answer_p50_s", 1000),
    ("beep end error abs p50", "beep", "end_err_abs_p50_ms", 1),
    ("beep end error abs p95", "beep", "end_err_abs_p95_ms", 1),
    ("beep end error abs max", "beep", "end_err_abs_max_ms", 1),
    ("beep end error mean (signed)", "beep", "end_err_mean_ms", 1),
    ("drop cue after the true beep end p50", "beep", "cue_after_beep_p50_ms", 1),
    ("... p95", "beep", "cue_after_beep_p95_ms", 1),
    ("... max", "beep", "cue_after_beep_max_ms", 1),
    ("no-beep machine: drop cue after speech end p50", "drop_without_beep",
     "after_speech_end_p50_s", 1000),
    ("person by the words check: decided after their speech end p50", "words_check",
     "human_after_speech_end_p50_s", 1000),
]  # fmt: skip


def _one_row_table(caption: str, label: str, cells: list[str]) -> list[str]:
    """A caption and a one-row table with a cell per split."""
    header = "| | " + " | ".join((*SPLITS, "all")) + " |"
    return [
        caption,
        "",
        header,
        "|---|---|---|---|",
        f"| {label} | " + " | ".join(cells) + " |",
        "",
    ]


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Answering-machine detection (`voicebot_pbx.call.amd`)",
        "",
        f"Set: `bench/amd_dataset.py` v{report['dataset']['version']}, "
        f"{report['dataset']['items']} items "
        f"(plan sha256 `{report['dataset']['plan_sha256'][:12]}`), "
        f"8 kHz phone line, {VOICE_NAMES[report['dataset'].get('voices', 'espeak')]}; "
        "thresholds tuned on **dev** only "
        "(`bench/eval_amd.py --sweep`), **test** is the report. Default `AmdConfig`. "
        "Generated by `bench/eval_amd.py`.",
        "",
        "First verdict = what the bot acts on; final = after a late beep revised a "
        "human/silence verdict to machine. Hard kinds: `human_long` (a person answering with a "
        "whole sentence) and `machine_short` (a one-phrase greeting).",
        "",
    ]
    for mode, by_split in report["modes"].items():
        lines += [f"## Speech from {mode}", ""]
        lines += [
            "| | " + " | ".join(f"{s}" for s in (*SPLITS, "all")) + " |",
            "|---|" + "---|" * (len(SPLITS) + 1),
        ]
        for key in ("first", "final"):
            for c in CLASSES:
                cells = [_pc(by_split[s][key]["per_class"][c]) for s in (*SPLITS, "all")]
                lines.append(f"| {key}: {c} | " + " | ".join(cells) + " |")
            cells = [_pc(by_split[s][key]["human_as_machine"]) for s in (*SPLITS, "all")]
            lines.append(f"| {key}: human taken for machine | " + " | ".join(cells) + " |")
            cells = [
                _pc(by_split[s][key]["per_class_without_hard"]["machine"]) for s in (*SPLITS, "all")
            ]
            lines.append(f"| {key}: machine, without hard | " + " | ".join(cells) + " |")
            cells = [
                _pc(by_split[s][key]["human_as_machine_without_hard"]) for s in (*SPLITS, "all")
            ]
            lines.append(
                f"| {key}: human taken for machine, without hard | " + " | ".join(cells) + " |"
            )
        lines.append("")
        lines += ["Per kind (first verdict / final):", ""]
        lines += ["| kind | " + " | ".join((*SPLITS, "all")) + " |", "|---|---|---|---|"]
        for kind in amd_dataset.KINDS:
            cells = [
                f"{_nN(by_split[s]['first']['per_kind'][kind])} / "
                f"{_nN(by_split[s]['final']['per_kind'][kind])}"
                for s in (*SPLITS, "all")
            ]
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        lines.append("")
        if report.get("words_check"):
            cells = []
            for split in (*SPLITS, "all"):
                w = by_split[split]["words_check"]
                cells.append(
                    f"people {w['to_human']['human']}/{w['checked']['human']}, "
                    f"machines {w['to_human']['machine']}/{w['checked']['machine']}"
                )
            lines += _one_row_table(
                "Words check (a machine by length whose greeting ended within "
                "`words_check_max_ms`, transcribed by the default speech recognition; "
                "taken for a person / checked):",
                "to a person",
                cells,
            )
            cells = []
            for split in (*SPLITS, "all"):
                b = by_split[split]["talk_back"]
                cells.append(
                    f"talked back: people {b['to_human']['human']}/{b['checked']['human']}, "
                    f"machines {b['to_human']['machine']}/{b['checked']['machine']}; "
                    f"people still machines {_nN(b['human_as_machine_after'])}, "
                    f"machines kept {_nN(b['machine_after'])}"
                )
            lines += _one_row_table(
                "A machine that talks back (`talk_back_is_person`): a machine by length or "
                "words whose greeting went quiet without a beep gets the message; a callee "
                "who speaks after that (the set's own speech times) is transcribed, and words "
                "no machine says make a person. Taken for a person / spoke after the cue; "
                "then people still taken for machines, machines still machines:",
                "talk back",
                cells,
            )
        cells = []
        for split in (*SPLITS, "all"):
            t = by_split[split]["talk_over"]
            h = by_split[split]["human_decision"]
            cells.append(
                f"people {h['opening_early']}; machines {t['by_class']['machine']}/"
                f"{t['N']['machine']}, people {t['by_class']['human']}/{t['N']['human']} "
                f"(p50 {t['p50_s']} s, max {t['max_s']} s; beep after: {t['with_beep_after']})"
            )
        lines += _one_row_table(
            "The opening started early (`likely_human_silence_ms`: a short greeting, then that "
            "much silence) and never cut: people; started and cut by a machine verdict "
            "(talk-over until the verdict; all before any beep the voicemail records after):",
            "early opening",
            cells,
        )
        for split in ("test", "all"):
            conf = by_split[split]["first"]["confusion"]
            lines += [
                f"Confusion, {split}, first verdict (rows: truth):",
                "",
                "| truth \\ verdict | " + " | ".join(VERDICTS) + " |",
                "|---|" + "---|" * len(VERDICTS),
            ]
            for c in CLASSES:
                lines.append(f"| {c} | " + " | ".join(str(conf[c][v]) for v in VERDICTS) + " |")
            lines.append("")
        lines += ["| timing | dev | test | all |", "|---|---|---|---|"]

        for label, section, key, scale in _TIMING_ROWS:
            cells = []
            for split in (*SPLITS, "all"):
                v = by_split[split][section][key]
                cells.append("-" if v is None else f"{v * scale:.0f} ms")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        b = by_split["all"]["beep"]
        lines += [
            f"Beeps found: {_nN(b['found'])} beep items (drop cue on the beep "
            f"{_nN(b['cue_on_beep'])}); items without a beep where one was reported: "
            f"{b['false_beep_items']}/{b['no_beep_items']}.",
            "",
        ]
        wrong = [
            r for r in report["rows"][mode] if r["final"] != r["cls"] or r["first"] != r["cls"]
        ]
        if wrong:
            lines += [
                "Wrong first or final verdicts:",
                "",
                "| id | split | kind | first (reason, at) | final | words | greeting |",
                "|---|---|---|---|---|---|---|",
            ]
            for r in wrong:
                lines.append(
                    f"| {r['id']} | {r['split']} | {r['kind']} | {r['first']} "
                    f"({r['first_reason']}, {r['decided_at_s']} s) | {r['final']} | "
                    f"{r['words']} | {r['greeting_s']} |"
                )
            lines.append("")
    lines += [
        "## Config",
        "",
        "```",
        *(f"{k} = {v!r}" for k, v in report["config"].items()),
        "```",
        "",
        f"Run time {report['run_s']} s.",
        "",
    ]
    return "\n".join(lines)


def main_eval(modes: list[str], words: bool = True, voices: str = "espeak") -> None:
    started = time.monotonic()
    items, audio, rate_hz = load_set(voices)
    config = AmdConfig()
    transcribe = default_transcriber() if words and config.words_check else None
    report: dict[str, Any] = {
        "words_check": transcribe is not None,
        "dataset": {
            "version": amd_dataset.DATASET_VERSION,
            "items": len(items),
            "plan_sha256": amd_dataset.plan_sha256(amd_dataset.plan(voices)),
            "voices": voices,
        },
        "config": dataclasses.asdict(config),
        "modes": {},
        "rows": {},
    }
    for mode in modes:
        probs: dict[str, list[float]] | None = None
        if mode == "silero":
            vad = load_silero()
            if vad is None:
                continue
            probs = {uid: speech_probs_silero(pcm, rate_hz, vad) for uid, pcm in audio.items()}
        rows = evaluate(items, audio, rate_hz, config, probs, transcribe)
        report["rows"][mode] = rows
        report["modes"][mode] = {
            "dev": summarise([r for r in rows if r["split"] == "dev"]),
            "test": summarise([r for r in rows if r["split"] == "test"]),
            "all": summarise(rows),
        }
    report["run_s"] = round(time.monotonic() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "amd" if voices == "espeak" else f"amd_{voices}"
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(report))
    for mode, by_split in report["modes"].items():
        for split in (*SPLITS, "all"):
            s = by_split[split]
            cls = ", ".join(f"{c} {_nN(s['first']['per_class'][c])}" for c in CLASSES)
            print(
                f"{mode:7s} {split:5s} first: {cls}; human->machine "
                f"{_nN(s['first']['human_as_machine'])}; final machine "
                f"{_nN(s['final']['per_class']['machine'])}; human p50 "
                f"{s['human_decision']['after_first_end_p50_s']} s after hello; words check "
                f"{s['words_check']}; after talking back: human->machine "
                f"{_nN(s['talk_back']['human_as_machine_after'])}, machines kept "
                f"{_nN(s['talk_back']['machine_after'])}"
            )
    print(f"wrote {RESULTS / (name + '.md')} ({report['run_s']} s)")


# --- sweep (dev only) -----------------------------------------------------------------------

SWEEP = {
    "after_greeting_silence_ms": [300, 400, 500, 600, 700, 800, 900],
    "greeting_max_ms": [1400, 1600, 1800, 2000, 2200],
    "max_words": [6, 100],
}


def main_sweep(modes: list[str]) -> None:
    items, audio, rate_hz = load_set()
    dev = [i for i in items if i["split"] == "dev"]
    results = []
    keys = list(SWEEP)
    for mode in modes:
        probs: dict[str, list[float]] | None = None
        if mode == "silero":
            vad = load_silero()
            if vad is None:
                continue
            probs = {i["id"]: speech_probs_silero(audio[i["id"]], rate_hz, vad) for i in dev}
        for values in itertools.product(*(SWEEP[k] for k in keys)):
            overrides: dict[str, Any] = dict(zip(keys, values, strict=True))
            config = dataclasses.replace(AmdConfig(), **overrides)
            results.append(_sweep_entry(mode, keys, values, dev, audio, rate_hz, config, probs))
            print(json.dumps(results[-1]))
    (RESULTS / "amd_sweep.json").write_text(json.dumps(results, indent=1) + "\n")
    head = ["mode", *keys, "machine_first", "machine_final", "human", "human_as_machine",
            "human_as_machine_easy", "silence", "human_p50_ms"]  # fmt: skip
    lines = [
        "# AMD threshold sweep (dev split only)",
        "",
        f"{len(dev)} dev items; rates are first-verdict shares unless named final; "
        "`_easy`: without the hard kinds. Generated by `bench/eval_amd.py --sweep`.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for e in sorted(results, key=lambda e: (e["mode"], -e["machine_final"], e["human_as_machine"])):
        lines.append("| " + " | ".join(str(e[k]) for k in head) + " |")
    (RESULTS / "amd_sweep.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'amd_sweep.md'}")


def _sweep_entry(
    mode: str,
    keys: list[str],
    values: tuple[int, ...],
    dev: list[dict[str, Any]],
    audio: dict[str, bytes],
    rate_hz: int,
    config: AmdConfig,
    probs: dict[str, list[float]] | None,
) -> dict[str, Any]:
    s = summarise(evaluate(dev, audio, rate_hz, config, probs))
    return {
        "mode": mode,
        **dict(zip(keys, values, strict=True)),
        "machine_first": s["first"]["per_class"]["machine"]["rate"],
        "machine_final": s["final"]["per_class"]["machine"]["rate"],
        "human": s["first"]["per_class"]["human"]["rate"],
        "human_as_machine": s["first"]["human_as_machine"]["rate"],
        "human_as_machine_easy": s["first"]["human_as_machine_without_hard"]["rate"],
        "silence": s["first"]["per_class"]["silence"]["rate"],
        "human_p50_ms": round(1000 * (s["human_decision"]["after_first_end_p50_s"] or 0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sweep", action="store_true", help="dev-only threshold grid")
    parser.add_argument("--mode", choices=["energy", "silero", "both"], default="both")
    parser.add_argument(
        "--no-words", action="store_true", help="without the words check (no speech recognition)"
    )
    parser.add_argument(
        "--voices",
        choices=amd_dataset.VOICE_FAMILIES,
        default="espeak",
        help="the set's voices: espeak-ng (default) or Debian flite's (amd_flite.json / .md)",
    )
    args = parser.parse_args()
    modes = ["energy", "silero"] if args.mode == "both" else [args.mode]
    if args.sweep:
        main_sweep(modes)
        return
    main_eval(modes, words=not args.no_words, voices=args.voices)


if __name__ == "__main__":
    main()
