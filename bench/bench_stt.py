"""STT benchmark: WER, CPU-seconds per utterance and end-of-speech -> transcript latency.

Test set: ``bench/stt_dataset.py`` (built on first use into ``.cache/stt-bench/``).

1. **Accuracy and cost** per variant (model x input mode x compute type x threads x batch),
   on the same utterances in the same run. CPU is ``time.process_time()`` of this process
   (all threads) around the decodes: the primary cost figure, steadier than wall time on a
   shared machine. Variants:
   ``full`` Whisper's fixed 30 s window (the baseline); ``short<N>`` encoder input
   ``max(N s, utterance + 2 s)`` with the loop guard and full-window fallback;
   ``-b8`` eight utterances decoded as one batch (as the service does when eight calls'
   utterances are queued together); ``-f32`` float32; ``-t2`` two CTranslate2 threads;
   ``-nots`` decoded with the ``<|notimestamps|>`` prompt (``WhisperEngine(timestamps=False)``:
   text tokens only); ``-p1`` one second of padding after the utterance instead of two;
   ``-enc8`` the batch's eight inputs in one encoder call (before: now the encoder takes
   them one by one, back to back, and only the decoder runs the batch).
   ``moonshine-tiny`` the Moonshine engine (``[stt] engine = "moonshine"``, packaged tiny
   model, onnxruntime), one utterance at a time as the session's worker pool runs it;
   ``moonshine-tiny-t2`` with two onnxruntime threads. ``moonshine-base`` the same engine
   on the packaged Moonshine base (``[stt] model = "base"``: converted at install time by
   ``speech/moonshine_convert.py``).
2. **Concurrency**: N simulated calls (1/4/8/16) on one engine, with the service's code path:
   each caller speaks an utterance of the test set (its real length), the decode is submitted
   when the VAD notices the pause (``speech end + VAD lag``; the lag is measured with the real
   silero VAD + turn taker on the test set), the caller waits for the transcript, the bot
   "answers" for 1.5-4 s, the caller speaks again. Calls start at staggered random times.
   Latency = transcript ready - end of speech. A 20 ms ticker on the event loop records how
   late it wakes (pacing of the other calls). Paths: ``pool`` = the previous code (blocking
   ``transcribe`` in the shared 2-thread pool, no batching); ``batcher`` = the engine's
   inference thread with cross-call batching, awaited with ``transcribe_async``.
3. **Vosk** (when a model is installed; the only packaged one is Korean, so cost only): one
   recognizer per call fed only the VAD-gated speech, ``FinalResult`` at the end.

WER normaliser (one, for every variant; ``normalise()`` below):
  NFKC, lower case; "£12.50" -> "12 pounds 50", "$" -> dollars, "%" -> percent, "&" -> and;
  "ok"/"o.k." -> "okay"; hyphens between words -> spaces; then the app's own spoken-form
  normaliser (``voicebot_pbx.answers.normalize.normalize``: number words -> digits, times -> HH:MM,
  dates -> "march 5th", punctuation removed); then fillers (um, uh, er, erm, hmm, mm, ah) are
  dropped, digit words left alone by it ("one") become digits, and every digit string is split
  into single digits ("4567" and "45 67" -> "4 5 6 7"), so a wrong digit costs one word.
WER is corpus-level: total word edits / total reference words, in percent.

    .venv/bin/python bench/bench_stt.py                    # everything (~25 min on 2 cores)
    .venv/bin/python bench/bench_stt.py --quick            # every 4th utterance, fewer variants
Writes bench/results/stt.json and bench/results/stt.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import stt_dataset  # noqa: E402

from voicebot_pbx.answers.normalize import normalize  # noqa: E402
from voicebot_pbx.audio import read_wav  # noqa: E402
from voicebot_pbx.speech.stt import SttResult  # noqa: E402
from voicebot_pbx.speech.stt_split import LengthSplitEngine  # noqa: E402
from voicebot_pbx.speech.whisper import WhisperEngine, WhisperStats, _Request  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BASE_DIR = ROOT / ".cache" / "models" / "whisper-base"  # see bench/README-stt.md

# --- WER -----------------------------------------------------------------------------------------

_DIGIT_WORDS = {
    w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine".split())
}
_FILLERS = {"um", "uh", "er", "erm", "hmm", "mm", "ah"}


def _money(unit: str) -> Callable[[re.Match[str]], str]:
    def sub(m: re.Match[str]) -> str:
        return f"{m[1]} {unit}" + (f" {m[2]}" if m[2] else "")

    return sub


def normalise(text: str) -> list[str]:
    """The benchmark's one WER normaliser (see the module docstring)."""
    t = unicodedata.normalize("NFKC", text).lower()
    t = re.sub(r"£\s?(\d[\d,]*)(?:\.(\d\d))?", _money("pounds"), t)
    t = re.sub(r"\$\s?(\d[\d,]*)(?:\.(\d\d))?", _money("dollars"), t)
    t = t.replace("%", " percent").replace("&", " and ")
    t = re.sub(r"\bo\.k\.?|\bok\b", "okay", t)
    t = re.sub(r"(?<=\w)-(?=\w)", " ", t)
    out: list[str] = []
    for word in normalize(t).split():
        word = word.strip("'")
        if not word or word in _FILLERS:
            continue
        word = _DIGIT_WORDS.get(word, word)
        if word.isdigit():
            out.extend(word)
        else:
            out.append(word)
    return out


