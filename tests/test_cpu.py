"""numpy's OpenBLAS runs one thread in the bot's process (its idle threads spin on the
cores the engines and paced calls need; see voicebot_pbx/speech/cpu.py)."""

from __future__ import annotations

from threadpoolctl import threadpool_info, threadpool_limits

from voicebot_pbx.speech.cpu import limit_blas_threads
from voicebot_pbx.speech.stt_load import load_stt
from voicebot_pbx.speech.whisper import WhisperEngine


def _blas_threads() -> list[int]:
    return [int(p["num_threads"]) for p in threadpool_info() if p.get("user_api") == "blas"]


def test_limit_blas_threads_leaves_one_thread() -> None:
    threadpool_limits(limits=2, user_api="blas")
    assert _blas_threads() and all(n == 2 for n in _blas_threads())
    info = limit_blas_threads()
    assert [p["num_threads"] for p in info] == [1] * len(info)
    assert _blas_threads() and all(n == 1 for n in _blas_threads())


def test_the_whisper_engine_limits_blas_threads() -> None:
    threadpool_limits(limits=2, user_api="blas")
    engine = load_stt("whisper", None)
    try:
        assert isinstance(engine, WhisperEngine)
        assert _blas_threads() and all(n == 1 for n in _blas_threads())
    finally:
        engine.close()
