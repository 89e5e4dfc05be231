"""Optional call recording: one stereo WAV per call, caller left, bot right, at the call's rate.

The session feeds inbound frames (``caller``) and outbound frames (``bot``) as they pass;
both are 20 ms slin streams in real time, so each channel is laid down sample after sample
and aligned by count. When a frame carries its time, a channel that fell behind the clock
(a stall, a gap in the stream) is padded with silence so the two stay in step; a channel
that is not fed at all is filled with silence rather than growing the other's buffer.

Writing is off the event loop: interleaved chunks (about a second each) go to one shared
writer thread, which appends them and rewrites the RIFF sizes after every chunk, so a killed
process leaves a valid WAV missing at most the last second. Files are owner-only (0600).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
import structlog

log = structlog.get_logger("voicebot_pbx.ops.recording")

_HEADER_BYTES = 44
_CHANNELS = 2
_SAMPLE_BYTES = 2

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _writer() -> ThreadPoolExecutor:
    """One thread for every recording's file I/O (in order, off the event loop)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recording-writer")
        return _executor


def _wav_header(rate_hz: int, data_bytes: int) -> bytes:
    block = _CHANNELS * _SAMPLE_BYTES
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        _CHANNELS,
        rate_hz,
        rate_hz * block,
        block,
        8 * _SAMPLE_BYTES,
        b"data",
        data_bytes,
    )


def recording_path(directory: str | Path, call_id: str, started_at: float | None = None) -> Path:
    """``<dir>/<YYYY-MM-DD>/<call_id>.wav`` (UTC day; unsafe characters replaced)."""
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() if started_at is None else started_at))
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", call_id).lstrip(".") or "call"
    return Path(directory) / day / f"{safe}.wav"


