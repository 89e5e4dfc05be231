"""Barge-in decisions offline: real interruptions against coughs, noise and backchannels.

While the bot speaks, a barge-in needs ``vad.barge_in_min_speech_ms`` of caller speech at
the raised VAD threshold (``vad.barge_in_threshold``). Shorter means the bot stops sooner
for a caller who interrupts, and more often for a cough. Before that, the bot pauses at the
first window of speech over it (``vad.barge_in_pause_at_onset``), or at the first window of
a sound ``vad.barge_in_level_db`` over the line's floor, which the VAD must then confirm.
This runs a seeded set through the real silero VAD and the real ``TurnTaker`` (bot speaking
from the start) for several settings and reports, per setting:

- **interruptions** ("wait", "hold on", "sorry, where is your office", ...; 6 espeak-ng
  voice variants no other set uses): detected n/N, true speech onset -> barge-in decision
  p50 / p95 ms (the decision is when the VAD window that completes the time ends);
- **coughs and noise** (brown-noise bursts shaped like coughs, clicks, breaths, a door):
  barge-ins n/N (each one pauses the bot until the transcript comes back empty);
- **backchannels** ("uh-huh", "mm-hm", "okay", "right", "yeah"): barge-ins n/N (the session
  resumes the reply once the transcript is a backchannel; fewer is better);
- **pauses at onset**: true onset -> bot quiet p50 / p95 for interruptions, how many
  noises and backchannels pause the bot and for how long (a gap in its speech) when they
  are not barge-ins, and interruptions whose pause was cancelled before the barge-in.

Every item goes through the phone line of ``bench/stt_dataset.py`` (8 kHz, band-pass, level,
pink line noise at 20 dB SNR on half, µ-law), after half a second of the same line (its
own lead-in: the noise runs on before the sound, as on a call). Not modelled: line echo of
the bot (the echo gate in ``call/listener`` runs before the VAD and the level test and does
not depend on these settings).

    .venv/bin/python bench/bench_barge_in.py   # -> bench/results/barge_in.json / .md
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stt_dataset import RATE_HZ, espeak_pcm, phone_line  # noqa: E402
from voicebot_pbx.config import VadConfig  # noqa: E402
from voicebot_pbx.models import SILERO_VAD, model_path  # noqa: E402
from voicebot_pbx.speech.turns import (  # noqa: E402
    BargeIn,
    BargeInCancelled,
    BargeInOnset,
    TurnTaker,
)
from voicebot_pbx.speech.vad import WINDOW_MS, SileroVad, VadStream  # noqa: E402

SEED = 20270402
VOICES = ["en-us+m2", "en-gb+f5", "en-029+m1", "en-gb-x-gbclan+m4", "en-us+Alicia", "en-gb+Mike"]
INTERRUPTIONS = [
    "wait",
    "stop",
    "hold on",
    "sorry, where is your office",
    "no, I meant my gas bill",
    "can I speak to someone",
    "that's not what I asked",
    "excuse me",
    "hang on a second",
    "actually I want to pay now",
]
BACKCHANNELS = ["uh-huh", "mm-hm", "okay", "right", "yeah"]
WINDOW_S = WINDOW_MS / 1000.0
LEVEL_DB = VadConfig().barge_in_level_db
VOICING = VadConfig().barge_in_level_voicing
# (barge_in_min_speech_ms, barge_in_threshold, barge_in_level_db, barge_in_level_voicing)
SETTINGS = [
    (120, 0.6, LEVEL_DB, VOICING),
    (120, 0.6, 0.0, VOICING),
    (120, 0.6, LEVEL_DB, 0.0),
    (120, 0.6, LEVEL_DB, 0.4),
    (120, 0.6, LEVEL_DB, 0.6),
    (120, 0.6, 10.0, VOICING),
    (120, 0.6, 20.0, VOICING),
    (200, 0.6, LEVEL_DB, VOICING),
    (100, 0.6, LEVEL_DB, VOICING),
    (120, 0.7, LEVEL_DB, VOICING),
    (160, 0.5, LEVEL_DB, VOICING),
]
Window = tuple[float, float, float, bytes]  # (start s, probability, level dBFS, audio)


@dataclass(frozen=True, slots=True)
class Item:
    kind: str  # "interruption" | "noise" | "backchannel"
    label: str
    pcm: bytes
    onset_s: float  # true onset of the sound in pcm


def _sox_noise(kind: str, rng: random.Random) -> bytes:
    """A cough-like brown-noise burst, a click, a breath or a door knock (clean, 8 kHz)."""
    raw = ["-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1", "-r", str(RATE_HZ)]
    if kind == "cough":
        length = rng.uniform(0.15, 0.4)
        effect = ["synth", f"{length:.3f}", "brownnoise", "fade", "q", "0.01", f"{length:.3f}"]
        effect += [f"{length * 0.6:.3f}", "gain", "-n", "-3"]
    elif kind == "click":
        effect = ["synth", "0.012", "whitenoise", "gain", "-n", "-1"]
    elif kind == "breath":
        length = rng.uniform(0.3, 0.6)
        effect = ["synth", f"{length:.3f}", "pinknoise", "fade", "t", f"{length * 0.4:.3f}"]
        effect += [f"{length:.3f}", f"{length * 0.5:.3f}", "gain", "-n", "-12"]
    else:  # knock: two short low thumps
        effect = ["synth", "0.06", "brownnoise", "lowpass", "400", "gain", "-n", "-2"]
        effect += ["pad", "0", "0.12", "repeat", "1"]
    out = subprocess.run(
        ["sox", "-R", "-q", "-n", *raw, "-", *effect], check=True, capture_output=True
    ).stdout
    return bytes(out)


def _onset_s(pcm: bytes) -> float:
    """First 10 ms frame within 35 dB of the loudest (the clean signal)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    frame = RATE_HZ // 100
    n = x.size // frame
    db = 10 * np.log10(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-9)
    return float(np.argmax(db > db.max() - 35.0)) * 0.01


