"""A decode held to a known number of digits, by beam search (pure: the decoder step is
passed in).

The dialogue says how many digits an account number has (Rasa's ``max_digits`` beside
``expect: [digits]``). A greedy decode held to digits (``speech/expect.py``) often gets
the count wrong on a phone line: a repeated digit heard once ("5 5 8 7 6 9 9 3" ->
"5587693"), a digit heard twice, a "nine" lost at a pause. When it does, the engine
searches again: :func:`search_digits` keeps the ``beam`` likeliest partial decodes, each
held to the same words, never past the count, and lets one end only with exactly that
many digits. Hypotheses are ranked by the model's log-probability (over all tokens); the
one kept reports its tokens' log-probabilities over the tokens it was allowed, as the
greedy held decode does, so :func:`expect.prefer` weighs it the same way. A caller who
said something else ("I don't have it") gets a forced string of digits of low
confidence: the engine keeps a search's result only from ``DIGITS_MIN_CONFIDENCE``.

The search also runs when the count is right: its other finished decodes
(:func:`search_digits`, ``keep``) are the number's other readings, handed to the dialogue
as ``SttResult.alternatives``: one digit misheard ("7" as "3") is often the second or
third reading, and the action server looks them up when the one heard is no account.
The engine also searches the same speech played ``[stt] digits_tempo`` times faster (a
second listen; its default and measurement: ``config.speech.DIGITS_TEMPO``): another
hearing of the same speech often reads right a digit the first misheard (the tempo itself
is no better: free transcription played faster is worse), and
:func:`merge_readings` puts that listen's readings beside the first's.

Measured by ``bench/eval_account_digits.py`` (``eval_balance``'s set builder, dev seeds 4343
and 4344, six espeak-ng voices ``eval_balance`` does not use; README "Answers the dialogue
expects").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from voicebot_pbx.speech.expect import HeldVocabulary, read_digits
from voicebot_pbx.speech.logits import log_softmax

State = TypeVar("State")
# (step index, the live hypotheses' decoder states, each one's last token) -> (their
# next-token logits, one row each, and each one's state after its token): all of a step's
# hypotheses in one call, so a decoder can run them as one batch. The states given are
# never changed: hypotheses share them.
Step = Callable[[int, Sequence[State], Sequence[int]], tuple[npt.NDArray[np.float64], list[State]]]

# On the dev set (bench/eval_account_digits.py, 120 readings) the number said was taken
# (heard, or the first reading that is an account) 81 times at beam 4, 87 at 6, 91 at 8 and
# 88 at 12, at a mean 0.32 / 0.39 / 0.48 / 0.74 CPU-s per account-number decode, each
# hypothesis stepped alone; with a step's hypotheses in one batch (the engine's step), 82 at
# beam 4 and 90 at beam 8, at 0.28 and 0.38 CPU-s.
DEFAULT_BEAM = 8
# Other readings a listen hands to the dialogue with the one heard (SttResult.alternatives;
# with the second listen, [stt] digits_tempo, one more and at most twice this in all): at
# beam 8, 4 instead of 3 took no more numbers on the dev set.
MAX_ALTERNATIVES = 3
# A search's result below this confidence (mean allowed-token probability) is not kept:
# digits forced onto other words came out at 0.19-0.53 on the dev set, digits read out and
# found at 0.52-0.88.
DIGITS_MIN_CONFIDENCE = 0.55
# A reading the search forced to the count by repeating one digit ("6 0 6 3 9 7 7 7" read
# "6 0 0 0 0 0 0 0"): the decoder, held to digits, repeats the last one cheaply once the
# speech no longer steers it. On the dev set (bench/eval_account_digits.py, 120 readings) 13
# held such a run of five or more among the heard number or its readings; eval_balance's
# calls 16 and 22 (seed 7) had the account number read back as "6 0 0 0, 0 0 0 0". A run
# of LOOP_RUN or more of one digit that the model's own (greedy) reading does not have is
# such a loop (:func:`looping`).
LOOP_RUN = 4


@dataclass(frozen=True, slots=True)
class Found:
    """The search's best decode: text tokens (no end of text) and the log-probability of
    each chosen token over the allowed ones (the end of text included)."""

    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]

    @property
    def confidence(self) -> float:
        return math.exp(sum(self.logprobs) / len(self.logprobs))


@dataclass(frozen=True, slots=True)
class _Hypothesis(Generic[State]):
    score: float  # log-probability over all tokens
    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]  # over the allowed tokens
    word: str  # the held vocabulary's state
    digits: int
    state: State
    last: int


def search_digits(
    step: Step[State],
    start: State,
    vocabulary: HeldVocabulary,
    *,
    n_digits: int,
    bos: int,
    eos: int,
    max_tokens: int,
    beam: int = DEFAULT_BEAM,
    keep: int = 1,
) -> list[Found]:
    """Up to ``keep`` decodes held to ``vocabulary`` that read exactly ``n_digits`` digits
    within ``max_tokens`` tokens, likeliest first (none when no hypothesis gets there)."""
    alive: list[_Hypothesis[State]] = [_Hypothesis(0.0, (), (), "", 0, start, bos)]
    finished: list[tuple[float, Found]] = []
    for index in range(max_tokens + 1):
        grown: list[_Hypothesis[State]] = []
        rows, states = step(index, [h.state for h in alive], [h.last for h in alive])
        for h, row, state in zip(alive, rows, states, strict=True):
            full = log_softmax(row)
            allowed = vocabulary.allowed(h.word)
            allowed = allowed[(allowed < row.size) & ((index > 0) | (allowed != eos))]
            if not allowed.size:
                continue
            over_allowed = log_softmax(row[allowed])
            taken = 0
            for k in np.argsort(-row[allowed], kind="stable"):
                token = int(allowed[k])
                logprob = float(over_allowed[k])
                if token == eos:
                    if h.digits + vocabulary.digits_ending(h.word) != n_digits:
                        continue
                    found = Found(h.tokens, (*h.logprobs, logprob))
                    finished.append((h.score + float(full[token]), found))
                else:
                    digits = h.digits + vocabulary.digits_after(h.word, token)
                    if digits > n_digits or index == max_tokens:
                        continue
                    grown.append(
                        _Hypothesis(
                            h.score + float(full[token]),
                            (*h.tokens, token),
                            (*h.logprobs, logprob),
                            vocabulary.advance(h.word, token),
                            digits,
                            state,
                            token,
                        )
                    )
                taken += 1
                if taken == beam:
                    break
        grown.sort(key=lambda g: -g.score)
        alive = grown[:beam]
        finished.sort(key=lambda f: -f[0])
        kept_worst = finished[keep - 1][0] if len(finished) >= keep else -math.inf
        # Scores only fall as a decode grows: nothing alive can beat the finished ones now.
        if not alive or kept_worst >= alive[0].score:
            break
    finished.sort(key=lambda f: -f[0])
    return [f for _, f in finished[:keep]]


def _longest_runs(number: str) -> dict[str, int]:
    """Each digit's longest run in ``number`` ("2000" -> {"2": 1, "0": 3})."""
    runs: dict[str, int] = {}
    last, length = "", 0
    for digit in number:
        length = length + 1 if digit == last else 1
        last = digit
        runs[digit] = max(runs.get(digit, 0), length)
    return runs


