"""Audio utilities: signed-linear PCM, µ-law, resampling, 20 ms reframing, WAV files.

Pure functions and small stateful helpers; no asyncio. All PCM here is signed 16-bit
little-endian mono ("slin"), the AudioSocket payload encoding.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

SAMPLE_WIDTH_BYTES = 2
FRAME_MS = 20


def frame_bytes(rate_hz: int, frame_ms: int = FRAME_MS) -> int:
    """Bytes in one frame of slin mono at ``rate_hz`` (8 kHz, 20 ms -> 320)."""
    return rate_hz * frame_ms // 1000 * SAMPLE_WIDTH_BYTES


def duration_s(pcm: bytes, rate_hz: int) -> float:
    return len(pcm) / (SAMPLE_WIDTH_BYTES * rate_hz)


def pcm_to_int16(pcm: bytes) -> npt.NDArray[np.int16]:
    usable = len(pcm) - len(pcm) % SAMPLE_WIDTH_BYTES
    return np.frombuffer(pcm[:usable], dtype="<i2")


def pcm_to_float32(pcm: bytes) -> npt.NDArray[np.float32]:
    return (pcm_to_int16(pcm).astype(np.float32) / 32768.0).astype(np.float32)


def float32_to_pcm(samples: npt.NDArray[np.floating]) -> bytes:
    clipped = np.clip(np.asarray(samples, dtype=np.float64) * 32768.0, -32768, 32767)
    return np.rint(clipped).astype("<i2").tobytes()


def rms_dbfs(pcm: bytes) -> float:
    """Root-mean-square level in dBFS; -120.0 for digital silence or empty input."""
    samples = pcm_to_int16(pcm).astype(np.float64)
    if samples.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(samples * samples)))
    if rms <= 0.0:
        return -120.0
    return max(-120.0, 20.0 * float(np.log10(rms / 32768.0)))


# Which frames of an utterance are its speech, by level (Moonshine's trim of quiet ends,
# the STT split's speech length): within SPEECH_BELOW_PEAK_DB of the loudest frame and
# SPEECH_ABOVE_FLOOR_DB above the line's noise floor.
LEVEL_FRAME_S = 0.02
SPEECH_BELOW_PEAK_DB = 35.0
SPEECH_ABOVE_FLOOR_DB = 8.0
_DIGITAL_SILENCE_DB = -90.0


def frame_levels_db(
    audio: npt.NDArray[np.float32], rate_hz: int
) -> tuple[npt.NDArray[np.float64], float | None]:
    """Energy (dB) of each whole ``LEVEL_FRAME_S`` frame of ``audio`` (float samples), and
    the line's noise floor: the quietest tenth of the frames that are not digital silence
    (a clip padded with zeros around noise would put it there); None when every frame is."""
    frame = int(rate_hz * LEVEL_FRAME_S)
    n = audio.size // frame
    energy_db = 10 * np.log10(
        np.mean(audio[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1) + 1e-12
    )
    heard = energy_db[energy_db > _DIGITAL_SILENCE_DB]
    return energy_db, float(np.percentile(heard, 10)) if heard.size else None


def is_silent(pcm: bytes, floor_dbfs: float = -60.0) -> bool:
    return rms_dbfs(pcm) <= floor_dbfs


def silence(duration_ms: int, rate_hz: int) -> bytes:
    return bytes(rate_hz * duration_ms // 1000 * SAMPLE_WIDTH_BYTES)


# --- µ-law (G.711), bit-exact with audioop.lin2ulaw / ulaw2lin -------------------------

_ULAW_BIAS = 0x84
# 14-bit encoder as in CPython's audioop.c (st_14linear2ulaw): clip and bias in 14-bit units.
_ULAW_CLIP_14 = 8159
_ULAW_SEGMENT_ENDS_14 = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])


def _build_ulaw_decode_table() -> npt.NDArray[np.int16]:
    codes = np.arange(256, dtype=np.int32)
    inverted = ~codes & 0xFF
    sign = inverted & 0x80
    exponent = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    magnitude = (((mantissa << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


_ULAW_DECODE = _build_ulaw_decode_table()


def pcm_to_ulaw(pcm: bytes) -> bytes:
    samples = pcm_to_int16(pcm).astype(np.int32) >> 2
    negative = samples < 0
    mask = np.where(negative, 0x7F, 0xFF)
    magnitude = np.minimum(np.where(negative, -samples, samples), _ULAW_CLIP_14) + (_ULAW_BIAS >> 2)
    segment = np.searchsorted(_ULAW_SEGMENT_ENDS_14, magnitude, side="left")
    code = (np.minimum(segment, 7) << 4) | ((magnitude >> (np.minimum(segment, 7) + 1)) & 0x0F)
    code = np.where(segment >= len(_ULAW_SEGMENT_ENDS_14), 0x7F, code)
    return (code ^ mask).astype(np.uint8).tobytes()


def ulaw_to_pcm(ulaw: bytes) -> bytes:
    codes = np.frombuffer(ulaw, dtype=np.uint8)
    return _ULAW_DECODE[codes].astype("<i2").tobytes()


# --- resampling ------------------------------------------------------------------------


class Resampler:
    """Stateful, anti-aliased (soxr) int16 mono resampler for a stream of chunks."""

    def __init__(self, in_rate_hz: int, out_rate_hz: int, quality: str = "HQ") -> None:
        self.in_rate_hz = in_rate_hz
        self.out_rate_hz = out_rate_hz
        self._passthrough = in_rate_hz == out_rate_hz
        self._stream = (
            None
            if self._passthrough
            else soxr.ResampleStream(in_rate_hz, out_rate_hz, 1, dtype="int16", quality=quality)
        )
        self._carry = b""

    def process(self, pcm: bytes) -> bytes:
        data = self._carry + pcm
        usable = len(data) - len(data) % SAMPLE_WIDTH_BYTES
        self._carry = data[usable:]
        if self._stream is None:
            return data[:usable]
        samples = np.frombuffer(data[:usable], dtype=np.int16)
        out = self._stream.resample_chunk(samples, last=False)
        return np.asarray(out, dtype="<i2").tobytes()

    def flush(self) -> bytes:
        self._carry = b""
        if self._stream is None:
            return b""
        out = self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        return np.asarray(out, dtype="<i2").tobytes()


def resample(pcm: bytes, in_rate_hz: int, out_rate_hz: int) -> bytes:
    """One-shot resample of a whole buffer (anti-aliased)."""
    if in_rate_hz == out_rate_hz:
        return pcm
    samples = pcm_to_int16(pcm)
    if samples.size == 0:
        return b""
    out = soxr.resample(samples, in_rate_hz, out_rate_hz, quality="HQ")
    return np.asarray(out, dtype="<i2").tobytes()


# --- reframing -------------------------------------------------------------------------


def trim_leading_silence(
    pcm: bytes, rate_hz: int, *, floor_dbfs: float = -50.0, lead_in_ms: float = 10.0
) -> bytes:
    """``pcm`` from ``lead_in_ms`` before its first sample louder than ``floor_dbfs``
    (peak); unchanged when no sample is that loud (silence is kept as it was asked for)."""
    floor = 32768.0 * 10.0 ** (floor_dbfs / 20.0)
    loud = np.flatnonzero(np.abs(pcm_to_int16(pcm).astype(np.int32)) > floor)
    if loud.size == 0:
        return pcm
    start = max(0, int(loud[0]) - int(rate_hz * lead_in_ms / 1000.0))
    return pcm[start * SAMPLE_WIDTH_BYTES :]


class Reframer:
    """Cuts a byte stream into fixed-size frames; keeps the remainder for the next feed."""

    def __init__(self, frame_size_bytes: int) -> None:
        if frame_size_bytes <= 0 or frame_size_bytes % SAMPLE_WIDTH_BYTES:
            raise ValueError(f"frame size must be a positive even number, got {frame_size_bytes}")
        self.frame_size_bytes = frame_size_bytes
        self._buffer = bytearray()

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, pcm: bytes) -> list[bytes]:
        self._buffer += pcm
        size = self.frame_size_bytes
        count = len(self._buffer) // size
        frames = [bytes(self._buffer[i * size : (i + 1) * size]) for i in range(count)]
        del self._buffer[: count * size]
        return frames

    def flush(self) -> bytes:
        """Return the remainder padded with silence to a whole frame (b"" if none)."""
        if not self._buffer:
            return b""
        frame = bytes(self._buffer) + bytes(self.frame_size_bytes - len(self._buffer))
        self._buffer.clear()
        return frame


def split_frames(pcm: bytes, rate_hz: int, frame_ms: int = FRAME_MS) -> list[bytes]:
    """Whole buffer -> frames, the last one padded with silence."""
    reframer = Reframer(frame_bytes(rate_hz, frame_ms))
    frames = reframer.feed(pcm)
    tail = reframer.flush()
    if tail:
        frames.append(tail)
    return frames


# --- WAV -------------------------------------------------------------------------------


def read_wav(path: str | Path) -> tuple[bytes, int]:
    """Read a PCM WAV (8/16-bit, any channels, any rate) as slin16 mono and its rate."""
    with wave.open(str(path), "rb") as wav:
        channels = wav.getnchannels()
        width = wav.getsampwidth()
        rate_hz = wav.getframerate()
        raw = wav.readframes(wav.getnframes())
    if width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.int16) - 128) << 8
    elif width == 2:
        samples = np.frombuffer(raw, dtype="<i2")
    elif width == 4:
        samples = (np.frombuffer(raw, dtype="<i4") >> 16).astype(np.int16)
    else:
        raise ValueError(f"{path}: unsupported sample width {width} bytes")
    if channels > 1:
        samples = samples.reshape(-1, channels).astype(np.int32).mean(axis=1).astype(np.int16)
    return samples.astype("<i2").tobytes(), rate_hz


def write_wav(path: str | Path, pcm: bytes, rate_hz: int, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(SAMPLE_WIDTH_BYTES)
        wav.setframerate(rate_hz)
        wav.writeframes(pcm)
