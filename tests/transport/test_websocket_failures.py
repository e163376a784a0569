"""TTSConnection when things go wrong: credentials, a server that dies and comes back, late and
unknown messages, secrets in reprs, errors and logs. Real server over real loopback sockets; a small
scripted websockets server stands in only where the real one cannot be made to misbehave."""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import AsyncIterator

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from speakwire.dsp.pcm import encode as encode_pcm
from speakwire.errors import AuthenticationError, TTSConnectionError
from speakwire.protocol import CancelRequest, Chunk, Done, FlushDone, encode
from speakwire.server import TTSServer
from speakwire.server.espeak import EspeakEngine
from speakwire.transport import ReconnectPolicy, TTSConnection

from .conftest import (
    API_KEY,
    FAST_RECONNECT,
    S16_16K,
    TIMEOUT,
    VOICE,
    assert_speech,
    audio_of,
    drain,
    free_port,
)

TEXT = "The quick brown fox jumps over the lazy dog."


def _no_key(*texts: str) -> None:
    for text in texts:
        assert API_KEY not in text, text


def _exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


# --- auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["header", "query"])
async def test_good_key_speaks(keyed_server: TTSServer, auth: str) -> None:
    async with TTSConnection(keyed_server.url, api_key=API_KEY, auth=auth) as conn:  # type: ignore[arg-type]
        ctx = conn.context(voice=VOICE, output_format=S16_16K)
        await ctx.push(TEXT)
        await ctx.no_more_inputs()
        async with asyncio.timeout(TIMEOUT):
            assert_speech(await audio_of(ctx), S16_16K, TEXT)
        _no_key(repr(conn), conn.url)


@pytest.mark.parametrize("auth", ["header", "query"])
async def test_bad_key_is_authentication_error_without_retry_or_key(
    keyed_server: TTSServer, auth: str, caplog: pytest.LogCaptureFixture
) -> None:
    bad = "sk-wrong-0123456789-secret"
    policy = ReconnectPolicy(max_attempts=5, initial_delay=0.01)
    conn = TTSConnection(keyed_server.url, api_key=bad, auth=auth, reconnect=policy)  # type: ignore[arg-type]
    with caplog.at_level(logging.DEBUG, logger="speakwire.transport"), pytest.raises(AuthenticationError) as info:
        await conn.connect()
    text = _exception_text(info.value)
    assert "HTTP 401" in text and keyed_server.url in text
    assert bad not in text and bad not in repr(conn)
    assert not any(bad in r.getMessage() for r in caplog.records)
    assert not any("reconnecting" in r.getMessage() for r in caplog.records)  # 401 is not retried
    assert conn.stats.connects == 0
    await conn.close()


async def test_no_key_is_refused_and_a_push_raises_it(keyed_server: TTSServer) -> None:
    conn = TTSConnection(keyed_server.url, reconnect=ReconnectPolicy(max_attempts=3))
    ctx = conn.context(voice=VOICE, output_format=S16_16K)
    with pytest.raises(AuthenticationError, match="HTTP 401"):
        await ctx.push(TEXT)  # the first push connects
    assert conn.stats.connects == 0
    await conn.close()


