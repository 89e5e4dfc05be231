"""Does the caller's sentence end here? A small chat LLM reads the transcript at a pause.

At a pause, the session has a transcript of the utterance so far (the decode at the pause).
:meth:`TextTurnModel.score` asks the packaged instruct model (SmolLM2-135M, the one the
grounded answers use, on llama.cpp) how likely the caller's message is to end after those
words: the probability of its end-of-message token or of a sentence-ending mark as the next
token. "the reason I'm calling is" or "I was told that" get ~10^-3 or less; "I want to pay
my bill" or "what time do you close" ~10^-1. Punctuation and case are taken off first (the
STT's full stop says nothing about the caller), and only the last ``_LAST_WORDS`` words are
read.

:func:`text_verdict` turns the score into what the listener does with the pause
(``[turn] text_unfinished_below`` / ``text_finished_from``): "unfinished" holds the turn
open up to ``turn.unfinished_max_silence_ms``, "finished" ends it at the short silence,
"unsure" leaves it to the audio model and the tie-break.

One llama.cpp context per thread of the shared inference pool (a context is not
thread-safe; each is ~25 MB besides the model file's pages); the instruction prefix is
evaluated once per context and kept in its KV cache, so a score evaluates only the
transcript's tokens (~8 ms each on one core). Runs in the shared inference
pool, never on the event loop; bench/bench_turn_end.py measures its CPU per pause.
"""

from __future__ import annotations

import math
import queue
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from voicebot_pbx.speech.cpu import import_llama_cpp
from voicebot_pbx.speech.logits import log_sum_exp
from voicebot_pbx.speech.turn_model import TurnModelError
from voicebot_pbx.speech.turns import looks_complete

_LAST_WORDS = 8
# What the caller is: the model's idea of a finished message depends on it a little.
_PREFIX = (
    "<|im_start|>system\nA caller is speaking to the automated phone line of an energy "
    "supplier.<|im_end|>\n<|im_start|>user\n"
)
_END_OF_MESSAGE = "<|im_end|>"
_SENTENCE_ENDS = frozenset({".", "?", "!", '?"', "..", "..."})
_NOT_WORD = re.compile(r"[^\w' ]+")

TextVerdict = Literal["unfinished", "unsure", "finished"]


class TextTurnModelError(TurnModelError):
    """The model file is missing, not loadable, or has no ChatML end-of-message token."""


@dataclass(frozen=True, slots=True)
class TextTurnScore:
    finished_log10: float  # log10 P(the message ends after these words)
    words: int  # words read (0: nothing to read, the score says nothing)
    cpu_s: float


class TextTurnScorer(Protocol):
    """The listener's view of the model."""

    def score(self, text: str) -> TextTurnScore: ...


def caller_words(text: str) -> str:
    """The transcript as the model reads it: lower case, no punctuation but apostrophes,
    the last ``_LAST_WORDS`` words."""
    words = _NOT_WORD.sub(" ", text.lower()).split()
    return " ".join(words[-_LAST_WORDS:])


def word_list_verdict(text: str) -> TextVerdict:
    """The old word list as the reader of a decode at a pause (``turn.text_reader =
    "words"``): "unfinished" when the transcript ends in a word no sentence ends in, or in
    digits being read out (:func:`voicebot_pbx.speech.turns.looks_complete`); otherwise
    "unsure" (never "finished": that is the audio model's to say). A trailing comma alone
    holds nothing: the recognisers end whole questions with one ("When are you open on
    Saturday,"), and the long hold is for words."""
    words = text.rstrip().rstrip(",").rstrip()
    return "unfinished" if words and not looks_complete(words) else "unsure"


def text_verdict(
    score: TextTurnScore, *, unfinished_below: float, finished_from: float
) -> TextVerdict:
    """``unfinished`` under ``unfinished_below``, ``finished`` at ``finished_from`` or above
    (both log10 probabilities), else ``unsure``; nothing read is ``unsure``."""
    if score.words == 0:
        return "unsure"
    if score.finished_log10 < unfinished_below:
        return "unfinished"
    if score.finished_log10 >= finished_from:
        return "finished"
    return "unsure"


class TextTurnModel:
    """``contexts`` llama.cpp instances of the model (one per thread of the pool that calls
    :meth:`score`, so a read never waits for another call's read)."""

    def __init__(self, model_path: Path, *, threads: int = 1, contexts: int = 1) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise TextTurnModelError(f"end-of-turn text model {self.model_path}: no such file")
        first = self._load(threads)
        end = first.tokenize(_END_OF_MESSAGE.encode(), add_bos=False, special=True)
        if len(end) != 1:
            raise TextTurnModelError(
                f"end-of-turn text model {self.model_path}: no {_END_OF_MESSAGE} token "
                "(a ChatML instruct model is needed)"
            )
        marks = [
            token
            for token in range(first.n_vocab())
            if first.detokenize([token]).decode("utf-8", "replace").strip() in _SENTENCE_ENDS
        ]
        self._ends = np.array([end[0], *marks], dtype=np.int64)
        self._n_vocab = int(first.n_vocab())
        self._prefix = first.tokenize(_PREFIX.encode(), add_bos=False, special=True)
        # Idle contexts, each with the instruction prefix in its KV cache.
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for llama in [first, *(self._load(threads) for _ in range(contexts - 1))]:
            llama.reset()
            llama.eval(self._prefix)
            self._free.put(llama)

    def _load(self, threads: int) -> Any:
        llama_cpp = import_llama_cpp()
        try:
            return llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=128,
                n_threads=threads,
                n_threads_batch=threads,
                n_batch=32,
                logits_all=False,
                verbose=False,
            )
        except Exception as exc:  # llama.cpp raises ValueError/RuntimeError on a bad file
            raise TextTurnModelError(
                f"end-of-turn text model {self.model_path}: not a loadable GGUF model ({exc})"
            ) from None

    def score(self, text: str) -> TextTurnScore:
        started = time.thread_time()
        words = caller_words(text)
        if not words:
            return TextTurnScore(0.0, 0, time.thread_time() - started)
        llama = self._free.get()  # waits only with more callers than contexts
        try:
            tokens = llama.tokenize(words.encode(), add_bos=False, special=False)
            llama.n_tokens = len(self._prefix)  # eval() drops the KV cache after the prefix
            llama.eval(tokens)
            logits = np.ctypeslib.as_array(
                llama._ctx.get_logits_ith(-1), shape=(self._n_vocab,)
            ).astype(np.float64)
        finally:
            self._free.put(llama)
        ends = float(np.exp(logits[self._ends] - log_sum_exp(logits)).sum())
        finished = math.log10(max(ends, 1e-30))
        return TextTurnScore(finished, len(words.split()), time.thread_time() - started)