def word_errors(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance over words (substitutions + deletions + insertions)."""
    row = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        diag, row[0] = row[0], i
        for j in range(1, len(hyp) + 1):
            above = row[j]
            row[j] = min(row[j] + 1, row[j - 1] + 1, diag + (ref[i - 1] != hyp[j - 1]))
            diag = above
    return row[len(hyp)]


def paired_delta(
    refs: Sequence[str], hyps: Sequence[str], base: Sequence[str], *, rounds: int = 2000
) -> dict[str, float | int]:
    """WER(hyps) - WER(base) on the same utterances, with a 95 % paired bootstrap interval
    (utterances resampled with replacement, seed fixed)."""
    r = [normalise(x) for x in refs]
    diff = [
        word_errors(ref, normalise(h)) - word_errors(ref, normalise(b))
        for ref, h, b in zip(r, hyps, base, strict=True)
    ]
    n = [len(x) for x in r]
    rng = random.Random(12345)
    samples = []
    for _ in range(rounds):
        idx = [rng.randrange(len(diff)) for _ in diff]
        samples.append(100.0 * sum(diff[i] for i in idx) / max(1, sum(n[i] for i in idx)))
    samples.sort()
    return {
        "delta": round(100.0 * sum(diff) / max(1, sum(n)), 2),
        "ci95_low": round(samples[int(0.025 * rounds)], 2),
        "ci95_high": round(samples[int(0.975 * rounds) - 1], 2),
        "worse": sum(1 for d in diff if d > 0),
        "better": sum(1 for d in diff if d < 0),
    }


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    errors = words = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        r = normalise(ref)
        errors += word_errors(r, normalise(hyp))
        words += len(r)
    return 100.0 * errors / max(1, words)


# --- data ----------------------------------------------------------------------------


@dataclass
class Item:
    id: str
    part: str
    voice: str
    snr_db: float | None
    reference: str
    pcm: bytes
    rate_hz: int
    duration_s: float
    speech_end_s: float = 0.0
    vad_lag_s: float | None = None


def load_items(step: int = 1) -> list[Item]:
    manifest = stt_dataset.OUT_DIR / "manifest.json"
    if not manifest.exists():
        print("building the test set (bench/stt_dataset.py) ...", flush=True)
        stt_dataset.build()
    items = []
    for u in stt_dataset.load_manifest()[::step]:
        pcm, rate = read_wav(stt_dataset.OUT_DIR / str(u["wav"]))
        snr = u["snr_db"]
        items.append(
            Item(
                id=str(u["id"]),
                part=str(u["part"]),
                voice=str(u["voice"]),
                snr_db=float(snr) if isinstance(snr, int | float) else None,
                reference=str(u["reference"]),
                pcm=pcm,
                rate_hz=rate,
                duration_s=len(pcm) / 2 / rate,
            )
        )
    return items


def condition(item: Item) -> str:
    if item.part == "real":
        return "real"
    return "clean" if item.snr_db is None else f"{item.snr_db:g}dB"


def measure_vad_lag(items: list[Item]) -> None:
    """Speech end (last frame above -50 dBFS) -> the turn taker's PauseStarted, with the
    real silero VAD and the default VAD config; None when no pause was seen in the clip."""
    from voicebot_pbx.config import VadConfig
    from voicebot_pbx.models import SILERO_VAD, model_path
    from voicebot_pbx.pbx.caller import speech_bounds
    from voicebot_pbx.speech.turns import PauseStarted, TurnTaker
    from voicebot_pbx.speech.vad import SileroVad

    vad = SileroVad(model_path(SILERO_VAD))
    cfg = VadConfig()
    for item in items:
        _start, item.speech_end_s = speech_bounds(item.pcm, item.rate_hz)
        stream = vad.new_stream(item.rate_hz)
        turns = TurnTaker(cfg)
        frame = item.rate_hz // 50 * 2
        pauses: list[float] = []
        # the clip, then silence as the line goes on
        pcm = item.pcm + bytes(item.rate_hz * 2)
        for offset in range(0, len(pcm) - frame + 1, frame):
            for start_s, prob in stream.process_timed(pcm[offset : offset + frame]):
                now_s = start_s + stream.window_s
                for action in turns.on_vad(prob, now_s):
                    if isinstance(action, PauseStarted):
                        pauses.append(now_s)
        after = [p for p in pauses if p >= item.speech_end_s - 0.05]
        item.vad_lag_s = (after[0] - item.speech_end_s) if after else None


# --- engines ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    model: str = "tiny.en"
    mode: str = "short"  # "short" | "full"
    min_input_s: float = 10.0
    compute_type: str = "int8"
    threads: int = 1
    batch: int = 1
    timestamps: bool = True
    pad_s: float = 2.0
    encoder_batch: int = 1
    long_from_s: float | None = None  # the split variant: None = the service's default
    prompt: bool = False  # Whisper: MEASURED_PROMPT as [stt] prompt
    second_opinion: bool = False  # the split: [stt] second_opinion, the shipped vocabulary


# The [stt] prompt measured in bench/README.md "Whisper's prompt" (the setting is off by default).
MEASURED_PROMPT = (
    "Energy supplier's customer line. Balance, bill, account number, postcode, date of "
    "birth, power cut, meter reading, direct debit, tariff, engineer appointment, agent."
)


def model_dir(model: str) -> Path:
    if model == "base":
        return BASE_DIR
    from voicebot_pbx.models import WHISPER_TINY_EN, model_path

    return model_path(WHISPER_TINY_EN)


def make_engine(v: Variant, *, max_batch: int = 8, batch_wait_ms: float = 0.0) -> WhisperEngine:
    return WhisperEngine(
        model_dir(v.model),
        compute_type=v.compute_type,
        cpu_threads=v.threads,
        short_input=v.mode == "short",
        short_min_input_s=v.min_input_s,
        short_pad_s=v.pad_s,
        timestamps=v.timestamps,
        encoder_batch=v.encoder_batch,
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        initial_prompt=MEASURED_PROMPT if v.prompt else "",
    )


def make_split(
    v: Variant, pool: ThreadPoolExecutor, *, max_batch: int = 8
) -> tuple[LengthSplitEngine, WhisperEngine]:
    """``[stt] long_engine = "moonshine"`` (speech/stt_split.py): Whisper tiny.en (the short10
    settings, the service's 2 threads) for utterances under ``long_from_s`` of speech (the
    variant's, else the service's default), the converted Moonshine base in ``pool`` for the
    rest. Returns the split and its Whisper engine (for its stats)."""
    from voicebot_pbx.config import SttConfig
    from voicebot_pbx.speech.stt_load import load_stt

    whisper = make_engine(Variant("short10", threads=2, prompt=v.prompt), max_batch=max_batch)
    split = LengthSplitEngine(
        whisper,
        load_stt("moonshine", None, "base", cpu_threads=1),
        long_from_s=SttConfig().long_from_s if v.long_from_s is None else v.long_from_s,
        pool=pool,
    )
    if v.second_opinion:
        split.use_vocabulary(shipped_vocabulary())
    return split, whisper


def shipped_vocabulary() -> frozenset[str]:
    """The vocabulary ``serve`` gives the split on its defaults: the Rasa project's examples,
    the knowledge files, the default rules' keywords (``ops.service.stt_vocabulary``)."""
    from voicebot_pbx.answers.knowledge import KnowledgeBase
    from voicebot_pbx.config import Config
    from voicebot_pbx.ops.service import stt_vocabulary

    config = Config()
    return stt_vocabulary(config, KnowledgeBase.load(ROOT / config.llm.knowledge_dir))


def run_split(v: Variant, items: list[Item]) -> dict[str, Any]:
    """The split, one utterance at a time."""
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="inference")
    split, _ = make_split(v, pool, max_batch=1)
    split.transcribe(items[0].pcm, items[0].rate_hz)  # warm-up, not counted
    split.routed = dict.fromkeys(split.routed, 0)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    hyps = [split.transcribe(i.pcm, i.rate_hz).text for i in items]
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    row = _accuracy_row(v, items, hyps, cpu, wall, {})
    row["routed"] = dict(split.routed)
    split.close()
    pool.shutdown()
    return row