class CallRecording:
    """A call's stereo WAV being written. ``caller``/``bot`` are cheap and synchronous (for
    the event loop); ``close`` (await it) writes the rest and finalises the file."""

    def __init__(
        self,
        path: str | Path,
        rate_hz: int,
        *,
        chunk_s: float = 1.0,
        resync_s: float = 0.2,
        max_lag_s: float = 2.0,
    ) -> None:
        self.path = Path(path)
        self.rate_hz = rate_hz
        self._chunk = max(1, int(chunk_s * rate_hz))
        self._resync = int(resync_s * rate_hz)
        self._max_lag = int(max_lag_s * rate_hz)
        self._left = bytearray()  # caller, pending interleave
        self._right = bytearray()  # bot
        self._pos = [0, 0]  # samples laid down per channel (pending included)
        self._t0: float | None = None
        self._file: BinaryIO | None = None
        self._data_bytes = 0
        self._closed = False
        self._failed = False
        self.samples_written = 0
        self._pending: Future[None] | None = None
        self._submit(self._open)

    @classmethod
    def start(
        cls, directory: str | Path, call_id: str, rate_hz: int, started_at: float | None = None
    ) -> CallRecording:
        return cls(recording_path(directory, call_id, started_at), rate_hz)

    # --- feeding (event loop) ----------------------------------------------------------

    def caller(self, pcm: bytes, at_s: float | None = None) -> None:
        """Inbound audio (what the caller said), ``at_s`` its arrival time (any clock,
        the same for both channels)."""
        self._feed(0, pcm, at_s)

    def bot(self, pcm: bytes, at_s: float | None = None) -> None:
        """Outbound audio (what the bot sent, silence included)."""
        self._feed(1, pcm, at_s)

    def _feed(self, channel: int, pcm: bytes, at_s: float | None) -> None:
        if self._closed or self._failed or not pcm:
            return
        pcm = pcm[: len(pcm) - len(pcm) % _SAMPLE_BYTES]
        samples = len(pcm) // _SAMPLE_BYTES
        buffer = self._left if channel == 0 else self._right
        if at_s is not None:
            if self._t0 is None:
                self._t0 = at_s - samples / self.rate_hz
            expected = int((at_s - self._t0) * self.rate_hz) - samples
            gap = expected - self._pos[channel]
            # A channel's first frame lands where it belongs; later ones only move on when
            # they fell clearly behind (jitter must not add silence).
            if gap > (self._resync if self._pos[channel] else 0):
                buffer += bytes(gap * _SAMPLE_BYTES)
                self._pos[channel] += gap
        buffer += pcm
        self._pos[channel] += samples
        # A channel nobody feeds (or that stalled without times) is silence, not a reason
        # to hold the other channel in memory.
        other = self._right if channel == 0 else self._left
        lag = (len(buffer) - len(other)) // _SAMPLE_BYTES
        if lag > self._max_lag:
            fill = lag - self._resync
            other += bytes(fill * _SAMPLE_BYTES)
            self._pos[1 - channel] += fill
        self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        ready = min(len(self._left), len(self._right)) // _SAMPLE_BYTES
        if final:
            ready = max(len(self._left), len(self._right)) // _SAMPLE_BYTES
        elif ready < self._chunk:
            return
        if ready == 0:
            return
        left = np.zeros(ready, dtype="<i2")
        right = np.zeros(ready, dtype="<i2")
        take_left = min(ready, len(self._left) // _SAMPLE_BYTES)
        take_right = min(ready, len(self._right) // _SAMPLE_BYTES)
        left[:take_left] = np.frombuffer(self._left, dtype="<i2", count=take_left)
        right[:take_right] = np.frombuffer(self._right, dtype="<i2", count=take_right)
        del self._left[: take_left * _SAMPLE_BYTES]
        del self._right[: take_right * _SAMPLE_BYTES]
        if final:
            # Both channels now end together.
            self._pos = [max(self._pos)] * 2
        frames = np.empty(2 * ready, dtype="<i2")
        frames[0::2] = left
        frames[1::2] = right
        data = frames.tobytes()
        self._submit(lambda: self._append(data))

    # --- writer thread -----------------------------------------------------------------

    def _submit(self, job: Callable[[], None]) -> None:
        def run() -> None:
            if self._failed:
                return
            try:
                job()
            except OSError as exc:
                self._failed = True
                log.error("recording_failed", path=str(self.path), error=str(exc))

        self._pending = _writer().submit(run)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        self._file = os.fdopen(fd, "wb")
        self._file.write(_wav_header(self.rate_hz, 0))
        self._file.flush()

    def _append(self, data: bytes) -> None:
        file = self._file
        if file is None:
            return
        file.write(data)
        self._data_bytes += len(data)
        self.samples_written += len(data) // (_CHANNELS * _SAMPLE_BYTES)
        file.seek(0)
        file.write(_wav_header(self.rate_hz, self._data_bytes))
        file.seek(0, os.SEEK_END)
        file.flush()  # to the OS: survives the process being killed

    def _finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # --- closing -----------------------------------------------------------------------

    def _close_jobs(self) -> Future[None] | None:
        if self._closed:
            return self._pending
        self._flush(final=True)
        self._closed = True
        self._submit(self._finish)
        return self._pending

    async def close(self) -> None:
        """Write what is buffered and finalise the file (off the loop); never raises."""
        try:
            pending = self._close_jobs()
            if pending is not None:
                await asyncio.wrap_future(pending)
        except Exception as exc:
            log.error("recording_close_failed", path=str(self.path), error=str(exc))

    def close_sync(self, timeout_s: float = 10.0) -> None:
        pending = self._close_jobs()
        if pending is not None:
            with contextlib.suppress(Exception):
                pending.result(timeout_s)

    @property
    def failed(self) -> bool:
        return self._failed


def purge_recordings(directory: str | Path, cutoff: float) -> int:
    """Delete ``*.wav`` under ``directory`` last written before ``cutoff`` (unix s), and the
    day folders left empty; returns how many files went."""
    root = Path(directory)
    if not root.is_dir():
        return 0
    deleted = 0
    for wav in root.rglob("*.wav"):
        try:
            if wav.is_file() and wav.stat().st_mtime < cutoff:
                wav.unlink()
                deleted += 1
        except OSError as exc:
            log.warning("recording_purge_failed", path=str(wav), error=str(exc))
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only succeeds when empty
    return deleted
