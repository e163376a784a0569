"""The official ``cartesia`` Python SDK 4.2 as a client of the local server, sync and async."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from cartesia import AsyncCartesia, Cartesia

from speakwire.server import TTSServer
from speakwire.server.espeak import EspeakEngine
from tests.server.conftest import assert_speech, rms

KEY = "sk-sdk-compat-9f8e7d"
VOICE = {"mode": "id", "id": "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"}
F32_44K = {"container": "raw", "encoding": "pcm_f32le", "sample_rate": 44100}
S16_16K = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000}


@pytest.fixture
def threaded_server(engine: EspeakEngine) -> Iterator[TTSServer]:
    server = TTSServer(port=0, engine=engine, api_key=KEY)
    server.start_in_thread()
    try:
        yield server
    finally:
        server.stop()


def f32(parts: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(parts), dtype="<f4").astype(np.float64)


def test_sync_client_seed_000_two_pushes_with_a_speed_change(threaded_server: TTSServer) -> None:
    client = Cartesia(api_key=KEY, websocket_base_url=threaded_server.base_url)
    first, second = "I am speaking at a normal pace. ", "But now I am speaking much faster!"
    with client.tts.websocket_connect() as connection:
        ctx = connection.context(model_id="sonic-3.5", voice=VOICE, output_format=F32_44K)
        ctx.push(first)
        ctx.push(second, generation_config={"speed": 1.5})
        ctx.no_more_inputs()
        events = list(ctx.receive())
        # The same speech at speed 1 throughout, for comparison.
        ref = connection.context(model_id="sonic-3.5", voice=VOICE, output_format=F32_44K)
        ref.push(first + second)
        ref.no_more_inputs()
        ref_events = list(ref.receive())
    types = [e.type for e in events]
    assert types.count("done") == 1 and types[-1] == "done"
    assert set(types) == {"chunk", "done"}
    audio = f32([e.audio for e in events if e.type == "chunk" and e.audio])
    ref_audio = f32([e.audio for e in ref_events if e.type == "chunk" and e.audio])
    assert_speech(audio, 44100, first + second)
    # The second sentence (about half the text) ran at 1.5x: shorter than all-normal, longer than all-fast.
    assert len(ref_audio) / 1.5 < len(audio) < len(ref_audio) * 0.95


async def test_async_client_flush_timestamps_and_done(engine: EspeakEngine) -> None:
    async with TTSServer(port=0, engine=engine, api_key=KEY) as server:
        client = AsyncCartesia(api_key=KEY, websocket_base_url=server.base_url)
        async with client.tts.websocket_connect() as connection:
            ctx = connection.context(
                model_id="sonic-3", voice=VOICE, output_format=S16_16K, add_timestamps=True
            )
            await ctx.push("Hello there, friend.")
            await ctx.send(transcript="", voice=VOICE, continue_=True, flush=True)
            await ctx.push("This comes after the flush.")
            await ctx.no_more_inputs()
            events = [e async for e in ctx.receive()]
    types = [e.type for e in events]
    assert types[-1] == "done" and types.count("done") == 1
    flushes = [e for e in events if e.type == "flush_done"]
    assert [f.flush_id for f in flushes] == [1]
    # Audio of the text before the flush comes before its flush_done.
    assert types.index("chunk") < types.index("flush_done")
    words = [w for e in events if e.type == "timestamps" for w in e.word_timestamps.words]
    starts = [s for e in events if e.type == "timestamps" for s in e.word_timestamps.start]
    assert words == "Hello there, friend. This comes after the flush.".split()
    assert starts == sorted(starts)
    audio = np.frombuffer(b"".join(e.audio for e in events if e.type == "chunk" and e.audio), "<i2") / 32768.0
    duration = assert_speech(audio, 16000, "Hello there, friend. This comes after the flush.")
    assert starts[-1] < duration


async def test_async_client_cancel_stops_the_context(engine: EspeakEngine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cartesia")
    # ~40 sentences: ~2000 chunks if it ran to the end.
    long_text = "This is a long answer that the user will interrupt. " * 40
    async with TTSServer(port=0, engine=engine) as server:
        client = AsyncCartesia(api_key="unused", websocket_base_url=server.base_url)
        async with client.tts.websocket_connect() as connection:
            victim = connection.context(model_id="sonic-3", voice=VOICE, output_format=F32_44K)
            await victim.push(long_text)
            async for event in victim.receive():
                if event.type == "chunk":
                    break
            await victim.cancel()
            caplog.clear()
            after = connection.context(model_id="sonic-3", voice=VOICE, output_format=F32_44K)
            await after.push("The next turn.")
            await after.no_more_inputs()
            events = [e async for e in after.receive()]
            await asyncio.sleep(0.2)
    assert events[-1].type == "done"
    audio = f32([e.audio for e in events if e.type == "chunk" and e.audio])
    assert_speech(audio, 44100, "The next turn.")
    # The SDK logs each frame for a context it no longer tracks: only what was in flight.
    late = [r for r in caplog.records if "unregistered context" in r.getMessage()]
    assert len(late) < 100


async def test_async_client_receives_an_error_and_the_connection_survives(engine: EspeakEngine) -> None:
    async with TTSServer(port=0, engine=engine) as server:
        client = AsyncCartesia(api_key="unused", websocket_base_url=server.base_url)
        async with client.tts.websocket_connect() as connection:
            bad = connection.context(
                model_id="sonic-3",
                voice=VOICE,
                output_format={"container": "raw", "encoding": "pcm_s24le", "sample_rate": 12345},
            )
            await bad.push("Never spoken.")
            bad_events: list[Any] = [e async for e in bad.receive()]
            good = connection.context(model_id="sonic-3", voice=VOICE, output_format=F32_44K)
            await good.push("Spoken anyway.")
            await good.no_more_inputs()
            good_events = [e async for e in good.receive()]
    assert [e.type for e in bad_events] == ["error"]
    assert bad_events[0].status_code == 422
    assert "output_format.encoding" in bad_events[0].message
    assert good_events[-1].type == "done"
    audio = f32([e.audio for e in good_events if e.type == "chunk" and e.audio])
    assert rms(audio) > 0.02