def _status_mb(key: str) -> float:
    """A memory figure of this process from /proc (``VmRSS``: now, ``VmHWM``: peak), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def rss_probe(name: str) -> dict[str, float]:
    """In a fresh process: the resident set before the variant's engine loads, and the peak
    after it has decoded every 10th utterance (what the engine adds to a service)."""
    (v,) = [x for x in ACCURACY_VARIANTS if x.name == name]
    items = load_items(10)
    before = _status_mb("VmRSS")
    run_accuracy(v, items)
    peak = _status_mb("VmHWM")
    return {"rss_before_mb": round(before, 1), "peak_rss_mb": round(peak, 1)}


def measure_rss(name: str) -> dict[str, float]:
    import subprocess

    out = subprocess.run(
        [sys.executable, __file__, "--rss-probe", name],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    probe: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    probe["rss_added_mb"] = round(probe["peak_rss_mb"] - probe["rss_before_mb"], 1)
    return probe


LENGTH_BUCKETS = (("< 2 s", 0.0, 2.0), ("2-4 s", 2.0, 4.0), ("> 4 s", 4.0, math.inf))


def wer_interval(
    refs: Sequence[str], hyps: Sequence[str], *, rounds: int = 2000
) -> dict[str, float | int]:
    """WER with a 95 % bootstrap interval (utterances resampled with replacement, seed
    fixed) and the set's size."""
    errors = [word_errors(normalise(r), normalise(h)) for r, h in zip(refs, hyps, strict=True)]
    n = [len(normalise(r)) for r in refs]
    rng = random.Random(12345)
    samples = []
    for _ in range(rounds if errors else 0):
        idx = [rng.randrange(len(errors)) for _ in errors]
        samples.append(100.0 * sum(errors[i] for i in idx) / max(1, sum(n[i] for i in idx)))
    samples.sort()
    return {
        "wer": round(100.0 * sum(errors) / max(1, sum(n)), 2),
        "ci95_low": round(samples[int(0.025 * rounds)], 2) if samples else 0.0,
        "ci95_high": round(samples[int(0.975 * rounds) - 1], 2) if samples else 0.0,
        "utterances": len(errors),
        "words": sum(n),
    }


