"""Helpers for the track tests: signals, a frame recorder for the receiving peer, audio measures."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack


def tone(rate: int, freq: float, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    """A float32 sine starting at phase 0."""
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def peak_frequency(x: np.ndarray, rate: int) -> float:
    """The FFT peak of a Hann-windowed segment, refined by parabolic interpolation."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(spectrum[1:])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / len(x)


def tone_level(x: np.ndarray, rate: int, freq: float) -> float:
    """Amplitude of the ``freq`` component of ``x`` (complex projection, phase-free)."""
    t = np.arange(len(x)) / rate
    return float(2 * np.abs(np.mean(x * np.exp(-2j * np.pi * freq * t))))


def active_span(x: np.ndarray, threshold: float) -> tuple[int, int]:
    """First and one-past-last index where ``|x|`` exceeds ``threshold``."""
    loud = np.flatnonzero(np.abs(x) > threshold)
    return (int(loud[0]), int(loud[-1]) + 1) if len(loud) else (0, 0)


@dataclass
class Recorder:
    """Reads every frame of a remote track (its queue is unbounded: it must be drained)."""

    track: MediaStreamTrack
    arrivals: list[float] = field(default_factory=list)
    frames: list[tuple[int, int, np.ndarray]] = field(default_factory=list)  # (pts, rate, mono float32)
    _task: asyncio.Task[None] | None = None

    def start(self) -> Recorder:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await self.track.recv()
                channels = len(frame.layout.channels)
                pcm = frame.to_ndarray().reshape(-1, channels)[:, 0].astype(np.float32) / 32768.0
                self.arrivals.append(loop.time())
                self.frames.append((frame.pts, frame.sample_rate, pcm))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_frames(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.frames) < count:
                await asyncio.sleep(0.005)

    @property
    def rate(self) -> int:
        return self.frames[0][1]

    def signal(self) -> np.ndarray:
        """The received audio on its pts timeline (gaps, if any, as zeros), from the first frame."""
        first = self.frames[0][0]
        end = self.frames[-1][0] - first + len(self.frames[-1][2])
        out = np.zeros(end, np.float32)
        for pts, _, pcm in self.frames:
            out[pts - first : pts - first + len(pcm)] = pcm
        return out

    def arrival_of(self, index: int) -> float:
        """Loop time the frame holding sample ``index`` of :meth:`signal` arrived."""
        first = self.frames[0][0]
        for (pts, _, pcm), arrived in zip(self.frames, self.arrivals, strict=True):
            if pts - first <= index < pts - first + len(pcm):
                return arrived
        raise IndexError(index)
