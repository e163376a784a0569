"""Quality metrics for time-stretched audio (no listener needed), and the sox / SoundTouch anchors.

The metrics follow /work/shared/docs/dsp.md: duration, pitch ratio on a harmonic glide, warble
(envelope error of a constant-amplitude tone), clicks (discontinuities of a smooth tone), and
timing (where markers land against the ideal time map).
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# -- signals ---------------------------------------------------------------------------------


def harmonic_glide(
    rate: int, seconds: float, f_start: float = 140.0, f_end: float = 260.0, amplitude: float = 0.5
) -> np.ndarray:
    """A constant-amplitude harmonic tone whose fundamental glides linearly (a voiced-speech stand-in).

    Harmonics stay below rate / 8 so that a 4th difference separates the tone from a discontinuity.
    """
    n = round(rate * seconds)
    t = np.arange(n) / rate
    phase = 2 * np.pi * (f_start * t + 0.5 * (f_end - f_start) / seconds * t * t)
    harmonics = [h for h in range(1, 6) if h * max(f_start, f_end) < rate / 8]
    x = sum(np.sin(h * phase) / h for h in harmonics)
    return (amplitude * x / max(float(np.max(np.abs(x), initial=0.0)), 1e-12)).astype(np.float32)


def tone_bursts(rate: int, count: int = 24, on: float = 0.15, f0: float = 180.0) -> tuple[np.ndarray, np.ndarray]:
    """Harmonic bursts separated by silences of 100-160 ms; returns the signal and the onsets (samples).

    The gaps vary (fixed pseudo-random draw) so onsets fall at every phase of the stretcher's steps,
    and each burst has its own fundamental so no splice can hide behind periodicity.
    """
    gaps = np.random.default_rng(7).uniform(0.10, 0.16, count)
    pos = round(0.05 * rate)
    parts = [np.zeros(pos, np.float32)]
    onsets = []
    for i in range(count):
        burst = harmonic_glide(rate, on, f0 + 7 * i, f0 + 7 * i + 40, 0.5)
        gap = np.zeros(round(gaps[i] * rate), np.float32)
        parts += [burst, gap]
        onsets.append(pos)
        pos += burst.size + gap.size
    return np.concatenate(parts), np.array(onsets, dtype=np.int64)


# -- pitch -----------------------------------------------------------------------------------


def pitch_track(x: np.ndarray, rate: int, fmin: float, fmax: float, frame: float = 0.04) -> np.ndarray:
    """Fundamental per 10 ms frame (Hz), by YIN: the first dip of the cumulative-mean-normalised
    difference below 0.1 at lags >= 1/fmax (else its minimum), parabolically refined."""
    n_frame = round(frame * rate)
    hop = round(0.01 * rate)
    lag_lo = max(2, int(rate / (1.15 * fmax)))
    lag_hi = int(np.ceil(rate / (0.87 * fmin))) + 1
    x = np.asarray(x, np.float64)
    f0 = []
    lags = np.arange(1, lag_hi + 1)
    for start in range(0, len(x) - n_frame - lag_hi - 1, hop):
        a = x[start : start + n_frame]
        shifted = sliding_window_view(x[start + 1 : start + lag_hi + 1 + n_frame], n_frame)[:lag_hi]
        d = np.concatenate(([0.0], np.sum((shifted - a) ** 2, axis=1)))
        cmnd = np.ones_like(d)
        cmnd[1:] = d[1:] * lags / np.maximum(np.cumsum(d[1:]), 1e-30)
        below = np.flatnonzero(cmnd[lag_lo:lag_hi] < 0.1)
        if below.size:
            i = lag_lo + int(below[0])
            while i + 1 < lag_hi and cmnd[i + 1] < cmnd[i]:
                i += 1
        else:
            i = lag_lo + int(np.argmin(cmnd[lag_lo:lag_hi]))
        denom = d[i - 1] - 2 * d[i] + d[i + 1]
        shift = 0.5 * (d[i - 1] - d[i + 1]) / denom if denom > 0 else 0.0
        f0.append(rate / (i + shift))
    return np.array(f0)


def pitch_ratio(reference: np.ndarray, x_out: np.ndarray, rate: int, fmin: float, fmax: float) -> float:
    """Mean fundamental of ``x_out`` over that of ``reference``, over the middle 80 % of each.

    Stretching a linear glide keeps the mean of its fundamental; passing the same glide synthesised
    at the stretched duration as ``reference`` cancels the tracker's own bias (about 0.1 %).
    """

    def interior_mean(x: np.ndarray) -> float:
        track = pitch_track(x, rate, fmin, fmax)
        centre = (np.arange(len(track)) * round(0.01 * rate) + round(0.02 * rate)) / len(x)
        return float(np.mean(track[(centre > 0.1) & (centre < 0.9)]))

    return interior_mean(x_out) / interior_mean(reference)


# -- envelope, clicks ------------------------------------------------------------------------


def warble_tone(rate: int, seconds: float) -> np.ndarray:
    """Two inharmonic sine glides (140-260 Hz and 2.37 times that): no shift aligns both, so every
    splice of a time-stretcher leaves a trace in the envelope, unlike on a harmonic tone."""
    n = round(rate * seconds)
    t = np.arange(n) / rate
    phase = 2 * np.pi * (140.0 * t + 0.5 * 120.0 / seconds * t * t)
    return (0.3 * np.sin(phase) + 0.21 * np.sin(2.37 * phase)).astype(np.float32)


def envelope_db(x: np.ndarray, rate: int, frame: float = 0.03, hop: float = 0.005) -> np.ndarray:
    """Hann-weighted RMS level per frame, in dB (30 ms frames average the tones' beating away)."""
    n = round(frame * rate)
    w = np.hanning(n)
    w /= w.sum()
    frames = sliding_window_view(np.asarray(x, np.float64), n)[:: round(hop * rate)]
    return 10 * np.log10(frames**2 @ w + 1e-20)


def warble_db(x: np.ndarray, rate: int, edge: float = 0.05) -> float:
    """Envelope error of a constant-level tone: mean |level - median level| in dB, edges left out."""
    env = envelope_db(x, rate)
    cut = round(edge / 0.005)
    env = env[cut:-cut]
    return float(np.mean(np.abs(env - np.median(env))))


def faded(x: np.ndarray, rate: int, seconds: float = 0.01) -> np.ndarray:
    """``x`` with raised-cosine fades at both ends, so its start and end are not discontinuities."""
    n = round(seconds * rate)
    ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)
    y = np.array(x, np.float32)
    y[:n] *= ramp
    y[-n:] *= ramp[::-1]
    return y


