"""One BLAS thread for the whole process.

numpy's OpenBLAS starts one thread per core the first time a large enough matrix product
runs (Whisper's mel filter bank does) and those threads then spin, waiting for the next
product, on cores that the speech engines and the paced calls need. Measured on the 2-core
box: the spin showed up as ~0.1 CPU-s per utterance inside the Whisper encoder call that
follows the feature extraction (0.20 -> 0.11 CPU-s per 10 s input with one BLAS thread).
The speech engines bring their own thread pools (CTranslate2, onnxruntime), so numpy's
products run single-threaded here.
"""

from __future__ import annotations

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
