"""Whisper-style log-mel features, pure numpy: the input of the end-of-turn model.

The smart-turn v3 model was trained on the features of Hugging Face's
``WhisperFeatureExtractor(chunk_length=8)``: 16 kHz audio padded or cut to 8 s, normalised
to zero mean and unit variance, a centred 400-point STFT (periodic Hann window, reflect
padding) every 160 samples, the power spectrum projected on 80 Slaney mel bands
(0-8 kHz, area-normalised), log10 with a 1e-10 floor, the last frame dropped, clamped to
8 (log10 units) below the maximum and scaled by ``(x + 4) / 4``. Output: 80 x 800 float32.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

RATE_HZ = 16000
WINDOW_S = 8
WINDOW_SAMPLES = RATE_HZ * WINDOW_S
N_FFT = 400
HOP = 160
N_MELS = 80
FRAMES = WINDOW_SAMPLES // HOP  # 800

FloatArray = npt.NDArray[np.float64]


def _hz_to_mel(hz: FloatArray) -> FloatArray:
    """Slaney's mel scale: linear (3 mel per 200 Hz) below 1 kHz, logarithmic above."""
    linear = hz * 3.0 / 200.0
    log_part = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz < 1000.0, linear, log_part)


def _mel_to_hz(mel: FloatArray) -> FloatArray:
    linear = mel * 200.0 / 3.0
    log_part = 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0))
    return np.where(mel < 15.0, linear, log_part)


def mel_filterbank() -> FloatArray:
    """Triangular mel filters, shape (N_MELS, N_FFT // 2 + 1), each scaled to unit area
    (Slaney normalisation: 2 / bandwidth)."""
    edges_hz = _mel_to_hz(
        np.linspace(
            _hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([RATE_HZ / 2]))[0], N_MELS + 2
        )
    )
    bins_hz = np.linspace(0.0, RATE_HZ / 2, N_FFT // 2 + 1)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bins_hz[None, :] - lower) / (centre - lower)
    falling = (upper - bins_hz[None, :]) / (upper - centre)
    filters = np.clip(np.minimum(rising, falling), 0.0, None)
    return filters * (2.0 / (upper - lower))


_FILTERS = mel_filterbank()
_HANN = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic


def last_window(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The last 8 s of ``samples`` (16 kHz), zero-padded in front when shorter."""
    if samples.size >= WINDOW_SAMPLES:
        return samples[-WINDOW_SAMPLES:]
    out = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    out[WINDOW_SAMPLES - samples.size :] = samples
    return out


def log_mel(window: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Features of exactly ``WINDOW_SAMPLES`` samples at 16 kHz: shape (N_MELS, FRAMES)."""
    if window.shape != (WINDOW_SAMPLES,):
        raise ValueError(f"need {WINDOW_SAMPLES} samples, got shape {window.shape}")
    x = window.astype(np.float32)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    half = N_FFT // 2
    padded = np.pad(x.astype(np.float64), (half, half), mode="reflect")
    starts = np.arange(FRAMES + 1) * HOP
    frames = padded[starts[:, None] + np.arange(N_FFT)[None, :]]
    power = np.abs(np.fft.rfft(frames * _HANN, axis=1)) ** 2  # (FRAMES + 1, bins)
    mel = np.log10(np.maximum(power @ _FILTERS.T, 1e-10)).T[:, :FRAMES]
    mel = np.maximum(mel, mel.max() - 8.0)
    scaled: npt.NDArray[np.float32] = ((mel + 4.0) / 4.0).astype(np.float32)
    return scaled
