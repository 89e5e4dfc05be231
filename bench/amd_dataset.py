"""Builds the answering-machine detection evaluation set (issue #23 item 2) reproducibly into
``bench/results/amd_set/``.

The first seconds of an answered outbound call, as the bot receives them:

* **human** ``human_short``: a person picks up and says a short greeting ("hello?", "Sarah
  speaking", "hello, who's this?"), then waits in silence for the caller; a third of them say
  "hello?" again after 1.8-2.6 s of silence;
* **human** ``human_long`` (hard): a person who answers with a whole sentence ("Good afternoon,
  Riverside Vets, this is Emma, how can I help you today?"), 2-4 s of speech;
* **machine** ``machine``: voicemail greetings of 2-3 sentences in three lengths (short
  opener + closer, medium, long; and carrier voicemail announcements), sentences apart by
  0.2-0.8 s as a person reading a greeting pauses; 60 % end with a beep: a sine of 400-2000 Hz,
  0.2-1.5 s, 0.2-1.0 s after the greeting, -6..+3 dB against the speech, 5 ms ramps;
* **machine** ``machine_short`` (hard): a greeting of one short phrase ("Leave a message."),
  most with a beep;
* **silence** ``silence``: nobody speaks: digital silence or line noise (-65..-40 dBFS), some with
  a pick-up click.

Each item's texts are spoken by espeak-ng (``VOICES``: voice+variants no other dataset,
benchmark or test of this project uses; every voice speaks both humans and machines, so the
voice tells nothing about the class), speed and pitch drawn per item; then the phone line of
``bench/turn_dataset.py`` (imported, not copied): 300-3400 Hz band, a level of -26..-16 dBFS,
pink line noise on part of the set (30 / 20 / 15 dB SNR), G.711 µ-law round trip, 8 kHz int16
WAV. The answer comes ``turn_dataset.LEAD_S`` plus 0-0.6 s (humans) or 0-1.2 s (machines)
before the first word. The texts are not checked for reuse elsewhere in the project as the
other sets' are: the detector uses no words, only when sound is heard.

A seeded split per kind (``SPLIT_SEED``; 40 % ``dev`` to tune thresholds on, the rest
``test`` to report). Everything comes from RNGs seeded with ``SEED`` (line noise: a hash of
the item id), so every run writes the same bytes.

Writes one WAV per item and ``manifest.json``::

    {"version", "seed", "split_seed", "rate_hz", "plan_sha256", "items": [{"id", "cls",
      "kind", "split", "segments", "pauses_s", "voice", "speed", "pitch", "level_dbfs",
      "snr_db", "lead_s", "tail_s", "beep_hz", "beep_s", "beep_gap_s", "beep_rel_db",
      "noise_dbfs", "click", "wav", "speech_start_s", "first_end_s", "speech_end_s", "beep_start_s",
      "beep_end_s", "sha256", "duration_s"}, ...]}

Truth times are seconds from the answer (the WAV's start): ``first_end_s`` is where the first
utterance ends (a human's "hello?": the human-answer budget counts from there),
``speech_end_s`` where the last one ends, ``beep_end_s`` where the tone stops; all measured on
the clean audio before the line. Generation is skipped when the manifest's ``plan_sha256``
matches the plan and every WAV is there with its recorded hash.

    .venv/bin/python bench/amd_dataset.py           # build (skips when up to date)
    .venv/bin/python bench/amd_dataset.py --force   # rebuild every WAV
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import seeded_set  # noqa: E402
import stt_dataset  # noqa: E402
import turn_dataset  # noqa: E402

from voicebot_pbx.audio import pcm_to_ulaw, ulaw_to_pcm  # noqa: E402

OUT_DIR = ROOT / "bench" / "results" / "amd_set"
RATE_HZ = turn_dataset.RATE_HZ
DATASET_VERSION = 1
SEED = 20270523
SPLIT_SEED = 23052027
INFO = seeded_set.SetInfo(DATASET_VERSION, SEED, SPLIT_SEED, RATE_HZ)  # the manifest header
DEV_SHARE = 0.4

# espeak-ng voice+variants nobody else in this project speaks with (bench/stt_dataset.py,
# bench_pbx.py, turn_dataset.py, answers_dataset.py, bench_barge_in.py, eval_balance.py and the
# tests take en-us, en-gb, en-us+f3/f5/f2/f4/m1/m2/m3/m4/m7, en-gb-scotland+m3/f2/m4,
# en-029+f4/m4/m1, en-us-nyc, en-gb-x-rp+f2/m6/f4/edward/m8/f3, en-gb-x-gbcwmd+m2/f1,
# en-gb-x-gbclan+f1/m4, en-us+Annie/klatt3/paul/Alicia, en-gb+Andy/f1/f5/Mike/m5).
VOICES = [
    "en-us+linda",
    "en-gb-scotland+f5",
    "en-029+f1",
    "en-gb-x-gbclan+m2",
    "en-us+john",
    "en-gb+belinda",
    "en-gb-x-rp+m5",
    "en-us+max",
]
# The flite family (--voices flite, written to amd_set_flite/): the same items, texts,
# pauses, beeps and line, spoken by bench/turn_dataset.py's FLITE_VOICES instead, each
# item's durations stretched by FLITE_STRETCH_PERCENT (its ``speed``); drawn from
# SEED + FLITE_SEED_OFFSET, the espeak plan unchanged.
FLITE_VOICES = turn_dataset.FLITE_VOICES
FLITE_STRETCH_PERCENT = turn_dataset.FLITE_STRETCH_PERCENT
FLITE_SEED_OFFSET = turn_dataset.FLITE_SEED_OFFSET
VOICE_FAMILIES = turn_dataset.VOICE_FAMILIES
SNRS: list[float | None] = [None, None, 30.0, 20.0, 15.0]  # None: no line noise
SPEED = (140, 186)  # espeak words per minute, [lo, hi)
PITCH = (30, 76)

KINDS = ("human_short", "human_long", "machine", "machine_short", "silence")
CLASS_OF = {
    "human_short": "human",
    "human_long": "human",
    "machine": "machine",
    "machine_short": "machine",
    "silence": "silence",
}
HARD_KINDS = ("human_long", "machine_short")

# --- texts ----------------------------------------------------------------------------------

HUMAN_SHORT = [
    "hello?",
    "hello.",
    "yes?",
    "yeah, hello?",
    "hello, who's this?",
    "Sarah speaking.",
    "hi, Sarah speaking.",
    "hello, Mike here.",
    "good morning.",
    "yep?",
    "hello, who is it?",
    "speaking.",
    "hi there.",
    "Tom speaking.",
    "afternoon.",
    "yes, hello?",
    "hiya.",
    "hello, this is Priya.",
    "who's calling?",
    "hello, Jenkins.",
    "morning, Dave here.",
    "yes, who is it?",
    "hi, hello?",
    "hello there.",
    "Karen speaking, hello?",
    "yeah?",
    "hello, Ben speaking.",
    "hi, it's Nadia.",
    "evening.",
    "hello, yes?",
]
HUMAN_REPEATS = ["hello?", "hello? anyone there?", "hello? who is this?"]
HUMAN_LONG = [
    "Good afternoon, Riverside Vets, this is Emma, how can I help you today?",
    "Hello, Mark speaking, sorry I'm just in the car, who is this please?",
    "Hi, yes, this is Deborah, I was expecting your call about the kitchen.",
    "Hello, you're through to Alan at the garage, what can I do for you?",
    "Yes, hello, it's Grace, I can't really hear you very well, hold on a second.",
    "Hello, Hargreaves and Sons, Peter speaking, how can I help?",
    "Hi, this is Jamal, if this is about the parcel just leave it by the door.",
    "Morning, Oakwood Surgery reception, Linda speaking, how may I help?",
]
OPENERS = [
    "Hi, you've reached Sarah.",
    "Hello, this is Daniel's phone.",
    "Hey, it's Chris.",
    "You've reached the Patel family.",
    "Hi, this is Megan, sorry I missed your call.",
    "Thanks for calling Greenfield Plumbing.",
    "Hello, you have reached the voicemail of James Carter.",
    "Hi, it's Lucy.",
    "Hello, this is Doctor Amir Hassan.",
    "Hiya, you've got Becky.",
]
MIDDLES = [
    "I can't get to the phone right now.",
    "We're not available at the moment.",
    "Our office is now closed.",
    "I'm either on the other line or away from my desk.",
    "Our opening hours are nine till five, Monday to Friday.",
    "I'm out of the office until Monday.",
    "If this is urgent, please call my mobile instead.",
]
CLOSERS = [
    "Please leave a message after the beep.",
    "Leave your name and number and I'll call you back.",
    "Leave a message and I'll get back to you as soon as I can.",
    "Please leave a message after the tone.",
    "Thanks, bye.",
    "Speak after the beep.",
]
CARRIER = [
    ["The person you are calling is not available.", "Please leave a message after the tone."],
    [
        "The number you have dialled is not available.",
        "Please record your message after the tone.",
    ],
    [
        "Your call has been forwarded to an automated voice messaging system.",
        "Please record your message after the tone.",
    ],
]
MACHINE_SHORT = [
    "Leave a message.",
    "Not here, leave a message.",
    "It's Jo, leave a message.",
    "Speak after the tone.",
    "Message, please.",
    "Sam, leave a message.",
]

N_MACHINE = 40
N_MACHINE_SHORT = 8
N_MACHINE_SHORT_BEEP = 6
N_SILENCE = 12
MACHINE_BEEP_SHARE = 0.6
SENTENCE_PAUSE_S = (0.2, 0.8)
REPEAT_PAUSE_S = (1.8, 2.6)
BEEP_HZ = (400.0, 2000.0)
BEEP_S = (0.2, 1.5)
BEEP_GAP_S = (0.2, 1.0)
BEEP_REL_DB = (-6.0, 3.0)
BEEP_RAMP_S = 0.005
SILENCE_S = 5.0
NOISE_DBFS = (-65.0, -40.0)


@dataclass(slots=True)
class Item:
    id: str
    cls: str  # human | machine | silence
    kind: str
    split: str
    segments: list[str]
    pauses_s: list[float]  # silence after each segment but the last
    voice: str
    speed: int
    pitch: int
    level_dbfs: float
    snr_db: float | None
    lead_s: float  # extra silence before the first word (the line adds turn_dataset.LEAD_S)
    tail_s: float  # silence after the speech or the beep (the line adds turn_dataset.TAIL_S)
    beep_hz: float | None = None
    beep_s: float | None = None
    beep_gap_s: float | None = None
    beep_rel_db: float | None = None
    noise_dbfs: float | None = None  # silence: the line noise (None: digital silence)
    click: bool = False
    wav: str = ""
    # truth (seconds from the answer), measured when rendered
    speech_start_s: float | None = None
    first_end_s: float | None = None
    speech_end_s: float | None = None
    beep_start_s: float | None = None
    beep_end_s: float | None = None
    sha256: str = ""
    duration_s: float = 0.0


_TRUTH = (
    "speech_start_s",
    "first_end_s",
    "speech_end_s",
    "beep_start_s",
    "beep_end_s",
    "sha256",
    "duration_s",
)

# --- plan -----------------------------------------------------------------------------------


def _texts(rng: random.Random) -> list[tuple[str, list[str], bool]]:
    """(kind, segments, beep) for every item, in kind order."""
    out: list[tuple[str, list[str], bool]] = []
    repeats = set(rng.sample(range(len(HUMAN_SHORT)), len(HUMAN_SHORT) // 3))
    for index, text in enumerate(HUMAN_SHORT):
        segments = [text, rng.choice(HUMAN_REPEATS)] if index in repeats else [text]
        out.append(("human_short", segments, False))
    out.extend(("human_long", [text], False) for text in HUMAN_LONG)
    lengths = ["short", "medium", "long", "carrier"]
    beeps = [i < round(N_MACHINE * MACHINE_BEEP_SHARE) for i in range(N_MACHINE)]
    rng.shuffle(beeps)
    for index in range(N_MACHINE):
        length = lengths[index % len(lengths)]
        if length == "carrier":
            segments = list(CARRIER[(index // len(lengths)) % len(CARRIER)])
        else:
            middles = {"short": 0, "medium": 1, "long": 2}[length]
            segments = [
                rng.choice(OPENERS),
                *rng.sample(MIDDLES, middles),
                rng.choice(CLOSERS),
            ]
        out.append(("machine", segments, beeps[index]))
    for index in range(N_MACHINE_SHORT):
        text = MACHINE_SHORT[index % len(MACHINE_SHORT)]
        out.append(("machine_short", [text], index < N_MACHINE_SHORT_BEEP))
    out.extend(("silence", [], False) for _ in range(N_SILENCE))
    return out


def splits(items: list[Item]) -> dict[str, str]:
    """Item id -> "dev" | "test": per kind, a seeded shuffle; the first 40 % is dev."""
    rng = random.Random(SPLIT_SEED)
    result: dict[str, str] = {}
    for kind in KINDS:
        ids = [i.id for i in items if i.kind == kind]
        rng.shuffle(ids)
        n_dev = round(len(ids) * DEV_SHARE)
        for index, uid in enumerate(ids):
            result[uid] = "dev" if index < n_dev else "test"
    return result


def out_dir(voices: str = "espeak") -> Path:
    """Where the set spoken by the ``voices`` family is written."""
    return turn_dataset.family_folder(OUT_DIR, voices)


def plan(voices: str = "espeak") -> list[Item]:
    """Every item with its texts, voice, line and beep settings: deterministic from SEED.
    The flite family is the espeak plan with each speaking item's voice and pace drawn
    again (SEED + FLITE_SEED_OFFSET): same texts, pauses, beeps, line and split."""
    out_dir(voices)  # a known family
    items = _espeak_plan()
    if voices == "flite":
        rng = random.Random(SEED + FLITE_SEED_OFFSET)
        speaking = [item for item in items if item.kind != "silence"]
        names = [FLITE_VOICES[i % len(FLITE_VOICES)] for i in range(len(speaking))]
        rng.shuffle(names)
        for item, name in zip(speaking, names, strict=True):
            item.voice = f"flite:{name}"
            item.speed = rng.randrange(*FLITE_STRETCH_PERCENT)
            item.pitch = 0
    return items


def _espeak_plan() -> list[Item]:
    rng = random.Random(SEED)
    texts = _texts(rng)
    voices = [VOICES[i % len(VOICES)] for i in range(len(texts))]
    snrs = [SNRS[i % len(SNRS)] for i in range(len(texts))]
    rng.shuffle(voices)
    rng.shuffle(snrs)
    counters = dict.fromkeys(KINDS, 0)
    prefix = {
        "human_short": "hs",
        "human_long": "hl",
        "machine": "mg",
        "machine_short": "ms",
        "silence": "si",
    }
    items: list[Item] = []
    for index, (kind, segments, beep) in enumerate(texts):
        uid = f"{prefix[kind]}{counters[kind]:03d}"
        counters[kind] += 1
        cls = CLASS_OF[kind]
        if kind == "human_short":
            pauses = [round(rng.uniform(*REPEAT_PAUSE_S), 3) for _ in segments[1:]]
        else:
            pauses = [round(rng.uniform(*SENTENCE_PAUSE_S), 3) for _ in segments[1:]]
        lead = rng.uniform(0.0, 0.6 if cls == "human" else 1.2)
        item = Item(
            id=uid,
            cls=cls,
            kind=kind,
            split="",
            segments=list(segments),
            pauses_s=pauses,
            voice=f"espeak:{voices[index]}",
            speed=rng.randrange(*SPEED),
            pitch=rng.randrange(*PITCH),
            level_dbfs=round(rng.uniform(-26.0, -16.0), 1),
            snr_db=snrs[index],
            lead_s=round(lead, 3),
            tail_s=round(rng.uniform(3.0, 4.0) if cls == "human" else 2.5, 3),
            wav=f"wav/{uid}.wav",
        )
        if beep:
            item.beep_hz = round(rng.uniform(*BEEP_HZ), 1)
            item.beep_s = round(rng.uniform(*BEEP_S), 3)
            item.beep_gap_s = round(rng.uniform(*BEEP_GAP_S), 3)
            item.beep_rel_db = round(rng.uniform(*BEEP_REL_DB), 1)
            item.tail_s = 1.0
        if kind == "silence":
            item.voice, item.speed, item.pitch = "", 0, 0
            item.lead_s, item.tail_s = 0.0, SILENCE_S
            noise = rng.uniform(*NOISE_DBFS) if index % 4 else None
            item.level_dbfs, item.snr_db = 0.0, None
            item.noise_dbfs = None if noise is None else round(noise, 1)
            item.click = rng.random() < 0.5
        items.append(item)
    split_of = splits(items)
    for item in items:
        item.split = split_of[item.id]
    return items


def plan_sha256(items: list[Item]) -> str:
    """The whole plan and the line's constants: the set is rebuilt when any of it changes."""
    planned = [{k: v for k, v in asdict(i).items() if k not in _TRUTH} for i in items]
    settings = {
        "version": DATASET_VERSION,
        "rate_hz": RATE_HZ,
        "lead_s": turn_dataset.LEAD_S,
        "tail_s": turn_dataset.TAIL_S,
        "beep_ramp_s": BEEP_RAMP_S,
        "items": planned,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


# --- audio ----------------------------------------------------------------------------------


def tone(hz: float, length_s: float, rms: float, rate_hz: int = RATE_HZ) -> np.ndarray:
    """A sine of ``rms`` with raised-cosine ramps of BEEP_RAMP_S (a voicemail beep)."""
    n = round(length_s * rate_hz)
    t = np.arange(n) / rate_hz
    x: np.ndarray = np.sin(2 * np.pi * hz * t) * rms * np.sqrt(2.0)
    ramp = min(n // 2, round(BEEP_RAMP_S * rate_hz))
    if ramp:
        shape = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        x[:ramp] *= shape
        x[n - ramp :] *= shape[::-1]
    return x


def _click(rng: np.random.Generator) -> np.ndarray:
    """A pick-up click: 30 ms of decaying noise."""
    n = round(0.03 * RATE_HZ)
    return rng.normal(0.0, 3000.0, n) * np.exp(-np.arange(n) / (0.006 * RATE_HZ))


def _silent_line(item: Item, seed: int) -> bytes:
    """Nobody speaks: line noise at ``noise_dbfs`` (pink, phone band) or digital silence, a
    pick-up click in the first half second when ``click``; as long as a phone_line clip of
    ``tail_s``; µ-law round trip. (phone_line itself would scale its band-pass filter's dither
    up to the speech level when there is no speech.)"""
    rng = np.random.default_rng(seed)
    n = round((turn_dataset.LEAD_S + item.tail_s + turn_dataset.TAIL_S) * RATE_HZ)
    signal = np.zeros(n)
    if item.noise_dbfs is not None:
        raw = stt_dataset._pink(n, rng)
        raw = turn_dataset.band_limit(raw / np.sqrt(np.mean(raw**2)) * 3000.0)
        signal += raw * (32768.0 * 10 ** (item.noise_dbfs / 20) / np.sqrt(np.mean(raw**2)))
    if item.click:
        at = round(rng.uniform(0.05, 0.5) * RATE_HZ)
        click = _click(rng)
        signal[at : at + click.size] += click
    pcm = np.clip(np.rint(signal), -32768, 32767).astype("<i2").tobytes()
    return ulaw_to_pcm(pcm_to_ulaw(pcm))


def render(item: Item) -> bytes:
    """The item's phone-line audio (8 kHz int16 PCM); fills in the item's truth times."""
    seed = int(hashlib.sha256(f"amd:{item.id}".encode()).hexdigest()[:8], 16)
    if item.kind == "silence":
        return _silent_line(item, seed)
    lead = turn_dataset.LEAD_S
    pieces: list[np.ndarray] = [np.zeros(round(item.lead_s * RATE_HZ))]
    t = item.lead_s
    speech_rms: list[float] = []
    for index, text in enumerate(item.segments):
        x = turn_dataset.synthetic_speech(text, item.voice, item.speed, item.pitch)
        speech_rms.append(float(np.sqrt(np.mean(x**2))))
        if index == 0:
            item.speech_start_s = round(lead + t, 3)
        pieces.append(x)
        t += x.size / RATE_HZ
        if index == 0:
            item.first_end_s = round(lead + t, 3)
        if index < len(item.pauses_s):
            pieces.append(np.zeros(round(item.pauses_s[index] * RATE_HZ)))
            t += item.pauses_s[index]
    item.speech_end_s = round(lead + t, 3)
    if item.beep_hz is not None:
        assert item.beep_s and item.beep_gap_s is not None and item.beep_rel_db is not None
        gap = round(item.beep_gap_s * RATE_HZ)
        rms = float(np.mean(speech_rms)) * 10 ** (item.beep_rel_db / 20)
        beep = tone(item.beep_hz, item.beep_s, rms)
        pieces.extend([np.zeros(gap), beep])
        t += gap / RATE_HZ
        item.beep_start_s = round(lead + t, 3)
        t += beep.size / RATE_HZ
        item.beep_end_s = round(lead + t, 3)
    pieces.append(np.zeros(round(item.tail_s * RATE_HZ)))
    signal = np.concatenate(pieces)
    return turn_dataset.phone_line(
        signal, level_dbfs=item.level_dbfs, snr_db=item.snr_db, seed=seed
    )


def up_to_date(folder: Path, items: list[Item]) -> bool:
    """The manifest matches the plan and every WAV is there with its recorded hash."""
    return seeded_set.up_to_date(folder, items, plan_sha256(items))


def build(
    folder: Path | None = None, *, force: bool = False, voices: str = "espeak"
) -> tuple[Path, bool]:
    """(manifest path, whether anything was generated): the set spoken by the ``voices``
    family, in ``folder`` (default: :func:`out_dir`)."""
    items = plan(voices)
    return seeded_set.build_if_stale(
        out_dir(voices) if folder is None else folder,
        items,
        plan_sha256(items),
        render,
        INFO,
        asdict,
        force=force,
        before_writing=lambda: turn_dataset.require_speaker(voices),
    )


def load_manifest(folder: Path = OUT_DIR) -> list[dict[str, object]]:
    data = json.loads((folder / "manifest.json").read_text())
    items: list[dict[str, object]] = data["items"]
    return items


def counts(items: list[Item] | None = None) -> dict[str, dict[str, int]]:
    """kind -> split -> number of items."""
    result: dict[str, dict[str, int]] = {}
    for item in items if items is not None else plan():
        by_split = result.setdefault(item.kind, {"dev": 0, "test": 0})
        by_split[item.split] += 1
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="default: by --voices")
    parser.add_argument("--voices", choices=VOICE_FAMILIES, default="espeak")
    parser.add_argument("--force", action="store_true", help="rebuild every WAV")
    args = parser.parse_args()
    manifest, made = build(args.out, force=args.force, voices=args.voices)
    print(
        f"{manifest}: {'built' if made else 'up to date'}, "
        f"{len(load_manifest(manifest.parent))} items {counts()}"
    )


if __name__ == "__main__":
    main()
