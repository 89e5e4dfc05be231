"""Balance evaluation: is the balance read back correctly for a seeded set of account /
postcode (or date of birth) pairs, the account number spoken or keyed, through the whole
pipeline?

    nice -n 19 .venv/bin/python bench/eval_balance.py     # 24 accounts x 2 entries, ~21 min
    nice -n 19 .venv/bin/python bench/eval_balance.py --account-entry keypad --n 8
Writes .cache/reports/eval_balance.json and eval_balance.md beside it (``--out`` for
elsewhere). The exit code is 0 whatever the rate (a measurement, not a check).

Target (issue): the balance read back correctly for >= 95 % of the set.

Set (deterministic from ``--seed``): ``--n`` accounts drawn with ``random.Random(seed)`` from
the demo company's 200 accounts (``rasa_project/actions/demo_data.py``, ``demo_accounts()``,
which the action server seeds into its SQLite); each gets a voice from ``VOICES`` (espeak-ng
voice+variants no other test, dataset or benchmark of this project speaks with; round-robin,
then shuffled with the seed), a verification mode (postcode / date of birth, alternating,
shuffled the same way), a speed and pitch drawn from the seed. The caller says:

1. "what's my balance",
2. the account number digit by digit ("1 5 8 0 5 4 2 7"),
3. the postcode letter by letter as a caller says it ("N W 9, 4 R Q") or the date of birth
   ("the 23rd of June 1987"),
4. only when the bot asks for it (a first identity answer that did not match gets the
   identity question again, asking for the other answer, the account number kept): the
   other answer, the date of birth after a postcode, the postcode after a date of birth
   (``Say(only_if=...)`` reads the bot's latest reply from its recorder),

and between 2 and 3, only when the bot asks for the account number again after the first
reading ("that isn't an 8 digit account number", or "I didn't catch that"): the account
number once more (step "again", spoken entry; a caller asked again says it again; since
2026-12-06, VERSION 4); and before that, when the bot read back a spoken account number
that is not the caller's ("That's account number ..."), "no, that's the wrong number"
(step "wrong"; once: a number read back wrong a second time is let pass, and the identity
answer follows),

and between 3 and 4, only when the bot asks to hear the identity answer again ("I didn't
catch that", or its identity question again after answering something else) and not for
the other answer: the same answer once more (step "identity again", since 2026-12-07,
VERSION 5; before, such a caller said nothing more and the call counted as failed),

and after 1, only when the bot's reply to the request did not ask for the account number
(a misheard request got the refusal, another task's answer or "say it again"): the request
in other words, "I want to know the balance of my account" (step "asked again", since
2026-12-07, VERSION 7; before, such a caller read out their account number to a bot that
had not asked for it),

and after "again", only when the bot heard the number said again as the reading the caller
had said "no" to and offered the keypad instead of reading it back again
(``SAME_NUMBER_AGAIN``): the account number keyed (step "keyed", ``SendDtmf``, as a caller
asked to type it does; since 2026-12-07, VERSION 6; before, the bot read the same wrong
number back again and the identity answer that followed could not match),

each through the phone line of ``bench/turn_dataset.py`` (``phone_line``: 300-3400 Hz band,
a level drawn in -24..-18 dBFS, pink line noise at ``--snr`` dB, G.711 µ-law round trip,
0.3 s before and 1.3 s after the speech), 8 kHz. ``--account-groups MIN_S MAX_S`` reads the
account number as callers often do: two groups of four digits, a pause drawn per account
from that range between them.

``--account-entry`` (default ``both``): ``spoken`` says step 2 as above; ``keypad`` keys it
instead, as the prompt ("Please type your account number on the keypad, or say it now") asks
and most real callers do: the 8 digits as DTMF (``SendDtmf``, 0.25 s apart, after the prompt
finished playing); the bot's entry (``collect_dtmf`` max_digits 8, ``policy.DtmfEntry``) ends
at the 8th key and sends them to Rasa as one ``/dtmf`` turn, so no ``#`` is pressed (a ``#``
after the 8th would reach the dialogue as a key of its own). Steps 1 and 3 are spoken either
way. ``both`` runs every account once per entry mode (same audio for steps 1, 3, 4), so the
set is 2 x ``--n`` calls, reported per entry mode and per entry mode and identity mode besides
per voice and per identity mode.

One call per account and entry mode over a real AudioSocket connection (``SimulatedCaller``,
real time) into one in-process bot (``tests/conftest.py`` ``running_bot``: the real engines as
``serve`` loads them, with the deployment's words for the second opinion, which this
benchmark left out until 2026-12-06: ``ops.service.share_vocabulary``) whose dialogue is
the service's own (``factory.build_dialogue(config, "rasa")``: Rasa, the rules when Rasa is
down or slow) against one real Rasa server and one real rasa-sdk action server reading a
freshly seeded demo database (fresh temp state dir).
``--concurrency`` calls at a time.

Scored from the call records (``calls.jsonl``): each speech turn is matched to the caller's
step it answers (the turn is written when its reply finished playing, before the caller's
next step starts; a DTMF turn is step 2). **Correct**: the last turn of step 3 has a
``reply_text`` that starts with ``say_balance(account.balance_pence)`` (the action's exact
sentence), or the retry's (step 4) does; "first answer" counts step 3 alone. Otherwise the
call failed at the first step whose reply is not the expected one: ``intent`` (no request
for the account number), ``account`` (no identity question), ``identity`` (no balance, no
retry asked), ``retry`` (no balance after the other answer).
Also counted: turns whose normalised transcript (``voicebot_pbx/answers/normalize.py``)
differs from the normalised words said ("misheard"; for a keyed account number, the digits
the dialogue got differ from the account number), ``identity_mismatch`` and other
fallbacks, utterances split into several turns, time per call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import random
import re
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

for _name, _value in (
    ("ORT_DISABLE_TELEMETRY", "1"),
    ("HF_HUB_OFFLINE", "1"),
    ("RASA_TELEMETRY_ENABLED", "false"),
    ("OMP_WAIT_POLICY", "PASSIVE"),
):
    os.environ.setdefault(_name, _value)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "rasa_project"))

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import turn_dataset  # noqa: E402
import yaml  # noqa: E402
from actions.backend import Account  # noqa: E402
from actions.demo_data import demo_accounts  # noqa: E402
from actions.wording import (  # noqa: E402
    ASK_DATE_OF_BIRTH_INSTEAD,
    ASK_POSTCODE_INSTEAD,
    READ_BACK_OPENING,
    SAME_NUMBER_AGAIN,
    say_balance,
)

from tests.conftest import running_bot  # noqa: E402
from voicebot_pbx.answers import factory  # noqa: E402
from voicebot_pbx.answers.action_server import ActionServer  # noqa: E402
from voicebot_pbx.answers.knowledge import KnowledgeBase  # noqa: E402
from voicebot_pbx.answers.normalize import normalize  # noqa: E402
from voicebot_pbx.answers.rasa_server import RasaServer, default_rasa_venv  # noqa: E402
from voicebot_pbx.config import ActionsConfig, Config, load_config  # noqa: E402
from voicebot_pbx.ops.logs import configure_logging  # noqa: E402
from voicebot_pbx.ops.records import CallRecord, Recorder, TurnRecord  # noqa: E402
from voicebot_pbx.ops.service import load_llm_or_none, share_vocabulary, warm_stt  # noqa: E402
from voicebot_pbx.pbx.caller import Say, SendDtmf, SimulatedCaller  # noqa: E402
from voicebot_pbx.speech.engines import Engines, load_engines  # noqa: E402

OUT_JSON = ROOT / ".cache" / "reports" / "eval_balance.json"
RATE_HZ = turn_dataset.RATE_HZ  # 8 kHz: the AudioSocket / SimulatedCaller default
TARGET = 0.95
VERSION = 7

# espeak-ng voice+variants nobody else in this project speaks with (taken: see the lists in
# bench/answers_dataset.py, bench/turn_dataset.py, bench/stt_dataset.py, bench/bench_pbx.py;
# the tests speak en-us and en-gb).
VOICES = ["en-us+m4", "en-gb-x-rp+f3", "en-gb-scotland+m4", "en-gb+m5", "en-us+f4"]
MODES = ("postcode", "birth_date")
# "retry": the other identity answer (a postcode's date of birth, a date's postcode), said
# only when the bot asks for it after a first answer that did not match; "again": the
# account number said once more, only when the bot asks for it again after the first
# reading (spoken entry); "wrong": "no" to the account number read back, only when the
# number read back is not the caller's; "identity again": the identity answer said once
# more, only when the bot asks to hear it again; "keyed": the account number keyed after
# all, only when the bot heard the reading the caller said "no" to again and offered the
# keypad (spoken entry); "asked again": the request in other words, only when the bot's
# reply to it did not ask for the account number (a misheard request got another task's
# answer, the refusal, or "say it again"). Listed in this order so steps 0-3 keep their
# line noise.
STEPS = (
    "request",
    "account",
    "identity",
    "retry",
    "again",
    "wrong",
    "identity again",
    "keyed",
    "asked again",
)
RETRY = STEPS.index("retry")
AGAIN = STEPS.index("again")
WRONG = STEPS.index("wrong")
ID_AGAIN = STEPS.index("identity again")
KEYED = STEPS.index("keyed")
REQUEST_AGAIN = STEPS.index("asked again")
NOT_MY_NUMBER = "no, that's the wrong number"
_READ_BACK = re.compile(re.escape(READ_BACK_OPENING) + r" ([\d ,]+)\.")
ENTRIES = ("spoken", "keypad")  # how the account number (step 2) is given
SPEED = (140, 166)  # espeak words per minute, [lo, hi)
PITCH = (40, 61)
LEVEL_DBFS = (-24.0, -18.0)
REQUEST = "what's my balance"
# The request in other words (no Rasa training example says it), as a caller whose first
# words were not taken says it again.
REQUEST_OTHER_WORDS = "I want to know the balance of my account"
MONTHS = (
    "January February March April May June July August September October November December"
).split()


# --- the set --------------------------------------------------------------------------------


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def say_digits(number: str) -> str:
    """ "15805427" -> "1 5 8 0 5 4 2 7" (espeak reads each digit)."""
    return " ".join(number)


def say_postcode(postcode: str) -> str:
    """ "NW9 4RQ" -> "N W 9, 4 R Q": letters and digits one by one, a pause between halves."""
    outward, inward = postcode.split()
    return f"{' '.join(outward)}, {' '.join(inward)}"


def say_birth_date(day: datetime.date) -> str:
    """ "the 23rd of June 1987" (espeak: "the twenty-third of June nineteen eighty-seven")."""
    return f"the {ordinal(day.day)} of {MONTHS[day.month - 1]} {day.year}"


@dataclass(frozen=True, slots=True)
class Plan:
    index: int
    account: Account
    voice: str
    mode: str  # "postcode" | "birth_date"
    speed: int
    pitch: int
    level_dbfs: float

    @property
    def texts(self) -> tuple[str, str, str, str, str, str, str, str, str]:
        a = self.account
        postcode, born = say_postcode(a.postcode), say_birth_date(a.birth_date)
        identity, other = (postcode, born) if self.mode == "postcode" else (born, postcode)
        digits = say_digits(a.number)
        return (
            REQUEST,
            digits,
            identity,
            other,
            digits,
            NOT_MY_NUMBER,
            identity,
            a.number,
            REQUEST_OTHER_WORDS,
        )

    @property
    def expected(self) -> str:
        return str(say_balance(self.account.balance_pence))


def plan(n: int, seed: int, voices: Sequence[str]) -> list[Plan]:
    rng = random.Random(seed)
    accounts = rng.sample(demo_accounts(), n)
    voice_of = [voices[i % len(voices)] for i in range(n)]
    mode_of = [MODES[i % len(MODES)] for i in range(n)]
    rng.shuffle(voice_of)
    rng.shuffle(mode_of)
    return [
        Plan(
            index=i,
            account=account,
            voice=voice_of[i],
            mode=mode_of[i],
            speed=rng.randrange(*SPEED),
            pitch=rng.randrange(*PITCH),
            level_dbfs=round(rng.uniform(*LEVEL_DBFS), 1),
        )
        for i, account in enumerate(accounts)
    ]


def _spoken(text: str, p: Plan) -> npt.NDArray[np.float64]:
    """``text`` in ``p``'s voice: an espeak-ng voice+variant at the plan's speed and pitch,
    or "flite:<voice>" (``--voices flite:slt,flite:rms``: Debian flite's voices, at their own
    pace; the plan's speed and pitch are not theirs)."""
    family, _, flite_voice = p.voice.partition(":")
    if family == "flite":
        return turn_dataset.flite_speech(text, flite_voice)
    return turn_dataset.espeak_speech(text, p.voice, p.speed, p.pitch)


def account_pause_s(p: Plan, seed: int, pause_s: tuple[float, float]) -> float:
    """The pause between the account number's two groups of four (drawn per account)."""
    lo, hi = pause_s
    return round(random.Random(seed * 7919 + p.index).uniform(lo, hi), 2)


def render(
    p: Plan, step: int, snr_db: float | None, seed: int, groups_pause_s: tuple[float, float] | None
) -> bytes:
    """One caller utterance on the phone line (8 kHz slin). ``groups_pause_s``: the account
    number (step 2) is read as two groups of four digits with a pause drawn from this range
    between them, as callers read numbers."""
    if step == KEYED:
        return b""  # keys, not speech
    text = p.texts[step]
    # steps 0-2 keep the line noise they had before the retry step existed
    later = {RETRY: 500, AGAIN: 700, WRONG: 900, ID_AGAIN: 1100, REQUEST_AGAIN: 1300}
    noise_seed = seed * 1000 + (p.index * 3 + step if step < RETRY else later[step] + p.index)
    if step in (1, AGAIN) and groups_pause_s is not None:
        digits = text.split()
        pause = np.zeros(int(account_pause_s(p, seed, groups_pause_s) * RATE_HZ))
        x = np.concatenate(
            [_spoken(" ".join(digits[:4]) + ",", p), pause, _spoken(" ".join(digits[4:]) + ".", p)]
        )
    else:
        x = _spoken(text + ("?" if step == 0 else "."), p)  # REQUEST_AGAIN: a statement
    return turn_dataset.phone_line(x, level_dbfs=p.level_dbfs, snr_db=snr_db, seed=noise_seed)


# --- turn timing ----------------------------------------------------------------------------


class StampingRecorder:
    """The bot's recorder, plus the loop time each turn was written (when its reply finished
    playing): matches a record's turns to the caller's steps; and each call's latest reply,
    which the caller's retry step reads (it answers only what the bot asked)."""

    def __init__(self, inner: Recorder) -> None:
        self.inner = inner
        self.stamps: dict[tuple[str, int], float] = {}
        self.last_reply: dict[str, str] = {}

    async def call_started(self, call: CallRecord) -> None:
        await self.inner.call_started(call)

    async def turn_finished(self, call: CallRecord, turn: TurnRecord) -> None:
        self.stamps[(call.call_id, turn.seq)] = asyncio.get_running_loop().time()
        self.last_reply[call.call_id] = turn.reply_text
        await self.inner.turn_finished(call, turn)

    async def call_ended(self, call: CallRecord) -> None:
        await self.inner.call_ended(call)


# --- one call ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    index: int
    entry: str  # "spoken" | "keypad": the account number said or keyed
    number: str
    voice: str
    mode: str
    speed: int
    pitch: int
    level_dbfs: float
    expected: str
    said: list[str]
    said_normalised: list[str]
    heard: list[list[str]] = field(default_factory=lambda: [[] for _ in STEPS])  # per step
    heard_normalised: list[str] = field(default_factory=lambda: ["" for _ in STEPS])
    misheard: list[bool] = field(default_factory=lambda: [False for _ in STEPS])
    replies: list[str] = field(default_factory=lambda: ["" for _ in STEPS])  # last turn's reply
    turns_per_step: list[int] = field(default_factory=lambda: [0 for _ in STEPS])
    retried: bool = False  # the bot asked for the other identity answer and the caller gave it
    said_again: bool = False  # the bot asked for the account number again and got it
    said_wrong: bool = False  # the caller said "no" to a wrong account number read back
    said_identity_again: bool = False  # the bot asked to hear the identity answer again
    keyed: bool = False  # the bot offered the keypad after the account number said again
    asked_again: bool = False  # the request said again: its first reply took it elsewhere
    fallbacks: list[str] = field(default_factory=list)
    dialogues: list[str] = field(default_factory=list)
    identity_mismatch: int = 0
    latency_ms: list[float | None] = field(default_factory=list)
    stage: str = ""  # ok | intent | account | identity | retry | error
    correct: bool = False  # the balance read back within the call
    correct_first: bool = False  # ... after the first identity answer
    call_s: float = 0.0
    error: str = ""


def prompts() -> tuple[str, str]:
    """The two questions of the balance form, as Rasa says them (domain.yml)."""
    domain = yaml.safe_load((ROOT / "rasa_project" / "domain.yml").read_text(encoding="utf-8"))
    responses = domain["responses"]
    # The identity question may come with the account number read back after its "Thanks."
    identity = str(responses["utter_ask_identity_check"][0]["text"])
    return (
        str(responses["utter_ask_account_number"][0]["text"]),
        identity.removeprefix("Thanks. "),
    )


# The steps said only when the bot's reply called for them, by the call's flag that says so.
OPTIONAL = {
    RETRY: "retried",
    AGAIN: "said_again",
    WRONG: "said_wrong",
    ID_AGAIN: "said_identity_again",
    KEYED: "keyed",
    REQUEST_AGAIN: "asked_again",
}


def optional_taken(call: Mapping[str, Any]) -> frozenset[int]:
    """The optional steps a call took, from its flags (an ``Outcome`` as a dict; a flag a
    report of an older version lacks was not taken)."""
    return frozenset(step for step, flag in OPTIONAL.items() if call.get(flag, False))


def said_steps(entry: str, taken: frozenset[int]) -> tuple[int, ...]:
    """The steps the caller said (``Say``), in the order said; the others are keyed.
    Optional steps only when ``taken``."""
    if entry == "keypad":
        order: tuple[int, ...] = (0, REQUEST_AGAIN, 2, ID_AGAIN, RETRY)
    else:
        order = (0, REQUEST_AGAIN, 1, WRONG, AGAIN, 2, ID_AGAIN, RETRY)
    return tuple(k for k in order if step_taken(k, taken))


def step_taken(step: int, taken: frozenset[int]) -> bool:
    """Whether the caller took ``step`` in the call: every step but the optional ones,
    which only when called for."""
    return step not in OPTIONAL or step in taken


def read_back(reply: str) -> str | None:
    """The account number the bot read back in ``reply`` (digits), or None."""
    match = _READ_BACK.search(reply)
    return re.sub(r"\D", "", match.group(1)) if match else None


def asks_account_again(reply: str, account_question: str) -> bool:
    """The bot's reply asks for the account number again (``account_question``, Rasa's
    text), or to say it again (the dialogue's and the session's "didn't catch that")."""
    return (
        account_question in reply
        or "didn't catch that" in reply
        or ("didn't quite catch that" in reply)
    )


def asks_other_answer(reply: str) -> bool:
    """The bot's reply asks for the other identity answer (``actions.wording``)."""
    return ASK_DATE_OF_BIRTH_INSTEAD in reply or ASK_POSTCODE_INSTEAD in reply


def asks_identity_again(reply: str, identity_question: str) -> bool:
    """The bot's reply to the identity answer asks to hear it again: "didn't catch that",
    or the identity question again (after answering something else it heard), and not
    for the other answer."""
    if asks_other_answer(reply):
        return False
    return identity_question in reply or "catch that" in reply


def score(
    out: Outcome,
    record: dict[str, Any] | None,
    say_starts: list[float],
    stamps: dict[tuple[str, int], float],
    call_id: str,
    asks: tuple[str, str],
) -> None:
    if record is None:
        out.stage = "error"
        out.error = out.error or "no call record"
        return
    turns = [t for t in record["turns"] if t["kind"] in ("speech", "dtmf")]
    taken = optional_taken(dataclasses.asdict(out))
    say_steps = said_steps(out.entry, taken)
    # Turn -> step: a DTMF turn is the keyed account number (step 2); a speech turn, the
    # last said step that started before the turn was written; a turn never written on its
    # own (merged into the next, or cut by the hang-up) takes the next stamped turn's time;
    # with no stamps at all, record order.
    steps: list[int] = []
    pending: list[int] = []
    for i, turn in enumerate(turns):
        stamp = stamps.get((call_id, int(turn["seq"])))
        if stamp is None:
            pending.append(i)
            continue
        k = max((k for k, s in enumerate(say_starts) if s <= stamp), default=0)
        steps.extend([say_steps[min(k, len(say_steps) - 1)]] * (len(pending) + 1))
        pending = []
    last = steps[-1] if steps else say_steps[-1]
    steps.extend([last] * len(pending))
    if not stamps or not any(k[0] == call_id for k in stamps):
        spoken = [t for t in turns if t["kind"] == "speech"]
        order = iter(say_steps[min(i, len(say_steps) - 1)] for i in range(len(spoken)))
        steps = [1 if t["kind"] == "dtmf" else next(order) for t in turns]
    keyed_step = KEYED if out.entry == "spoken" else 1
    steps = [keyed_step if t["kind"] == "dtmf" else k for t, k in zip(turns, steps, strict=True)]
    for turn, step in zip(turns, steps, strict=True):
        out.heard[step].append(str(turn["transcript"]))
        out.replies[step] = str(turn["reply_text"])
        out.turns_per_step[step] += 1
        out.fallbacks.extend(str(f) for f in turn["fallbacks"])
        out.dialogues.append(str(turn["dialogue"]))
        out.latency_ms.append(turn.get("end_of_speech_to_first_frame_ms"))
    out.identity_mismatch = sum(1 for f in out.fallbacks if f.startswith("identity_mismatch"))
    for step in range(len(STEPS)):
        out.heard_normalised[step] = normalize(" ".join(out.heard[step]))
        out.misheard[step] = (
            step_taken(step, taken) and out.heard_normalised[step] != out.said_normalised[step]
        )
    out.correct_first = out.replies[2].startswith(out.expected)
    out.correct = out.correct_first or any(
        step in taken and out.replies[step].startswith(out.expected) for step in (ID_AGAIN, RETRY)
    )
    if out.correct:
        out.stage = "ok"
    elif asks[0] not in out.replies[0] and not (
        out.asked_again and asks[0] in out.replies[REQUEST_AGAIN]
    ):
        out.stage = "intent"
    elif (
        asks[1] not in out.replies[1]
        and not (out.said_again and asks[1] in out.replies[AGAIN])
        and not (out.keyed and asks[1] in out.replies[KEYED])
    ):
        out.stage = "account"
    else:
        out.stage = "retry" if out.retried else "identity"


async def one_call(
    p: Plan,
    entry: str,
    audio: list[bytes],
    port: int,
    recorder: StampingRecorder,
    asks: tuple[str, str],
) -> tuple[Outcome, str, list[float]]:
    said = list(p.texts)
    if entry == "keypad":
        said[1] = p.account.number  # the keys pressed
    out = Outcome(
        index=p.index,
        entry=entry,
        number=p.account.number,
        voice=p.voice,
        mode=p.mode,
        speed=p.speed,
        pitch=p.pitch,
        level_dbfs=p.level_dbfs,
        expected=p.expected,
        said=said,
        said_normalised=[normalize(t) for t in said],
    )
    caller = SimulatedCaller(
        "127.0.0.1", port, rate_hz=RATE_HZ, reply_gap_s=1.0, reply_timeout_s=25.0
    )

    def request_not_taken() -> bool:
        # The reply to the request, a second before this step: a caller not asked for
        # their account number asks again, in other words.
        reply = recorder.last_reply.get(caller.result.call_id, "")
        out.asked_again = asks[0] not in reply
        return out.asked_again

    def asked_again() -> bool:
        # The reply to the identity answer was written when it finished playing, a second
        # before this step (reply_gap_s): the caller gives the other answer only if asked.
        out.retried = asks_other_answer(recorder.last_reply.get(caller.result.call_id, ""))
        return out.retried

    def read_back_wrong() -> bool:
        # As above: the reply to the account number. A caller who hears another number
        # read back says so.
        heard = read_back(recorder.last_reply.get(caller.result.call_id, ""))
        out.said_wrong = heard is not None and heard != p.account.number
        return out.said_wrong

    def asked_for_account_again() -> bool:
        # As above: the reply to the account number, a second before this step.
        reply = recorder.last_reply.get(caller.result.call_id, "")
        out.said_again = asks_account_again(reply, asks[0])
        return out.said_again

    def asked_to_key() -> bool:
        # As above: the reply to the account number said again.
        reply = recorder.last_reply.get(caller.result.call_id, "")
        out.keyed = SAME_NUMBER_AGAIN in reply
        return out.keyed

    def asked_for_identity_again() -> bool:
        # As above: the reply to the identity answer.
        reply = recorder.last_reply.get(caller.result.call_id, "")
        out.said_identity_again = asks_identity_again(reply, asks[1])
        return out.said_identity_again

    steps: list[Say | SendDtmf] = [
        Say(audio[0]),
        Say(audio[REQUEST_AGAIN], only_if=request_not_taken),
    ]
    if entry == "keypad":
        # The entry ends at the 8th key (collect_dtmf max_digits 8): no "#".
        steps.append(SendDtmf(p.account.number))
    else:
        steps += [
            Say(audio[1]),
            Say(audio[WRONG], only_if=read_back_wrong),
            Say(audio[AGAIN], only_if=asked_for_account_again),
            SendDtmf(p.account.number, only_if=asked_to_key),
        ]
    steps += [
        Say(audio[2]),
        Say(audio[ID_AGAIN], only_if=asked_for_identity_again),
        Say(audio[RETRY], only_if=asked_again),
    ]
    started = time.perf_counter()
    try:
        result = await caller.run(steps, hangup_after_s=0.3)
        starts = [t.speech_start_s for t in result.turns]
    except (OSError, TimeoutError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
        starts = []
    out.call_s = round(time.perf_counter() - started, 1)
    return out, caller.result.call_id, starts


# --- the run ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def evaluate(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    os.chdir(ROOT)  # rasa project_dir and knowledge_dir are relative to the checkout
    snr_db: float | None = None if args.snr <= 0 else args.snr
    plans = plan(args.n, args.seed, args.voices)
    entries = ENTRIES if args.account_entry == "both" else (args.account_entry,)
    runs = [(p, entry) for p in plans for entry in entries]
    if args.only:
        # The set is still drawn whole (every call keeps its voice, account and line noise).
        wanted = {int(k) for k in args.only.split(",")}
        runs = [(p, entry) for p, entry in runs if p.index in wanted]
    asks = prompts()
    base = load_config()
    config: Config = dataclasses.replace(
        base,
        server=dataclasses.replace(base.server, port=0),
        dialogue=dataclasses.replace(base.dialogue, engine="rasa"),
    )
    venv = Path(config.rasa.venv_dir) if config.rasa.venv_dir else default_rasa_venv(ROOT)
    seconds: dict[str, float] = {}
    info: dict[str, Any] = {}
    t0 = time.perf_counter()

    def render_all() -> list[list[bytes]]:
        groups = tuple(args.account_groups) if args.account_groups else None
        return [[render(p, k, snr_db, args.seed, groups) for k in range(len(STEPS))] for p in plans]

    async with contextlib.AsyncExitStack() as stack:
        rendering = asyncio.create_task(asyncio.to_thread(render_all))
        actions = ActionServer(
            ActionsConfig(url=f"http://127.0.0.1:{free_port()}"),
            state_dir=work / "actions",
            venv_dir=venv,
        )
        rasa_server = RasaServer(
            ROOT / config.rasa.project_dir,
            venv,
            port=free_port(),
            models_dir=ROOT / ".cache" / "rasa-models",
            work_dir=work / "rasa",
            action_url=actions.webhook_url,
        )
        model = await asyncio.to_thread(rasa_server.ensure_trained)
        info["rasa_model"] = model.path.name
        info["rasa_trained_now"] = model.trained
        stack.push_async_callback(actions.stop)
        await actions.start()
        stack.push_async_callback(rasa_server.stop)
        await rasa_server.start()
        built = factory.build_dialogue(config, "rasa", rasa_url=rasa_server.base_url)
        assert built.rasa is not None
        stack.push_async_callback(built.rasa.aclose)
        await built.rasa.ping()
        seconds["servers_start"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        engines: Engines = await asyncio.to_thread(load_engines, config)
        stack.callback(engines.close)
        await asyncio.to_thread(warm_stt, engines)
        # The knowledge routing and the grounded LLM around the dialogue, as serve has them
        # (its sessions wrap the dialogue: factory.answering), unless --rasa-only.
        llm = None if args.rasa_only else await load_llm_or_none(config)
        if llm is not None:
            stack.push_async_callback(llm.aclose)
            kb = llm.kb
        else:
            # The deployment's words for the second opinion, as serve gives them (the
            # knowledge base's passages without its embedder: only their words are read).
            knowledge_dir = Path(config.llm.knowledge_dir)
            kb = await asyncio.to_thread(
                KnowledgeBase.load,
                knowledge_dir if knowledge_dir.is_absolute() else ROOT / knowledge_dir,
            )
        info["knowledge_routing"] = llm is not None
        await share_vocabulary(engines, config, kb)
        info["stt"] = (
            f"{config.stt.engine} {config.stt.model_dir or '(packaged default)'}"
            + (
                f", {config.stt.long_engine_name} from {config.stt.long_from_s:g} s of speech"
                if config.stt.long_engine_name
                else ""
            )
            + (
                ", second opinion outside the deployment's words"
                if config.stt.second_opinion
                else ""
            )
        )
        audio = await rendering
        seconds["engines_and_audio"] = round(time.perf_counter() - t0, 1)
        bot, shared = await stack.enter_async_context(
            running_bot(engines, config, work / "tts-cache", work / "state")
        )
        shared.dialogue = built.dialogue
        shared.llm = llm
        assert shared.recorder is not None
        recorder = StampingRecorder(shared.recorder)
        shared.recorder = recorder
        t0 = time.perf_counter()
        gate = asyncio.Semaphore(args.concurrency)
        done = 0

        async def run(p: Plan, entry: str) -> tuple[Outcome, str, list[float]]:
            nonlocal done
            async with gate:
                got = await one_call(p, entry, audio[p.index], bot.port, recorder, asks)
            done += 1
            print(
                f"  {done}/{len(runs)} calls ({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
            return got

        calls = await asyncio.gather(*(run(p, entry) for p, entry in runs))
        for _ in range(200):  # the last records are written as the calls end
            if not bot.calls:
                break
            await asyncio.sleep(0.05)
        seconds["calls"] = round(time.perf_counter() - t0, 1)
        records = {str(r["call_id"]): r for r in recorder.inner.read_all()}  # type: ignore[attr-defined]
        info["rasa_restarts"] = rasa_server.restarts
    outcomes: list[Outcome] = []
    for out, call_id, starts in calls:
        score(out, records.get(call_id), starts, recorder.stamps, call_id, asks)
        outcomes.append(out)
    info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "version": VERSION,
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "settings": {
            "n": args.n,
            "account_entry": list(entries),
            "calls": len(runs),
            "seed": args.seed,
            "voices": list(args.voices),
            "modes": list(MODES),
            "snr_db": snr_db,
            "account_groups_pause_s": args.account_groups,
            "rate_hz": RATE_HZ,
            "concurrency": args.concurrency,
            "speed": list(SPEED),
            "pitch": list(PITCH),
            "level_dbfs": list(LEVEL_DBFS),
        },
        "info": info,
        "seconds": seconds,
        "summary": summarise(outcomes),
        "calls": [dataclasses.asdict(o) for o in outcomes],
    }


# --- report -----------------------------------------------------------------------------------


def _group(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    n = len(outcomes)
    correct = sum(o.correct for o in outcomes)
    return {
        "n": n,
        "correct": correct,
        "rate": round(correct / n, 4) if n else None,
        "correct_first": sum(o.correct_first for o in outcomes),
        "retried": sum(o.retried for o in outcomes),
        "said_again": sum(o.said_again for o in outcomes),
        "said_wrong": sum(o.said_wrong for o in outcomes),
        "said_identity_again": sum(o.said_identity_again for o in outcomes),
        "keyed": sum(o.keyed for o in outcomes),
        "asked_again": sum(o.asked_again for o in outcomes),
        "misheard": {s: sum(o.misheard[k] for o in outcomes) for k, s in enumerate(STEPS)},
        "identity_mismatch": sum(o.identity_mismatch for o in outcomes),
        "stages": {
            s: sum(o.stage == s for o in outcomes)
            for s in ("ok", "intent", "account", "identity", "retry", "error")
        },
    }


def summarise(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    fallbacks: dict[str, int] = {}
    for o in outcomes:
        for f in o.fallbacks:
            fallbacks[f] = fallbacks.get(f, 0) + 1
    call_s = sorted(o.call_s for o in outcomes)
    return {
        "all": _group(outcomes),
        "by_voice": {
            v: _group([o for o in outcomes if o.voice == v])
            for v in dict.fromkeys(o.voice for o in outcomes)
        },
        "by_mode": {m: _group([o for o in outcomes if o.mode == m]) for m in MODES},
        "by_entry": {
            e: _group([o for o in outcomes if o.entry == e])
            for e in ENTRIES
            if any(o.entry == e for o in outcomes)
        },
        "by_entry_mode": {
            f"{e} {m}": _group([o for o in outcomes if o.entry == e and o.mode == m])
            for e in ENTRIES
            if any(o.entry == e for o in outcomes)
            for m in MODES
        },
        "fallbacks": dict(sorted(fallbacks.items(), key=lambda kv: -kv[1])),
        "split_turns": sum(1 for o in outcomes for c in o.turns_per_step if c > 1),
        "missing_turns": sum(
            1
            for o in outcomes
            for k, c in enumerate(o.turns_per_step)
            if c == 0 and step_taken(k, optional_taken(dataclasses.asdict(o)))
        ),
        "not_rasa_turns": sum(1 for o in outcomes for d in o.dialogues if d != "rasa"),
        "call_s": {
            "p50": round(statistics.median(call_s), 1) if call_s else None,
            "max": call_s[-1] if call_s else None,
        },
    }


def _rate(group: dict[str, Any], key: str = "correct") -> str:
    n = group["n"]
    return f"{group[key]}/{n} ({100.0 * group[key] / n:.0f} %)" if n else "0/0"


def _row(name: str, g: dict[str, Any]) -> str:
    m = g["misheard"]
    st = g["stages"]
    return (
        f"| {name} | {_rate(g)} | {_rate(g, 'correct_first')} | {g.get('said_wrong', 0)} "
        f"| {g.get('said_again', 0)} "
        f"| {g.get('said_identity_again', 0)} | {g.get('keyed', 0)} "
        f"| {g.get('asked_again', 0)} "
        f"| {g['retried']} | {m['request']} / {m.get('asked again', 0)} / {m['account']} / "
        f"{m.get('wrong', 0)} / "
        f"{m.get('again', 0)} / "
        f"{m['identity']} / {m.get('identity again', 0)} / {m['retry']} "
        f"| {g['identity_mismatch']} | {st['intent']} / {st['account']} / {st['identity']} "
        f"/ {st['retry']} / {st['error']} |"
    )


def markdown(run: dict[str, Any]) -> str:
    s = run["summary"]
    st = run["settings"]
    a = s["all"]
    snr = "clean line" if st["snr_db"] is None else f"pink line noise at {st['snr_db']:g} dB SNR"
    groups = st.get("account_groups_pause_s")
    if groups:
        snr += f"; account read as 4 + 4 digits, {groups[0]:g}-{groups[1]:g} s apart"
    routing = (
        ", with the knowledge routing and the LLM around it"
        if run["info"].get("knowledge_routing")
        else ", Rasa alone (no knowledge routing)"
    )
    lines = [
        "# Balance evaluation (bench/eval_balance.py)",
        "",
        f"{run['when']}; {st['n']} accounts (seed {st['seed']}), account number "
        f"{' / '.join(st['account_entry'])}: {st['calls']} calls, {st['concurrency']} at a time; "
        f"voices {', '.join(st['voices'])}; {st['rate_hz']} Hz phone band, {snr}, µ-law; "
        f"STT {run['info'].get('stt')}; Rasa model {run['info'].get('rasa_model')}"
        f"{routing}; "
        f"load average {run['info'].get('loadavg')}; wall time {run['seconds'].get('total')} s "
        f"(calls {run['seconds'].get('calls')} s).",
        "",
        f"**Balance read back correctly: {_rate(a)}** within the call (target >= "
        f"{TARGET:.0%}); after the first identity answer {_rate(a, 'correct_first')}.",
        "",
        "A first identity answer that does not match gets the identity question again, "
        "asking for the other answer (the account number kept); the caller then gives it "
        "(retry: a postcode's date of birth, a date's postcode). A spoken account number "
        "the bot asks for again (or asks to hear again) is said once more (account again); "
        "a spoken number read back wrong gets a no first; an identity answer the bot asks "
        "to hear again (didn't catch it, or asked the identity question again) is said once "
        "more (identity again); the account number heard again as the reading the caller "
        "said no to gets the keypad offered, and the caller keys it (keyed); a request "
        "whose reply does not ask for the account number is said again in other words "
        f'(asked again: "{REQUEST_OTHER_WORDS}"). '
        "Misheard = turns whose "
        "normalised transcript differs from the normalised words said (request / request "
        "again / account / no / again / identity / identity again / retry; a keyed account "
        "number: the digits the dialogue got differ from the account number). Failed at = "
        "first step whose reply was wrong "
        "(intent: no account-number question, after the request said again either; "
        "account: no identity question after the "
        "account number or its second reading; identity: no balance and "
        "no retry asked; retry: no balance after the other answer; error: no record).",
        "",
        "| | correct | first answer | said no to read-back | account again | identity again "
        "| keyed after | asked again | retried "
        "| misheard req / req again / acct / no / again / id / id again / retry "
        "| identity_mismatch | failed at intent / account / identity / retry / error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        _row("all", a),
    ]
    for entry, g in s["by_entry"].items():
        lines.append(_row(f"account {entry}", g))
    for key, g in s["by_entry_mode"].items():
        entry, mode = key.split()
        lines.append(_row(f"account {entry}, mode {mode}", g))
    for voice, g in s["by_voice"].items():
        lines.append(_row(f"voice {voice}", g))
    for mode, g in s["by_mode"].items():
        lines.append(_row(f"mode {mode}", g))
    lines += [
        "",
        f"Fallbacks: {s['fallbacks'] or 'none'}; utterances split into several turns: "
        f"{s['split_turns']}; steps with no turn: {s['missing_turns']}; turns not answered by "
        f"Rasa: {s['not_rasa_turns']}; time per call p50 {s['call_s']['p50']} s, max "
        f"{s['call_s']['max']} s.",
        "",
        "## Failures (said -> heard -> normalised; the bot's reply to that step)",
        "",
    ]
    for c in run["calls"]:
        if c["correct"]:
            continue
        lines.append(
            f"* call {c['index']} ({c['entry']} account {c['number']}, {c['voice']}, "
            f"{c['mode']}): "
            f"failed at **{c['stage']}**{' (' + c['error'] + ')' if c['error'] else ''}; "
            f"fallbacks {c['fallbacks'] or '-'}"
        )
        for k, step in enumerate(STEPS):
            if not step_taken(k, optional_taken(c)):
                continue
            mark = "MISHEARD" if c["misheard"][k] else "ok"
            heard = " | ".join(c["heard"][k]) or "(no turn)"
            lines.append(
                f'  * {step} [{mark}]: "{c["said"][k]}" -> "{heard}" -> '
                f'"{c["heard_normalised"][k]}" (want "{c["said_normalised"][k]}"); '
                f'reply: "{c["replies"][k][:110]}"'
            )
    return "\n".join(lines) + "\n"


def summary_line(run: dict[str, Any]) -> str:
    a = run["summary"]["all"]
    by_entry = ", ".join(f"{e} {_rate(g)}" for e, g in run["summary"]["by_entry"].items())
    by_mode = ", ".join(f"{m} {_rate(g)}" for m, g in run["summary"]["by_entry_mode"].items())
    return (
        f"balance read back correctly: {_rate(a)} (target >= {TARGET:.0%}; first identity "
        f"answer {_rate(a, 'correct_first')}, {a['retried']} retried); {by_entry}; "
        f"{by_mode}; "
        f"wall {run['seconds'].get('total')} s"
    )


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the run the way Ctrl-C does (servers stopped, temp dir removed)."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=24, help="accounts in the set")
    parser.add_argument(
        "--account-entry",
        choices=(*ENTRIES, "both"),
        default="both",
        help="account number said, keyed (DTMF), or each account once each way",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument(
        "--snr", type=float, default=30.0, help="line noise SNR in dB (0: clean line)"
    )
    parser.add_argument(
        "--voices",
        type=lambda s: s.split(","),
        default=VOICES,
        help="comma-separated espeak-ng voices, or flite ones as flite:slt,flite:rms,...",
    )
    parser.add_argument(
        "--account-groups",
        type=float,
        nargs=2,
        metavar=("MIN_S", "MAX_S"),
        help="say the account number as two groups of four digits, a pause drawn from "
        "MIN_S..MAX_S seconds between them (default: one run of eight)",
    )
    parser.add_argument("--out", type=Path, default=OUT_JSON, help="JSON; the .md beside it")
    parser.add_argument("--log-level", default="error")
    parser.add_argument(
        "--rasa-only",
        action="store_true",
        help="without the knowledge routing and the LLM around the dialogue (before 2026-12-07)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated call numbers of the set (as the report numbers them) to run alone, "
        "e.g. with --log-level info to see their turns",
    )
    args = parser.parse_args()
    if not 1 <= args.n <= len(demo_accounts()):
        parser.error("--n must be between 1 and 200")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    configure_logging("console", level=args.log_level)
    started = time.perf_counter()
    try:
        with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="eval-balance-") as tmp:
            run = asyncio.run(evaluate(args, Path(tmp)))
    except KeyboardInterrupt:
        print("interrupted: servers stopped, temp dir removed, nothing written", file=sys.stderr)
        return 130
    run["seconds"]["total"] = round(time.perf_counter() - started, 1)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(run, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    md = out.with_suffix(".md")
    text = markdown(run)
    md.write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {out} and {md}")
    print(summary_line(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