def by_length(items: list[Item], hyps: list[str]) -> dict[str, dict[str, Any]]:
    """WER (95 % CI) per bucket of speech length (``speech_span_s``: the clip without its
    quiet lead-in and tail), for the whole set and for the recorded prompts."""
    from voicebot_pbx.speech.stt_split import speech_span_s

    out: dict[str, dict[str, Any]] = {}
    for part in ("all", "real"):
        for label, low, high in LENGTH_BUCKETS:
            idx = [
                k
                for k, i in enumerate(items)
                if (part == "all" or i.part == part)
                and low <= speech_span_s(i.pcm, i.rate_hz) < high
            ]
            out[f"{part} {label}"] = wer_interval(
                [items[k].reference for k in idx], [hyps[k] for k in idx]
            )
    return out


def run_moonshine(v: Variant, items: list[Item]) -> dict[str, Any]:
    """The Moonshine engine (``model="moonshine"``: the packaged tiny; ``"moonshine-base"``:
    the packaged base, converted at install time): one utterance at a time, as the
    session's worker pool runs it (no batcher, no fallback)."""
    from voicebot_pbx.speech.moonshine import MoonshineEngine
    from voicebot_pbx.speech.stt_load import load_stt

    size = "base" if v.model == "moonshine-base" else "tiny"
    engine = load_stt("moonshine", None, size, cpu_threads=v.threads)
    assert isinstance(engine, MoonshineEngine)
    engine.transcribe(items[0].pcm, items[0].rate_hz)  # warm-up, not counted
    cpu0, wall0 = time.process_time(), time.perf_counter()
    hyps = [engine.transcribe(i.pcm, i.rate_hz).text for i in items]
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    return _accuracy_row(v, items, hyps, cpu, wall, {})


def _accuracy_row(
    v: Variant, items: list[Item], hyps: list[str], cpu: float, wall: float, stats: dict[str, int]
) -> dict[str, Any]:
    by_condition: dict[str, float] = {}
    for cond in sorted({condition(i) for i in items}):
        idx = [k for k, i in enumerate(items) if condition(i) == cond]
        by_condition[cond] = round(
            wer([items[k].reference for k in idx], [hyps[k] for k in idx]), 2
        )
    return {
        "variant": v.__dict__,
        "utterances": len(items),
        "wer": round(wer([i.reference for i in items], hyps), 2),
        "wer_by_condition": by_condition,
        "cpu_s_per_utt": round(cpu / len(items), 4),
        "wall_s_per_utt": round(wall / len(items), 4),
        "audio_s_per_utt": round(sum(i.duration_s for i in items) / len(items), 2),
        "stats": {
            key: stats.get(key, 0)
            for key in ("short_decodes", "full_decodes", "fallbacks", "retries")
        },
        "wer_ci": wer_interval([i.reference for i in items], hyps),
        "wer_by_length": by_length(items, hyps),
        "hyps": {i.id: h for i, h in zip(items, hyps, strict=True)},
    }


def run_accuracy(v: Variant, items: list[Item]) -> dict[str, Any]:
    if v.model in ("moonshine", "moonshine-base"):
        return run_moonshine(v, items)
    if v.model == "whisper+moonshine-base":
        return run_split(v, items)
    # batch_wait: the benchmark submits a batch's utterances together; the wait makes the
    # batcher take them as one round instead of starting on the first one alone.
    engine = make_engine(v, max_batch=v.batch, batch_wait_ms=200.0 if v.batch > 1 else 0.0)
    engine.transcribe(items[0].pcm, items[0].rate_hz)  # warm-up, not counted
    engine.stats = WhisperStats()
    hyps: list[str] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for start in range(0, len(items), v.batch):
        chunk = items[start : start + v.batch]
        futures = [engine.submit(i.pcm, i.rate_hz) for i in chunk]
        hyps.extend(f.result().text for f in futures)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    engine.close()
    stats = {
        "short_decodes": engine.stats.short_decodes,
        "full_decodes": engine.stats.full_decodes,
        "fallbacks": engine.stats.fallbacks,
        "retries": engine.stats.retries,
    }
    return _accuracy_row(v, items, hyps, cpu, wall, stats)


