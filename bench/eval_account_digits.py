"""Account numbers said aloud (issue #19): how often the number the caller said is the one
the balance form takes, decoded as the bot decodes an expected account number.

    .venv/bin/python bench/eval_account_digits.py                # dev seeds 4343 4344, ~3 min
    .venv/bin/python bench/eval_account_digits.py --seeds 9090   # another set

Set (deterministic from its seed): ``--n`` demo accounts (``eval_balance.plan``), each read
by one of ``eval_verify``'s dev voices (espeak-ng voices + variants ``bench/eval_balance.py``
does not use), digit by digit, **whole** and as **two groups of four** with a pause of
0.4-1.2 s between them (``eval_balance.render``), on its phone line (8 kHz, band, level, pink
noise at 30 dB, µ-law). Each reading is decoded by the packaged Moonshine base as the held
engine decodes an expected account number (``transcribe_expecting`` with ``expect: [digits]``
and the 8 digits the dialogue asks for); its transcript is normalised as the bot sends it to
Rasa (``answers/normalize.py``) and the number taken as Rasa's ``account_number`` regex takes
it (6-10 digits). Then the action server's rule (``actions/account_numbers.py``): the 8 digits
heard, else the first of the readings to look up (``--look-up``, ``[actions]
account_alternatives``) that is a demo account. The readings are both listens' (the second
at ``--tempo``, ``[stt] digits_tempo``; 1.0: one listen).

Reports, per seed and reading (whole / groups), with the set size:

* **heard**: the 8 digits heard are the number said;
* **among the readings**: the number said is the one heard or one of the recogniser's other
  readings (``SttResult.alternatives``);
* **taken**: the number the action server takes (heard, or the first reading that is an
  account) is the number said; **taken, another account**: it is someone else's (the identity
  question then fails);
* **one digit too many**: readings with 9 digits heard, and of them, taken right;
* CPU-s per decode (mean / p95).

Writes ``.cache/reports/eval_account_digits.json`` and ``.md``. The exit code is 0 whatever
the rates (a measurement, not a check).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "rasa_project"))

import eval_balance  # noqa: E402
import eval_verify  # noqa: E402
from actions.account_numbers import keyed_or_said_account, readings_to_look_up  # noqa: E402
from actions.demo_data import demo_accounts  # noqa: E402

from voicebot_pbx.answers.normalize import normalize  # noqa: E402
from voicebot_pbx.config import ActionsConfig  # noqa: E402
from voicebot_pbx.config.speech import DIGITS_TEMPO  # noqa: E402
from voicebot_pbx.models import MOONSHINE_BASE_EN, MOONSHINE_TOKENIZER, model_path  # noqa: E402
from voicebot_pbx.speech import moonshine  # noqa: E402
from voicebot_pbx.speech.digit_beam import (  # noqa: E402
    DEFAULT_BEAM,
    MAX_ALTERNATIVES,
)
from voicebot_pbx.speech.expect import Expectation  # noqa: E402
from voicebot_pbx.speech.moonshine import MoonshineEngine  # noqa: E402

OUT = ROOT / ".cache" / "reports" / "eval_account_digits.json"
DEV_SEEDS = (4343, 4344)
GROUPS_PAUSE_S = (0.4, 1.2)
ACCOUNT_STEP = eval_balance.STEPS.index("account")
_SLOT = re.compile(r"\b\d{6,12}\b")  # rasa_project/data/nlu.yml's account_number regex


def slot_value(transcript: str) -> str | None:
    """What Rasa's ``account_number`` regex takes from the bot's normalised transcript."""
    match = _SLOT.search(normalize(transcript))
    return match.group(0) if match else None


def taken(
    slot: str | None, alternatives: tuple[str, ...], accounts: frozenset[str], limit: int
) -> str | None:
    """The number the action server's ``validate_account_number`` takes for a spoken entry:
    the 8 digits heard when they are an account, else the first reading that is one, else the
    digits heard (None when there are not 8)."""
    heard = keyed_or_said_account(slot)
    for number in ([heard] if heard else []) + readings_to_look_up(
        heard, slot, alternatives, limit
    ):
        if number in accounts:
            return number
    return heard


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEV_SEEDS))
    parser.add_argument("--beam", type=int, default=DEFAULT_BEAM, help="the digit search's beam")
    parser.add_argument(
        "--alternatives",
        type=int,
        default=MAX_ALTERNATIVES,
        help="other readings a listen hands on (the engine's MAX_ALTERNATIVES)",
    )
    parser.add_argument(
        "--tempo",
        type=float,
        default=DIGITS_TEMPO,
        help="the second listen's tempo (the engine's digits_tempo; 1.0: none)",
    )
    parser.add_argument(
        "--look-up",
        type=int,
        default=ActionsConfig().account_alternatives,
        help="readings looked up ([actions] account_alternatives)",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    moonshine.MAX_ALTERNATIVES = args.alternatives
    engine = MoonshineEngine(
        model_path(MOONSHINE_BASE_EN),
        tokenizer_path=model_path(MOONSHINE_TOKENIZER),
        digits_beam=args.beam,
        digits_tempo=args.tempo,
    )
    _, voices = eval_verify.SETS["dev"]
    accounts = frozenset(a.number for a in demo_accounts())
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        for p in eval_balance.plan(args.n, seed, voices):
            for reading, pause in (("whole", None), ("groups", GROUPS_PAUSE_S)):
                pcm = eval_balance.render(p, ACCOUNT_STEP, 30.0, seed, pause)
                started = time.process_time()
                result = engine.transcribe_expecting(
                    pcm, eval_balance.RATE_HZ, frozenset({Expectation.DIGITS}), digits=8
                )
                cpu_s = time.process_time() - started
                slot = slot_value(result.text)
                said = p.account.number
                took = taken(slot, result.alternatives, accounts, args.look_up)
                rows.append(
                    {
                        "seed": seed,
                        "index": p.index,
                        "voice": p.voice,
                        "reading": reading,
                        "said": said,
                        "transcript": result.text,
                        "slot": slot,
                        "alternatives": list(result.alternatives),
                        "heard": keyed_or_said_account(slot) == said,
                        "among": said in {keyed_or_said_account(slot), *result.alternatives},
                        "taken": took == said,
                        "taken_other": took is not None and took != said and took in accounts,
                        "nine": slot is not None and len(slot) == 9,
                        "cpu_s": round(cpu_s, 3),
                    }
                )
            print(f"  seed {seed}: {p.index + 1}/{args.n}", file=sys.stderr, flush=True)
    summary: list[dict[str, Any]] = []
    for seed in args.seeds:
        for reading in ("whole", "groups", "all"):
            part = [r for r in rows if r["seed"] == seed and reading in ("all", r["reading"])]
            cpu = [r["cpu_s"] for r in part]
            summary.append(
                {
                    "seed": seed,
                    "reading": reading,
                    "n": len(part),
                    **{k: sum(r[k] for r in part) for k in ("heard", "among", "taken")},
                    "taken_other": sum(r["taken_other"] for r in part),
                    "nine": sum(r["nine"] for r in part),
                    "nine_taken": sum(r["nine"] and r["taken"] for r in part),
                    "cpu_s_mean": round(sum(cpu) / len(cpu), 3) if cpu else None,
                    "cpu_s_p95": eval_verify.pct(cpu, 95),
                }
            )
    run = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "n": args.n,
        "seeds": args.seeds,
        "voices": voices,
        "beam": args.beam,
        "alternatives": args.alternatives,
        "tempo": args.tempo,
        "look_up": args.look_up,
        "summary": summary,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(run, indent=1))
    lines = [
        f"# Account numbers said aloud (bench/eval_account_digits.py), {run['when']}, "
        f"{args.n} accounts a seed, each read whole and in two groups; beam {args.beam}, "
        f"{args.alternatives} other readings a listen, second listen at tempo {args.tempo:g}, "
        f"{args.look_up} looked up",
        "",
        "| seed | reading | n | heard | among the readings | taken | taken, another account "
        "| 9 digits heard: taken right | CPU-s mean / p95 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['seed']} | {s['reading']} | {s['n']} | {s['heard']} | {s['among']} "
            f"| {s['taken']} | {s['taken_other']} | {s['nine_taken']} of {s['nine']} "
            f"| {s['cpu_s_mean']} / {s['cpu_s_p95']} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
