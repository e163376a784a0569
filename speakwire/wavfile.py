"""Read and write 16-bit PCM WAV files as float32 arrays (stdlib ``wave``; no extra dependency)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from speakwire.dsp import pcm
from speakwire.errors import AudioFormatError

__all__ = ["read_wav", "write_wav"]


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Return ``(samples, sample_rate)``; samples are float32, shape ``(n,)`` mono or ``(n, channels)``."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise AudioFormatError(f"{path}: only 16-bit PCM WAV is supported, got {8 * w.getsampwidth()}-bit")
        channels, rate = w.getnchannels(), w.getframerate()
        data = w.readframes(w.getnframes())
    samples = pcm.decode(data, "pcm_s16le")
    if channels > 1:
        samples = samples.reshape(-1, channels)
    return samples, rate


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write float32 samples (mono ``(n,)`` or ``(n, channels)``) as 16-bit PCM."""
    samples = np.asarray(samples, dtype=np.float32)
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.encode(samples.reshape(-1), "pcm_s16le"))