async def test_handshake_log_and_repr_never_show_the_key(
    keyed_server: TTSServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = keyed_server.url + "?api_key=" + API_KEY  # a key put in the URL by hand is hidden too
    with caplog.at_level(logging.DEBUG, logger="speakwire.transport"):
        async with TTSConnection(url, api_key=API_KEY) as conn:
            ctx = conn.context(voice=VOICE, output_format=S16_16K)
            await ctx.push(TEXT)
            await ctx.no_more_inputs()
            async with asyncio.timeout(TIMEOUT):
                assert_speech(await audio_of(ctx), S16_16K, TEXT)
            _no_key(repr(conn), str(conn.url), repr(ctx))
            assert "api_key=***" in repr(conn)
    messages = [r.getMessage() for r in caplog.records]
    # websockets logged the handshake through our logger (so the check is not vacuous) ...
    assert any("X-API-Key: ***" in m for m in messages), messages[:20]
    assert any("Cartesia-Version: 2026-03-01" in m for m in messages)
    # ... and the key itself appears nowhere.
    _no_key(*messages)


async def test_wrong_path_is_a_connection_error_naming_the_status(keyed_server: TTSServer) -> None:
    url = keyed_server.base_url + "/not/here?access_token=" + API_KEY
    conn = TTSConnection(url, reconnect=ReconnectPolicy(max_attempts=3, initial_delay=0.01))
    with pytest.raises(TTSConnectionError, match="HTTP 404") as info:
        await conn.connect()
    assert not isinstance(info.value, AuthenticationError)
    assert keyed_server.base_url + "/not/here?access_token=***" in str(info.value)
    _no_key(_exception_text(info.value), repr(conn))
    await conn.close()


def test_bad_arguments_are_refused_without_echoing_the_key() -> None:
    with pytest.raises(ValueError, match="'http'"):
        TTSConnection("http://127.0.0.1:1/tts/websocket?api_key=" + API_KEY)
    with pytest.raises(ValueError, match="auth"):
        TTSConnection("ws://127.0.0.1:1/", auth="cookie")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="queue_size"):
        TTSConnection("ws://127.0.0.1:1/", queue_size=0)
    conn = TTSConnection("ws://user:" + API_KEY + "@127.0.0.1:1/tts/websocket")
    assert conn.url == "ws://***@127.0.0.1:1/tts/websocket"
    _no_key(repr(conn))


# --- a dying server -------------------------------------------------------------------------


async def test_server_stopped_mid_context_then_back_on_same_port(engine: EspeakEngine) -> None:
    first = TTSServer(port=0, engine=engine)
    await first.start()
    port = first.port
    conn = TTSConnection(first.url, api_key=API_KEY, reconnect=FAST_RECONNECT)
    try:
        await conn.connect()
        ctx = conn.context(voice=VOICE, output_format=S16_16K)
        await ctx.push(TEXT, flush=True)  # input left open: only the connection can end it
        got = []
        async with asyncio.timeout(TIMEOUT):
            # All the audio of the flushed text, then the server dies with the context still open.
            while not isinstance(event := await anext(ctx), FlushDone):
                if isinstance(event, Chunk):
                    got.append(event.audio)
            await first.close()
            with pytest.raises(TTSConnectionError) as info:
                async for event in ctx:
                    if isinstance(event, Chunk):
                        got.append(event.audio)
        assert_speech(b"".join(got), S16_16K, TEXT)
        text = _exception_text(info.value)
        assert first.url in text and ctx.context_id in text and "lost" in text
        _no_key(text)
        with pytest.raises(TTSConnectionError):
            await ctx.push("more")

        async with TTSServer(port=port, engine=engine) as second:
            fresh = conn.context(voice=VOICE, output_format=S16_16K)
            async with asyncio.timeout(TIMEOUT):
                await fresh.push(TEXT)
                await fresh.no_more_inputs()
                assert_speech(await audio_of(fresh), S16_16K, TEXT)
            assert second.port == port
            assert conn.stats.connects == 2
    finally:
        await conn.close()


async def test_gives_up_with_a_clear_error_naming_the_url_without_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"ws://127.0.0.1:{free_port()}/tts/websocket"
    policy = ReconnectPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.02)
    conn = TTSConnection(url, api_key=API_KEY, auth="query", reconnect=policy)
    with caplog.at_level(logging.DEBUG, logger="speakwire.transport"), pytest.raises(TTSConnectionError) as info:
        await conn.connect()
    text = _exception_text(info.value)
    assert not isinstance(info.value, AuthenticationError)
    assert f"cannot connect to {url}: gave up after 3 attempts" in str(info.value)
    assert "Connect" in str(info.value) or "refused" in str(info.value).lower()
    _no_key(text, repr(conn), *(r.getMessage() for r in caplog.records))
    # Two waits between three attempts, logged by websockets' loop.
    assert sum("reconnecting" in r.getMessage() for r in caplog.records) == 2
    await conn.close()