def click_positions(y: np.ndarray, reference: np.ndarray, factor: float = 3.0) -> np.ndarray:
    """Sample positions of discontinuities in ``y``, a stretched copy of the smooth ``reference``.

    A sinusoid's 4th difference is small (``(2 sin(pi f / rate))**4`` times its amplitude) while a
    step of height ``J`` gives ``6 J``: flag where it exceeds ``factor`` times the reference's
    largest, one position per event (events closer than 32 samples merge).
    """
    limit = factor * np.max(np.abs(np.diff(np.asarray(reference, np.float64), 4)))
    hits = np.flatnonzero(np.abs(np.diff(np.asarray(y, np.float64), 4)) > limit)
    if hits.size == 0:
        return hits
    keep = np.concatenate(([True], np.diff(hits) > 32))
    return hits[keep] + 2


# -- timing ----------------------------------------------------------------------------------


def onset_positions(y: np.ndarray, rate: int, threshold: float, min_gap: float = 0.03) -> np.ndarray:
    """First sample of each sound after at least ``min_gap`` seconds below ``threshold``."""
    loud = np.flatnonzero(np.abs(y) > threshold)
    if loud.size == 0:
        return loud
    gap = round(min_gap * rate)
    starts = np.concatenate(([True], np.diff(loud) > gap))
    return loud[starts]


def timing_errors(landed: np.ndarray, ideal: np.ndarray, rate: int) -> np.ndarray:
    """Landed minus ideal positions, in milliseconds (arrays must pair one to one)."""
    assert landed.shape == ideal.shape, f"{landed.size} markers found, {ideal.size} expected"
    return (landed - ideal) * 1000.0 / rate


