"""Builds the end-of-turn (turn-taking) evaluation set reproducibly into ``.cache/turn-bench/``.

What a caller says in one turn, on a phone line, with the real end of speech known:

* **complete** turns: one finished utterance, many short ("yep", "agent please", "my bill"),
  many ending in words the transcript rule (``voicebot_pbx.speech.turns.looks_complete``)
  takes for unfinished ("... on my account", "... please", "yes it is", "... four one two");
* **paused** turns: one utterance with a mid-utterance pause of 0.4-1.5 s (seeded uniform)
  before the caller goes on: digit groups ("my customer number is four five two, [pause]
  seven seven one"), unfinished clauses ("I'd like to [pause] book an appointment"),
  hesitations ("um [pause] I need to change my address"). The part before a pause is
  synthesised on its own and ends with a comma or no punctuation (never a full stop), so its
  prosody is unfinished.

Two parts, reported separately by ``bench/bench_turn_end.py``:

* **espeak**: the texts below (new ones, none from ``rasa_project/``, ``bench/stt_dataset.py``
  or the tests; :func:`check_texts_are_new` enforces it) spoken by espeak-ng voice variants
  this project never used before (``VOICES``), speed and pitch drawn per item;
  or, with ``--voices flite`` (written to ``.cache/turn-bench-flite/``), the same texts,
  pauses and commas spoken by Debian flite's English voices (``FLITE_VOICES``), its pace
  drawn per item: the **flite** part in place of the espeak one;
* **recorded** (when the Debian package ``asterisk-core-sounds-en-wav`` is installed): real
  recorded 8 kHz telephone prompts (one human voice, /usr/share/asterisk/sounds/en): short
  ones (< 3 s of speech, transcript ending a sentence) as complete turns, others as paused
  turns with a 0.4-1.5 s silence inserted at an internal word gap (the lowest-energy 60 ms in
  the middle third of the speech, when it is a real gap: 25 dB below the loudest 10 ms).

Every item then goes through a phone line (:func:`phone_line`, as ``stt_dataset.phone_line``
but with sox in repeatable mode, ``-R``, so its dither is the same on every run): 8 kHz,
300-3400 Hz band-pass (sox ``sinc``), a level of -26..-16 dBFS, pink line noise on part of the set
(clean / 30 / 20 / 15 dB SNR; the noise runs through the pauses and the tail), 300 ms of
lead-in and 1.3 s after the speech, a G.711 µ-law round trip. Voice, speed, pitch, pause
lengths, level and SNR come from one RNG seeded with ``SEED``: every run builds the same set.

Writes one 8 kHz int16 WAV per item and ``manifest.json``::

    {"version", "seed", "rate_hz", "items": [{"id", "kind", "part", "text", "segments",
      "voice", "speed", "pitch", "level_dbfs", "snr_db", "speech_start_s", "speech_end_s",
      "pauses": [{"start_s", "end_s", "length_s"}], "wav", "duration_s",
      "before_pause_punct"}, ...]}

``speech_end_s`` is where the spoken audio really ends (last 10 ms frame within 40 dB of
the loudest, measured on the clean source before the line), ``pauses`` the silences between
the segments measured the same way.

    .venv/bin/python bench/turn_dataset.py            # build (skips WAVs already built)
    .venv/bin/python bench/turn_dataset.py --force    # rebuild everything
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import stt_dataset  # noqa: E402

from voicebot_pbx.audio import (  # noqa: E402
    pcm_to_ulaw,
    read_wav,
    resample,
    ulaw_to_pcm,
    write_wav,
)

OUT_DIR = ROOT / ".cache" / "turn-bench"
RATE_HZ = 8000
DATASET_VERSION = 1
SEED = 20270314
LEAD_S = 0.3  # silence (line noise) before the speech: the VAD look-back
TAIL_S = 1.3  # after the speech (the turn ends within end_silence_max_ms of it)
PAUSE_MIN_S = 0.4
PAUSE_MAX_S = 1.5
N_DIGIT_COMPLETE = 48
N_DIGIT_PAUSED = 44
RECORDED_COMPLETE_MAX = 120
RECORDED_PAUSED_MAX = 100
RECORDED_COMPLETE_MAX_S = 3.0
RECORDED_PAUSED_S = (1.5, 6.0)
GAP_DEPTH_DB = 25.0  # an inserted pause needs a real word gap this far below the peak

ASTERISK_EN = Path("/usr/share/asterisk/sounds/en")
ASTERISK_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")

# espeak-ng voice+variants never used by this project before (bench/stt_dataset.py used
# en-us, en-gb, en-us+f3, en-gb-scotland+m3, en-029+f4, en-us-nyc, en-gb-x-rp+f2; bench_pbx
# en-us+m3, en-gb-x-gbcwmd+m2, en-029+m4, en-gb-scotland+f2, en-us+f5, en-gb-x-rp+m6; the
# tests en-us and en-gb).
VOICES = [
    "en-gb-x-rp+f4",
    "en-us+Annie",
    "en-gb+Andy",
    "en-us+klatt3",
    "en-us+m7",
    "en-gb-x-gbcwmd+f1",
]
SNRS: list[float | None] = [None, None, 30.0, 20.0, 15.0]  # None: no line noise
# Debian flite's English voices (``flite -lv``; kal16 is kal at 16 kHz): CMU's slt, rms and
# awb and the kal diphone voice, nearer a human talker than espeak-ng's formant voices. The
# evaluation sets' second voice family (``--voices flite`` here, in answers_dataset.py and
# amd_dataset.py): each item's durations stretched by FLITE_STRETCH_PERCENT (its ``speed``),
# drawn from the set's seed + FLITE_SEED_OFFSET, so the espeak plans do not change.
FLITE_VOICES = ["slt", "rms", "awb", "kal16"]
FLITE_STRETCH_PERCENT = (90, 116)  # [lo, hi)
FLITE_SEED_OFFSET = 100
VOICE_FAMILIES = ("espeak", "flite")

# --- texts ------------------------------------------------------------------------------------

# Finished turns. Many end in a word the transcript rule reads as unfinished (_CONTINUATION_WORDS:
# please, account, number, is, it, that, my, you, on, in, for, ...).
COMPLETE_TEXTS: list[str] = [
    # short answers and requests
    "yup",
    "yeah fine",
    "nah mate",
    "no thanks mate",
    "yes it is",
    "agent please",
    "my bill",
    "that's everything thanks",
    "that's it",
    "that is correct",
    "sure thing",
    "okay then",
    "cheers for that",
    "bye for now then",
    "hello again",
    "sales please",
    "repairs",
    "a person please",
    "an advisor please",
    "customer services please",
    "the gas one",
    "the electricity one",
    "both of them",
    "neither",
    "just the one",
    "all of it",
    "the first one",
    "the second option",
    "go ahead",
    "I think so",
    "not at the moment",
    "maybe later",
    "definitely not",
    "speak to someone",
    "a complaint",
    "new customer",
    "moving home",
    "a refund",
    "my balance",
    "my statement",
    "payments",
    "boiler cover",
    "emergency",
    "yes go on",
    "no that's not right",
    # ending in "please"
    "put me through to a real person please",
    "can I speak to someone please",
    "transfer me please",
    "the billing team please",
    "a callback tomorrow please",
    "read that back to me please",
    "one moment please",
    "the cheapest tariff please",
    "email it to me please",
    "a human please",
    "slow down please",
    # ending in "account" / "number" / "postcode" / "code"
    "what is left to pay on my account",
    "close my account",
    "I'd like to open a new account",
    "I'm calling about my account",
    "there's a problem with my account",
    "can you unlock my account",
    "could you repeat the number",
    "I don't know my customer number",
    "what is my reference number",
    "can you give me your phone number",
    "I've lost my policy number",
    "I want to update my postcode",
    "what's your postcode",
    "I don't have the code",
    "send me a new code",
    "I need a new access code",
    # ending in "is" / "are" / "was" / "am"
    "I'm not sure what it is",
    "I want the cheapest one there is",
    "it's the same as it was",
    "leave it as it is",
    "who is this",
    "where is it",
    "how much is it",
    "that's where I am",
    "who am I speaking to",
    "I know who you are",
    "tell me what the options are",
    "I wonder where my engineer is",
    # ending in "it" / "that" / "this" / "those"
    "yes that's it",
    "no that isn't it",
    "I already paid it",
    "can you fix it",
    "I can't remember that",
    "can you do that",
    "what was that",
    "sorry I missed that",
    "I'm happy with that",
    "yes I agree with that",
    "I can do that",
    "no I'd rather not do that",
    "I don't want this",
    "I need help with this",
    "what are those",
    "I'll take those",
    # ending in "you" / "me" / pronouns and prepositions
    "I was told to call you",
    "I'd like to thank you",
    "I have a question for you",
    "I can hardly hear you",
    "I've already spoken to you",
    "can you switch it on",
    "my heating won't come on",
    "nobody is in",
    "log me in",
    "what's it for",
    "what is this for",
    "who is it from",
    "where did the letter come from",
    "we've moved out so",
    "that's the one I'd like",
    "I'll do it like that",
    "can you tell me what the code is",
    "I don't know where it is",
    "yes that's the one",
    "that's what I'm asking about",
    "I don't know what to do with it",
    # longer, ending in ordinary words
    "I want to pay what I owe today",
    "my boiler has stopped working",
    "can someone come out tomorrow morning",
    "I'd like a paper copy of my bill",
    "please stop sending me letters",
    "how do I read my smart meter",
    "you took too much money last month",
    "I need to talk to someone about debt",
    "I'm locked out of the online portal",
    "can I change my payment date to the fifth",
]

# Turns ending in read-out digits (the transcript rule calls a trailing digit unfinished).
_DIGIT_COMPLETE_FRAMES = [
    "my card ends in {4}",
    "my customer number is {6}",
    "the meter reads {5}",
    "my pin is {4}",
    "extension {3}",
    "it's flat {1}",
    "I'd like option {1}",
    "call me back on oh one {8}",
    "the order number was {7}",
    "my house number is {2}",
    "it's {3} {3}",
    "the code they gave me is {4}",
]

# Paused turns: (before the pause, after it). The first part is spoken on its own ending in a
# comma (or nothing): unfinished prosody.
PAUSED_PAIRS: list[tuple[str, ...]] = [
    ("I'd like to", "book a boiler service"),
    ("I want to", "change my address"),
    ("um", "I need to change my address"),
    ("er", "can you tell me what I owe"),
    ("so", "I got a letter yesterday"),
    ("well", "it's about my payment"),
    ("the thing is", "I've already paid"),
    ("I'm calling because", "my bill went up"),
    ("I was wondering if", "you could help me"),
    ("can you", "send me a copy of my statement"),
    ("could I", "speak to the billing team"),
    ("I need to", "report a fault"),
    ("it's about", "the engineer visit tomorrow"),
    ("I have a question about", "the charges on my statement"),
    ("my name is", "Margaret Ellis"),
    ("my surname is", "Okafor"),
    ("the address is", "fourteen Mill Lane"),
    ("I live at", "twenty two Station Road"),
    ("I moved in on", "the third of March"),
    ("the last payment was", "on Tuesday"),
    ("I paid", "forty pounds"),
    ("what I'd like is", "a paper bill"),
    ("can I", "pay off the rest today"),
    ("hang on", "let me find it"),
    ("let me see", "it's the blue letter"),
    ("just a second", "my wife knows the number"),
    ("hmm", "I'm not sure"),
    ("yeah so basically", "the heating stopped working"),
    ("right so", "I need a new card"),
    ("is it possible to", "spread the payments"),
    ("how do I", "submit a reading online"),
    ("what happens if", "I pay late"),
    ("when will", "the refund arrive"),
    ("I'd like to speak to", "someone in complaints"),
    ("put me through to", "the manager please"),
    ("I'm ringing on behalf of", "my father"),
    ("my daughter usually", "deals with the bills"),
    ("the problem is that", "the meter is outside"),
    ("I think", "you've charged me twice"),
    ("because", "I was away in August"),
    ("and also", "I want to change the date"),
    ("but", "nobody called me back"),
    ("the engineer said", "it would be fixed by now"),
    ("I need the number for", "the emergency team"),
    ("is there", "anyone I can talk to"),
    ("I'm calling from", "the housing association"),
    ("my account", "was closed by mistake"),
    ("it says here", "I owe ninety pounds"),
    ("I got a text saying", "my payment failed"),
    ("we're moving to", "a new flat in May"),
    ("I'd like to set up", "a new payment date"),
    ("the bill is in", "my late husband's name"),
    ("could you tell me", "when the next reading is due"),
    ("I want to know", "why it doubled"),
    ("sorry", "can you say that again"),
    ("oh", "and one more thing"),
    ("actually", "I'd rather pay by card"),
    ("so um", "what are the options"),
    ("my landlord", "wants a final reading"),
    ("the smart meter", "shows an error"),
    ("I've been trying to", "get through all morning"),
    ("is it", "too late to change my tariff"),
    ("what's the", "cheapest plan you have"),
    ("I need to give you", "a meter reading"),
    ("can you check if", "my payment went through"),
    ("I haven't received", "my welcome pack"),
    ("who do I talk to about", "a refund"),
    ("the old supplier", "still takes money"),
    ("my neighbour", "has no power either"),
    ("there's a", "strange noise from the meter"),
    ("the number on the letter is", "seven one three"),
    ("extension", "two one four"),
    ("I'd like to pay", "the full amount"),
    ("it started", "about a week ago"),
    ("the direct debit", "came out early"),
    ("do I need to", "be at home"),
    ("my partner and I", "want a joint account"),
    ("I'm not sure if", "this is the right number"),
    ("yes and", "I also need a receipt"),
    ("no but", "I'd like a call back"),
    ("um", "er", "it's about the gas"),
    ("I'd like to", "um", "cancel my boiler cover"),
]

# Digit groups read with a pause between them (the commonest mid-turn pause on an IVR).
_DIGIT_PAUSED_FRAMES = [
    ("my customer number is {3}", "{3}"),
    ("my customer number is {4}", "{4}"),
    ("the reference is {3}", "{3}"),
    ("my mobile is oh seven {3}", "{3}", "{3}"),
    ("it's {3}", "{3}"),
    ("{3}", "{3} {2}"),
    ("my card ends in {2}", "{2}"),
    ("the meter reads {3}", "{2}"),
    ("my policy number is {4}", "{4}", "{2}"),
    ("the pin is {2}", "{2}"),
    ("it's order {3}", "{4}"),
]

_QUESTION_START = re.compile(
    r"^(what|what's|where|who|how|when|which|why|can|could|is|do|does|are)\b", re.IGNORECASE
)


def _digits(rng: random.Random, n: int) -> str:
    return " ".join(stt_dataset.DIGIT_WORDS[rng.randrange(10)] for _ in range(n))


def _fill(frame: str, rng: random.Random) -> str:
    return re.sub(r"\{(\d)\}", lambda m: _digits(rng, int(m.group(1))), frame)


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def forbidden_texts() -> set[str]:
    """Texts already used by the project: rasa_project's data, bench/stt_dataset.py's texts,
    string literals of the tests and of the other benchmarks (normalised)."""
    found = {_norm(t) for t in stt_dataset.IVR_TEXTS}
    for path in (ROOT / "rasa_project").rglob("*.yml"):
        for line in path.read_text(errors="replace").splitlines():
            found.add(_norm(line.strip().lstrip("-").strip()))
    # Not scanned: this set's own files, and the answers set (another held-out evaluation
    # set, tuning nothing here; its "yes it is" is a marker of a wrong answer).
    mine = {Path(__file__).name, "bench_turn_end.py", "answers_dataset.py"}
    sources = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").glob("*.py")]
    for path in sources:
        if path.name in mine:
            continue
        for match in re.finditer(r"\"([^\"\n]{2,200})\"|'([^'\n]{2,200})'", path.read_text()):
            found.add(_norm(match.group(1) or match.group(2)))
    found.discard("")
    return found


def check_texts_are_new(texts: list[str]) -> None:
    taken = forbidden_texts()
    reused = sorted({t for t in texts if _norm(t) in taken})
    if reused:
        raise SystemExit(f"texts already used elsewhere in the project: {reused}")


# --- plan -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Plan:
    id: str
    kind: str  # "complete" | "paused"
    part: str  # "espeak" | "flite" | "recorded"
    text: str
    segments: list[str]
    pauses_s: list[float]  # inserted silence after each segment but the last
    voice: str
    speed: int
    pitch: int
    level_dbfs: float
    snr_db: float | None
    commas: list[bool] = field(default_factory=list)  # a comma ends each non-final segment
    source: str = ""  # recorded: the prompt WAV


def _speaker(
    rng: random.Random, index: int, voices: list[str], snrs: list[float | None]
) -> dict[str, object]:
    return {
        "voice": voices[index % len(voices)],
        "snr_db": snrs[index % len(snrs)],
        "speed": rng.randrange(140, 186),
        "pitch": rng.randrange(30, 76),
        "level_dbfs": round(rng.uniform(-26.0, -16.0), 1),
    }


def espeak_plan() -> list[Plan]:
    rng = random.Random(SEED)
    complete = COMPLETE_TEXTS + [
        _fill(rng.choice(_DIGIT_COMPLETE_FRAMES), rng) for _ in range(N_DIGIT_COMPLETE)
    ]
    paused: list[tuple[str, ...]] = list(PAUSED_PAIRS)
    for _ in range(N_DIGIT_PAUSED):
        frame = rng.choice(_DIGIT_PAUSED_FRAMES)
        paused.append(tuple(_fill(part, rng) for part in frame))
    plans: list[Plan] = []
    for kind, groups in (("complete", [(t,) for t in complete]), ("paused", paused)):
        voices = [VOICES[i % len(VOICES)] for i in range(len(groups))]
        snrs = [SNRS[i % len(SNRS)] for i in range(len(groups))]
        rng.shuffle(voices)
        rng.shuffle(snrs)
        for index, segments in enumerate(groups):
            s = _speaker(rng, index, voices, snrs)
            pauses = [round(rng.uniform(PAUSE_MIN_S, PAUSE_MAX_S), 3) for _ in segments[1:]]
            commas = [rng.random() < 0.75 for _ in segments[1:]]
            plans.append(
                Plan(
                    id=f"esp-{kind[0]}{index:03d}",
                    kind=kind,
                    part="espeak",
                    text=" ".join(segments),
                    segments=list(segments),
                    pauses_s=pauses,
                    voice=f"espeak:{s['voice']}",
                    speed=int(str(s["speed"])),
                    pitch=int(str(s["pitch"])),
                    level_dbfs=float(str(s["level_dbfs"])),
                    snr_db=None if s["snr_db"] is None else float(str(s["snr_db"])),
                    commas=commas,
                )
            )
    return plans


def family_folder(folder: Path, voices: str, sep: str = "_") -> Path:
    """A set's folder for the ``voices`` family: ``folder`` itself for espeak (the first),
    else beside it with the family's name after ``sep``."""
    if voices not in VOICE_FAMILIES:
        raise ValueError(f"unknown voice family {voices!r} (one of {VOICE_FAMILIES})")
    return folder if voices == "espeak" else folder.with_name(f"{folder.name}{sep}{voices}")


