"""TTSConnection against a misbehaving or heavy server: malformed frames, large frames, queued
bytes, and an API key that URL-encoding changes. A small scripted websockets server on 127.0.0.1
stands in where the real one cannot be made to misbehave; the key test uses the real server."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from urllib.parse import quote, quote_plus

import pytest
from websockets.asyncio.server import ServerConnection, serve

from speakwire.errors import ProtocolError
from speakwire.protocol import Chunk, Done, encode
from speakwire.protocol.context import ContextState
from speakwire.server import TTSServer
from speakwire.server.espeak import EspeakEngine
from speakwire.transport import TTSConnection
from speakwire.transport.websocket import DEFAULT_MAX_MESSAGE_BYTES

from .conftest import S16_16K, TIMEOUT, VOICE, drain

Script = Callable[[ServerConnection, dict[str, object]], Awaitable[None]]


@asynccontextmanager
async def _scripted(script: Script, received: list[dict[str, object]]) -> AsyncIterator[str]:
    """A server that records every request and answers a push with ``script``."""

    async def handler(ws: ServerConnection) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            received.append(msg)
            if not msg.get("cancel") and msg.get("transcript"):
                await script(ws, msg)

    async with serve(handler, "127.0.0.1", 0, max_size=None) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/tts/websocket"


def _raw_chunk(context_id: str, data: str) -> str:
    return json.dumps({"type": "chunk", "context_id": context_id, "data": data, "done": False, "status_code": 206})


def _audio(n: int, seed: int) -> bytes:
    return bytes((i * 7 + seed) % 256 for i in range(n))


async def _turn(conn: TTSConnection) -> tuple[list[bytes], ProtocolError | None, object]:
    ctx = conn.context(voice=VOICE, output_format=S16_16K)
    await ctx.push("hi")
    got: list[bytes] = []
    error = None
    try:
        async with asyncio.timeout(TIMEOUT):
            async for event in ctx:
                assert isinstance(event, Chunk)
                got.append(event.audio)
    except ProtocolError as exc:
        error = exc
    return got, error, ctx


async def test_a_malformed_chunk_fails_the_turn_cancels_it_and_frees_its_slot() -> None:
    good = _audio(3200, 1)

    async def script(ws: ServerConnection, msg: dict[str, object]) -> None:
        cid = str(msg["context_id"])
        await ws.send(encode(Chunk(cid, good)))
        await ws.send(_raw_chunk(cid, "!!!!"))  # not base64

    received: list[dict[str, object]] = []
    async with _scripted(script, received) as url, TTSConnection(url, max_contexts=2) as conn:
        ids = []
        # More turns than slots: a context a bad frame ended must not keep its slot.
        for _ in range(5):
            got, error, ctx = await _turn(conn)
            assert got == [good]  # what came before the bad frame is still delivered
            assert error is not None and error.context_id == ctx.context_id  # type: ignore[attr-defined]
            assert str(error) == f"context {ctx.context_id!r}: malformed frame: data is not valid base64"
            assert ctx.state is ContextState.CANCELLED  # type: ignore[attr-defined]
            assert len(conn._registry) == 0
            ids.append(ctx.context_id)  # type: ignore[attr-defined]
        async with asyncio.timeout(TIMEOUT):
            while sum(1 for m in received if m.get("cancel")) < 5:
                await asyncio.sleep(0.01)
        assert conn.stats.malformed == 5
    # The server was told to stop generating each one, exactly once.
    assert [m for m in received if m.get("cancel")] == [{"context_id": cid, "cancel": True} for cid in ids]


async def test_a_malformed_frame_over_64_kib_fails_its_context_loudly() -> None:
    before, big, after = _audio(3000, 2), _audio(300_000, 3), _audio(3000, 4)

    async def script(ws: ServerConnection, msg: dict[str, object]) -> None:
        cid = str(msg["context_id"])
        await ws.send(encode(Chunk(cid, before)))
        await ws.send(encode(Chunk(cid, big)))  # a valid 400 KB frame is delivered whole
        await ws.send(_raw_chunk(cid, "A" * 100_000 + "!!!!"))
        await ws.send(encode(Chunk(cid, after)))
        await ws.send(encode(Done(cid)))

    received: list[dict[str, object]] = []
    async with _scripted(script, received) as url, TTSConnection(url) as conn:
        got, error, ctx = await _turn(conn)
        assert got == [before, big]
        assert error is not None and "malformed frame: data is not valid base64" in str(error)
        assert ctx.state is ContextState.CANCELLED  # type: ignore[attr-defined]
        async with asyncio.timeout(TIMEOUT):
            while conn.stats.late < 2:  # the chunk after and the done
                await asyncio.sleep(0.01)
        assert (conn.stats.malformed, conn.stats.late) == (1, 2)


async def test_the_inbox_is_bounded_by_queued_audio_bytes_and_loses_nothing() -> None:
    pieces = [_audio(100_000, seed) for seed in range(10)]

    async def script(ws: ServerConnection, msg: dict[str, object]) -> None:
        cid = str(msg["context_id"])
        for piece in pieces:
            await ws.send(encode(Chunk(cid, piece)))
        await ws.send(encode(Done(cid)))

    assert DEFAULT_MAX_MESSAGE_BYTES == 1024 * 1024
    received: list[dict[str, object]] = []
    async with _scripted(script, received) as url, TTSConnection(url, queue_bytes=250_000) as conn:
        assert conn.max_message_bytes == 1024 * 1024 and conn.queue_size == 256
        ctx = conn.context(voice=VOICE, output_format=S16_16K)
        await ctx.push("hi")
        await ctx.no_more_inputs()
        async with asyncio.timeout(TIMEOUT):
            while conn.stats.backpressure_waits == 0:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        # Three 100 KB chunks reach 250 KB; the fourth waits in the reader, far below 256 events.
        assert ctx._inbox.queued_bytes == 300_000 and conn.stats.backpressure_waits == 1
        events = await drain(ctx)
        assert [e.audio for e in events if isinstance(e, Chunk)] == pieces
        assert ctx._inbox.queued_bytes == 0 and conn.stats.dropped == 0


def test_byte_bounds_are_validated() -> None:
    with pytest.raises(ValueError, match="queue_bytes must be an int >= 1, got 0"):
        TTSConnection("ws://127.0.0.1:1/tts/websocket", queue_bytes=0)
    with pytest.raises(ValueError, match="max_message_bytes must be an int >= 1, got -1"):
        TTSConnection("ws://127.0.0.1:1/tts/websocket", max_message_bytes=-1)


async def test_a_key_that_url_encoding_changes_never_reaches_the_logs(
    engine: EspeakEngine, caplog: pytest.LogCaptureFixture
) -> None:
    key = "sk_live/Abc+Def=="
    forms = {key, quote(key), quote(key, safe=""), quote_plus(key)}
    assert len(forms) == 3  # the raw key and two different encodings
    with caplog.at_level(logging.DEBUG, logger="speakwire.transport"):
        async with (
            TTSServer(port=0, engine=engine, api_key=key) as srv,
            TTSConnection(srv.url, api_key=key, auth="query") as conn,
        ):
            try:
                raise ValueError(f"could not reach {srv.url}?api_key={quote_plus(key)}")
            except ValueError:
                conn._log.exception("reader failed")
    messages = [r.getMessage() for r in caplog.records]
    assert any("api_key=***" in m and m.startswith("> GET") for m in messages), messages[:10]
    failed = [m for m in messages if m.startswith("reader failed")]
    assert len(failed) == 1 and "ValueError: could not reach" in failed[0] and "api_key=***" in failed[0]
    assert all(r.exc_info is None for r in caplog.records if r.getMessage().startswith("reader failed"))
    for form in forms:
        assert not any(form in m for m in messages), form
