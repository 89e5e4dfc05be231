"""Known answers (``voicebot_pbx/speech/verify.py``): how often the recogniser confirms the
postcode or date of birth a caller really said, and how often it confirms one they did not.

    .venv/bin/python bench/eval_verify.py                      # the dev set, ~1 min
    .venv/bin/python bench/eval_verify.py --set report --n 48  # the report set, ~2 min
    .venv/bin/python bench/eval_verify.py --floor -4           # another near-miss guard

Set (deterministic from its seed): ``--n`` demo accounts (``rasa_project/actions/
demo_data.py``), each answer (the postcode letter by letter or the date of birth, alternating)
said by one of the set's ``SETS`` voices (espeak-ng voice+variants that
``bench/eval_balance.py`` does not use; thresholds chosen on ``dev``, reported on
``report``) through ``bench/eval_balance.py``'s phone line (8 kHz, band, level, pink noise at
30 dB, µ-law). Each utterance is checked three times by the default long engine (Moonshine base,
the one that takes expected answers), as the action server would ask, with the postcode and
date of birth of:

* **genuine**: the account whose answer was said: accepted when the transcript is that
  answer written plainly;
* **impostor**: another account (what a caller who does not know the answer says is
  someone's answer, not this one): accepted at all = a false accept;
* **near miss**: this account with the said answer one character, day, month or year off
  (a caller who misremembers, or a neighbour's postcode): a false accept too;
* **cut short**: this account's own answers, the audio cut after ``CUT_SHORT`` of its speech
  (``turn_dataset.speech_bounds``) and the line's last ``TAIL_S`` put after it (what the
  recogniser has at a pause inside the answer, "N W 5, [pause]", when the turn ends there):
  accepted = confirmed on words the caller had not said yet, a false accept.

And each spelled postcode with **no known answers** (what the outage form has: any postcode
may be reported), decoded held to a postcode (``expect: [postcode]``) and freely: the
postcode the form would take from the transcript (``normalise_postcode`` of the app's
normalised text) is right, another postcode (read back to the caller, who must say no), or
none ("that doesn't sound like a postcode").

Reports accept rates with the set size, the said kind's mean lead of its digits, letters and
months over their rivals and its worst one (percentiles), CPU-s per check. Writes
``.cache/reports/eval_verify.json`` and ``.md``.
The exit code is 0 whatever the rates (a measurement, not a check).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "rasa_project"))

import eval_balance  # noqa: E402
import numpy as np  # noqa: E402
import turn_dataset  # noqa: E402
from actions.backend import normalise_postcode  # noqa: E402
from structlog.testing import capture_logs  # noqa: E402

from voicebot_pbx.answers.normalize import normalize  # noqa: E402
from voicebot_pbx.models import MOONSHINE_BASE_EN, MOONSHINE_TOKENIZER, model_path  # noqa: E402
from voicebot_pbx.speech.expect import Expectation  # noqa: E402
from voicebot_pbx.speech.moonshine import MoonshineEngine  # noqa: E402
from voicebot_pbx.speech.verify import DEFAULT_FLOOR, DEFAULT_MIN_LEAD, KnownAnswer, written  # noqa: E402

# Two sets, neither used by bench/eval_balance.py: thresholds are chosen on "dev", reported
# on "report" (other voices, other accounts).
SETS = {
    "dev": (4343, ["en-us+m2", "en-gb+f2", "en-us+f2", "en-gb-x-rp+m1", "en-029+m2", "en-gb+m3"]),
    "report": (
        9090,
        ["en-gb-scotland+m2", "en-us+m5", "en-029+f1", "en-gb-x-rp+m6", "en-gb+f1", "en-us+m1"],
    ),
}
OUT = ROOT / ".cache" / "reports" / "eval_verify.json"
EXPECTED = frozenset({Expectation.POSTCODE, Expectation.DATE})
POSTCODE_ONLY = frozenset({Expectation.POSTCODE})


def postcode_taken(engine: MoonshineEngine, pcm: bytes, held: bool) -> str | None:
    """The postcode the outage form would take from the transcript (no known answers),
    decoded held to a postcode or freely."""
    if held:
        result = engine.transcribe_expecting(pcm, eval_balance.RATE_HZ, POSTCODE_ONLY)
    else:
        result = engine.transcribe(pcm, eval_balance.RATE_HZ)
    return normalise_postcode(normalize(result.text))


def answers_of(account: Any) -> tuple[KnownAnswer, KnownAnswer]:
    return (
        KnownAnswer(Expectation.POSTCODE, account.postcode),
        KnownAnswer(Expectation.DATE, account.birth_date.isoformat()),
    )


def near_miss(said: KnownAnswer, rng: random.Random) -> KnownAnswer:
    """The said answer one character (postcode) or one of day / month / year (date) off."""
    if said.kind is Expectation.DATE:
        day = dt.date.fromisoformat(said.value)
        which = rng.randrange(3)
        if which == 0:
            other = day.replace(day=day.day % 28 + 1)
        elif which == 1:
            other = day.replace(month=day.month % 12 + 1, day=min(day.day, 28))
        else:
            other = day.replace(year=day.year + 1, day=min(day.day, 28))
        return KnownAnswer(said.kind, other.isoformat())
    chars = list(said.value)
    i = rng.choice([k for k, c in enumerate(chars) if c != " " and k >= 2])
    pool = "123456789" if chars[i].isdigit() else "ABDEFGHJLNPQRSTUWXYZ"
    chars[i] = rng.choice([c for c in pool if c != chars[i]])
    return KnownAnswer(said.kind, "".join(chars))


def check(
    engine: MoonshineEngine, pcm: bytes, claimed: tuple[KnownAnswer, ...]
) -> tuple[str, float, list[tuple[Any, Any]]]:
    """(transcript, CPU-s, (lead, worst) of each known answer, in ``claimed``'s order)."""
    with capture_logs() as logs:
        started = time.process_time()
        result = engine.transcribe_expecting(pcm, eval_balance.RATE_HZ, EXPECTED, claimed)
        cpu_s = time.process_time() - started
    leads = [
        (e.get("lead"), e.get("worst")) for e in logs if e.get("event") == "stt.moonshine.verify"
    ]
    accepted = result.held_to is not None and result.held_to.startswith("known:")
    return (result.text if accepted else ""), cpu_s, leads


CUT_SHORT = 0.55  # of the utterance's speech span


TAIL_S = 0.5  # the line's last half second, put after the cut


def cut_short(pcm: bytes) -> bytes:
    """The utterance up to ``CUT_SHORT`` of its speech (``turn_dataset.speech_bounds``),
    then its last ``TAIL_S`` (line noise)."""
    samples = np.frombuffer(pcm, dtype="<i2")
    rate = eval_balance.RATE_HZ
    start, end = turn_dataset.speech_bounds(samples.astype(np.float64), rate)
    cut = start + int(CUT_SHORT * (end - start))
    return samples[:cut].tobytes() + samples[-int(TAIL_S * rate) :].tobytes()


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--set", choices=sorted(SETS), default="dev")
    parser.add_argument("--min-lead", type=float, default=DEFAULT_MIN_LEAD)
    parser.add_argument("--floor", type=float, default=DEFAULT_FLOOR)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    engine = MoonshineEngine(
        model_path(MOONSHINE_BASE_EN),
        tokenizer_path=model_path(MOONSHINE_TOKENIZER),
        verify_min_lead=args.min_lead,
        verify_floor=args.floor,
    )
    seed, voices = SETS[args.set]
    plans = eval_balance.plan(args.n, seed, voices)
    accounts = [p.account for p in plans]
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    unknown: dict[str, dict[str, int]] = {
        how: {"right": 0, "wrong": 0, "none": 0} for how in ("held", "free")
    }
    for p in plans:
        pcm = eval_balance.render(p, 2, 30.0, seed, None)
        if p.mode == "postcode":
            for how in unknown:
                taken = postcode_taken(engine, pcm, held=how == "held")
                outcome = (
                    "none" if taken is None else "right" if taken == p.account.postcode else "wrong"
                )
                unknown[how][outcome] += 1
        postcode, date = answers_of(p.account)
        said = postcode if p.mode == "postcode" else date
        other = rng.choice([a for a in accounts if a.number != p.account.number])
        missed = near_miss(said, rng)
        claims = {
            "genuine": (postcode, date),
            "impostor": answers_of(other),
            "near_miss": (missed, date) if p.mode == "postcode" else (postcode, missed),
        }
        claims["cut_short"] = (postcode, date)
        for kind, claimed in claims.items():
            audio = cut_short(pcm) if kind == "cut_short" else pcm
            text, cpu_s, leads = check(engine, audio, claimed)
            right = kind == "genuine" and text == written(said)
            rows.append(
                {
                    "index": p.index,
                    "voice": p.voice,
                    "mode": p.mode,
                    "claim": kind,
                    "accepted": bool(text),
                    "right": right,
                    "cpu_s": round(cpu_s, 3),
                    # the said kind's (lead, worst) (the postcode is checked first)
                    "lead": leads[0 if p.mode == "postcode" else -1][0] if leads else None,
                    "worst": leads[0 if p.mode == "postcode" else -1][1] if leads else None,
                }
            )
        print(f"  {p.index + 1}/{len(plans)}", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {}
    for mode in ("postcode", "birth_date", "all"):
        part: dict[str, Any] = {}
        for kind in ("genuine", "impostor", "near_miss", "cut_short"):
            chosen = [r for r in rows if r["claim"] == kind and mode in ("all", r["mode"])]
            leads = [r["lead"] for r in chosen if r["lead"] is not None]
            worst = [r["worst"] for r in chosen if r["worst"] is not None]
            part[kind] = {
                "n": len(chosen),
                "accepted": sum(r["accepted"] for r in chosen),
                "right": sum(r["right"] for r in chosen),
                "lead_p5_p50_p95": [pct(leads, q) for q in (5, 50, 95)],
                "worst_p5_p50_p95": [pct(worst, q) for q in (5, 50, 95)],
            }
        summary[mode] = part
    cpu = [r["cpu_s"] for r in rows]
    run = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "set": args.set,
        "seed": seed,
        "n": args.n,
        "min_lead": args.min_lead,
        "floor": args.floor,
        "voices": voices,
        "cpu_s_p50_p95": [pct(cpu, 50), pct(cpu, 95)],
        "summary": summary,
        "no_known_answers": unknown,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(run, indent=1))
    lines = [
        f"# Known answers (bench/eval_verify.py), {run['when']}, set {args.set} (seed {seed}), "
        f"{args.n} utterances, min lead {args.min_lead}, floor {args.floor}",
        "",
        "| said | genuine: confirmed | impostor: accepted | near miss: accepted "
        "| cut short: accepted |",
        "|---|---|---|---|---|",
    ]
    for mode in ("postcode", "birth_date", "all"):
        s = summary[mode]
        lines.append(
            f"| {mode} | {s['genuine']['right']}/{s['genuine']['n']} "
            f"| {s['impostor']['accepted']}/{s['impostor']['n']} "
            f"| {s['near_miss']['accepted']}/{s['near_miss']['n']} "
            f"| {s['cut_short']['accepted']}/{s['cut_short']['n']} |"
        )
    lines += [
        "",
        "Spelled postcodes with no known answers (the outage form): the postcode taken",
        "",
        "| decoded | right | another postcode | none |",
        "|---|---|---|---|",
    ]
    for how, label in (("held", "held to a postcode (default)"), ("free", "freely")):
        u = unknown[how]
        n = sum(u.values())
        lines.append(f"| {label} | {u['right']}/{n} | {u['wrong']}/{n} | {u['none']}/{n} |")
    lines += ["", f"CPU-s per check p50 / p95: {run['cpu_s_p50_p95']}", ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