# -- WAV files and the CLI anchors -----------------------------------------------------------


def write_wav_f32(path: Path, x: np.ndarray, rate: int) -> None:
    """Mono 32-bit float WAV (exact, no quantisation)."""
    data = np.asarray(x, "<f4").tobytes()
    fmt = (
        (3).to_bytes(2, "little")  # WAVE_FORMAT_IEEE_FLOAT
        + (1).to_bytes(2, "little")
        + rate.to_bytes(4, "little")
        + (4 * rate).to_bytes(4, "little")
        + (4).to_bytes(2, "little")
        + (32).to_bytes(2, "little")
    )
    body = b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt + b"data" + len(data).to_bytes(4, "little")
    Path(path).write_bytes(b"RIFF" + (len(body) + len(data)).to_bytes(4, "little") + body + data)


def write_wav_s16(path: Path, x: np.ndarray, rate: int) -> None:
    """Mono 16-bit PCM WAV (what soundstretch handles correctly: its 32-bit output wraps at half scale)."""
    pcm = np.clip(np.round(np.asarray(x, np.float64) * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def read_wav_mono(path: Path) -> tuple[np.ndarray, int]:
    """Read a mono WAV of 16/32-bit PCM or 32-bit float as float32 in [-1, 1]."""
    raw = Path(path).read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE", f"{path} is not a WAV file"
    pos, fmt, data = 12, None, None
    while pos + 8 <= len(raw):
        tag, size = raw[pos : pos + 4], int.from_bytes(raw[pos + 4 : pos + 8], "little")
        body = raw[pos + 8 : pos + 8 + size]
        if tag == b"fmt ":
            fmt = body
        elif tag == b"data":
            data = body
        pos += 8 + size + (size & 1)
    assert fmt is not None and data is not None, f"{path}: missing fmt or data chunk"
    code = int.from_bytes(fmt[0:2], "little")
    if code == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: the real code opens the sub-format GUID
        code = int.from_bytes(fmt[24:26], "little")
    channels = int.from_bytes(fmt[2:4], "little")
    rate = int.from_bytes(fmt[4:8], "little")
    bits = int.from_bytes(fmt[14:16], "little")
    assert channels == 1, f"{path}: {channels} channels"
    if code == 3 and bits == 32:
        x = np.frombuffer(data, "<f4")
    elif code == 1 and bits == 16:
        x = np.frombuffer(data, "<i2") / 32768.0
    elif code == 1 and bits == 32:
        x = np.frombuffer(data, "<i4") / 2147483648.0
    else:
        raise AssertionError(f"{path}: unsupported WAV format {code}/{bits}-bit")
    return x.astype(np.float32), rate


def sox_tempo(x: np.ndarray, rate: int, speed: float, workdir: Path) -> np.ndarray:
    """``sox in.wav out.wav tempo -s SPEED`` (WSOLA tuned for speech)."""
    src, dst = Path(workdir) / "sox_in.wav", Path(workdir) / "sox_out.wav"
    write_wav_f32(src, x, rate)
    subprocess.run(["sox", str(src), "-e", "floating-point", str(dst), "tempo", "-s", f"{speed}"],
                   check=True, capture_output=True)
    return read_wav_mono(dst)[0]


def soundstretch_tempo(x: np.ndarray, rate: int, speed: float, workdir: Path) -> np.ndarray:
    """``soundstretch in.wav out.wav -tempo=+N -speech`` (SoundTouch WSOLA tuned for speech)."""
    src, dst = Path(workdir) / "st_in.wav", Path(workdir) / "st_out.wav"
    write_wav_s16(src, x, rate)
    subprocess.run(["soundstretch", str(src), str(dst), f"-tempo={(speed - 1) * 100:+.4f}", "-speech"],
                   check=True, capture_output=True)
    return read_wav_mono(dst)[0]


def have(tool: str) -> bool:
    """Whether the CLI ``tool`` is on PATH."""
    return shutil.which(tool) is not None
