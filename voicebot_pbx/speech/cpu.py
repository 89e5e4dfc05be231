"""How inference shares the two cores with the paced calls: one BLAS thread for the whole
process, and inference threads at a lower priority than the event loop.

One BLAS thread:
numpy's OpenBLAS starts one thread per core the first time a large enough matrix product
runs (Whisper's mel filter bank does) and those threads then spin, waiting for the next
product, on cores that the speech engines and the paced calls need. Measured on the 2-core
box: the spin showed up as ~0.1 CPU-s per utterance inside the Whisper encoder call that
follows the feature extraction (0.20 -> 0.11 CPU-s per 10 s input with one BLAS thread).
The speech engines bring their own thread pools (CTranslate2, onnxruntime), so numpy's
products run single-threaded here.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import structlog

log = structlog.get_logger(__name__)


def limit_blas_threads(threads: int = 1) -> list[dict[str, object]]:
    """Limit every BLAS library loaded in the process (numpy's OpenBLAS, and any other
    that threadpoolctl finds) to ``threads`` threads; returns threadpoolctl's view after.

    Applies to the libraries loaded when it runs; call it after numpy is imported (the
    engines' constructors do)."""
    import numpy  # noqa: F401  (loads OpenBLAS so that the limit reaches it)
    from threadpoolctl import threadpool_info, threadpool_limits

    # The limits stay until restore_original_limits() (or a with-block's exit) is called.
    threadpool_limits(limits=threads, user_api="blas")
    info: list[dict[str, object]] = [
        dict(pool) for pool in threadpool_info() if pool.get("user_api") == "blas"
    ]
    log.debug("blas.threads_limited", pools=[(p["internal_api"], p["num_threads"]) for p in info])
    return info


_inference_nice = 5  # config.inference.nice, set by load_engines


def set_inference_nice(nice: int) -> None:
    global _inference_nice
    _inference_nice = nice


def lower_thread_priority(nice: int | None = None) -> None:
    """Make the calling thread (and threads it creates later) yield the CPU to the event loop:
    Linux keeps a nice value per thread. Inference can then use both cores without ever
    delaying the 20 ms pacing of other calls. Never applied to the main thread. Called at the
    start of every inference thread (the pool's, the STT batcher's, the LLM's)."""
    nice = _inference_nice if nice is None else nice
    if nice <= 0 or threading.current_thread() is threading.main_thread():
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed
        log.debug("thread_priority_unchanged", error=str(exc))


def import_llama_cpp() -> Any:
    """llama-cpp-python, imported with OpenMP told not to spin-wait (on a busy 2-core box
    spinning cuts generation ~10x): the variable must be set before the import."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import llama_cpp

    return llama_cpp
