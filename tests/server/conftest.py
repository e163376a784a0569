"""Fixtures and helpers for the server tests: a real server on a free loopback port, raw clients."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from speakwire.server import TTSServer
from speakwire.server.espeak import EspeakEngine

ENGINE_RATE = 22050
BYTES_PER_SAMPLE = {"pcm_f32le": 4, "pcm_s16le": 2, "pcm_mulaw": 1, "pcm_alaw": 1}
# Frames a test waits for arrive within milliseconds; this only bounds a failing test.
TIMEOUT = 20.0


@pytest.fixture(scope="session")
def engine() -> Iterator[EspeakEngine]:
    with EspeakEngine() as eng:
        yield eng


@pytest.fixture
async def server(engine: EspeakEngine) -> AsyncIterator[TTSServer]:
    async with TTSServer(port=0, engine=engine) as srv:
        yield srv


def request(
    context_id: str,
    transcript: str,
    *,
    cont: bool = False,
    encoding: str = "pcm_f32le",
    rate: int = 22050,
    **extra: Any,
) -> str:
    """A generation request as the official clients write it."""
    message: dict[str, Any] = {
        "context_id": context_id,
        "model_id": "sonic-3",
        "transcript": transcript,
        "voice": {"mode": "id", "id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
        "output_format": {"container": "raw", "encoding": encoding, "sample_rate": rate},
        "continue": cont,
        "language": "en",
    }
    message.update(extra)
    return json.dumps(message)


@dataclass
class Result:
    """Everything a server sent for one context, in order."""

    frames: list[dict[str, Any]] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == kind]

    @property
    def types(self) -> list[str]:
        return [f["type"] for f in self.frames]

    @property
    def audio(self) -> bytes:
        return b"".join(base64.b64decode(f["data"]) for f in self.of_type("chunk"))

    @property
    def words(self) -> list[str]:
        return [w for f in self.of_type("timestamps") for w in f["word_timestamps"]["words"]]

    @property
    def starts(self) -> list[float]:
        return [s for f in self.of_type("timestamps") for s in f["word_timestamps"]["start"]]

    @property
    def ends(self) -> list[float]:
        return [s for f in self.of_type("timestamps") for s in f["word_timestamps"]["end"]]


async def collect(ws: ClientConnection, context_id: str, until: tuple[str, ...] = ("done", "error")) -> Result:
    """Read frames until ``context_id`` gets one of ``until``; frames of other contexts are skipped."""
    result = Result()
    async with asyncio.timeout(TIMEOUT):
        while True:
            raw = await ws.recv()
            assert isinstance(raw, str), "the server sent a binary frame"
            frame = json.loads(raw)
            if frame.get("context_id") != context_id:
                continue
            result.frames.append(frame)
            if frame["type"] in until:
                return result


async def collect_many(ws: ClientConnection, context_ids: set[str]) -> dict[str, Result]:
    """Read until every context in ``context_ids`` is done or failed."""
    results = {cid: Result() for cid in context_ids}
    pending = set(context_ids)
    async with asyncio.timeout(TIMEOUT):
        while pending:
            frame = json.loads(await ws.recv())
            cid = frame.get("context_id")
            if cid in results:
                results[cid].frames.append(frame)
                if frame["type"] in ("done", "error"):
                    pending.discard(cid)
    return results


async def quiet(ws: ClientConnection, seconds: float = 0.3) -> list[dict[str, Any]]:
    """Frames that arrive within ``seconds`` (expected: none)."""
    frames = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                frames.append(json.loads(await ws.recv()))
    except TimeoutError:
        return frames


def decode(data: bytes, encoding: str) -> np.ndarray:
    """Wire audio -> float samples, for level and duration checks."""
    from speakwire.dsp.pcm import decode as decode_pcm

    return np.asarray(decode_pcm(data, encoding), dtype=np.float64)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples)))) if len(samples) else 0.0


def median_f0(samples: np.ndarray, rate: int, lo: float = 60.0, hi: float = 400.0) -> float:
    """Median pitch (Hz) of the louder 40 ms frames, by autocorrelation.

    espeak's default voice sits near 100 Hz; a speed change done by resampling would move it by
    the speed factor, a pitch-preserving one must not.
    """
    x = np.asarray(samples, dtype=np.float64)
    size, hop = int(0.04 * rate), int(0.01 * rate)
    level = rms(x)
    pitches = []
    for start in range(0, len(x) - size, hop):
        frame = x[start : start + size]
        if rms(frame) < level:
            continue
        frame = frame - frame.mean()
        corr = np.correlate(frame, frame, "full")[size - 1 :]
        first, last = int(rate / hi), int(rate / lo)
        lag = first + int(np.argmax(corr[first:last]))
        if corr[lag] > 0.3 * corr[0]:
            pitches.append(rate / lag)
    return float(np.median(pitches))


def spectrum_similarity(a: np.ndarray, rate_a: int, b: np.ndarray, rate_b: int, top: float = 3800.0) -> float:
    """Cosine similarity of the average magnitude spectra (50 Hz to ``top``) of two signals.

    The same speech at another sample rate scores > 0.98; audio labelled with the wrong rate (its
    spectrum scaled by the rate ratio) scores < 0.8.
    """

    def spectrum(x: np.ndarray, rate: int) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        size = 2048
        frames = [x[i : i + size] * np.hanning(size) for i in range(0, len(x) - size, size // 2)]
        magnitude = np.mean([np.abs(np.fft.rfft(f)) for f in frames], axis=0)
        grid = np.arange(50.0, top, 25.0)
        values = np.interp(grid, np.fft.rfftfreq(size, 1.0 / rate), magnitude)
        return values / np.linalg.norm(values)

    return float(spectrum(a, rate_a) @ spectrum(b, rate_b))


def assert_speech(samples: np.ndarray, rate: int, text: str) -> float:
    """The audio is plausible speech for ``text``: length per word, level well above silence.

    espeak speaks ~175 words per minute (0.34 s a word) plus sentence pauses; the bounds are
    wide on purpose (0.15-0.9 s a word) but still catch silence, truncation and runaway output.
    Returns the duration in seconds.
    """
    words = len(text.split())
    duration = len(samples) / rate
    assert 0.15 * words <= duration <= 0.9 * words + 1.0, f"{duration:.2f} s for {words} words"
    assert rms(samples) > 0.02, f"rms {rms(samples):.4f}: silence?"
    assert np.max(np.abs(samples)) <= 1.0
    return duration


def assert_timestamps(result: Result, duration: float) -> None:
    """Word timestamps are ordered, non-negative and inside the audio."""
    starts, ends = result.starts, result.ends
    assert starts, "no word timestamps"
    assert starts == sorted(starts)
    assert all(0.0 <= s <= e <= duration + 0.05 for s, e in zip(starts, ends, strict=True)), (starts, ends, duration)


__all__ = [
    "BYTES_PER_SAMPLE",
    "ENGINE_RATE",
    "Result",
    "assert_speech",
    "assert_timestamps",
    "collect",
    "collect_many",
    "connect",
    "decode",
    "median_f0",
    "quiet",
    "request",
    "rms",
    "spectrum_similarity",
]
