"""LLM engines: the errors every engine raises, the ``LlmEngine`` protocol, the admission
gate (a bounded wait queue), and the in-process llama.cpp engine."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from voicebot_pbx.config import (
    DEFAULT_FALLBACK_REPLY as DEFAULT_FALLBACK_REPLY,
)
from voicebot_pbx.config import (
    DEFAULT_REFUSAL_REPLY as DEFAULT_REFUSAL_REPLY,
)
from voicebot_pbx.config import LlmConfig as LlmConfig
from voicebot_pbx.config import LlmEndpointConfig as LlmEndpointConfig
from voicebot_pbx.speech.cpu import import_llama_cpp, lower_thread_priority

log = structlog.get_logger(__name__)


# --- errors ----------------------------------------------------------------------------------


# The sampling seed of every engine (the local model's and the one sent to an endpoint), so
# a sampled answer is the same whichever engine gives it.
DEFAULT_SEED = 1234


class LlmError(Exception):
    """The model could not produce an answer (the session plays the fallback reply)."""


class LlmBusy(LlmError):
    """Too many requests are already waiting for the model or for an endpoint slot."""


class LlmUnavailable(LlmError):
    """No endpoint is healthy (all failed or resting)."""


class LlmTimeout(LlmError):
    """The engine produced nothing for too long."""


# --- engines ---------------------------------------------------------------------------------


class LlmEngine(Protocol):
    name: str

    def stream_chat(
        self, messages: Sequence[Mapping[str, str]], *, max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]:
        """Text pieces of the assistant's reply. Closing the iterator stops generation.
        Raises LlmBusy / LlmUnavailable / LlmTimeout / LlmError."""
        ...

    async def aclose(self) -> None: ...


class AdmissionGate:
    """At most ``capacity`` holders; at most ``queue_max`` waiters, each for at most
    ``queue_timeout_s`` (then :class:`LlmBusy`). ``release`` is synchronous (thread-safe
    through ``loop.call_soon_threadsafe``)."""

    def __init__(self, capacity: int, queue_max: int, queue_timeout_s: float) -> None:
        self.capacity = capacity
        self.queue_max = queue_max
        self.queue_timeout_s = queue_timeout_s
        self.active = 0
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.active < self.capacity and not self._waiters:
            self.active += 1
            return
        if len(self._waiters) >= self.queue_max:
            raise LlmBusy(f"{len(self._waiters)} requests already waiting for the model")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await fut  # resolved by release(), which hands its slot over
        except BaseException as exc:
            if fut in self._waiters:
                self._waiters.remove(fut)
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we gave up
            else:
                fut.cancel()
            if isinstance(exc, TimeoutError):
                raise LlmBusy(f"waited {self.queue_timeout_s:.1f} s for the model") from None
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.pop(0)
            if not fut.done():
                fut.set_result(None)  # the slot passes to this waiter (active unchanged)
                return
        self.active = max(0, self.active - 1)


@dataclass(slots=True)
class GenerationStats:
    """What the last in-process generation did (for tests and logs)."""

    tokens: int = 0
    tokens_after_stop: int = 0  # tokens produced after the stop flag was set
    stopped: bool = False
    finished: threading.Event = field(default_factory=threading.Event)


_DONE = object()


class LlamaCppEngine:
    """In-process llama.cpp: one model per process, calls serialised, tokens streamed from a
    worker thread into asyncio. Create once and share between calls (it is not cheap)."""

    name = "llama_cpp"

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 2048,
        n_threads: int = 1,
        n_threads_batch: int = 0,
        n_batch: int = 256,
        queue_max: int = 8,
        queue_timeout_s: float = 1.0,
        token_timeout_s: float = 6.0,
        seed: int = DEFAULT_SEED,
    ) -> None:
        llama_cpp = import_llama_cpp()
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"LLM model {path} does not exist")
        started = time.perf_counter()
        self._llama: Any = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads_batch or n_threads,
            n_batch=n_batch,
            seed=seed,
            verbose=False,
        )
        self.model_path = path
        # Every generation samples from this seed afresh (llama-cpp-python otherwise draws
        # each call's seed from the one before): a question gets the same answer whatever
        # the model was asked before, on this call or another.
        self.seed = seed
        self.queue_max = queue_max
        self.queue_timeout_s = queue_timeout_s
        self.token_timeout_s = token_timeout_s
        self._model_lock = threading.Lock()  # one generation at a time, whatever the loop
        self._gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AdmissionGate] = (
            weakref.WeakKeyDictionary()
        )
        self.last = GenerationStats()
        self.last.finished.set()
        log.info(
            "llm_loaded",
            engine=self.name,
            model=path.name,
            n_ctx=n_ctx,
            n_threads=n_threads,
            load_s=round(time.perf_counter() - started, 2),
        )

    def _gate(self) -> AdmissionGate:
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            gate = AdmissionGate(1, self.queue_max, self.queue_timeout_s)
            self._gates[loop] = gate
        return gate

    def _generate(
        self,
        messages: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
        stop: threading.Event,
        stats: GenerationStats,
        put: Callable[[object], None],
    ) -> None:
        with self._model_lock:
            if stop.is_set():
                return
            chunks = self._llama.create_chat_completion(
                messages=messages,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=self.seed,
                stream=True,
            )
            try:
                for chunk in chunks:
                    if stop.is_set():
                        stats.tokens_after_stop += 1
                        stats.stopped = True
                        break
                    delta = chunk["choices"][0]["delta"]
                    if "content" in delta:  # (the role chunk and the final chunk have none)
                        stats.tokens += 1
                        if delta["content"]:
                            put(delta["content"])
            finally:
                chunks.close()

    async def stream_chat(
        self, messages: Sequence[Mapping[str, str]], *, max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]:
        gate = self._gate()
        await gate.acquire()
        loop = asyncio.get_running_loop()
        # Bounded: the worker produces at most max_tokens pieces and one end marker.
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=max_tokens + 4)
        stop = threading.Event()
        stats = GenerationStats()
        self.last = stats

        def put(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening
                stop.set()

        def work() -> None:
            lower_thread_priority()
            try:
                self._generate(
                    [dict(m) for m in messages], max_tokens, temperature, stop, stats, put
                )
            except Exception as exc:  # reported to the consumer, not swallowed
                put(exc)
            finally:
                put(_DONE)
                stats.finished.set()
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(gate.release)

        thread = threading.Thread(target=work, name="llm-generate", daemon=True)
        try:
            thread.start()
        except BaseException:
            gate.release()
            raise
        try:
            while True:
                try:
                    async with asyncio.timeout(self.token_timeout_s):
                        item = await queue.get()
                except TimeoutError:
                    raise LlmTimeout(
                        f"no token from the model in {self.token_timeout_s:.1f} s"
                    ) from None
                if item is _DONE:
                    return
                if isinstance(item, Exception):
                    raise LlmError(f"llama.cpp generation failed: {item!r}") from item
                assert isinstance(item, str)
                yield item
        finally:
            stop.set()  # the worker stops before its next token; the gate opens when it ends

    async def aclose(self) -> None:
        stop_wait = asyncio.to_thread(self.last.finished.wait, 5.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(6.0):
                await stop_wait
        closer = getattr(self._llama, "close", None)
        if callable(closer):
            closer()
