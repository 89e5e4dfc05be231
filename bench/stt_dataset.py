"""Builds the STT benchmark test set reproducibly into ``.cache/stt-bench/``.

Two parts:

* **synthetic** (always): IVR requests, numbers, dates, times, names and amounts (the texts
  below: hand-written ones plus templated ones drawn with a fixed seed), spoken by several
  voices (espeak-ng variants and the packaged Piper voice at three speeds), then put through
  what a phone line does: 8 kHz, a 300-3400 Hz band-pass (sox ``sinc``), a level between
  -26 and -16 dBFS, background noise (pink or babble-like, seeded) at clean / 20 / 10 / 5 dB
  SNR over the whole clip, 300 ms of lead-in (VAD look-back) and 300 ms after the speech, and a
  G.711 µ-law round trip. Voice, speed, level, noise kind and SNR are drawn from one seeded RNG
  per utterance, so every run (and every machine with the same espeak-ng/Piper) builds the same
  set.
* **real** (when the Debian package ``asterisk-core-sounds-en-wav`` and its transcript list
  ``asterisk-core-sounds-en`` are installed): real recorded 8 kHz telephone prompts (one
  studio voice) with their published transcripts, through the same µ-law round trip.
  Prompts whose transcript is a description (``[beep]``), or shorter than 0.6 s / longer than
  20 s, are skipped.

Writes one 8 kHz int16 WAV per utterance and ``manifest.json``::

    {"version": ..., "utterances": [{"id", "part", "voice", "snr_db", "noise", "reference",
      "spoken", "wav", "duration_s", "speech_s"}, ...]}

``reference`` is what the caller says, written as words (the WER normaliser in
``bench/bench_stt.py`` maps both sides to one form); ``spoken`` is the text given to the
synthesiser (the same text; spelled-out where a synthesiser would read digits differently).

    .venv/bin/python bench/stt_dataset.py            # build (skips files already built)
    .venv/bin/python bench/stt_dataset.py --force    # rebuild everything
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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from voicebot_pbx.audio import pcm_to_ulaw, read_wav, resample, ulaw_to_pcm, write_wav  # noqa: E402

OUT_DIR = ROOT / ".cache" / "stt-bench"
RATE_HZ = 8000
DATASET_VERSION = 1
SEED = 20261125
N_TEMPLATED = 130
LEAD_MS = 300
TAIL_MS = 300

ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
REAL_MAX = 150

# --- texts ------------------------------------------------------------------------------------

# Realistic things callers say to an energy company's IVR (hand-written).
IVR_TEXTS: list[str] = [
    "what are your opening hours",
    "I want to speak to an agent",
    "can I talk to a real person please",
    "I'd like to pay my bill",
    "I want to report a gas leak",
    "there is no power in my house",
    "my electricity has been cut off",
    "I need to submit a meter reading",
    "how do I change my tariff",
    "I'm moving house next month",
    "can you tell me my account balance",
    "I think my bill is wrong",
    "why is my bill so high this month",
    "I want to set up a direct debit",
    "cancel my direct debit please",
    "I'd like to make a complaint",
    "where are you located",
    "what time do you close on Saturday",
    "yes",
    "no",
    "yes please",
    "no thank you",
    "that's right",
    "that's all thanks",
    "sorry can you repeat that",
    "I didn't catch that",
    "operator",
    "billing",
    "technical support",
    "I want to switch to a fixed plan",
    "do you have a cheaper plan",
    "I need a new smart meter",
    "my smart meter is not sending readings",
    "the display on my meter is blank",
    "can I get a copy of my last statement",
    "please send it to my email address",
    "I'd like to update my phone number",
    "I want to change the name on the account",
    "my husband passed away and I need to close his account",
    "is there a power cut in my area",
    "how long will the outage last",
    "I smell gas in the kitchen",
    "I've been waiting for an engineer all day",
    "can I book an engineer visit",
    "I need to reschedule my appointment",
    "I can't afford to pay this month",
    "can I set up a payment plan",
    "do you offer help for vulnerable customers",
    "I'm calling about a letter I received",
    "what is the unit rate for electricity",
    "how much is the standing charge",
    "I want to leave a message for my account manager",
    "hello is anybody there",
    "can you hear me",
    "just a moment please",
    "hold on I'll get my account number",
    "I don't have my account number with me",
    "what's the number for the emergency line",
    "I'm calling on behalf of my mother",
    "please call me back later",
    "the engineer never turned up",
    "I'd like to give a final meter reading",
    "my prepayment meter has run out of credit",
    "how do I top up my key",
    "can I pay by card over the phone",
    "I'd like to register for online account access",
    "I forgot my password",
    "my direct debit went out twice",
    "I want a refund of my credit balance",
    "thank you goodbye",
]

FIRST_NAMES = [
    "Sarah", "James", "Mohammed", "Emily", "Oliver", "Priya", "Daniel", "Grace", "Thomas",
    "Aisha", "William", "Sophie", "Jack", "Chloe", "Harry", "Olivia", "David", "Hannah",
]  # fmt: skip
SURNAMES = [
    "Johnson", "Smith", "Patel", "Brown", "Williams", "Taylor", "Khan", "Wilson", "Davies",
    "Evans", "Thompson", "Wright", "Walker", "Roberts", "Green", "Hughes", "Clarke", "Lewis",
]  # fmt: skip
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ORDINALS = [
    "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
    "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth",
    "seventeenth", "eighteenth", "nineteenth", "twentieth", "twenty first", "twenty second",
    "twenty third", "twenty fourth", "twenty fifth", "twenty sixth", "twenty seventh",
    "twenty eighth",
]  # fmt: skip
MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
]  # fmt: skip
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
HOURS = ["nine", "ten", "eleven", "twelve", "one", "two", "three", "four", "five"]
TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def _digits(rng: random.Random, n: int) -> str:
    return " ".join(DIGIT_WORDS[rng.randrange(10)] for _ in range(n))


def _amount(rng: random.Random) -> str:
    pounds = f"{rng.choice(TENS)} {DIGIT_WORDS[rng.randrange(1, 10)]}"
    if rng.random() < 0.3:
        pounds = f"{DIGIT_WORDS[rng.randrange(1, 10)]} hundred and {pounds}"
    return pounds


def templated_texts(rng: random.Random, n: int) -> list[str]:
    """Numbers, dates, times, names and amounts in realistic request frames."""
    makers = [
        lambda: f"my account number is {_digits(rng, rng.choice([6, 8]))}",
        lambda: f"the reference is {_digits(rng, 5)}",
        lambda: f"my phone number is oh seven {_digits(rng, 9)}",
        lambda: f"my meter reading is {_digits(rng, 5)}",
        lambda: f"my name is {rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}",
        lambda: f"this is {rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)} calling about my bill",
        lambda: f"the account is in the name of {rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}",
        lambda: f"can I book an appointment on the {rng.choice(ORDINALS)} of {rng.choice(MONTHS)}",
        lambda: f"I'm moving out on {rng.choice(MONTHS)} the {rng.choice(ORDINALS)}",
        lambda: f"is {rng.choice(WEEKDAYS)} at {rng.choice(HOURS)} o'clock free",
        lambda: f"can the engineer come at {rng.choice(HOURS)} thirty on {rng.choice(WEEKDAYS)}",
        lambda: f"I paid {_amount(rng)} pounds last week",
        lambda: f"my bill says I owe {_amount(rng)} pounds",
        lambda: f"I'd like to pay {_amount(rng)} pounds today",
        lambda: (
            f"my date of birth is the {rng.choice(ORDINALS)} of {rng.choice(MONTHS)} "
            f"nineteen {rng.choice(TENS[3:])} {DIGIT_WORDS[rng.randrange(1, 10)]}"
        ),
        lambda: f"press {DIGIT_WORDS[rng.randrange(1, 10)]}",
        lambda: f"option {DIGIT_WORDS[rng.randrange(1, 10)]} please",
        lambda: f"the last four digits of my card are {_digits(rng, 4)}",
        lambda: (
            f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)} account number "
            f"{_digits(rng, 6)} I want to pay my bill"
        ),
        lambda: (
            f"I've been a customer for {rng.choice(['two', 'three', 'five', 'ten'])} "
            "years and I want to complain about my last bill which was far too high"
        ),
    ]
    return [rng.choice(makers)() for _ in range(n)]


# --- voices and noise -------------------------------------------------------------------------

ESPEAK_VOICES = [
    "en-us",
    "en-gb",
    "en-us+f3",
    "en-gb-scotland+m3",
    "en-029+f4",
    "en-us-nyc",
    "en-gb-x-rp+f2",
]
PIPER_SPEEDS = [0.9, 1.0, 1.2]  # length_scale
VOICES = [f"espeak:{v}" for v in ESPEAK_VOICES] + [f"piper:joe@{s:g}" for s in PIPER_SPEEDS]
SNRS: list[float | None] = [None, 20.0, 10.0, 5.0]  # None: clean
NOISES = ["pink", "babble"]


@dataclass(frozen=True, slots=True)
class Utterance:
    id: str
    part: str  # "synthetic" | "real"
    voice: str
    snr_db: float | None
    noise: str
    reference: str
    spoken: str
    wav: str  # relative to the dataset folder
    duration_s: float
    speech_s: float


def _sox(args: list[str], data: bytes) -> bytes:
    out: bytes = subprocess.run(
        ["sox", "-q", *args], input=data, check=True, capture_output=True
    ).stdout
    return out


def _raw(rate_hz: int) -> list[str]:
    return ["-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1", "-r", str(rate_hz)]


def espeak_pcm(text: str, voice: str, speed: int, pitch: int) -> bytes:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    return _sox(["-t", "wav", "-", *_raw(RATE_HZ), "-"], wav)


def band_limit(pcm: bytes) -> bytes:
    return _sox([*_raw(RATE_HZ), "-", *_raw(RATE_HZ), "-", "sinc", "300-3400"], pcm)


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def _to_pcm(x: np.ndarray) -> bytes:
    return bytes(np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes())


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    return np.fft.irfft(spectrum / np.sqrt(freqs), n)


def _babble(n: int, rng: np.random.Generator) -> np.ndarray:
    """Speech-shaped, amplitude-modulated noise (a crowd far away): pink noise band-passed to
    the voice band with a 3-6 Hz syllable-rate envelope."""
    base = _pink(n, rng)
    spec = np.fft.rfft(base)
    freqs = np.fft.rfftfreq(n, 1.0 / RATE_HZ)
    spec[(freqs < 200) | (freqs > 3500)] *= 0.1
    shaped = np.fft.irfft(spec, n)
    t = np.arange(n) / RATE_HZ
    env = np.ones(n)
    for _ in range(4):
        env += 0.5 * np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 2 * np.pi))
    return shaped * np.clip(env, 0.1, None)


def phone_line(
    speech: bytes, *, level_dbfs: float, snr_db: float | None, noise: str, seed: int
) -> tuple[bytes, float]:
    """Speech (8 kHz) -> band-limited, levelled, padded, noisy, µ-law round trip.

    Returns (pcm, speech seconds). SNR is speech RMS (over the speech part) to noise RMS.
    """
    band = _samples(band_limit(speech))
    voiced = band[np.abs(band) > 0.01 * (np.abs(band).max() or 1.0)]
    speech_rms = float(np.sqrt(np.mean(voiced**2))) if voiced.size else 1.0
    band *= 32768.0 * 10 ** (level_dbfs / 20) / speech_rms
    lead = np.zeros(RATE_HZ * LEAD_MS // 1000)
    tail = np.zeros(RATE_HZ * TAIL_MS // 1000)
    signal = np.concatenate([lead, band, tail])
    if snr_db is not None:
        rng = np.random.default_rng(seed)
        n = signal.size
        raw = _pink(n, rng) if noise == "pink" else _babble(n, rng)
        raw = _samples(band_limit(_to_pcm(raw / np.sqrt(np.mean(raw**2)) * 3000.0)))
        target_rms = 32768.0 * 10 ** (level_dbfs / 20) / 10 ** (snr_db / 20)
        signal = signal + raw * (target_rms / float(np.sqrt(np.mean(raw**2))))
    peak = float(np.abs(signal).max())
    if peak > 32000:  # never clip: scale the whole clip down
        signal *= 32000 / peak
    pcm = ulaw_to_pcm(pcm_to_ulaw(_to_pcm(signal)))
    return pcm, band.size / RATE_HZ


# --- building -----------------------------------------------------------------------------------


def synthetic_plan() -> list[tuple[str, str, dict[str, float | str | None]]]:
    """(id, text, settings) for every synthetic utterance: deterministic from SEED."""
    rng = random.Random(SEED)
    texts = IVR_TEXTS + templated_texts(rng, N_TEMPLATED)
    plan = []
    # Balanced: every voice and every SNR appears about equally often.
    voices = [VOICES[i % len(VOICES)] for i in range(len(texts))]
    snrs = [SNRS[i % len(SNRS)] for i in range(len(texts))]
    rng.shuffle(voices)
    rng.shuffle(snrs)
    for index, text in enumerate(texts):
        settings: dict[str, float | str | None] = {
            "voice": voices[index],
            "snr_db": snrs[index],
            "noise": rng.choice(NOISES),
            "level_dbfs": round(rng.uniform(-26.0, -16.0), 1),
            "speed": rng.randrange(135, 180),
            "pitch": rng.randrange(35, 70),
        }
        plan.append((f"syn{index:03d}", text, settings))
    return plan


def real_plan() -> list[tuple[str, str, Path]]:
    if not ASTERISK_TRANSCRIPTS.exists() or not ASTERISK_SOUNDS.is_dir():
        return []
    items = []
    for line in gzip.open(ASTERISK_TRANSCRIPTS, "rt", encoding="utf-8", errors="replace"):
        name, sep, text = line.partition(":")
        text = text.strip()
        if not sep or line.startswith(";") or not text or "[" in text or "/" in name:
            continue
        wav = ASTERISK_SOUNDS / f"{name.strip()}.wav"
        if wav.exists():
            items.append((name.strip(), text, wav))
    items.sort()
    rng = random.Random(SEED)
    rng.shuffle(items)
    chosen = []
    for name, text, wav in items:
        pcm, rate = read_wav(wav)
        duration = len(pcm) / 2 / rate
        if 0.6 <= duration <= 20.0:
            chosen.append((f"real-{name}", text, wav))
        if len(chosen) >= REAL_MAX:
            break
    return chosen


def build(out_dir: Path = OUT_DIR, *, force: bool = False, real: bool = True) -> Path:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        raise SystemExit("espeak-ng and sox are needed (scripts/install installs them)")
    wav_dir = out_dir / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    utterances: list[Utterance] = []
    piper = None
    for uid, text, s in synthetic_plan():
        path = wav_dir / f"{uid}.wav"
        voice = str(s["voice"])
        snr = s["snr_db"]
        assert snr is None or isinstance(snr, float)
        if force or not path.exists():
            if voice.startswith("espeak:"):
                speech = espeak_pcm(
                    text, voice.split(":", 1)[1], int(str(s["speed"])), int(str(s["pitch"]))
                )
            else:
                if piper is None:
                    from voicebot_pbx.models import PIPER_JOE, model_path
                    from voicebot_pbx.speech.tts import PiperTts

                    piper = PiperTts(model_path(PIPER_JOE), volume=0.8)
                piper.length_scale = float(voice.rsplit("@", 1)[1])
                speech = piper.synthesize_all(text, RATE_HZ)
            seed = int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16)
            pcm, _speech_s = phone_line(
                speech,
                level_dbfs=float(str(s["level_dbfs"])),
                snr_db=snr,
                noise=str(s["noise"]),
                seed=seed,
            )
            write_wav(path, pcm, RATE_HZ)
        pcm, _rate = read_wav(path)
        duration = len(pcm) / 2 / RATE_HZ
        utterances.append(
            Utterance(
                id=uid,
                part="synthetic",
                voice=voice,
                snr_db=snr,
                noise=str(s["noise"]) if snr is not None else "none",
                reference=text,
                spoken=text,
                wav=f"wav/{uid}.wav",
                duration_s=round(duration, 3),
                speech_s=round(duration - (LEAD_MS + TAIL_MS) / 1000.0, 3),
            )
        )
    for uid, text, src in real_plan() if real else []:
        path = wav_dir / f"{uid}.wav"
        if force or not path.exists():
            pcm, rate = read_wav(src)
            if rate != RATE_HZ:
                pcm = resample(pcm, rate, RATE_HZ)
            lead = bytes(2 * RATE_HZ * LEAD_MS // 1000)
            pcm = ulaw_to_pcm(pcm_to_ulaw(lead + pcm + lead))
            write_wav(path, pcm, RATE_HZ)
        pcm, _rate = read_wav(path)
        duration = len(pcm) / 2 / RATE_HZ
        utterances.append(
            Utterance(
                id=uid,
                part="real",
                voice="asterisk:allison",
                snr_db=None,
                noise="none",
                reference=re.sub(r"\s+", " ", text),
                spoken=text,
                wav=f"wav/{uid}.wav",
                duration_s=round(duration, 3),
                speech_s=round(duration - 2 * LEAD_MS / 1000.0, 3),
            )
        )
    manifest = out_dir / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "version": DATASET_VERSION,
                "seed": SEED,
                "rate_hz": RATE_HZ,
                "utterances": [asdict(u) for u in utterances],
            },
            indent=1,
        )
    )
    return manifest


def load_manifest(out_dir: Path = OUT_DIR) -> list[dict[str, object]]:
    data = json.loads((out_dir / "manifest.json").read_text())
    utterances: list[dict[str, object]] = data["utterances"]
    return utterances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--force", action="store_true", help="rebuild every file")
    parser.add_argument("--no-real", action="store_true", help="synthetic part only")
    args = parser.parse_args()
    manifest = build(args.out, force=args.force, real=not args.no_real)
    items = load_manifest(args.out)
    parts: dict[str, int] = {}
    for u in items:
        parts[str(u["part"])] = parts.get(str(u["part"]), 0) + 1
    print(f"{manifest}: {len(items)} utterances {parts}")


if __name__ == "__main__":
    main()