def run_vosk(items: list[Item], vosk_dir: Path) -> dict[str, Any]:
    from voicebot_pbx.speech.vosk_stt import VoskEngine

    engine = VoskEngine(vosk_dir)
    stream = engine.new_stream(8000)  # one recognizer per call, kept across utterances
    cpu0 = time.process_time()
    audio_s = 0.0
    hyps = []
    for item in items:
        # VAD-gated: the speech with the session's 300 ms look-back (the clip's lead-in) up
        # to the pause, not the silence between utterances
        pcm = item.pcm[: int((item.speech_end_s + 0.1) * item.rate_hz) * 2] or item.pcm
        audio_s += len(pcm) / 2 / item.rate_hz
        frame = item.rate_hz // 50 * 2
        for offset in range(0, len(pcm), frame):
            stream.accept(pcm[offset : offset + frame])
        hyps.append(stream.finish().text)
    cpu = time.process_time() - cpu0
    stream.close()
    return {
        "model": str(vosk_dir),
        "utterances": len(items),
        "cpu_s_per_utt": round(cpu / len(items), 4),
        "rtf_cpu": round(cpu / audio_s, 3),
        "note": "WER not meaningful: the only packaged Vosk model is Korean",
    }


# --- concurrency ----------------------------------------------------------------------------