def looping(number: str, greedy: str) -> bool:
    """Whether a searched reading ``number`` (digits) repeats one digit ``LOOP_RUN`` or more
    times in a row where the greedy held reading ``greedy`` (digits) has no run of that
    digit as long: the decoder's loop, not the caller's number. A number that has such a run
    ("1 0 0 0 0 4 5 7") is read with it by the greedy decode too, and kept."""
    theirs = _longest_runs(greedy)
    return any(
        length >= LOOP_RUN and theirs.get(digit, 0) < length
        for digit, length in _longest_runs(number).items()
    )


def numbers_read(texts: Sequence[str], n_digits: int) -> list[str]:
    """The numbers ``texts`` read (figures or digit words), in order, each once, those of
    exactly ``n_digits`` digits."""
    return [n for n in dict.fromkeys(read_digits(t) for t in texts) if len(n) == n_digits]


def merge_readings(
    heard: str, first: Sequence[str], second: Sequence[str], limit: int
) -> tuple[str, ...]:
    """The readings to hand on beside ``heard`` (the number the first listen settled on):
    the second listen's likeliest reading, then the first listen's other readings
    (``first``, likeliest first), then the second listen's others; each once, never
    ``heard``, at most ``limit``. The second listen's best comes early because, when it
    differs from ``heard``, it is the likeliest reading of a different hearing of the same
    speech, where the first listen's others are its own near misses."""
    ordered = [*second[:1], *first, *second[1:]]
    return tuple(r for r in dict.fromkeys(ordered) if r != heard)[:limit]
