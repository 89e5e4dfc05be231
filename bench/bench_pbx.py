"""Caller-side latency through a real Asterisk 22: N concurrent calls into a real ``serve``.

Each call is a Local channel placed through the test bed's Asterisk (``tests/realpbx``): its
``caller`` half plays a script and records what it says and hears with MixMonitor; the other
half runs ``AudioSocket()`` (8 kHz; ``--channel driver16`` for the channel driver at 16 kHz)
into ``voicebot-pbx serve`` (rule dialogue, the service's defaults otherwise; ``--dialogue
rasa`` for the Rasa server). Per call, after the greeting: three spoken questions answered by
cached rule replies (address, payment, opening hours, phrasing and order seeded), then a
barge-in: 2.5 s after the opening-hours question (its reply is ~6 s long) the caller asks
another question over the reply. Caller speech is espeak-ng with voices/variants the service
was not tuned or evaluated on (seeded per call; the same per call index in every mode, so the
modes differ only in how the caller is silent):

- ``stream``: silence between questions is played (frames keep coming, as from most trunks);
- ``noframes``: the caller ``Wait()``s instead and sends no frames at all while silent (as a
  trunk with silence suppression does).

``--voice recorded`` (rule dialogue only): the caller's questions are instead Debian's
recorded Asterisk prompts (``asterisk-core-sounds-en-wav``: one real studio voice, 8 kHz),
prompts of 1-4 s that name a conference, a message or a number and no word of another rule;
the bot gets three rules for those words, with cached replies, the number's long (the
barge-in is a conference prompt over it). The prompts are not questions; what is measured is
how fast the bot answers a real voice (silero's probability falls 30 ms after a real voice's
last sound, 110-160 ms after espeak's: bench/README.md, "End of turn"). ``--voice flite``:
the espeak run's questions (same seed, same order) spoken by Debian flite's voices instead
(``turn_dataset.FLITE_VOICES``, one per call, drawn from the seed), at their own pace.

Measured on the caller's recording (``said``/``heard``, per 10 ms window voiced above
-40 dBFS):

- end of caller speech -> first bot audio heard: end of the question's last voiced window in
  ``said`` -> first voiced window in ``heard`` after it (the bot sends digital silence
  between replies, so anything voiced is its answer); p50/p95/max over the turns answered
  with their rule's cached reply (the set size is the "turns" column). A question the STT
  misheard gets another reply (a clarification, or the LLM fallback, which is not a cached
  reply): such turns are counted as "misheard", their caller-side figures kept in the JSON
  (``misheard_caller_ms``, and ``caller_ms_all_turns_*`` over every turn). A question that
  began while the bot was still talking (the previous reply, often a misheard turn's longer
  one, ran past the script's gap: bot speech heard in the 300 ms before its onset, or within
  1 s before it when the bot's record says that reply was interrupted, the onset falling
  between two of its sentences) is a barge-in, whose end of turn waits
  ``vad.barge_in_end_silence_ms`` by design: counted as "asked over the bot", kept in the
  JSON (``over_bot_caller_ms``) and out of the p50/p95/max. Calls and call
  records are paired by start order (calls start ``--stagger-s`` apart); if the counts
  differ, every turn counts. A turn whose answer is not heard before the caller's next
  utterance counts as "no answer heard";
- barge-in: first voiced window of the interrupting question in ``said`` -> end of the last
  voiced window in ``heard`` before the caller finished it (the bot's reply stops; its answer
  to the new question cannot start before the caller's end of turn); p50/p95. A barge-in whose
  onset did not fall in bot speech, or whose opening-hours question was misheard (its short
  reply may end by itself), is not counted (``barge_ins_missed`` in the JSON); one where the
  bot still spoke in the caller's last 100 ms counts as ``barge_ins_not_stopped``;
- next to it, the bot's own figure from its call records: ``end_of_speech_to_first_frame_ms``
  of the same turns (end of speech as its VAD saw it, minus the end-of-turn silence -> first
  reply frame written to the socket; that frame can be silent: for a turn that went to the
  LLM fallback it was written ~1 s before the first audible one);
- gaps in the bot's speech heard by the caller (``tests.realpbx.speech.dropouts``): runs of
  exact digital zeros of 20-500 ms in ``heard`` with bot speech within 200 ms on both sides.
  MixMonitor writes zeros for a direction with nothing queued (after two idle frame times, so
  in practice gaps of 40 ms or more): a reply frame the bot wrote late, Asterisk's queue run
  dry (chan_websocket), or the bot pausing at a caller sound it then took for noise. The
  bot's speech itself, its pauses between words and sentences included, is never exactly
  zero that long. Count and longest per row, each gap per call in the JSON;
- no frames vs streaming: the difference of the p50s, and the median of paired differences
  (same call index and turn, rule reply in both modes: same voice and question), printed under
  the table;
- calls that failed (originate error, no recording, script not found in it), calls without a
  call record (must be 0), turns answered with something else than the expected rule reply
  (an espeak voice misheard), bot CPU (the serve process tree's CPU seconds / wall time of
  the level, from /proc) and peak RSS, Asterisk's CPU the same way.

Alignment of ``said`` and ``heard``: MixMonitor's r()/t() files are written by one thread
from one audiohook that holds a queue per direction and takes 20 ms from each per write, so
both files share one timeline. Asterisk 22 substitutes silence for a direction that has
nothing queued once it has been idle for two frame times (MixMonitor's former ``S`` option is
the default), so a caller in ``Wait()`` leaves silence in ``said`` rather than shortening it.
The two queues can differ in depth by whole 20 ms frames (jitter between the Playback timer
and the bot's pacing); the audiohook flushes both when one runs more than 100 ms ahead. So the
alignment is exact to the sample for audio that entered both queues at the same depth, and
otherwise off by a multiple of 20 ms, bounded by 100 ms; a figure here can be off by one
frame either way, which the socket-side column lets you check.

    VOICEBOT_TEST_PBX=/work/shared/pbx .venv/bin/python bench/bench_pbx.py --calls 1,4
Writes bench/results/pbx.json and bench/results/pbx.md (``--out``) and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import turn_dataset  # noqa: E402

from tests.realpbx import PbxUnavailable, free_port  # noqa: E402
from tests.realpbx.asterisk import WS_PASSWORD, Asterisk  # noqa: E402
from tests.realpbx.bot import BotProcess  # noqa: E402
from tests.realpbx.speech import (  # noqa: E402
    dropouts,
    first_voiced_after,
    last_voiced_between,
    question_pcm,
    segments,
    trim_silence,
    voiced_windows,
)
from voicebot_pbx.audio import read_wav  # noqa: E402
from voicebot_pbx.config import RuleConfig, load_config  # noqa: E402

# espeak-ng voices + variants: none is one the tests, bench_turns or bench_stt's set speak with
# (en-gb-x-gbclan+f1 was dropped: the STT misheard nearly all its questions).
VOICES = [
    "en-us+m3",
    "en-gb-x-gbcwmd+m2",
    "en-029+m4",
    "en-gb-scotland+f2",
    "en-us+f5",
    "en-gb-x-rp+m6",
]
PAYMENT_KEYWORDS = ("pay", "payment", "card", "debit")
PAYMENT_REPLY = "You can pay by direct debit, by card on our website, or by bank transfer."
QUESTIONS = {
    "address": ["where are you located", "what is your address", "where can I find you"],
    "payment": ["how can I pay my bill", "what payment methods do you take", "can I pay by card"],
    "hours": [
        "what are your opening hours",
        "when are you open on saturday",
        "what time do you close",
    ],
}
BARGE = [
    "sorry, where exactly is your office located",
    "actually, what is your street address please",
    "wait, where can I find you please",
]
# Rasa (``--dialogue rasa``): questions its NLU knows; replies and greeting are longer.
RASA_QUESTIONS = {
    "address": ["where is your office", "what is your address"],
    "payment": ["how do I reset my password", "I forgot my password"],
    "hours": ["what are your opening hours", "when are you open"],
}
RASA_BARGE = ["sorry, what is the address of your office"]
# A real voice (``--voice recorded``): Debian's recorded Asterisk prompts and their published
# transcripts (bench/stt_dataset.py's real part reads the same files).
RECORDED_SOUNDS = turn_dataset.ASTERISK_EN
RECORDED_TRANSCRIPTS = turn_dataset.ASTERISK_TRANSCRIPTS
RECORDED_S = (1.0, 4.0)  # a prompt's length, its silence included
# (No digits in a reply: the call record redacts them, and the reply's start tells a turn
# answered by its rule.)
NUMBER_REPLY = (
    "You will find our main number on the back of every bill and on our website. The lines "
    "are staffed from eight in the morning until six in the evening, Monday to Friday."
)
# A prompt with a pause this long inside (spliced prompts: "Press 6 | to play the next
# message") is left out: the bot answers its first part, and the turn counts as misheard.
RECORDED_MAX_PAUSE_S = 0.2
# intent -> (keywords of its bench rule, its cached reply); "number" is the long reply.
RECORDED_RULES = {
    "conference": (("conference",), "Conference calls are set up by your account manager."),
    "message": (("message", "messages"), "Your messages are kept for thirty days."),
    "number": (("number",), NUMBER_REPLY),
}
TURNS_PER_CALL = 3
QUIET_S = 0.1  # a barge-in is "not stopped" when the bot was heard this close to its end
MIN_GAP_S = 1.0  # said: voiced stretches closer than this are one utterance


@dataclass(frozen=True, slots=True)
class Timing:
    greeting_s: float  # caller silent from answer to its first question
    gap_s: float  # after a question whose reply is heard in full
    barge_after_s: float  # after the long-reply question, before talking over the reply
    tail_s: float  # after the barge-in question, before hanging up


TIMINGS = {
    "rules": Timing(greeting_s=6.5, gap_s=7.5, barge_after_s=2.5, tail_s=6.0),
    "rasa": Timing(greeting_s=16.0, gap_s=14.0, barge_after_s=3.0, tail_s=12.0),
}


# --- the bot ------------------------------------------------------------------------------


class BenchBot(BotProcess):
    """The test bed's bot with the default rules plus a payment rule, and room for the
    largest level (``max_calls``)."""

    def __init__(self, *args: Any, max_calls: int, voice: str = "espeak", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_calls = max_calls
        self.voice = voice

    def config_text(self) -> str:
        text = (
            super().config_text().replace("[server]\n", f"[server]\nmax_calls = {self.max_calls}\n")
        )
        rules = list(default_rules())
        lines = []
        for rule in rules[:2]:
            lines.append(_rule_toml(list(rule.keywords), rule.reply, rule.then, rule.target))
        lines.append(_rule_toml(list(PAYMENT_KEYWORDS), PAYMENT_REPLY, "", ""))
        for rule in rules[2:]:
            lines.append(_rule_toml(list(rule.keywords), rule.reply, rule.then, rule.target))
        if self.voice == "recorded":
            for keywords, reply in RECORDED_RULES.values():
                lines.append(_rule_toml(list(keywords), reply, "", ""))
        return text + "\n" + "\n".join(lines)


def default_rules() -> tuple[RuleConfig, ...]:
    """The service's default rules as it speaks them (business facts filled in)."""
    return load_config().dialogue.rules