def build_items() -> list[Item]:
    rng = random.Random(SEED)
    items: list[Item] = []

    def add(kind: str, label: str, clean: bytes, index: int) -> None:
        level = rng.uniform(-24.0, -16.0)
        snr = 20.0 if index % 2 else None
        line_clean, _ = phone_line(clean, level_dbfs=level, snr_db=None, noise="pink", seed=index)
        line, _ = phone_line(clean, level_dbfs=level, snr_db=snr, noise="pink", seed=index)
        items.append(Item(kind, label, line, _onset_s(line_clean)))

    index = 0
    for text in INTERRUPTIONS:
        for voice in rng.sample(VOICES, 4):
            speech = espeak_pcm(text, voice, rng.randint(140, 185), rng.randint(35, 65))
            add("interruption", f"{text} [{voice}]", speech, index)
            index += 1
    for text in BACKCHANNELS:
        for voice in rng.sample(VOICES, 6):
            speech = espeak_pcm(text, voice, rng.randint(140, 185), rng.randint(35, 65))
            add("backchannel", f"{text} [{voice}]", speech, index)
            index += 1
    for kind in ("cough", "cough", "click", "breath", "knock"):
        for _ in range(8):
            add("noise", kind, _sox_noise(kind, rng), index)
            index += 1
    return items


