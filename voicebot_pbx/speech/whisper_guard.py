"""Pure checks on a Whisper decode: how many tokens an utterance may take, and whether the
output looks degenerate (looping or hallucinated) so the engine retries it on a longer window.

No I/O and no model: ``speech/whisper.py`` calls these on every short-window decode.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _longest_repeat_run(words: Sequence[str], max_ngram: int = 4) -> tuple[int, int]:
    """Longest run of an n-gram repeated back to back: (n, count), count >= 1."""
    best = (1, 1 if words else 0)
    for n in range(1, max_ngram + 1):
        for start in range(len(words) - 2 * n + 1):
            gram = words[start : start + n]
            count = 1
            pos = start + n
            while words[pos : pos + n] == gram:
                count += 1
                pos += n
            if count > best[1]:
                best = (n, count)
    return best


def degenerate_reason(
    text: str, *, n_tokens: int, max_new_tokens: int, duration_s: float
) -> str | None:
    """Why a Whisper decode looks degenerate (looping/hallucinated), or None if it looks sane.

    Pure. ``n_tokens`` counts the generated tokens including timestamp tokens;
    ``max_new_tokens`` is the budget the decode was given (CTranslate2 returns at most
    ``max_new_tokens - 1`` tokens when it hits the limit).
    """
    if n_tokens >= max_new_tokens - 1:
        return "token_limit"
    words = [w.strip(".,!?;:\"'").lower() for w in text.split()]
    words = [w for w in words if w]
    if len(words) > 5.0 * duration_s + 4:
        return "too_many_words"
    n, count = _longest_repeat_run(words)
    if (n == 1 and count >= 4) or (n > 1 and count >= 3):
        return "repetition"
    if compression_ratio(text) > 2.4:
        return "compression_ratio"
    return None


def token_budget(duration_s: float, *, timestamps: bool = True) -> int:
    """Most tokens a sane transcript of ``duration_s`` of speech needs: with timestamps
    ``6/s * duration + 12`` (text plus a pair of timestamp tokens per segment); without
    ``5/s * duration + 10`` (text and end-of-text only: on the benchmark set the longest
    reference or full-window transcript uses at most ~85 % of it, and a looping decode
    still runs into it after a few seconds' worth of tokens)."""
    if timestamps:
        return int(6 * duration_s + 12)
    return int(5 * duration_s + 10)