def require_speaker(voices: str) -> None:
    """Exit with one line when the ``voices`` family's synthesiser or sox is missing."""
    speaker = "flite" if voices == "flite" else "espeak-ng"
    if shutil.which(speaker) is None or shutil.which("sox") is None:
        raise SystemExit(f"{speaker} and sox are needed (scripts/install installs them)")


def out_dir(voices: str = "espeak") -> Path:
    """Where the set whose synthetic part the ``voices`` family speaks is written."""
    return family_folder(OUT_DIR, voices, "-")


def flite_plan() -> list[Plan]:
    """The espeak plan's texts, pauses and commas spoken by flite's voices (the flite part:
    ids ``fli-...``), each item's voice and pace drawn again."""
    rng = random.Random(SEED + FLITE_SEED_OFFSET)
    plans = espeak_plan()
    names = [FLITE_VOICES[i % len(FLITE_VOICES)] for i in range(len(plans))]
    rng.shuffle(names)
    for plan, name in zip(plans, names, strict=True):
        plan.id = "fli-" + plan.id.removeprefix("esp-")
        plan.part = "flite"
        plan.voice = f"flite:{name}"
        plan.speed = rng.randrange(*FLITE_STRETCH_PERCENT)
        plan.pitch = 0
    return plans


def asterisk_transcripts() -> dict[str, str]:
    """Debian's published transcripts of its recorded Asterisk prompts (file stem -> text,
    whitespace collapsed; descriptions such as "[beep]" included)."""
    texts: dict[str, str] = {}
    for line in gzip.open(ASTERISK_TRANSCRIPTS, "rt", encoding="utf-8", errors="replace"):
        name, sep, text = line.partition(":")
        if sep and not line.startswith(";"):
            texts[name.strip()] = re.sub(r"\s+", " ", text.strip())
    return texts


