"""Call recording: stereo WAV (caller left, bot right) at the call's rate, aligned by time,
valid on disk while being written, owner-only, purged by retention."""

from __future__ import annotations

import asyncio
import os
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.test_analytics import HOURS, fake_shared
from voicebot_pbx.call.session import CallSession
from voicebot_pbx.ops.recording import CallRecording, purge_recordings, recording_path
from voicebot_pbx.testing import FakeMedia, run_virtual, tone


def read_stereo(path: Path) -> tuple[int, np.ndarray, np.ndarray]:
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 2 and wav.getsampwidth() == 2
        rate = wav.getframerate()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return rate, data[0::2], data[1::2]


def frames(pcm: bytes, rate_hz: int) -> list[bytes]:
    size = rate_hz // 50 * 2
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


def ramp(n: int, start: int) -> bytes:
    return (np.arange(start, start + n) % 30000).astype("<i2").tobytes()


@pytest.mark.parametrize("rate_hz", [8000, 16000])
def test_both_directions_land_in_their_channel_sample_exact(tmp_path: Path, rate_hz: int) -> None:
    caller = ramp(3 * rate_hz, 0)
    bot = ramp(3 * rate_hz, 1000)
    rec = CallRecording(tmp_path / "c.wav", rate_hz)
    jitter = np.random.default_rng(1).uniform(0.0, 0.05, size=len(caller))
    for index, (a, b) in enumerate(zip(frames(caller, rate_hz), frames(bot, rate_hz), strict=True)):
        at = (index + 1) * 0.02
        rec.caller(a, at)
        # Scheduling jitter (up to 50 ms late) must not add silence.
        rec.bot(b, at + (jitter[index] if index else 0.0))
    asyncio.run(rec.close())
    rate, left, right = read_stereo(tmp_path / "c.wav")
    assert rate == rate_hz
    assert left.tobytes() == caller and right.tobytes() == bot


def test_a_late_start_and_a_stall_are_silence_at_the_right_place(tmp_path: Path) -> None:
    rate = 8000
    rec = CallRecording(tmp_path / "c.wav", rate)
    frame = tone(0.02, rate, 440)
    # Caller frames from 0 to 2 s, except nothing arrives between 1.0 and 1.5 s (a stall).
    for i in range(100):
        at = (i + 1) * 0.02
        if not 1.0 < at <= 1.5:
            rec.caller(frame, at)
    # The bot starts talking at 0.5 s.
    for i in range(25, 100):
        rec.bot(frame, (i + 1) * 0.02)
    asyncio.run(rec.close())
    _, left, right = read_stereo(tmp_path / "c.wav")

    def loud(channel: np.ndarray, start_s: float, end_s: float) -> bool:
        part = channel[int(start_s * rate) : int(end_s * rate)].astype(float)
        return bool(np.sqrt(np.mean(part**2)) > 1000)

    assert loud(left, 0.0, 1.0) and not loud(left, 1.02, 1.48) and loud(left, 1.52, 2.0)
    assert not loud(right, 0.0, 0.48) and loud(right, 0.52, 2.0)
    assert len(left) == pytest.approx(2.0 * rate, abs=0.03 * rate)


def test_one_channel_fed_alone_keeps_memory_bounded(tmp_path: Path) -> None:
    rate = 8000
    rec = CallRecording(tmp_path / "c.wav", rate, max_lag_s=1.0)
    for frame in frames(tone(10.0, rate, 440), rate):
        rec.caller(frame)  # no times, and the bot side is never fed
        assert len(rec._left) <= 2 * rate * 2
    asyncio.run(rec.close())
    _, left, right = read_stereo(tmp_path / "c.wav")
    assert len(left) == 10 * rate and not right.any()


def test_the_file_is_a_valid_wav_while_still_being_written(tmp_path: Path) -> None:
    rate = 8000
    path = tmp_path / "live.wav"
    rec = CallRecording(path, rate, chunk_s=0.5)
    pcm = tone(2.0, rate, 300)
    for index, frame in enumerate(frames(pcm, rate)):
        rec.caller(frame, (index + 1) * 0.02)
        rec.bot(frame, (index + 1) * 0.02)
    assert rec._pending is not None
    rec._pending.result(5.0)
    # Not closed (as if the process were killed now): the header matches what is there.
    _, left, _ = read_stereo(path)
    assert len(left) == 2 * rate and path.stat().st_size == 44 + 2 * rate * 4
    assert path.stat().st_mode & 0o777 == 0o600
    rec.close_sync()


def test_recording_a_scripted_call_through_the_session(tmp_path: Path) -> None:
    """How the session feeds it: inbound frames as they arrive, outbound as they're written."""
    rate = 8000
    path = recording_path(tmp_path, "00000000-0000-4000-8000-000000000001")
    rec = CallRecording(path, rate)

    class RecordedMedia(FakeMedia):
        async def write(self, pcm: bytes, is_silence: bool) -> None:
            await super().write(pcm, is_silence)
            rec.bot(pcm, asyncio.get_running_loop().time())

        async def _frame(self, pcm: bytes, at_s: float) -> None:
            await super()._frame(pcm, at_s)
            rec.caller(pcm, asyncio.get_running_loop().time())

    async def call() -> None:
        media = RecordedMedia()
        session = CallSession(media, fake_shared())
        async with asyncio.TaskGroup() as group:
            pacer = group.create_task(media.speaker.run(media.write))
            runner = group.create_task(session.run())
            await media.play_caller([(2.0, tone(1.0, rate, HOURS))])
            await media.silence_until(6.0)
            await media.hangup("caller_hangup")
            await runner
            pacer.cancel()
        await rec.close()

    run_virtual(call())
    _, left, right = read_stereo(path)

    def level(channel: np.ndarray, start_s: float, end_s: float) -> float:
        part = channel[int(start_s * rate) : int(end_s * rate)].astype(float)
        return float(np.sqrt(np.mean(part**2))) if part.size else 0.0

    assert level(left, 2.05, 2.95) > 1000  # the question, in the caller's channel
    assert level(right, 2.05, 2.95) < 100  # the bot was quiet meanwhile
    assert level(right, 3.4, 3.9) > 1000  # "We open at eight." after it
    assert level(left, 3.4, 3.9) < 100
    assert path.parent.name == time.strftime("%Y-%m-%d", time.gmtime())


def test_recording_path_is_safe() -> None:
    path = recording_path("/rec", "../../etc/passwd", started_at=0.0)
    assert path.parent == Path("/rec/1970-01-01") and "/" not in path.name
    assert path.name.endswith(".wav")


def test_purge_removes_old_recordings_and_empty_day_folders(tmp_path: Path) -> None:
    now = time.time()
    old = tmp_path / "2020-01-01" / "a.wav"
    new = tmp_path / "2020-01-02" / "b.wav"
    keep = tmp_path / "2020-01-02" / "notes.txt"
    for file in (old, new, keep):
        file.parent.mkdir(exist_ok=True)
        file.write_bytes(b"x")
    os.utime(old, (now - 100, now - 100))
    os.utime(keep, (now - 100, now - 100))
    assert purge_recordings(tmp_path, now - 50) == 1
    assert not old.exists() and not old.parent.exists()
    assert new.exists() and keep.exists()
    assert purge_recordings(tmp_path / "missing", now) == 0


def test_a_write_error_is_logged_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    rec = CallRecording(blocker / "sub" / "c.wav", 8000)  # parent is a file: cannot create
    rec.caller(bytes(320), 0.02)
    asyncio.run(rec.close())
    assert rec.failed