def _rule_toml(keywords: list[str], reply: str, then: str, target: str) -> str:
    out = f"[[dialogue.rules]]\nkeywords = {json.dumps(keywords)}\nreply = {json.dumps(reply)}\n"
    if then:
        out += f"then = {json.dumps(then)}\ntarget = {json.dumps(target)}\n"
    return out


def expected_replies(dialogue: str, voice: str = "espeak") -> dict[str, str]:
    """Intent -> the start of the reply that answers it (to count misheard turns)."""
    if voice == "recorded":
        return {intent: reply[:20] for intent, (_, reply) in RECORDED_RULES.items()}
    if dialogue == "rasa":
        return {"address": "Our customer centre", "payment": "To reset", "hours": "Our phone"}
    rules = default_rules()
    return {
        "hours": rules[0].reply[:20],
        "address": rules[1].reply[:20],
        "payment": PAYMENT_REPLY[:20],
    }


# --- processes ------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def tree_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, RSS MB) of a process and its live descendants, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu_s = rss_mb = 0.0
    for p in _descendants(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu_s += (int(fields[11]) + int(fields[12])) / ticks
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss_mb += int(line.split()[1]) / 1024
    return cpu_s, rss_mb


def _pid(obj: Asterisk | BotProcess) -> int:
    proc = obj._proc  # noqa: SLF001 - the test bed keeps its Popen private
    assert proc is not None
    return proc.pid


# --- calls ----------------------------------------------------------------------------------


@dataclass(slots=True)
class CallPlan:
    index: int
    voice: str
    speed: int
    pitch: int
    intents: list[str]  # the three questions' intents, in order (the last: long reply)
    texts: list[str]
    barge: str


def _names(text: str, words: tuple[str, ...] | list[str]) -> bool:
    return any(re.search(rf"\b{re.escape(word)}\b", text) for word in words)


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2")


@functools.cache
def recorded_transcripts() -> dict[str, str]:
    """The recorded prompts' published transcripts (``turn_dataset.asterisk_transcripts``:
    file stem -> text, here lower case): those whose WAV is there, a description ("[beep]")
    left out."""
    if not RECORDED_TRANSCRIPTS.is_file():
        raise SystemExit(
            f"--voice recorded needs {RECORDED_TRANSCRIPTS} and the WAVs in {RECORDED_SOUNDS} "
            "(Debian's asterisk-core-sounds-en and -en-wav; scripts/install installs them)"
        )
    return {
        name: text.lower()
        for name, text in turn_dataset.asterisk_transcripts().items()
        if text
        and "/" not in name
        and "[" not in text
        and (RECORDED_SOUNDS / f"{name}.wav").is_file()
    }


@functools.cache
def recorded_prompts() -> dict[str, tuple[str, ...]]:
    """Intent -> the recorded prompts (file stems) for ``--voice recorded``: 8 kHz, 1-4 s
    long, in one breath (no pause of ``RECORDED_MAX_PAUSE_S``), naming that intent's rule
    word and no word of any other rule (the service's default rules and the bench's payment
    rule included)."""
    others = [k for rule in default_rules() for k in rule.keywords] + list(PAYMENT_KEYWORDS)
    pools: dict[str, list[str]] = {intent: [] for intent in RECORDED_RULES}
    for name, text in recorded_transcripts().items():
        hits = [i for i, (words, _) in RECORDED_RULES.items() if _names(text, words)]
        if len(hits) != 1 or _names(text, others):
            continue
        pcm, rate_hz = read_wav(RECORDED_SOUNDS / f"{name}.wav")
        if (
            rate_hz == 8000
            and RECORDED_S[0] <= len(pcm) / 2 / rate_hz <= RECORDED_S[1]
            and len(segments(voiced_windows(_samples(pcm), rate_hz), RECORDED_MAX_PAUSE_S)) == 1
        ):
            pools[hits[0]].append(name)
    return {intent: tuple(sorted(names)) for intent, names in pools.items()}


def plan_recorded_call(seed: int, index: int) -> CallPlan:
    """``--voice recorded``: the call's prompts, a function of (seed, call index) only."""
    rng = random.Random(f"{seed}-{index}-recorded")
    pools = recorded_prompts()
    first = ["conference", "message"]
    rng.shuffle(first)
    intents = [*first, "number"]
    texts = [rng.choice(pools[i]) for i in intents]
    return CallPlan(
        index=index,
        voice="recorded",
        speed=0,
        pitch=0,
        intents=intents,
        texts=texts,
        barge=rng.choice([p for p in pools["conference"] if p not in texts]),
    )


def plan_call(seed: int, index: int, dialogue: str, voice: str = "espeak") -> CallPlan:
    """The call's voice and questions: a function of (seed, call index) only."""
    if voice == "recorded":
        return plan_recorded_call(seed, index)
    rng = random.Random(f"{seed}-{index}")
    questions = RASA_QUESTIONS if dialogue == "rasa" else QUESTIONS
    first = ["address", "payment"]
    rng.shuffle(first)
    intents = [*first, "hours"]
    espeak_voice = rng.choice(VOICES)
    if voice == "flite":  # the same questions, in one of flite's voices (its own pace)
        flite = random.Random(f"{seed}-{index}-flite").choice(turn_dataset.FLITE_VOICES)
    return CallPlan(
        index=index,
        voice=f"flite:{flite}" if voice == "flite" else espeak_voice,
        speed=rng.randint(130, 160),
        pitch=rng.randint(35, 65),
        intents=intents,
        texts=[rng.choice(questions[i]) for i in intents],
        barge=rng.choice(RASA_BARGE if dialogue == "rasa" else BARGE),
    )


class Sounds:
    """WAVs the caller half plays, made once per run."""

    def __init__(self, asterisk: Asterisk) -> None:
        self.asterisk = asterisk
        self._made: dict[str, str] = {}

    def speech(self, text: str, plan: CallPlan) -> str:
        key = f"{text}|{plan.voice}|{plan.speed}|{plan.pitch}"
        if key not in self._made:
            name = "q" + hashlib.sha1(key.encode()).hexdigest()[:12]
            self._made[key] = self.asterisk.sound(name, speech_pcm(text, plan))
        return self._made[key]

    def silence(self, seconds: float, mode: str) -> str:
        if mode == "noframes":
            return f"w:{seconds:g}"
        key = f"silence|{seconds:g}"
        if key not in self._made:
            samples = int(round(seconds * 8000))
            self._made[key] = self.asterisk.sound(f"sil{int(seconds * 1000)}", bytes(2 * samples))
        return "p:" + self._made[key]


def speech_pcm(text: str, plan: CallPlan) -> bytes:
    """What the caller says for ``text``: espeak-ng in the plan's voice, or the recorded
    prompt of that name (``--voice recorded``); 8 kHz, silence trimmed."""
    if plan.voice == "recorded":
        pcm, _ = read_wav(RECORDED_SOUNDS / f"{text}.wav")
        return trim_silence(pcm)
    family, _, name = plan.voice.partition(":")
    if family == "flite":
        return trim_silence(turn_dataset.flite_pcm(text, name, 1.0))
    return question_pcm(text, voice=plan.voice, speed=plan.speed, pitch=plan.pitch)


def call_steps(plan: CallPlan, mode: str, sounds: Sounds, timing: Timing) -> list[str]:
    steps = [sounds.silence(timing.greeting_s, mode)]
    for turn, text in enumerate(plan.texts):
        steps.append("p:" + sounds.speech(text, plan))
        last = turn == len(plan.texts) - 1
        steps.append(sounds.silence(timing.barge_after_s if last else timing.gap_s, mode))
    steps.append("p:" + sounds.speech(plan.barge, plan))
    steps.append(sounds.silence(timing.tail_s, mode))
    return steps


def call_length_s(plan: CallPlan, timing: Timing) -> float:
    speech_s = sum(len(speech_pcm(t, plan)) / 16000 for t in [*plan.texts, plan.barge])
    quiet = timing.greeting_s + 2 * timing.gap_s + timing.barge_after_s + timing.tail_s
    return speech_s + quiet


@dataclass(slots=True)
class CallResult:
    plan: CallPlan
    tag: str = ""
    error: str = ""
    latencies_ms: list[float | None] = field(default_factory=list)  # per turn; None: not heard
    socket_ms: list[float | None] = field(default_factory=list)  # per turn, from the record
    expected_reply: list[bool] = field(default_factory=list)  # per turn, from the record
    no_answer: int = 0
    overlapped: int = 0  # a question asked while the bot was still talking (greeting/reply)
    # per turn: the bot was talking when the question began (a barge-in: a previous reply ran
    # longer than the script's gap), so its end of turn follows vad.barge_in_end_silence_ms
    over_bot: list[bool] = field(default_factory=list)
    # Bot speech heard within OVER_REPLY_S before each question's onset (the reply may be
    # between two sentences at the onset).
    bot_heard_before: list[bool] = field(default_factory=list)
    barge_ms: float | None = None
    barge_missed: bool = False
    barge_not_stopped: bool = False
    # (start_s, length_s) of gaps heard inside the bot's speech (tests.realpbx.speech.dropouts)
    gaps: list[tuple[float, float]] = field(default_factory=list)


OVER_REPLY_S = 1.0  # longer than a reply's pause between two sentences


def bot_talking_at(heard_v: np.ndarray, onset_s: float) -> bool:
    """The caller heard the bot when ``onset_s`` came (within 300 ms before it, up to a
    20 ms window after): speech that began then was over the bot."""
    return last_voiced_between(heard_v, max(0.0, onset_s - 0.3), onset_s + 0.02) is not None


def analyse(result: CallResult, heard: np.ndarray, said: np.ndarray, rate_hz: int) -> None:
    result.gaps = dropouts(heard, rate_hz)
    said_v = voiced_windows(said, rate_hz)
    heard_v = voiced_windows(heard, rate_hz)
    utterances = segments(said_v, min_gap_s=MIN_GAP_S)
    if len(utterances) != TURNS_PER_CALL + 1:
        result.error = (
            f"expected {TURNS_PER_CALL + 1} caller utterances in said, found {len(utterances)}"
        )
        return
    for turn in range(TURNS_PER_CALL):
        start_s, end_s = utterances[turn]
        result.over_bot.append(bot_talking_at(heard_v, start_s))
        before = last_voiced_between(heard_v, max(0.0, start_s - OVER_REPLY_S), start_s)
        result.bot_heard_before.append(before is not None)
        # Bot audio in the 100 ms before the caller's end: it was still talking.
        if last_voiced_between(heard_v, max(0.0, end_s - QUIET_S), end_s) is not None:
            result.overlapped += 1
        elif turn == 0 and last_voiced_between(heard_v, start_s, end_s) is not None:
            result.overlapped += 1  # the greeting ran into the first question
        reply_s = first_voiced_after(heard_v, end_s)
        if reply_s is None or reply_s >= utterances[turn + 1][0]:
            result.no_answer += 1
            result.latencies_ms.append(None)
            continue
        result.latencies_ms.append(round((reply_s - end_s) * 1000.0, 1))
    onset_s, end_s = utterances[TURNS_PER_CALL]
    if not bot_talking_at(heard_v, onset_s):
        result.barge_missed = True  # the bot was not talking when the caller started
        return
    stop_s = last_voiced_between(heard_v, onset_s, end_s)
    if stop_s is None:
        stop_s = onset_s
    if stop_s > end_s - QUIET_S:
        result.barge_not_stopped = True
    result.barge_ms = round((stop_s - onset_s) * 1000.0, 1)


# --- a level --------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_level(
    asterisk: Asterisk,
    bot: BenchBot,
    sounds: Sounds,
    args: argparse.Namespace,
    calls: int,
    mode: str,
    seen: set[str],
) -> dict[str, Any]:
    timing = TIMINGS[args.dialogue]
    plans = [plan_call(args.seed, i, args.dialogue, args.voice) for i in range(calls)]
    steps = [call_steps(p, mode, sounds, timing) for p in plans]  # sounds made before timing
    longest_s = max(call_length_s(p, timing) for p in plans)
    results = [CallResult(plan=p) for p in plans]
    bot_pid, ast_pid = _pid(bot), _pid(asterisk)
    bot_cpu0, _ = tree_stats(bot_pid)
    ast_cpu0, _ = tree_stats(ast_pid)
    peak_rss = 0.0
    wall0 = time.monotonic()
    for i, result in enumerate(results):
        delay = wall0 + i * args.stagger_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            result.tag = asterisk.call(steps[i], mode=args.pbx_mode)
        except (PbxUnavailable, OSError) as exc:
            result.error = f"originate: {exc}"[:300]
    placed = [r for r in results if r.tag]
    deadline = time.monotonic() + longest_s + 45.0
    pending = {r.tag for r in placed}
    while pending and time.monotonic() < deadline:
        peak_rss = max(peak_rss, tree_stats(bot_pid)[1])
        try:
            channels = asterisk.channels()
        except PbxUnavailable:
            channels = ""
        pending = {t for t in pending if f"Local/{t}@" in channels}
        time.sleep(0.5)
    wall_s = time.monotonic() - wall0
    bot_cpu1, _ = tree_stats(bot_pid)
    ast_cpu1, _ = tree_stats(ast_pid)
    for result in placed:
        if result.tag in pending:
            result.error = "call still up at the deadline"
            with contextlib.suppress(PbxUnavailable):
                for line in asterisk.channels().splitlines():
                    if f"Local/{result.tag}@" in line:
                        asterisk.cli(f"channel request hangup {line.split('!', 1)[0]}")
    time.sleep(1.0)  # MixMonitor closes its files after the hang-up
    for result in placed:
        if result.error:
            continue
        try:
            rec = asterisk.recording(result.tag, timeout_s=10.0)
            analyse(result, rec.heard, rec.said, rec.rate_hz)
        except (AssertionError, OSError, EOFError, ValueError) as exc:
            result.error = f"recording: {exc}"[:300]
    # The bot's records of this level's calls (written as each call ends).
    records = []
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        records = [r for r in bot.records() if r.ended_at and r.call_id not in seen]
        if len(records) >= len(placed):
            break
        time.sleep(0.5)
    seen.update(r.call_id for r in records)
    # Records in start order are the calls in placing order (starts are stagger_s apart).
    matched = len(records) == len(placed)
    expected = expected_replies(args.dialogue, args.voice)
    for result, record in zip(placed, records if matched else [], strict=False):
        speech = sorted((t for t in record.turns if t.kind == "speech"), key=lambda t: t.seq)
        speech = speech[:TURNS_PER_CALL]
        result.socket_ms = [t.end_of_speech_to_first_frame_ms for t in speech]
        # A question that came between two sentences of the previous reply: heard as
        # silence at its onset, but the bot's record says that reply was interrupted.
        replies = sorted(
            (t for t in record.turns if t.kind in ("greeting", "speech")), key=lambda t: t.seq
        )
        for turn, (before, reply) in enumerate(zip(result.bot_heard_before, replies, strict=False)):
            if before and reply.barged_in:  # bot_heard_before and over_bot: one per question
                result.over_bot[turn] = True
        result.expected_reply = [
            t.reply_text.startswith(expected[intent])
            for t, intent in zip(speech, result.plan.intents, strict=False)
        ]
        if result.barge_ms is not None and len(result.expected_reply) == TURNS_PER_CALL:
            if not result.expected_reply[-1]:  # a short reply, not the long one: no barge-in
                result.barge_ms = None
                result.barge_missed = True
    socket_ms: list[float] = []
    latencies: list[float] = []  # turns answered with their rule's cached reply
    latencies_all: list[float] = []
    misheard_ms: list[float | None] = []
    misheard = 0
    over_bot_ms: list[float | None] = []  # rule replies to questions asked over the bot
    for result in placed:
        if not matched:  # cannot tell turns apart: every turn counts
            latencies += [ms for ms in result.latencies_ms if ms is not None]
            continue
        for turn in range(TURNS_PER_CALL):
            ms = result.latencies_ms[turn] if turn < len(result.latencies_ms) else None
            ok = turn < len(result.expected_reply) and result.expected_reply[turn]
            sock = result.socket_ms[turn] if turn < len(result.socket_ms) else None
            if ms is not None:
                latencies_all.append(ms)
            if not ok:
                misheard += 1
                misheard_ms.append(ms)
                continue
            if turn < len(result.over_bot) and result.over_bot[turn]:
                over_bot_ms.append(ms)
                continue
            if ms is not None:
                latencies.append(ms)
            if sock is not None:
                socket_ms.append(sock)
    if not matched:
        for record in records:
            speech = sorted((t for t in record.turns if t.kind == "speech"), key=lambda t: t.seq)
            socket_ms += [
                t.end_of_speech_to_first_frame_ms
                for t in speech[:TURNS_PER_CALL]
                if t.end_of_speech_to_first_frame_ms is not None
            ]
        latencies_all = list(latencies)
    barge = [r.barge_ms for r in results if r.barge_ms is not None]
    failed = [r for r in results if r.error]
    row: dict[str, Any] = {
        "mode": mode,
        "calls": calls,
        "turns_planned": calls * TURNS_PER_CALL,
        "turns_measured": len(latencies),
        "turns_no_answer_heard": sum(r.no_answer for r in results),
        "turns_bot_still_talking": sum(r.overlapped for r in results),
        "turns_misheard": misheard,  # answered with something else than their rule's reply
        "misheard_caller_ms": misheard_ms,
        "turns_asked_over_bot": len(over_bot_ms),
        "over_bot_caller_ms": over_bot_ms,
        "records_matched": matched,
        "caller_ms_all_turns_p50": percentile(latencies_all, 0.5),
        "caller_ms_all_turns_max": max(latencies_all) if latencies_all else None,
        "caller_ms_p50": percentile(latencies, 0.5),
        "caller_ms_p95": percentile(latencies, 0.95),
        "caller_ms_max": max(latencies) if latencies else None,
        "socket_ms_p50": percentile(socket_ms, 0.5),
        "socket_ms_p95": percentile(socket_ms, 0.95),
        "socket_ms_max": max(socket_ms) if socket_ms else None,
        "socket_turns": len(socket_ms),
        "barge_ms_p50": percentile(barge, 0.5),
        "barge_ms_p95": percentile(barge, 0.95),
        "barge_ins_measured": len(barge),
        "barge_ins_missed": sum(r.barge_missed for r in results),
        "barge_ins_not_stopped": sum(r.barge_not_stopped for r in results),
        "gaps_in_bot_speech": sum(len(r.gaps) for r in results),
        "gaps_in_bot_speech_ms": round(sum(g[1] for r in results for g in r.gaps) * 1000.0),
        "gap_max_ms": round(max((g[1] for r in results for g in r.gaps), default=0.0) * 1000.0),
        "calls_failed": len(failed),
        "calls_without_record": max(0, len(placed) - len(records)),
        "bot_cpu_percent": round(100 * (bot_cpu1 - bot_cpu0) / wall_s, 1),
        "bot_cpu_s_per_call": round((bot_cpu1 - bot_cpu0) / calls, 2),
        "bot_rss_peak_mb": round(peak_rss, 1),
        "asterisk_cpu_percent": round(100 * (ast_cpu1 - ast_cpu0) / wall_s, 1),
        "wall_s": round(wall_s, 1),
        "errors": [f"call {r.plan.index}: {r.error}" for r in failed],
        "calls_detail": [
            {
                "index": r.plan.index,
                "voice": f"{r.plan.voice} s{r.plan.speed} p{r.plan.pitch}",
                "questions": r.plan.texts,
                "barge": r.plan.barge,
                "latencies_ms": r.latencies_ms,
                "socket_ms": r.socket_ms,
                "expected_reply": r.expected_reply,
                "asked_over_bot": r.over_bot,
                "barge_ms": r.barge_ms,
                "gaps_in_bot_speech": r.gaps,
                "error": r.error,
            }
            for r in results
        ],
    }
    return row


