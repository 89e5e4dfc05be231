"""Inference threads yield the CPU to the event loop (per-thread nice on Linux)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from voicebot_pbx.speech.cpu import lower_thread_priority


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux")
def test_worker_threads_get_nicer_and_the_main_thread_does_not() -> None:
    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    lower_thread_priority(5)  # the main thread runs the event loop: left alone
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before
    seen: list[int] = []

    def worker() -> None:
        lower_thread_priority(5)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

        def child() -> None:  # threads a model starts later inherit it
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

        inner = threading.Thread(target=child)
        inner.start()
        inner.join()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [min(19, main_before + 5)] * 2
