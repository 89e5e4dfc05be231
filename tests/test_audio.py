"""audio.py: µ-law bit-exact with audioop, anti-aliased resampling, reframing, WAV files."""

from __future__ import annotations

import importlib
import math
import warnings
import wave
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from voicebot_pbx import audio


def _audioop() -> ModuleType | None:
    # stdlib up to 3.12 (deprecated), the audioop-lts package on 3.13+.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return importlib.import_module("audioop")
        except ImportError:
            return None


audioop = _audioop()
needs_audioop = pytest.mark.skipif(
    audioop is None, reason="audioop is gone (Python 3.13+) and audioop-lts is not installed"
)


def tone(freq_hz: float, rate_hz: int, seconds: float, amplitude: float = 0.5) -> bytes:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return audio.float32_to_pcm(amplitude * np.sin(2 * np.pi * freq_hz * t))


def samples(pcm: bytes) -> np.ndarray:
    return audio.pcm_to_int16(pcm).astype(np.float64)


# --- µ-law ----------------------------------------------------------------------------------

ALL_SAMPLES = np.arange(-32768, 32768, dtype="<i2").tobytes()


@needs_audioop
def test_ulaw_encode_bit_exact_with_audioop_for_every_sample() -> None:
    assert audioop is not None
    assert audio.pcm_to_ulaw(ALL_SAMPLES) == audioop.lin2ulaw(ALL_SAMPLES, 2)


@needs_audioop
def test_ulaw_decode_bit_exact_with_audioop_for_every_code() -> None:
    assert audioop is not None
    codes = bytes(range(256))
    assert audio.ulaw_to_pcm(codes) == audioop.ulaw2lin(codes, 2)


def test_ulaw_known_values() -> None:
    # G.711: 0xff / 0x7f are +0 / -0, 0x80 / 0x00 the largest magnitudes.
    assert audio.pcm_to_ulaw(np.array([0, 32767, -32768], dtype="<i2").tobytes()) == bytes(
        [0xFF, 0x80, 0x00]
    )
    decoded = np.frombuffer(audio.ulaw_to_pcm(bytes([0xFF, 0x7F, 0x80, 0x00])), dtype="<i2")
    assert decoded.tolist() == [0, 0, 32124, -32124]


def test_ulaw_round_trip_error_is_within_the_segment_step() -> None:
    x = samples(ALL_SAMPLES)
    y = samples(audio.ulaw_to_pcm(audio.pcm_to_ulaw(ALL_SAMPLES)))
    # Quantisation error grows with magnitude: the largest step is 1024 (16-bit units), the
    # smallest, around zero, 8.
    assert np.max(np.abs(x - y)) <= 1024
    assert np.max(np.abs(x - y)[np.abs(x) < 100]) <= 8


# --- resampling -----------------------------------------------------------------------------


def test_resampler_removes_a_tone_above_the_new_nyquist() -> None:
    pcm = tone(5000, 22050, 1.0)
    assert audio.rms_dbfs(pcm) > -10
    out = audio.resample(pcm, 22050, 8000)
    assert len(out) == 2 * 8000
    assert audio.rms_dbfs(out[800:-800]) < -60  # ignore the filter's edges


@needs_audioop
def test_audioop_ratecv_aliases_the_same_tone() -> None:
    # The reason we use soxr: audioop.ratecv has no anti-aliasing filter.
    assert audioop is not None
    out, _state = audioop.ratecv(tone(5000, 22050, 1.0), 2, 1, 22050, 8000, None)
    assert audio.rms_dbfs(out[800:-800]) > -30


def test_streaming_resampler_removes_the_tone_too() -> None:
    resampler = audio.Resampler(22050, 8000)
    pcm = tone(5000, 22050, 1.0)
    out = b"".join(resampler.process(pcm[i : i + 882]) for i in range(0, len(pcm), 882))
    out += resampler.flush()
    assert audio.rms_dbfs(out[800:-800]) < -60


def test_resampler_keeps_a_tone_below_nyquist() -> None:
    out = audio.resample(tone(1000, 16000, 1.0), 16000, 8000)
    assert audio.rms_dbfs(out[800:-800]) == pytest.approx(
        audio.rms_dbfs(tone(1000, 8000, 1.0)), abs=0.5
    )


