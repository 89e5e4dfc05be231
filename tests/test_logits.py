"""The decoders' log-probabilities (speech/logits.py)."""

from __future__ import annotations

import math

import numpy as np

from voicebot_pbx.speech.logits import log_softmax, log_sum_exp


def test_log_sum_exp_matches_the_plain_sum_and_does_not_overflow() -> None:
    row = np.array([0.5, -1.25, 2.0])
    assert math.isclose(log_sum_exp(row), math.log(sum(math.exp(v) for v in row)))
    # Logits far beyond exp's range: the same answer shifted by the constant.
    assert math.isclose(log_sum_exp(row + 1000.0), log_sum_exp(row) + 1000.0)
    # A masked-out token (a held decode's row) counts as nothing.
    masked = np.array([0.5, -np.inf, 2.0])
    assert math.isclose(log_sum_exp(masked), math.log(math.exp(0.5) + math.exp(2.0)))


def test_log_softmax_gives_probabilities_that_sum_to_one() -> None:
    row = np.array([3.0, 1.0, -2.0, -np.inf])
    out = log_softmax(row)
    assert math.isclose(float(np.exp(out).sum()), 1.0)
    assert out[3] == -np.inf
    assert int(out.argmax()) == 0 and out[0] < 0.0
