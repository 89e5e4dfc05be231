"""Caller speech made at test time: espeak-ng (a voice unlike Piper's joe) -> sox.

Plain helpers, no fixtures; int16 little-endian mono PCM ("slin") throughout.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache

import numpy as np


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


@cache
def espeak_pcm(
    text: str,
    rate_hz: int = 8000,
    voice: str = "en-us",
    speed: int = 150,
    pitch: int = 50,
) -> bytes:
    """Speak ``text`` with espeak-ng and return slin mono at ``rate_hz`` (sox resampling)."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    raw: bytes = subprocess.run(
        [
            "sox",
            "-q",
            "-R",  # repeatable: the same dither on every run (the models hear it)
            "-t",
            "wav",
            "-",
            "-t",
            "raw",
            "-e",
            "signed-integer",
            "-b",
            "16",
            "-c",
            "1",
            "-r",
            str(rate_hz),
            "-",
        ],  # fmt: skip
        input=wav,
        check=True,
        capture_output=True,
    ).stdout
    return raw


def silence(ms: int, rate_hz: int = 8000) -> bytes:
    return bytes(rate_hz * ms // 1000 * 2)


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def _to_pcm(samples: np.ndarray) -> bytes:
    return np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()


def rms(pcm: bytes) -> float:
    s = _samples(pcm)
    return float(np.sqrt(np.mean(s * s))) if s.size else 0.0


def white_noise(ms: int, rate_hz: int, level_dbfs: float, seed: int = 0) -> bytes:
    n = rate_hz * ms // 1000
    rng = np.random.default_rng(seed)
    return _to_pcm(rng.standard_normal(n) * 32768.0 * 10 ** (level_dbfs / 20))


def pink_noise(ms: int, rate_hz: int, level_dbfs: float, seed: int = 0) -> bytes:
    """1/f noise (spectrally shaped white noise), scaled to ``level_dbfs`` RMS."""
    n = rate_hz * ms // 1000
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    pink = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    pink *= (32768.0 * 10 ** (level_dbfs / 20)) / np.sqrt(np.mean(pink * pink))
    return _to_pcm(pink)


def add_noise(pcm: bytes, snr_db: float, seed: int = 0) -> bytes:
    """Add white noise at ``snr_db`` below the signal's RMS."""
    s = _samples(pcm)
    noise_rms = rms(pcm) / 10 ** (snr_db / 20)
    rng = np.random.default_rng(seed)
    return _to_pcm(s + rng.standard_normal(s.size) * noise_rms)


def telephone_band(pcm: bytes, rate_hz: int) -> bytes:
    """300-3400 Hz band-pass with sox (what a PSTN leg leaves of the speech)."""
    out: bytes = subprocess.run(
        [
            "sox",
            "-q",
            "-t",
            "raw",
            "-e",
            "signed-integer",
            "-b",
            "16",
            "-c",
            "1",
            "-r",
            str(rate_hz),
            "-",
            "-t",
            "raw",
            "-",
            "sinc",
            "300-3400",
        ],  # fmt: skip
        input=pcm,
        check=True,
        capture_output=True,
    ).stdout
    return out


def frames(pcm: bytes, rate_hz: int, frame_ms: int = 20) -> list[bytes]:
    """Split into 20 ms frames (last one may be short), as the transport delivers them."""
    size = rate_hz * frame_ms // 1000 * 2
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]