def recorded_plan() -> list[Plan]:
    if not ASTERISK_TRANSCRIPTS.exists() or not ASTERISK_EN.is_dir():
        return []
    texts = asterisk_transcripts()
    complete: list[tuple[str, str, Path]] = []
    paused: list[tuple[str, str, Path]] = []
    for wav in sorted(ASTERISK_EN.glob("*.wav")):
        text = texts.get(wav.stem, "")
        if not text or "[" in text or text.startswith("..."):
            continue
        x, rate = _clean_samples(wav)
        start, end = speech_bounds(x, rate)
        speech_s = (end - start) / rate
        sentence = text.endswith((".", "!", "?")) and not text.endswith("...")
        if sentence and speech_s < RECORDED_COMPLETE_MAX_S:
            complete.append((wav.stem, text, wav))
        elif (
            RECORDED_PAUSED_S[0] <= speech_s <= RECORDED_PAUSED_S[1]
            and len(text.split()) >= 3
            and not re.search(r"[.!?]\s", text)  # one sentence: the gap is inside it
        ):
            if word_gap(x[start:end], rate) is not None:
                paused.append((wav.stem, text, wav))
    rng = random.Random(SEED + 1)
    rng.shuffle(complete)
    rng.shuffle(paused)
    complete = sorted(complete[:RECORDED_COMPLETE_MAX])
    paused = sorted(paused[:RECORDED_PAUSED_MAX])
    plans: list[Plan] = []
    for kind, chosen in (("complete", complete), ("paused", paused)):
        snrs = [SNRS[i % len(SNRS)] for i in range(len(chosen))]
        rng.shuffle(snrs)
        for index, (name, text, wav) in enumerate(chosen):
            pauses = [round(rng.uniform(PAUSE_MIN_S, PAUSE_MAX_S), 3)] if kind == "paused" else []
            plans.append(
                Plan(
                    id=f"rec-{kind[0]}-{name}",
                    kind=kind,
                    part="recorded",
                    text=text,
                    segments=[text],
                    pauses_s=pauses,
                    voice="asterisk:en",
                    speed=0,
                    pitch=0,
                    level_dbfs=round(rng.uniform(-26.0, -16.0), 1),
                    snr_db=snrs[index],
                    source=str(wav),
                )
            )
    return plans