@pytest.mark.parametrize(("in_hz", "out_hz"), [(22050, 8000), (8000, 16000), (16000, 8000)])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_streaming_resampler_matches_one_shot_for_any_chunking(
    in_hz: int, out_hz: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    # Speech-like: a few tones plus noise, 1.5 s.
    pcm = audio.float32_to_pcm(
        0.3 * np.sin(2 * np.pi * 440 * np.arange(int(in_hz * 1.5)) / in_hz)
        + 0.05 * rng.standard_normal(int(in_hz * 1.5))
    )
    resampler = audio.Resampler(in_hz, out_hz)
    out = bytearray()
    pos = 0
    while pos < len(pcm):
        n = int(rng.integers(1, 3000))  # odd sizes too: a sample may be split across chunks
        out += resampler.process(pcm[pos : pos + n])
        pos += n
    out += resampler.flush()
    one_shot = samples(audio.resample(pcm, in_hz, out_hz))
    streamed = samples(bytes(out))
    assert abs(len(streamed) - len(one_shot)) <= 2
    n = min(len(streamed), len(one_shot))
    assert np.max(np.abs(streamed[:n] - one_shot[:n])) <= 8  # of 32768: rounding only


def test_resampler_same_rate_is_a_passthrough_even_for_odd_chunks() -> None:
    resampler = audio.Resampler(8000, 8000)
    pcm = tone(300, 8000, 0.1)
    out = resampler.process(pcm[:101]) + resampler.process(pcm[101:]) + resampler.flush()
    assert out == pcm


def test_resample_empty() -> None:
    assert audio.resample(b"", 22050, 8000) == b""


# --- reframing ------------------------------------------------------------------------------


def test_reframer_cuts_any_chunking_into_whole_frames() -> None:
    rng = np.random.default_rng(7)
    pcm = rng.integers(-3000, 3000, 8123, dtype=np.int16).astype("<i2").tobytes()
    reframer = audio.Reframer(320)
    frames: list[bytes] = []
    pos = 0
    while pos < len(pcm):
        n = int(rng.integers(1, 1000))
        frames += reframer.feed(pcm[pos : pos + n])
        pos += n
    assert all(len(f) == 320 for f in frames)
    assert b"".join(frames) == pcm[: len(frames) * 320]
    assert reframer.pending_bytes == len(pcm) % 320
    tail = reframer.flush()
    assert len(tail) == 320
    assert tail == pcm[len(frames) * 320 :] + bytes(320 - len(pcm) % 320)
    assert reframer.flush() == b""
    assert reframer.pending_bytes == 0


@pytest.mark.parametrize("size", [0, -2, 321])
def test_reframer_rejects_bad_frame_sizes(size: int) -> None:
    with pytest.raises(ValueError):
        audio.Reframer(size)


def test_split_frames_pads_only_the_last_frame() -> None:
    frames = audio.split_frames(bytes(range(200)) * 4, 8000)  # 800 bytes
    assert [len(f) for f in frames] == [320, 320, 320]
    assert frames[2][160:] == bytes(160)
    assert audio.split_frames(b"", 8000) == []
    assert audio.frame_bytes(8000) == 320
    assert audio.frame_bytes(16000) == 640


# --- WAV --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate_hz", [8000, 16000, 22050])
def test_wav_round_trip(tmp_path: Path, rate_hz: int) -> None:
    pcm = tone(440, rate_hz, 0.25) + bytes([0x00, 0x80, 0xFF, 0x7F])  # and both extremes
    path = tmp_path / f"t{rate_hz}.wav"
    audio.write_wav(path, pcm, rate_hz)
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, rate_hz)
    assert audio.read_wav(path) == (pcm, rate_hz)
    assert audio.duration_s(pcm, rate_hz) == pytest.approx((int(rate_hz * 0.25) + 2) / rate_hz)


def test_read_wav_downmixes_stereo(tmp_path: Path) -> None:
    left = np.full(100, 1000, dtype="<i2")
    right = np.full(100, 3000, dtype="<i2")
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(np.stack([left, right], axis=1).tobytes())
    pcm, rate_hz = audio.read_wav(path)
    assert rate_hz == 16000
    assert samples(pcm).tolist() == [2000.0] * 100


def test_read_wav_8_bit(tmp_path: Path) -> None:
    path = tmp_path / "u8.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(8000)
        wav.writeframes(bytes([0, 128, 255]))
    pcm, _ = audio.read_wav(path)
    assert samples(pcm).tolist() == [-32768.0, 0.0, 127 * 256.0]


# --- levels -----------------------------------------------------------------------------------


def test_rms_dbfs() -> None:
    assert audio.rms_dbfs(b"") == -120.0
    assert audio.rms_dbfs(bytes(320)) == -120.0
    full_square = np.array([32767, -32768] * 80, dtype="<i2").tobytes()
    assert audio.rms_dbfs(full_square) == pytest.approx(0.0, abs=0.01)
    # A sine's RMS is amplitude / sqrt(2): -3.01 dB below its peak.
    assert audio.rms_dbfs(tone(1000, 8000, 1.0, 0.5)) == pytest.approx(
        20 * math.log10(0.5 / math.sqrt(2)), abs=0.05
    )
    assert audio.is_silent(bytes(320))
    assert not audio.is_silent(tone(1000, 8000, 0.02))


def test_trim_leading_silence_keeps_a_lead_in_before_the_first_loud_sample() -> None:
    from voicebot_pbx.audio import trim_leading_silence

    quiet = b"\x05\x00" * 400  # 50 ms at 8 kHz, about -76 dBFS
    loud = b"\x00\x10" * 160  # 4096: -18 dBFS
    assert trim_leading_silence(quiet + loud, 8000) == b"\x05\x00" * 80 + loud
    assert trim_leading_silence(quiet + loud, 8000, lead_in_ms=0) == loud
    assert trim_leading_silence(loud + quiet, 8000) == loud + quiet
    assert trim_leading_silence(quiet, 8000) == quiet  # nothing loud: unchanged
    assert trim_leading_silence(b"", 8000) == b""
    # a negative peak counts as loud too
    assert trim_leading_silence(quiet + b"\x00\xf0", 8000, lead_in_ms=0) == b"\x00\xf0"
