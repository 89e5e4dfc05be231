"""The shared inference pool serves its queue by priority (speech/pool.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from voicebot_pbx.speech.pool import (
    PRIORITY_BACKGROUND,
    PRIORITY_DEFAULT,
    PRIORITY_TURN,
    PriorityPool,
    stage_priority,
)
from voicebot_pbx.testing import FakeEngines, ScriptedStt, ToneTts


def _busy(pool: PriorityPool) -> threading.Event:
    """Occupy the pool's one thread until the returned event is set."""
    release = threading.Event()
    started = threading.Event()

    def hold() -> None:
        started.set()
        release.wait(5.0)

    pool.submit(hold)
    assert started.wait(5.0)
    return release


def test_a_waiting_turn_score_runs_before_decodes_queued_earlier() -> None:
    pool = PriorityPool(1)
    ran: list[str] = []
    release = _busy(pool)
    futures = [
        pool.submit_at(PRIORITY_BACKGROUND, ran.append, "warm"),
        pool.submit(ran.append, "decode 1"),
        pool.submit(ran.append, "decode 2"),
        pool.submit_at(PRIORITY_TURN, ran.append, "turn score"),
    ]
    assert pool.queued == 4
    release.set()
    for future in futures:
        future.result(5.0)
    assert ran == ["turn score", "decode 1", "decode 2", "warm"]
    pool.shutdown()


def test_results_exceptions_and_shutdown_as_an_executor() -> None:
    calls: list[str] = []
    pool = PriorityPool(2, initializer=calls.append, initargs=("init",))
    assert pool.submit(lambda: 6 * 7).result(5.0) == 42
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result(5.0)
    for _ in range(500):  # both threads started with the first job
        if len(calls) == 2:
            break
        time.sleep(0.01)
    assert calls == ["init", "init"]
    release = _busy(pool)
    other = _busy(pool)
    queued = pool.submit(time.sleep, 0)
    pool.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    with pytest.raises(RuntimeError):
        pool.submit(time.sleep, 0)
    release.set()
    other.set()
    pool.shutdown(wait=True)
    with pytest.raises(ValueError):
        PriorityPool(0)


def test_engines_run_queues_each_stage_at_its_priority() -> None:
    assert stage_priority("turn") == PRIORITY_TURN
    assert stage_priority("stt") == stage_priority("tts") == PRIORITY_DEFAULT
    assert stage_priority("tts_warm") == PRIORITY_BACKGROUND

    async def main() -> list[str]:
        engines = FakeEngines(ScriptedStt({}), ToneTts(0.1))
        ran: list[str] = []
        release = _busy(engines.pool)
        jobs = [
            asyncio.create_task(engines.run("tts", 5.0, lambda: ran.append("tts"))),
            asyncio.create_task(engines.run("turn", 5.0, lambda: ran.append("turn"))),
        ]
        await asyncio.sleep(0.05)  # both queued behind the busy thread
        release.set()
        await asyncio.gather(*jobs)
        engines.pool.shutdown()
        return ran

    assert asyncio.run(main()) == ["turn", "tts"]
