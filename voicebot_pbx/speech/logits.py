"""Log-probabilities from a decoder's logits (pure, numerically stable)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt


def log_sum_exp(row: npt.NDArray[np.floating]) -> float:
    """``log(sum(exp(row)))`` without overflow (``-inf`` entries count as nothing)."""
    top = float(row.max())
    return top + math.log(float(np.exp(row - top).sum()))


def log_softmax(row: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Each entry's log-probability under the softmax of ``row``."""
    return row - log_sum_exp(row)