# --- late and unknown messages (scripted server) -------------------------------------------


def _tone(seconds: float, rate: int = 16000, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return encode_pcm(0.5 * np.sin(2 * np.pi * freq * t), "pcm_s16le")


def _chunk(context_id: str, audio: bytes) -> str:
    return encode(Chunk(context_id, audio))


async def _scripted(received: list[str]) -> AsyncIterator[str]:
    """A server that answers "a" with one chunk, then after its cancel sends a late chunk and done
    for "a" and a chunk for a context nobody opened, then speaks "b" normally."""

    async def handler(ws: ServerConnection) -> None:
        async for raw in ws:
            assert isinstance(raw, str)
            received.append(raw)
            msg = json.loads(raw)
            cid = msg["context_id"]
            if msg.get("cancel"):
                await ws.send(_chunk(cid, _tone(0.1)))
                await ws.send(encode(Done(cid)))
                await ws.send(_chunk("never-opened", _tone(0.1)))
            elif cid == "a" and msg["transcript"]:
                await ws.send(_chunk("a", _tone(0.25)))
            elif cid == "b" and not msg["continue"]:
                await ws.send(_chunk("b", _tone(0.5)))
                await ws.send(encode(Done("b")))

    async with serve(handler, "127.0.0.1", 0) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/tts/websocket"


async def test_late_and_unknown_messages_are_dropped_and_counted() -> None:
    received: list[str] = []
    gen = _scripted(received)
    url = await anext(gen)
    try:
        async with TTSConnection(url) as conn:
            a = conn.context("a", voice=VOICE, output_format=S16_16K)
            b = conn.context("b", voice=VOICE, output_format=S16_16K)
            await a.push("hello")
            async with asyncio.timeout(TIMEOUT):
                first = await anext(a)
                assert isinstance(first, Chunk) and first.audio == _tone(0.25)
                await a.cancel()
                await b.push("world")
                await b.no_more_inputs()
                b_audio = await audio_of(b)
            assert b_audio == _tone(0.5)  # exactly its own audio, none of a's late chunk
            assert await drain(a) == []
            stats = conn.stats
            assert (stats.late, stats.unknown, stats.dropped, stats.violations) == (2, 1, 3, 0)
        # Exactly the cancel frame the protocol asks for, once.
        assert received.count('{"context_id":"a","cancel":true}') == 1
        assert json.loads(encode(CancelRequest("a"))) == {"context_id": "a", "cancel": True}
        pushes = [json.loads(r) for r in received if '"cancel"' not in r]
        assert [(p["context_id"], p["transcript"], p["continue"]) for p in pushes] == [
            ("a", "hello", True),
            ("b", "world", True),
            ("b", "", False),
        ]
        assert pushes[0]["output_format"] == {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000}
    finally:
        await gen.aclose()


async def test_output_format_default_and_every_push_carries_the_config() -> None:
    received: list[str] = []
    gen = _scripted(received)
    url = await anext(gen)
    try:
        async with TTSConnection(url) as conn:
            ctx = conn.context("b", voice=VOICE, language="en", max_buffer_delay_ms=0, add_timestamps=True)
            await ctx.push("hi ")
            await ctx.no_more_inputs()
            async with asyncio.timeout(TIMEOUT):
                audio = await audio_of(ctx)
        assert audio == _tone(0.5)
        first, close = (json.loads(r) for r in received)
        assert first == {
            "context_id": "b",
            "model_id": "sonic-3",
            "transcript": "hi ",
            "voice": VOICE,
            "language": "en",
            "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 24000},
            "continue": True,
            "add_timestamps": True,
            "max_buffer_delay_ms": 0,
        }
        assert close == {**first, "transcript": "", "continue": False}
    finally:
        await gen.aclose()