# --- output ---------------------------------------------------------------------------------

COLUMNS = [
    ("mode", "mode"),
    ("calls", "calls"),
    ("turns (rule replies)", "turns_measured"),
    ("caller: end of speech → first audio heard p50 / p95 / max ms", "caller"),
    ("bot: end of speech → first frame p50 / p95 / max ms", "socket"),
    ("no answer heard", "turns_no_answer_heard"),
    ("misheard", "turns_misheard"),
    ("asked over the bot", "turns_asked_over_bot"),
    ("barge-in: onset → bot quiet p50 / p95 ms (n)", "barge"),
    ("gaps in bot speech: n / longest ms", "gaps"),
    ("failed calls", "calls_failed"),
    ("calls without record", "calls_without_record"),
    ("bot CPU", "bot_cpu_percent"),
    ("bot CPU-s/call", "bot_cpu_s_per_call"),
    ("bot RSS peak MB", "bot_rss_peak_mb"),
    ("Asterisk CPU", "asterisk_cpu_percent"),
]


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if isinstance(value, float) else str(value)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        cells = []
        for _, key in COLUMNS:
            if key in ("caller", "socket"):
                cells.append(" / ".join(_fmt(r[f"{key}_ms_{s}"]) for s in ("p50", "p95", "max")))
            elif key == "barge":
                p50, p95 = _fmt(r["barge_ms_p50"]), _fmt(r["barge_ms_p95"])
                cells.append(f"{p50} / {p95} ({r['barge_ins_measured']})")
            elif key == "gaps":
                cells.append(f"{r['gaps_in_bot_speech']} / {r['gap_max_ms']}")
            elif key.endswith("cpu_percent"):
                cells.append(f"{r[key]:.0f} %")
            else:
                cells.append(_fmt(r[key]))
        lines.append("| " + " | ".join(cells) + " |")
    diffs = [
        f"{calls} calls: p50 {_signed(d['p50_diff_ms'])}, paired median {_signed(d['paired_ms'])} "
        f"({d['pairs']} pairs)"
        for calls, d in mode_diffs(rows).items()
    ]
    if diffs:
        lines.append("")
        lines.append(
            "No-frames minus streaming caller, end of speech → first audio heard: "
            + "; ".join(diffs)
        )
    pooled = [c["barge_ms"] for r in rows for c in r["calls_detail"] if c["barge_ms"] is not None]
    if pooled:
        # One row's few barge-ins make a poor p95: the rows pooled are the figure to read.
        lines.append("")
        lines.append(
            f"Barge-in, every row pooled: p50 {_fmt(percentile(pooled, 0.5))} / p95 "
            f"{_fmt(percentile(pooled, 0.95))} / max {_fmt(max(pooled))} ms (n = {len(pooled)})"
        )
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.0f} ms"