@dataclass
class CallLog:
    latencies_s: list[float] = field(default_factory=list)
    timeouts: int = 0


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def simulate(
    transcribe: Callable[[bytes, int], Any],
    items: list[Item],
    n_calls: int,
    *,
    seed: int,
    utterances_per_call: int,
    timeout_s: float = 8.0,
    default_lag_s: float = 0.1,
) -> dict[str, Any]:
    """N callers against one transcriber (an ``async (pcm, rate) -> SttResult``)."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    logs = [CallLog() for _ in range(n_calls)]
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:  # a paced call's 20 ms frame timer
        origin = loop.time()
        k = 0
        while not stop.is_set():
            k += 1
            due = origin + k * 0.02
            await asyncio.sleep(max(0.0, due - loop.time()))
            ticks.append((loop.time() - due) * 1000.0)

    async def caller(index: int) -> None:
        crng = random.Random(rng.random())
        await asyncio.sleep(crng.uniform(0.0, 5.0))
        for _ in range(utterances_per_call):
            item = crng.choice(items)
            speech_start = loop.time()
            speech_end = speech_start + item.speech_end_s
            lag = item.vad_lag_s if item.vad_lag_s is not None else default_lag_s
            # the caller speaks; the VAD notices the pause `lag` after the speech ends
            await asyncio.sleep(max(0.0, speech_end + lag - loop.time()))
            cut = min(len(item.pcm), int((item.speech_end_s + lag) * item.rate_hz) * 2)
            try:
                async with asyncio.timeout(timeout_s):
                    await transcribe(item.pcm[:cut], item.rate_hz)
                logs[index].latencies_s.append(loop.time() - speech_end)
            except TimeoutError:
                logs[index].timeouts += 1
            await asyncio.sleep(crng.uniform(1.5, 4.0))  # the bot answers

    tick_task = asyncio.create_task(ticker())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(n_calls)))
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    stop.set()
    await tick_task
    lat = [x * 1000.0 for log in logs for x in log.latencies_s]
    done = len(lat)
    timeouts = sum(log.timeouts for log in logs)
    return {
        "calls": n_calls,
        "utterances": done + timeouts,
        "timeouts": timeouts,
        "latency_ms_p50": _r(percentile(lat, 0.5)),
        "latency_ms_p95": _r(percentile(lat, 0.95)),
        "latency_ms_max": _r(max(lat) if lat else None),
        "cpu_s_per_utt": round(cpu / max(1, done + timeouts), 4),
        "cpu_utilisation": round(cpu / wall, 2),
        "loop_late_ms_p50": _r(percentile(ticks, 0.5)),
        "loop_late_ms_p99": _r(percentile(ticks, 0.99)),
        "loop_late_ms_max": _r(max(ticks) if ticks else None),
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def pool_transcriber(
    engine: WhisperEngine, pool: ThreadPoolExecutor
) -> Callable[[bytes, int], Any]:
    """The previous service path: blocking, unbatched decode in the shared pool."""

    def blocking(pcm: bytes, rate_hz: int) -> SttResult:
        future: Future[SttResult] = Future()
        future.set_running_or_notify_cancel()
        engine._run_batch([_Request(pcm, rate_hz, future, time.monotonic())])
        return future.result()

    async def transcribe(pcm: bytes, rate_hz: int) -> SttResult:
        return await asyncio.get_running_loop().run_in_executor(pool, blocking, pcm, rate_hz)

    return transcribe


def run_concurrency(
    label: str,
    v: Variant,
    path: str,
    items: list[Item],
    levels: Sequence[int],
    *,
    seed: int,
    max_utts: int,
) -> list[dict[str, Any]]:
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="inference")
    engine: WhisperEngine | None = None
    closers: list[Callable[[], None]] = []
    if v.model == "whisper+moonshine-base":
        # The service's default: Whisper's batcher for short turns, Moonshine base in the
        # shared 2-thread pool for turns of long_from_s of speech or more.
        split, engine = make_split(v, pool)
        split.transcribe(items[0].pcm, items[0].rate_hz)  # warm-up
        transcribe = split.transcribe_async
        closers.append(split.long.close)
    elif v.model in ("moonshine", "moonshine-base"):
        # Moonshine: whole utterances in the session's shared 2-thread pool (no batcher).
        from voicebot_pbx.speech.stt_load import load_stt

        moonshine = load_stt("moonshine", None, "base" if v.model == "moonshine-base" else "tiny")
        moonshine.transcribe(items[0].pcm, items[0].rate_hz)  # warm-up

        async def transcribe(pcm: bytes, rate_hz: int) -> SttResult:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(pool, moonshine.transcribe, pcm, rate_hz)

    else:
        engine = make_engine(v)
        engine.transcribe(items[0].pcm, items[0].rate_hz)  # warm-up
        transcribe = (
            engine.transcribe_async if path == "batcher" else pool_transcriber(engine, pool)
        )
    rows = []
    for n in levels:
        stats = WhisperStats()
        if engine is not None:
            engine.stats = stats
        per_call = max(3, math.ceil(max_utts / n))
        row = asyncio.run(
            simulate(transcribe, items, n, seed=seed + n, utterances_per_call=per_call)
        )
        row |= {
            "config": label,
            "path": path,
            "variant": v.__dict__,
            "batches": stats.batches,
            "mean_batch": round(stats.short_decodes / stats.batches, 2) if stats.batches else None,
            "fallbacks": stats.fallbacks,
            "load_avg": os.getloadavg()[0],
        }
        print(
            f"  {label:26s} {n:2d} calls: p50 {row['latency_ms_p50']} ms, p95 "
            f"{row['latency_ms_p95']} ms, CPU {row['cpu_s_per_utt']} s/utt, "
            f"batch {row['mean_batch']}, loop late p99 {row['loop_late_ms_p99']} ms, "
            f"timeouts {row['timeouts']}",
            flush=True,
        )
        rows.append(row)
    if engine is not None:
        engine.close()
    for close in closers:
        close()
    pool.shutdown()
    return rows


# --- main ----------------------------------------------------------------------------

ACCURACY_VARIANTS = [
    Variant("full", mode="full"),
    Variant("short10"),
    Variant("short10-b8", batch=8),
    Variant("short5", min_input_s=5.0),
    Variant("short5-b8", min_input_s=5.0, batch=8),
    Variant("short15", min_input_s=15.0),
    Variant("short10-f32", compute_type="float32"),
    Variant("short10-t2", threads=2),
    Variant("base-short10", model="base"),
    Variant("short10-nots", timestamps=False),
    Variant("short10-nots-b8", timestamps=False, batch=8),
    Variant("short8-nots", min_input_s=8.0, timestamps=False),
    Variant("short8-nots-b8", min_input_s=8.0, timestamps=False, batch=8),
    Variant("short8-nots-p1-b8", min_input_s=8.0, timestamps=False, batch=8, pad_s=1.0),
    Variant("short9-nots-b8", min_input_s=9.0, timestamps=False, batch=8),
    Variant("short10-nots-b16", timestamps=False, batch=16),
    Variant("short10-b2", batch=2),
    Variant("short10-nots-b2", timestamps=False, batch=2),
    Variant("short10-b8-enc8", batch=8, encoder_batch=8),
    Variant("short10-nots-b8-enc8", timestamps=False, batch=8, encoder_batch=8),
    Variant("short10-prompt", prompt=True),  # [stt] prompt = MEASURED_PROMPT
    Variant("moonshine-tiny", model="moonshine"),  # [stt] engine = "moonshine" (packaged)
    Variant("moonshine-tiny-t2", model="moonshine", threads=2),
    Variant("moonshine-base", model="moonshine-base"),  # converted (moonshine_convert)
    # [stt] long_engine = "moonshine": Whisper for short utterances, Moonshine base for long
    Variant("split", model="whisper+moonshine-base", threads=2),
    Variant("split-1.0", model="whisper+moonshine-base", threads=2, long_from_s=1.0),
    Variant("split-1.5", model="whisper+moonshine-base", threads=2, long_from_s=1.5),
    # the default split with [stt] prompt = MEASURED_PROMPT
    Variant("split-prompt", model="whisper+moonshine-base", threads=2, prompt=True),
    # the default split with [stt] second_opinion (the shipped vocabulary)
    Variant("split-second", model="whisper+moonshine-base", threads=2, second_opinion=True),
    # the same with the split at 1.5 s
    Variant(
        "split-1.5-second",
        model="whisper+moonshine-base",
        threads=2,
        long_from_s=1.5,
        second_opinion=True,
    ),
    # and at 1 s (a long engine's turn under 2 s gets the short engine's opinion too)
    Variant(
        "split-1.0-second",
        model="whisper+moonshine-base",
        threads=2,
        long_from_s=1.0,
        second_opinion=True,
    ),
]
QUICK_VARIANTS = ["full", "short10", "short10-b8"]
CONCURRENCY = [
    (
        "split (default): whisper batcher + moonshine-base pool",
        Variant("split", model="whisper+moonshine-base", threads=2),
        "batcher",
    ),
    ("moonshine-base, pool", Variant("moonshine-base", model="moonshine-base"), "pool"),
    ("moonshine-tiny, pool", Variant("moonshine-tiny", model="moonshine"), "pool"),
    ("full, pool (before)", Variant("full", mode="full"), "pool"),
    ("short10, pool (before)", Variant("short10"), "pool"),
    ("short10, batcher (new)", Variant("short10"), "batcher"),
    ("short10, batcher, 2 threads", Variant("short10-t2", threads=2), "batcher"),
    ("short5, batcher", Variant("short5", min_input_s=5.0), "batcher"),
    ("short10, batcher, encoder 1 by 1", Variant("short10"), "batcher"),
    (
        "short10 no-ts, batcher, encoder 1 by 1",
        Variant("short10-nots", timestamps=False),
        "batcher",
    ),
]


def uptime() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# STT benchmark",
        "",
        f"Test set: {report['test_set']}. Machine: {report['machine']}; "
        f"load before: {report['load_before']}; after: {report['load_after']}.",
        "",
        "## Accuracy and cost (sequential; CPU = process CPU-seconds per utterance)",
        "",
        "| variant | model | input | timestamps | compute | threads | batch | WER % | "
        "vs full (95 % CI) | WER by condition | CPU-s/utt | wall s/utt | fallbacks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["accuracy"]:
        v = r["variant"]
        pad = v.get("pad_s", 2.0)
        mode = "30 s" if v["mode"] == "full" else f"max({v['min_input_s']:g} s, len+{pad:g} s)"
        ts = "yes" if v.get("timestamps", True) or v["mode"] == "full" else "no"
        # rows measured before encoder_batch existed encoded the whole batch in one call
        enc = v.get("encoder_batch", v["batch"])
        batch = f"{v['batch']} (enc {enc})" if v["batch"] > 1 and enc > 1 else f"{v['batch']}"
        cond = ", ".join(f"{k} {x:.1f}" for k, x in r["wer_by_condition"].items())
        d = r.get("vs_full")
        vs = f"{d['delta']:+.2f} ({d['ci95_low']:+.2f}..{d['ci95_high']:+.2f})" if d else "-"
        lines.append(
            f"| {v['name']} | {v['model']} | {mode} | {ts} | {v['compute_type']} | "
            f"{v['threads']} | {batch} | {r['wer']:.2f} | {vs} | {cond} | "
            f"{r['cpu_s_per_utt']:.3f} | {r['wall_s_per_utt']:.3f} | {r['stats']['fallbacks']} |"
        )
    with_lengths = [r for r in report["accuracy"] if r.get("wer_by_length")]
    if with_lengths:
        keys = list(with_lengths[0]["wer_by_length"])
        sizes = with_lengths[0]["wer_by_length"]
        lines += [
            "",
            "## WER % by speech length (95 % bootstrap CI; speech = the clip without its quiet "
            "lead-in and tail); peak RSS of a fresh process that loads the variant and decodes "
            "every 10th utterance",
            "",
            "| variant | WER all (CI) | "
            + " | ".join(
                f"{k} ({sizes[k]['utterances']} utts, {sizes[k]['words']} words)" for k in keys
            )
            + " | peak RSS MB (added by the engine) | routed short / long |",
            "|---|---|" + "---|" * len(keys) + "---|---|",
        ]
        for r in with_lengths:
            ci = r["wer_ci"]
            cells = [
                f"{b['wer']:.1f} ({b['ci95_low']:.1f}-{b['ci95_high']:.1f})"
                if b["utterances"]
                else "-"  # no utterance of this length in the (sub)set
                for b in (r["wer_by_length"][k] for k in keys)
            ]
            routed = r.get("routed")
            lines.append(
                f"| {r['variant']['name']} | {ci['wer']:.1f} ({ci['ci95_low']:.1f}-"
                f"{ci['ci95_high']:.1f}) | "
                + " | ".join(cells)
                + (
                    f" | {r['peak_rss_mb']:.0f} (+{r['rss_added_mb']:.0f}) | "
                    if "peak_rss_mb" in r
                    else " | - | "
                )
                + (f"{routed['short']} / {routed['long']}" if routed else "-")
                + " |"
            )
    if report.get("vosk"):
        vk = report["vosk"]
        lines += [
            "",
            f"Vosk ({vk['model']}): {vk['cpu_s_per_utt']:.3f} CPU-s/utt, CPU RTF "
            f"{vk['rtf_cpu']} ({vk['note']}).",
        ]
    lag = report.get("vad_lag_ms")
    if lag:
        lines += [
            "",
            f"VAD lag (speech end -> PauseStarted, silero + turn taker, default config): "
            f"p50 {lag['p50']} ms, p95 {lag['p95']} ms over {lag['n']} utterances "
            f"({lag['missing']} without a pause in the clip).",
        ]
    lines += [
        "",
        "## End of speech -> transcript, concurrent calls (2 cores)",
        "",
        "| config | calls | utts | p50 ms | p95 ms | max ms | timeouts | CPU-s/utt | "
        "mean batch | loop late p99 ms | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["concurrency"]:
        lines.append(
            f"| {r['config']} | {r['calls']} | {r['utterances']} | {r['latency_ms_p50']} | "
            f"{r['latency_ms_p95']} | {r['latency_ms_max']} | {r['timeouts']} | "
            f"{r['cpu_s_per_utt']:.3f} | {r['mean_batch']} | {r['loop_late_ms_p99']} | "
            f"{r['load_avg']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every 4th utterance, 3 variants")
    parser.add_argument("--step", type=int, default=0, help="use every Nth utterance")
    parser.add_argument("--variants", nargs="*", help="accuracy variants to run (names)")
    parser.add_argument("--levels", nargs="*", type=int, default=[1, 4, 8, 16])
    parser.add_argument("--max-utts", type=int, default=16, help="decodes per level (about)")
    parser.add_argument("--no-concurrency", action="store_true")
    parser.add_argument("--configs", nargs="*", help="concurrency configs to run (labels)")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--vosk-model", type=Path, help="a Vosk model folder (default: vosk-ko)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--append",
        action="store_true",
        help="merge into the existing stt.json (same test set): rows of the variants/configs "
        "run now replace theirs, the others are kept; deltas use the stored 'full' run",
    )
    parser.add_argument("--rss-probe", help=argparse.SUPPRESS)  # measure_rss's child
    args = parser.parse_args()
    if args.rss_probe:
        print(json.dumps(rss_probe(args.rss_probe)))
        return

    step = args.step or (4 if args.quick else 1)
    items = load_items(step)
    measure_vad_lag(items)
    lags = [i.vad_lag_s * 1000.0 for i in items if i.vad_lag_s is not None]
    report: dict[str, Any] = {
        "test_set": f"{len(items)} utterances (every {step}th) of {stt_dataset.OUT_DIR}"
        if step > 1
        else f"{len(items)} utterances of {stt_dataset.OUT_DIR}",
        "parts": {p: sum(1 for i in items if i.part == p) for p in ("synthetic", "real")},
        "machine": f"{os.cpu_count()} cores",
        "load_before": uptime(),
        "vad_lag_ms": {
            "p50": _r(percentile(lags, 0.5)),
            "p95": _r(percentile(lags, 0.95)),
            "n": len(lags),
            "missing": len(items) - len(lags),
        },
        "accuracy": [],
        "concurrency": [],
    }
    print(report["test_set"], report["parts"], report["load_before"], flush=True)
    print(f"VAD lag: {report['vad_lag_ms']}", flush=True)

    previous: dict[str, Any] = {}
    if args.append and (args.out / "stt.json").exists():
        previous = json.loads((args.out / "stt.json").read_text())
        if previous.get("test_set") != report["test_set"]:
            raise SystemExit("--append: the stored results are for another test set")

    if not args.no_accuracy:
        names = args.variants or (QUICK_VARIANTS if args.quick else None)
        for v in ACCURACY_VARIANTS:
            if names is not None and v.name not in names:
                continue
            if v.model == "base" and not (BASE_DIR / "model.bin").exists():
                print(f"  {v.name}: skipped ({BASE_DIR} not assembled)", flush=True)
                continue
            r = run_accuracy(v, items)
            r["load_avg"] = os.getloadavg()[0]
            r |= measure_rss(v.name)
            print(
                f"  {v.name:14s} WER {r['wer']:6.2f}  {r['wer_by_condition']}  "
                f"CPU {r['cpu_s_per_utt']:.3f} s/utt  wall {r['wall_s_per_utt']:.3f}  "
                f"fallbacks {r['stats']['fallbacks']}  load {r['load_avg']:.1f}",
                flush=True,
            )
            report["accuracy"].append(r)
        ran = {r["variant"]["name"] for r in report["accuracy"]}
        report["accuracy"] = [
            r for r in previous.get("accuracy", []) if r["variant"]["name"] not in ran
        ] + report["accuracy"]
        base = next((r for r in report["accuracy"] if r["variant"]["name"] == "full"), None)
        if base is not None:
            refs = [i.reference for i in items]
            base_hyps = [base["hyps"][i.id] for i in items]
            for r in report["accuracy"]:
                if r is not base:
                    hyps = [r["hyps"][i.id] for i in items]
                    r["vs_full"] = paired_delta(refs, hyps, base_hyps)
                    print(f"  {r['variant']['name']} vs full: {r['vs_full']}", flush=True)
        try:
            from voicebot_pbx.models import VOSK_KO, model_path

            vosk_dir = args.vosk_model or model_path(VOSK_KO)
            report["vosk"] = run_vosk(items[: min(60, len(items))], vosk_dir)
            print(f"  vosk: {report['vosk']}", flush=True)
        except Exception as exc:  # no Vosk model installed
            print(f"  vosk: skipped ({exc})", flush=True)
    else:
        report["accuracy"] = previous.get("accuracy", [])
        report["vosk"] = previous.get("vosk")

    if not args.no_concurrency:
        for label, v, path in CONCURRENCY:
            if args.configs and label not in args.configs:
                continue
            report["concurrency"] += run_concurrency(
                label, v, path, items, args.levels, seed=args.seed, max_utts=args.max_utts
            )
    if args.no_concurrency:
        report["concurrency"] = previous.get("concurrency", [])
    elif previous:
        ran_configs = {r["config"] for r in report["concurrency"]}
        report["concurrency"] = [
            r for r in previous.get("concurrency", []) if r["config"] not in ran_configs
        ] + report["concurrency"]
    if previous:
        report["load_before"] = f"{previous.get('load_before')} / {report['load_before']}"
    report["load_after"] = uptime()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stt.json").write_text(json.dumps(report, indent=1))
    (args.out / "stt.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
