"""Helpers for the SpeakwireTTSService tests: turns as frames, audio and words out of frame lists."""

from __future__ import annotations

from typing import Any

import numpy as np
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from speakwire.plugin import SpeakwireTTSService
from speakwire.transport import ReconnectPolicy

RATE = 24000
SENTENCE_1 = ["Hello", " there", ",", " my", " friend", "."]
SENTENCE_2 = [" The", " weather", " is", " lovely", " and", " warm", " today", "."]
# Fast retries: a test with the server down should fail in milliseconds, not seconds.
FAST_RECONNECT = ReconnectPolicy(max_attempts=2, initial_delay=0.05, max_delay=0.1)


def turn(tokens: list[str]) -> list[Frame]:
    """One LLM reply streamed token by token."""
    return [LLMFullResponseStartFrame(), *(LLMTextFrame(t) for t in tokens), LLMFullResponseEndFrame()]


def service(url: str, **kwargs: Any) -> SpeakwireTTSService:
    kwargs.setdefault("sample_rate", RATE)
    kwargs.setdefault("reconnect", FAST_RECONNECT)
    return SpeakwireTTSService(url=url, **kwargs)


async def speak(tts: SpeakwireTTSService, frames: list[Frame]) -> tuple[list[Frame], list[Frame]]:
    """Run ``frames`` through ``tts`` under pipecat's harness; the EndFrame waits for all audio."""
    return await run_test(tts, frames_to_send=[*frames, SleepFrame(sleep=0.05)])


def audio_of(frames: list[Frame], context_id: str | None = None) -> np.ndarray:
    """The float samples of every TTSAudioRawFrame (of one context, if given), checked s16 mono."""
    chunks = [f for f in frames if isinstance(f, TTSAudioRawFrame)]
    if context_id is not None:
        chunks = [f for f in chunks if f.context_id == context_id]
    assert all(f.sample_rate == RATE and f.num_channels == 1 and len(f.audio) % 2 == 0 for f in chunks)
    return np.frombuffer(b"".join(f.audio for f in chunks), "<i2").astype(np.float64) / 32768.0


def seconds(samples: np.ndarray) -> float:
    return len(samples) / RATE


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples)))) if len(samples) else 0.0


def words_of(frames: list[Frame], context_id: str | None = None) -> list[str]:
    return [
        f.text for f in frames if isinstance(f, TTSTextFrame) and (context_id is None or f.context_id == context_id)
    ]


def context_ids(frames: list[Frame]) -> list[str]:
    """The audio contexts in the order their audio appeared."""
    seen: list[str] = []
    for f in frames:
        if isinstance(f, TTSAudioRawFrame) and f.context_id not in seen:
            seen.append(f.context_id)
    return seen


def errors(frames: list[Frame]) -> list[str]:
    return [f.error for f in frames if isinstance(f, ErrorFrame)]


def stops(frames: list[Frame]) -> int:
    return sum(isinstance(f, TTSStoppedFrame) for f in frames)


def assert_speech(samples: np.ndarray, text: str) -> float:
    """Plausible speech for ``text`` (espeak: ~0.34 s a word; wide bounds): returns the duration."""
    count = len(text.split())
    duration = seconds(samples)
    assert 0.15 * count <= duration <= 0.9 * count + 1.0, f"{duration:.2f} s for {count} words"
    assert rms(samples) > 0.02, f"rms {rms(samples):.4f}: silence?"
    return duration
