"""The shared inference pool: a thread pool whose queue is served by priority.

Every call's blocking model work goes through a few threads (``[inference] pool_threads``):
end-of-turn scores (~40 ms each), Moonshine decodes and Piper sentences (100-500 ms),
start-up TTS warming. In a first-come queue a score asked at a caller's pause waits behind
whatever decodes other calls queued just before; at 32 calls on 2 cores some waited past
``turn.timeout_ms`` and their pause fell back to the maximum silence (bench_pbx, seed 11).
Here the queue is ordered by priority (lower first), first come first served within one;
a job already running is never interrupted.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("voicebot_pbx.speech.pool")

T = TypeVar("T")

PRIORITY_TURN = 0  # end-of-turn model scores: short, and the turn waits on them
PRIORITY_TURN_TEXT = 1  # the text model's read of a decode at a pause
PRIORITY_DEFAULT = 5  # speech to text, text to speech
PRIORITY_BACKGROUND = 9  # warming the TTS cache at start-up

STAGE_PRIORITY = {
    "turn": PRIORITY_TURN,
    "turn_text": PRIORITY_TURN_TEXT,
    "tts_warm": PRIORITY_BACKGROUND,
}


def stage_priority(stage: str) -> int:
    return STAGE_PRIORITY.get(stage, PRIORITY_DEFAULT)


class PriorityPool(Executor):
    """``submit`` queues at ``PRIORITY_DEFAULT`` (``loop.run_in_executor`` uses it);
    ``submit_at`` at a given priority. The ``max_workers`` threads start with the first
    job."""

    def __init__(
        self,
        max_workers: int,
        *,
        thread_name_prefix: str = "pool",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._initializer = initializer
        self._initargs = initargs
        self._heap: list[tuple[int, int, Future[Any], Callable[[], Any]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self.submit_at(PRIORITY_DEFAULT, fn, *args, **kwargs)

    def submit_at(
        self, priority: int, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> Future[T]:
        future: Future[T] = Future()
        with self._cond:
            if self._shutdown:
                raise RuntimeError("cannot schedule new jobs after shutdown")
            heapq.heappush(
                self._heap, (priority, next(self._seq), future, lambda: fn(*args, **kwargs))
            )
            if not self._threads:
                for index in range(self._max_workers):
                    thread = threading.Thread(
                        target=self._work, name=f"{self._prefix}_{index}", daemon=True
                    )
                    self._threads.append(thread)
                    thread.start()
            self._cond.notify()
        return future

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._heap)

    def _work(self) -> None:
        if self._initializer is not None:
            try:
                self._initializer(*self._initargs)
            except Exception as exc:  # a failed nice() must not cost the pool a thread
                log.warning("pool_thread_init_failed", error=f"{type(exc).__name__}: {exc}")
        while True:
            with self._cond:
                while not self._heap and not self._shutdown:
                    self._cond.wait()
                if not self._heap:
                    return  # shut down and nothing left
                _, _, future, job = heapq.heappop(self._heap)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = job()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cond:
            self._shutdown = True
            if cancel_futures:
                for _, _, future, _ in self._heap:
                    future.cancel()
                self._heap.clear()
            self._cond.notify_all()
        if wait:
            for thread in list(self._threads):
                thread.join()