def mode_diffs(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per level run in both modes: the difference of the p50s, and the median of paired
    differences (same call index and turn, answered with the rule's reply in both modes:
    the same voice and question, so only the caller's silence differs)."""
    by = {(r["mode"], r["calls"]): r for r in rows}
    out: dict[int, dict[str, Any]] = {}
    for (mode, calls), quiet in by.items():
        stream = by.get(("stream", calls))
        if mode != "noframes" or stream is None:
            continue
        pairs = []
        for a, b in zip(stream["calls_detail"], quiet["calls_detail"], strict=False):
            for k in range(TURNS_PER_CALL):
                try:
                    ok = a["expected_reply"][k] and b["expected_reply"][k]
                    la, lb = a["latencies_ms"][k], b["latencies_ms"][k]
                except IndexError:
                    continue
                if ok and la is not None and lb is not None:
                    pairs.append(lb - la)
        p50 = None
        if quiet["caller_ms_p50"] is not None and stream["caller_ms_p50"] is not None:
            p50 = quiet["caller_ms_p50"] - stream["caller_ms_p50"]
        out[calls] = {"p50_diff_ms": p50, "paired_ms": percentile(pairs, 0.5), "pairs": len(pairs)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", default="1,8,16,32", help="concurrency levels, comma-separated")
    parser.add_argument(
        "--modes", default="stream,noframes", help="stream, noframes or both (comma-separated)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--stagger-s", type=float, default=0.37, help="between call starts")
    parser.add_argument("--dialogue", choices=["rules", "rasa"], default="rules")
    parser.add_argument(
        "--voice",
        choices=["espeak", "flite", "recorded"],
        default="espeak",
        help="the callers' voice: espeak-ng variants, Debian flite's voices (the same "
        "questions), or Asterisk's recorded prompts (a real voice; rule dialogue only)",
    )
    parser.add_argument(
        "--channel",
        choices=["app", "driver16", "websocket16"],
        default="app",
        help="AudioSocket() at 8 kHz, Dial(AudioSocket/...c(slin16)) at 16 kHz, or "
        "Dial(WebSocket/voicebot/c(slin16)) (chan_websocket) at 16 kHz",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/pbx.json")
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch folder (recordings, logs)"
    )
    parser.add_argument(
        "--extra-toml",
        type=Path,
        help="appended to the bot's config (e.g. a [vad] section to try a setting; not the "
        "sections the bench writes itself: server, health, dialogue, tts, ami)",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.calls.split(",") if c.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in ("stream", "noframes") for m in modes) or not levels:
        parser.error("--modes takes stream and/or noframes; --calls at least one level")
    if args.voice == "recorded" and args.dialogue != "rules":
        parser.error("--voice recorded needs the rule dialogue (its bench rules name the prompts)")
    args.pbx_mode = {"app": "bot", "driver16": "bot16", "websocket16": "ws16"}[args.channel]
    extra_toml = args.extra_toml.read_text() if args.extra_toml else ""

    if not os.environ.get("VOICEBOT_TEST_PBX"):
        parser.error("set VOICEBOT_TEST_PBX to the folder with the Asterisk build (../shared/pbx)")
    scratch = Path(tempfile.mkdtemp(prefix="bench-pbx-"))
    rows: list[dict[str, Any]] = []
    bot: BenchBot | None = None
    asterisk: Asterisk | None = None
    started = time.monotonic()
    try:
        bot_port, ws_port = free_port(), free_port()
        asterisk = Asterisk(scratch / "ast", bot_port=bot_port, ws_port=ws_port)
        asterisk.start()
        websocket = f'[websocket]\nenabled = true\nport = {ws_port}\nusername = "asterisk"\n'
        bot = BenchBot(
            scratch / "bot",
            port=bot_port,
            extra_toml=(websocket if args.channel == "websocket16" else "") + extra_toml,
            extra_env={"VOICEBOT_WEBSOCKET_PASSWORD": WS_PASSWORD},
            dialogue=args.dialogue,
            max_calls=max(64, 2 * max(levels)),
            voice=args.voice,
        )
        bot.start()
        time.sleep(1.0)
        _, idle_rss = tree_stats(_pid(bot))
        sounds = Sounds(asterisk)
        seen: set[str] = set()
        for calls in levels:
            for mode in modes:
                try:
                    row = run_level(asterisk, bot, sounds, args, calls, mode, seen)
                except Exception as exc:  # a level that breaks is reported, the run goes on
                    traceback.print_exc()
                    row = {"mode": mode, "calls": calls, "level_error": repr(exc)[:500]}
                row["bot_rss_idle_mb"] = round(idle_rss, 1)
                rows.append(row)
                brief = {k: v for k, v in row.items() if k not in ("calls_detail",)}
                print(json.dumps(brief), flush=True)
                if not bot.running or not asterisk.running:
                    print("bot or asterisk exited; stopping", file=sys.stderr)
                    break
                time.sleep(2.0)
            else:
                continue
            break
    finally:
        if bot is not None:
            bot.stop()
        if asterisk is not None:
            asterisk.stop()
        if args.keep:
            print(f"scratch kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    good = [r for r in rows if "level_error" not in r]
    timing = TIMINGS[args.dialogue]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "asterisk": "22.10.1 (tests/realpbx)",
                "channel": args.channel,
                "dialogue": args.dialogue,
                "voice": args.voice,
                "seed": args.seed,
                "stagger_s": args.stagger_s,
                "turns_per_call": TURNS_PER_CALL,
                "barge_ins_per_call": 1,
                "extra_toml": extra_toml,
                "timing_s": {
                    "greeting": timing.greeting_s,
                    "gap": timing.gap_s,
                    "barge_after": timing.barge_after_s,
                    "tail": timing.tail_s,
                },
                "run_s": round(time.monotonic() - started, 1),
                "noframes_minus_stream": mode_diffs(good),
                "levels": rows,
            },
            indent=2,
        )
    )
    text = table(good)
    header = (
        f"Real Asterisk 22.10.1, {args.channel}, {args.dialogue} dialogue, "
        f"{args.voice} voice, seed {args.seed}: "
        f"{TURNS_PER_CALL} turns + 1 barge-in per call (set size per row: turns measured)."
    )
    args.out.with_suffix(".md").write_text(header + "\n\n" + text + "\n")
    print(header)
    print(text)
    return 0 if len(good) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