def windows(vad: SileroVad, pcm: bytes) -> list[Window]:
    """The item's VAD windows after half a second of its own line (the lead-in before the
    sound, repeated): the VAD's state and the line's noise floor settle as on a call."""
    stream = VadStream(vad, RATE_HZ)
    lead = pcm[: 2 * RATE_HZ // 4]  # 250 ms of the item's lead-in (line noise or silence)
    before = (lead * 2)[: 2 * RATE_HZ // 2]
    return [
        (w.start_s - 0.5, w.prob, w.level_dbfs, w.pcm) for w in stream.process_windows(before + pcm)
    ]


@dataclass(frozen=True, slots=True)
class Pauses:
    """What the bot does over one item: its pauses at onset (quiet from, speaking again at
    or None) and when the barge-in was decided (end of the deciding window), if it was."""

    spans: list[tuple[float, float | None]]
    barge_in_s: float | None

    @property
    def first_s(self) -> float | None:
        return self.spans[0][0] if self.spans else None


def pauses(wins: list[Window], config: VadConfig) -> Pauses:
    """With ``barge_in_pause_at_onset``: every pause of the bot (end of the window that
    gives ``BargeInOnset`` to the end of the one that gives ``BargeInCancelled``) until a
    barge-in, which keeps it quiet."""
    taker = TurnTaker(replace(config, barge_in_pause_at_onset=True))
    taker.set_bot_speaking(True)
    spans: list[tuple[float, float | None]] = []
    for window_s, prob, level, pcm in wins:
        for action in taker.on_vad(prob, window_s, level, pcm=pcm):
            if isinstance(action, BargeInOnset):
                spans.append((window_s + WINDOW_S, None))
            elif isinstance(action, BargeInCancelled) and spans:
                spans[-1] = (spans[-1][0], window_s + WINDOW_S)
            elif isinstance(action, BargeIn):
                return Pauses(spans, window_s + WINDOW_S)
    return Pauses(spans, None)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def evaluate(
    items: list[Item],
    wins: list[list[Window]],
    settings: list[tuple[int, float, float, float]] = SETTINGS,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for min_speech_ms, threshold, level_db, min_voicing in settings:
        config = replace(
            VadConfig(),
            barge_in_min_speech_ms=min_speech_ms,
            barge_in_threshold=threshold,
            barge_in_level_db=level_db,
            barge_in_level_voicing=min_voicing,
        )
        delays: list[float] = []
        quiet: list[float] = []  # onset -> the bot paused
        paused = {"noise": 0, "backchannel": 0}
        gaps: list[float] = []  # a noise's or backchannel's pause that ended (ms)
        resumed_early = 0  # interruptions whose pause was cancelled before the barge-in
        counts = {"interruption": 0, "noise": 0, "backchannel": 0}
        totals = {"interruption": 0, "noise": 0, "backchannel": 0}
        fired: list[str] = []
        for item, w in zip(items, wins, strict=True):
            totals[item.kind] += 1
            spans = pauses(w, config)
            first = spans.first_s
            if first is not None:
                if item.kind == "interruption":
                    quiet.append((first - item.onset_s) * 1000.0)
                    resumed_early += any(end is not None for _, end in spans.spans)
                else:
                    paused[item.kind] += 1
                    if spans.barge_in_s is None:
                        gaps.extend((end - start) * 1000.0 for start, end in spans.spans if end)
            decided = spans.barge_in_s
            if decided is None:
                continue
            counts[item.kind] += 1
            if item.kind == "interruption":
                delays.append((decided - item.onset_s) * 1000.0)
            elif item.kind == "noise":
                fired.append(item.label)
        p50, p95 = percentile(delays, 0.5), percentile(delays, 0.95)
        rows.append(
            {
                "barge_in_min_speech_ms": min_speech_ms,
                "barge_in_threshold": threshold,
                "barge_in_level_db": level_db,
                "barge_in_level_voicing": min_voicing,
                "interruptions_detected": counts["interruption"],
                "interruptions": totals["interruption"],
                "onset_to_decision_ms_p50": None if p50 is None else round(p50, 1),
                "onset_to_decision_ms_p95": None if p95 is None else round(p95, 1),
                "noise_barge_ins": counts["noise"],
                "noises": totals["noise"],
                "noise_kinds_fired": sorted(set(fired)),
                "backchannel_barge_ins": counts["backchannel"],
                "backchannels": totals["backchannel"],
                "onset_to_pause_ms_p50": _round(percentile(quiet, 0.5)),
                "onset_to_pause_ms_p95": _round(percentile(quiet, 0.95)),
                "noise_pauses": paused["noise"],
                "backchannel_pauses": paused["backchannel"],
                "gap_ms_p50": _round(percentile(gaps, 0.5)),
                "gap_ms_p95": _round(percentile(gaps, 0.95)),
                "gaps": len(gaps),
                "interruptions_resumed_before_barge_in": resumed_early,
            }
        )
    return rows


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def markdown(rows: list[dict[str, Any]], run_s: float) -> str:
    lines = [
        "# Barge-in decisions (bench/bench_barge_in.py)",
        "",
        f"Seed {SEED}; run {run_s:.0f} s. Onset: true start of the sound; decision: end of "
        "the VAD window that completes the needed speech.",
        "",
        "| min speech ms | threshold | level dB (0: off) | voicing | interruptions detected"
        " | onset → decision p50 / p95 ms | coughs/noise that barge in"
        " | backchannels that barge in | with the pause at onset: onset → bot quiet p50 / p95 ms"
        " | noises / backchannels that pause the bot | their gaps p50 / p95 ms (n)"
        " | interruptions resumed before the barge-in |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['barge_in_min_speech_ms']} | {r['barge_in_threshold']:g} | "
            f"{r['barge_in_level_db']:g} | {r['barge_in_level_voicing']:g} | "
            f"{r['interruptions_detected']}/{r['interruptions']} | "
            f"{r['onset_to_decision_ms_p50']} / {r['onset_to_decision_ms_p95']} | "
            f"{r['noise_barge_ins']}/{r['noises']} ({', '.join(r['noise_kinds_fired']) or '-'}) | "
            f"{r['backchannel_barge_ins']}/{r['backchannels']} | "
            f"{r['onset_to_pause_ms_p50']} / {r['onset_to_pause_ms_p95']} | "
            f"{r['noise_pauses']}/{r['noises']} / {r['backchannel_pauses']}/{r['backchannels']} | "
            f"{r['gap_ms_p50']} / {r['gap_ms_p95']} ({r['gaps']}) | "
            f"{r['interruptions_resumed_before_barge_in']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--settings",
        nargs="+",
        metavar="MS:THRESHOLD[:LEVEL_DB[:VOICING]]",
        help="barge_in_min_speech_ms:barge_in_threshold[:barge_in_level_db"
        f"[:barge_in_level_voicing]] (defaults {LEVEL_DB:g}, {VOICING:g}; settings: "
        + " ".join(":".join(f"{v:g}" for v in setting) for setting in SETTINGS)
        + ")",
    )
    args = parser.parse_args()
    settings = SETTINGS
    if args.settings:
        settings = []
        for x in args.settings:
            ms, t, *rest = x.split(":")
            level = float(rest[0]) if rest else LEVEL_DB
            min_voicing = float(rest[1]) if len(rest) > 1 else VOICING
            settings.append((int(ms), float(t), level, min_voicing))
    started = time.perf_counter()
    items = build_items()
    vad = SileroVad(model_path(SILERO_VAD))
    wins = [windows(vad, item.pcm) for item in items]
    rows = evaluate(items, wins, settings)
    run_s = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"seed": SEED, "voices": VOICES, "rows": rows, "run_s": round(run_s, 1)}
    (args.out / "barge_in.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(rows, run_s)
    (args.out / "barge_in.md").write_text(text)
    print(text)
    counts = {k: sum(i.kind == k for i in items) for k in ("interruption", "noise", "backchannel")}
    print(f"set: {counts}; onsets median {statistics.median(i.onset_s for i in items):.2f} s")


if __name__ == "__main__":
    main()