# --- audio ------------------------------------------------------------------------------------

FloatArray = npt.NDArray[np.float64]
_FRAME_S = 0.01


def _clean_samples(path: Path) -> tuple[FloatArray, int]:
    pcm, rate = read_wav(path)
    if rate != RATE_HZ:
        pcm, rate = resample(pcm, rate, RATE_HZ), RATE_HZ
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64), rate


def _frame_db(x: FloatArray, rate: int) -> FloatArray:
    n = int(rate * _FRAME_S)
    frames = x[: x.size // n * n].reshape(-1, n)
    rms = np.sqrt(np.mean(frames**2, axis=1)) + 1e-9
    db: FloatArray = 20 * np.log10(rms / 32768.0)
    return db


def _speech_threshold_db(db: FloatArray) -> float:
    return max(float(db.max()) - 40.0, float(np.percentile(db, 5)) + 10.0)


def speech_bounds(x: FloatArray, rate: int) -> tuple[int, int]:
    """[start, end) sample indices of the speech: first/last 10 ms frame within 40 dB of the
    loudest one (and 10 dB above the floor)."""
    db = _frame_db(x, rate)
    voiced = np.flatnonzero(db > _speech_threshold_db(db))
    if voiced.size == 0:
        raise ValueError("no speech")
    n = int(rate * _FRAME_S)
    return int(voiced[0]) * n, min(x.size, (int(voiced[-1]) + 1) * n)


def word_gap(speech: FloatArray, rate: int) -> int | None:
    """Sample index of the centre of the quietest 60 ms in the middle third of ``speech``
    when it is a real gap between words (GAP_DEPTH_DB below the loudest 10 ms), else None."""
    db = _frame_db(speech, rate)
    if db.size < 12:
        return None
    window = 6  # 60 ms of 10 ms frames
    power = 10 ** (db / 10)
    mean_db = 10 * np.log10(np.convolve(power, np.ones(window) / window, mode="valid"))
    lo, hi = db.size // 3, 2 * db.size // 3 - window
    if hi <= lo:
        return None
    best = lo + int(np.argmin(mean_db[lo:hi]))
    if mean_db[best] > db.max() - GAP_DEPTH_DB:
        return None
    return int((best + window / 2) * rate * _FRAME_S)


def _synthetic_segment(text: str, plan: Plan, final: bool, comma: bool) -> FloatArray:
    if final:
        spoken = text + ("?" if _QUESTION_START.match(text) else ".")
    else:
        spoken = text + ("," if comma else "")
    return synthetic_speech(spoken, plan.voice, plan.speed, plan.pitch)


def synthetic_speech(text: str, voice: str, speed: int, pitch: int) -> FloatArray:
    """``text`` in a set item's ``voice``, "espeak:<voice+variant>" (``speed`` in words per
    minute, ``pitch``) or "flite:<voice>" (``speed``: its durations stretched, in percent;
    no pitch), at 8 kHz, cut to its speech."""
    family, name = voice.split(":", 1)
    if family == "flite":
        return flite_speech(text, name, speed / 100.0)
    return espeak_speech(text, name, speed, pitch)


def espeak_speech(text: str, voice: str, speed: int, pitch: int) -> FloatArray:
    """``text`` spoken by espeak-ng at 8 kHz, cut to its speech (:func:`speech_bounds`)."""
    x = np.frombuffer(espeak_pcm(text, voice, speed, pitch), dtype="<i2").astype(np.float64)
    start, end = speech_bounds(x, RATE_HZ)
    return x[start:end]


def flite_speech(text: str, voice: str, stretch: float = 1.0) -> FloatArray:
    """``text`` spoken by a flite voice at 8 kHz (:func:`flite_pcm`), cut to its speech."""
    x = np.frombuffer(flite_pcm(text, voice, stretch), dtype="<i2").astype(np.float64)
    start, end = speech_bounds(x, RATE_HZ)
    return x[start:end]


def _to_pcm(x: FloatArray) -> bytes:
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


def _sox(args: list[str], data: bytes) -> bytes:
    """sox in repeatable mode (-R: its dither's random generator has a fixed seed)."""
    out: bytes = subprocess.run(
        ["sox", "-q", "-R", *args], input=data, check=True, capture_output=True
    ).stdout
    return out


def _raw() -> list[str]:
    return ["-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1", "-r", str(RATE_HZ)]


def espeak_pcm(text: str, voice: str, speed: int, pitch: int) -> bytes:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    return _sox(["-t", "wav", "-", *_raw(), "-"], wav)


def flite_pcm(text: str, voice: str, stretch: float) -> bytes:
    """``text`` spoken by one of Debian flite's voices (``flite -lv``), its durations
    stretched by ``stretch`` (1.0: the voice's own pace), as 8 kHz int16 PCM."""
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "flite.wav"
        subprocess.run(
            [
                "flite",
                "-voice",
                voice,
                "--setf",
                f"duration_stretch={stretch:.3f}",
                "-t",
                text,
                "-o",
                str(wav),
            ],
            check=True,
            capture_output=True,
        )
        return _sox([str(wav), *_raw(), "-"], b"")


def band_limit(x: FloatArray) -> FloatArray:
    out = _sox([*_raw(), "-", *_raw(), "-", "sinc", "300-3400"], _to_pcm(x))
    return np.frombuffer(out, dtype="<i2").astype(np.float64)


def phone_line(speech: FloatArray, *, level_dbfs: float, snr_db: float | None, seed: int) -> bytes:
    """Clean 8 kHz speech -> band-limited, levelled, LEAD_S before and TAIL_S after, pink line
    noise at ``snr_db`` (speech RMS over the voiced samples : noise RMS) through the whole
    clip, G.711 µ-law round trip. Never clips (the clip is scaled down instead)."""
    band = band_limit(speech)
    voiced = band[np.abs(band) > 0.01 * (np.abs(band).max() or 1.0)]
    speech_rms = float(np.sqrt(np.mean(voiced**2))) if voiced.size else 1.0
    band *= 32768.0 * 10 ** (level_dbfs / 20) / speech_rms
    signal = np.concatenate(
        [np.zeros(round(LEAD_S * RATE_HZ)), band, np.zeros(round(TAIL_S * RATE_HZ))]
    )
    if snr_db is not None:
        raw = stt_dataset._pink(signal.size, np.random.default_rng(seed))
        raw = band_limit(raw / np.sqrt(np.mean(raw**2)) * 3000.0)
        target_rms = 32768.0 * 10 ** (level_dbfs / 20) / 10 ** (snr_db / 20)
        signal = signal + raw * (target_rms / float(np.sqrt(np.mean(raw**2))))
    peak = float(np.abs(signal).max())
    if peak > 32000:
        signal *= 32000 / peak
    return ulaw_to_pcm(pcm_to_ulaw(_to_pcm(signal)))


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    kind: str
    part: str
    text: str
    segments: list[str]
    voice: str
    speed: int
    pitch: int
    level_dbfs: float
    snr_db: float | None
    speech_start_s: float
    speech_end_s: float
    pauses: list[dict[str, float]]
    wav: str
    duration_s: float
    # espeak: the punctuation that ended each segment before a pause ("," or "": none)
    before_pause_punct: list[str]


def render(plan: Plan) -> tuple[FloatArray, float, float, list[dict[str, float]]]:
    """Clean speech with the pauses inserted; (samples, speech start, speech end, pauses) in
    seconds from the start of the speech (before the lead-in)."""
    pauses: list[dict[str, float]] = []
    if plan.part in ("espeak", "flite"):
        pieces: list[FloatArray] = []
        t = 0.0
        for i, segment in enumerate(plan.segments):
            final = i == len(plan.segments) - 1
            x = _synthetic_segment(segment, plan, final, final or plan.commas[i])
            pieces.append(x)
            t += x.size / RATE_HZ
            if not final:
                gap = round(plan.pauses_s[i] * RATE_HZ)
                pieces.append(np.zeros(gap))
                pauses.append({"start_s": t, "end_s": t + gap / RATE_HZ})
                t += gap / RATE_HZ
        speech = np.concatenate(pieces)
        start, end = 0.0, speech.size / RATE_HZ
    else:
        x, rate = _clean_samples(Path(plan.source))
        lo, hi = speech_bounds(x, rate)
        x = x[lo:hi]
        if plan.kind == "paused":
            cut = word_gap(x, rate)
            assert cut is not None
            gap = round(plan.pauses_s[0] * RATE_HZ)
            speech = np.concatenate([x[:cut], np.zeros(gap), x[cut:]])
            # the pause as heard: from the last voiced frame before the cut to the first after
            db = _frame_db(speech, rate)
            voiced = db > _speech_threshold_db(_frame_db(x, rate))
            n = int(rate * _FRAME_S)
            cut_frame = cut // n
            before = np.flatnonzero(voiced[:cut_frame])
            after = np.flatnonzero(voiced[cut_frame:]) + cut_frame
            pauses.append(
                {
                    "start_s": (int(before[-1]) + 1) * _FRAME_S if before.size else cut / rate,
                    "end_s": int(after[0]) * _FRAME_S if after.size else (cut + gap) / rate,
                }
            )
        else:
            speech = x
        start, end = 0.0, speech.size / RATE_HZ
    return speech, start, end, pauses


def build(
    folder: Path | None = None,
    *,
    force: bool = False,
    recorded: bool = True,
    voices: str = "espeak",
) -> Path:
    """The set whose synthetic part the ``voices`` family speaks, in ``folder`` (default:
    :func:`out_dir`); the recorded part is the same in every family."""
    folder = out_dir(voices) if folder is None else folder
    require_speaker(voices)
    synthetic = flite_plan() if voices == "flite" else espeak_plan()
    plans = synthetic + (recorded_plan() if recorded else [])
    check_texts_are_new([p.text for p in synthetic])
    wav_dir = folder / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    items: list[Item] = []
    for plan in plans:
        samples, start, end, pauses = render(plan)
        path = wav_dir / f"{plan.id}.wav"
        if force or not path.exists():
            seed = int(hashlib.sha256(plan.id.encode()).hexdigest()[:8], 16)
            pcm = phone_line(samples, level_dbfs=plan.level_dbfs, snr_db=plan.snr_db, seed=seed)
            write_wav(path, pcm, RATE_HZ)
        duration = len(read_wav(path)[0]) / 2 / RATE_HZ
        items.append(
            Item(
                id=plan.id,
                kind=plan.kind,
                part=plan.part,
                text=plan.text,
                segments=plan.segments,
                voice=plan.voice,
                speed=plan.speed,
                pitch=plan.pitch,
                level_dbfs=plan.level_dbfs,
                snr_db=plan.snr_db,
                speech_start_s=round(LEAD_S + start, 3),
                speech_end_s=round(LEAD_S + end, 3),
                pauses=[
                    {
                        "start_s": round(LEAD_S + p["start_s"], 3),
                        "end_s": round(LEAD_S + p["end_s"], 3),
                        "length_s": round(p["end_s"] - p["start_s"], 3),
                    }
                    for p in pauses
                ],
                wav=f"wav/{plan.id}.wav",
                duration_s=round(duration, 3),
                before_pause_punct=["," if c else "" for c in plan.commas],
            )
        )
    manifest = folder / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "version": DATASET_VERSION,
                "seed": SEED,
                "rate_hz": RATE_HZ,
                "items": [asdict(i) for i in items],
            },
            indent=1,
        )
    )
    return manifest


def load_manifest(folder: Path = OUT_DIR) -> list[dict[str, object]]:
    data = json.loads((folder / "manifest.json").read_text())
    items: list[dict[str, object]] = data["items"]
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="default: by --voices")
    parser.add_argument("--voices", choices=VOICE_FAMILIES, default="espeak")
    parser.add_argument("--force", action="store_true", help="rebuild every WAV")
    parser.add_argument("--no-recorded", action="store_true", help="the synthetic part only")
    args = parser.parse_args()
    manifest = build(args.out, force=args.force, recorded=not args.no_recorded, voices=args.voices)
    counts: dict[str, int] = {}
    for item in load_manifest(manifest.parent):
        key = f"{item['part']}/{item['kind']}"
        counts[key] = counts.get(key, 0) + 1
    print(f"{manifest}: {sum(counts.values())} items {dict(sorted(counts.items()))}")


if __name__ == "__main__":
    main()
