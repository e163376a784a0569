"""Fixtures for the transport tests: the real local server on a free loopback port, audio checks."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest

from speakwire.dsp.pcm import bytes_per_sample, decode
from speakwire.protocol import Chunk, OutputFormat
from speakwire.server import TTSServer
from speakwire.server.espeak import EspeakEngine
from speakwire.transport import Context, ReconnectPolicy, TTSEvent

API_KEY = "sk-test-9f8e7d6c5b4a-secret"
VOICE = "a0e99841-438c-4a64-b679-ae501e7d6091"
S16_16K = OutputFormat("pcm_s16le", 16000)
# Bounds a failing test; frames a test waits for arrive within milliseconds.
TIMEOUT = 20.0
# Reconnect fast in tests: the server comes back within a second.
FAST_RECONNECT = ReconnectPolicy(max_attempts=40, initial_delay=0.02, max_delay=0.1)


@pytest.fixture(scope="session")
def engine() -> Iterator[EspeakEngine]:
    with EspeakEngine() as eng:
        yield eng


@pytest.fixture
async def server(engine: EspeakEngine) -> AsyncIterator[TTSServer]:
    async with TTSServer(port=0, engine=engine) as srv:
        yield srv


@pytest.fixture
async def keyed_server(engine: EspeakEngine) -> AsyncIterator[TTSServer]:
    async with TTSServer(port=0, engine=engine, api_key=API_KEY) as srv:
        yield srv


def free_port() -> int:
    """A loopback port nothing listens on (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def drain(ctx: Context) -> list[TTSEvent]:
    """Every remaining event of ``ctx``; a context that never ends fails the test, not hangs it."""
    async with asyncio.timeout(TIMEOUT):
        return [event async for event in ctx]


async def audio_of(ctx: Context) -> bytes:
    """Iterate ``ctx`` to its end and join its audio."""
    return b"".join(event.audio for event in await drain(ctx) if isinstance(event, Chunk))


def samples(audio: bytes, fmt: OutputFormat) -> np.ndarray:
    """Wire audio -> float samples; the byte count must be whole samples."""
    assert len(audio) % bytes_per_sample(fmt.encoding) == 0, f"{len(audio)} bytes is not whole {fmt.encoding} samples"
    return np.asarray(decode(audio, fmt.encoding), dtype=np.float64)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0


def assert_speech(audio: bytes, fmt: OutputFormat, text: str) -> float:
    """Plausible speech for ``text``: 0.15-0.9 s a word (espeak: ~0.34), level well above silence.

    Returns the duration in seconds.
    """
    x = samples(audio, fmt)
    words = len(text.split())
    duration = len(x) / fmt.sample_rate
    assert 0.15 * words <= duration <= 0.9 * words + 1.0, f"{duration:.2f} s for {words} words"
    assert rms(x) > 0.02, f"rms {rms(x):.4f}: silence?"
    return duration
