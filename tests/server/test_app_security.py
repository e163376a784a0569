"""Hostile clients over a real socket: a path as ``language``, web pages, silence floods, many connections."""

from __future__ import annotations

import asyncio
import json
import socket

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from speakwire.server import ServerLimits, TTSServer
from speakwire.server.auth import normalize_origin
from speakwire.server.espeak import EspeakEngine
from tests.server.conftest import ENGINE_RATE, assert_speech, collect, decode, request
from tests.server.test_app_errors import assert_error_frame, still_works

KEY = "sk-origin-test-3c4d5e"
PAGE = "http://127.0.0.1:5173"


async def first_frame(url: str, payload: str, within: float = 5.0) -> dict[str, object]:
    async with connect(url) as ws:
        await ws.send(payload)
        return json.loads(await asyncio.wait_for(ws.recv(), within))  # type: ignore[no-any-return]


# 1. language is a language code, never a path espeak would open.


async def test_a_path_as_language_is_a_422_and_other_connections_keep_speaking(server: TTSServer) -> None:
    # espeak read /dev/zero as a voice file forever, on the worker every context shares.
    evil = request("evil", "Hello there.", language="../../../../../../../../../../dev/zero")
    attacker = asyncio.create_task(first_frame(server.url, evil))
    frame = await first_frame(server.url, request("ok", "Hello there.", encoding="pcm_s16le"), within=3.0)
    assert frame["type"] == "chunk" and frame["context_id"] == "ok"
    assert_error_frame(await attacker, 422, "evil", "language '../../", "not a language code")


@pytest.mark.parametrize(
    "language",
    ["/dev/zero", "en/../../etc/passwd", "..", "en.us", "en\\us", "en+f3", "en us", "e", "x" * 200, "\u017fv", "é"],
)
async def test_anything_but_a_language_code_is_refused_naming_the_field(server: TTSServer, language: str) -> None:
    async with connect(server.url) as ws:
        await ws.send(request("bad", "Hello.", language=language))
        result = await collect(ws, "bad")
        assert result.types == ["error"]
        assert_error_frame(result.frames[0], 422, "bad", "language", "not a language code")
        # A later push's language is checked too (it cannot change the voice, but is not waved through).
        await ws.send(request("later", "Fine so far.", cont=True))
        await ws.send(request("later", "Then.", language="../x"))
        assert_error_frame((await collect(ws, "later")).frames[-1], 422, "later", "language '../x'")
        await still_works(ws)


@pytest.mark.parametrize("language", ["en_US", "EN-gb", "pt-BR", "es-419"])
async def test_language_codes_in_any_spelling_still_speak(server: TTSServer, language: str) -> None:
    async with connect(server.url) as ws:
        await ws.send(request("lang", "Good morning.", language=language))
        result = await collect(ws, "lang")
    assert result.types[-1] == "done", result.frames[-1]
    assert_speech(decode(result.audio, "pcm_f32le"), ENGINE_RATE, "Good morning.")


# 2. Web pages (handshakes with an Origin header) are refused unless allowed.


async def test_a_web_page_is_refused_with_403_by_default(server: TTSServer) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(server.url, origin="https://evil.example"):  # type: ignore[arg-type]
            pass
    assert info.value.response.status_code == 403
    assert server.allowed_origins == ()
    # Clients that are not browsers send no Origin, and are served.
    frame = await first_frame(server.url, request("plain", "Hello."))
    assert frame["type"] == "chunk"


async def test_an_allowed_page_connects_with_access_token_and_others_are_refused(engine: EspeakEngine) -> None:
    async with TTSServer(port=0, engine=engine, api_key=KEY, allowed_origins=[PAGE + "/"]) as server:
        assert server.allowed_origins == (PAGE,)
        # What a browser page does (protocol.md): the key as ?access_token=, its Origin header.
        async with connect(server.url + f"?access_token={KEY}", origin=PAGE) as ws:  # type: ignore[arg-type]
            await ws.send(request("page", "Hello from the page."))
            result = await collect(ws, "page")
        assert_speech(decode(result.audio, "pcm_f32le"), ENGINE_RATE, "Hello from the page.")
        # The allowed page still needs the key...
        with pytest.raises(InvalidStatus) as info:
            async with connect(server.url, origin=PAGE):  # type: ignore[arg-type]
                pass
        assert info.value.response.status_code == 401
        # ...and the key does not let another page in, nor the same host on another port.
        for other in ("https://evil.example", "http://127.0.0.1:5174", "null"):
            with pytest.raises(InvalidStatus) as info:
                async with connect(server.url + f"?access_token={KEY}", origin=other):  # type: ignore[arg-type]
                    pass
            assert info.value.response.status_code == 403, other


def test_allowed_origins_are_normalised_and_checked() -> None:
    assert normalize_origin("HTTPS://App.Example.com:443/") == "https://app.example.com"
    assert normalize_origin("http://[::1]:3000") == "http://[::1]:3000"
    assert normalize_origin("http://localhost:80") == "http://localhost"
    for bad in ("null", "*", "app.example.com", "https://a.example/path", "ftp://a.example", "https://u:p@a.example",
                "http://a.example:99999"):
        with pytest.raises(ValueError, match="scheme://host"):
            normalize_origin(bad)
    with pytest.raises(ValueError, match="scheme://host"):
        TTSServer(port=0, allowed_origins=["https://a.example/app"])
    assert TTSServer(port=0, allowed_origins="https://a.example").allowed_origins == ("https://a.example",)


# 3. <break> silence is bounded per message and per context.


async def test_a_flood_of_breaks_is_a_413_before_any_audio(server: TTSServer) -> None:
    # 20 KB asking for 10,000 s: was 700 MB of silence on the wire in 3 s.
    async with connect(server.url, max_size=None) as ws:
        await ws.send(request("flood", '<break time="10s"/>' * 1000))
        result = await collect(ws, "flood")
        assert result.types == ["error"]
        assert_error_frame(result.frames[0], 413, "flood", "10000 s", "30 s", "max_break_seconds_per_push")
        await still_works(ws)


async def test_break_silence_limits_per_message_and_per_context(engine: EspeakEngine) -> None:
    limits = ServerLimits(max_break_seconds_per_push=1.0, max_break_seconds_per_context=2.5)
    async with TTSServer(port=0, engine=engine, limits=limits) as server, connect(server.url) as ws:
        await ws.send(request("over", '<break time="100ms"/>' * 11))
        assert_error_frame((await collect(ws, "over")).frames[0], 413, "over", "1.1 s", "max_break_seconds_per_push")
        # Exactly at the limit (ten 0.1 s that do not add up to 1.0 in binary): 1 s of digital silence.
        await ws.send(request("exact", '<break time="100ms"/>' * 10))
        exact = await collect(ws, "exact")
        assert exact.types[-1] == "done"
        silence = decode(exact.audio, "pcm_f32le")
        assert len(silence) == ENGINE_RATE and not silence.any()
        # Per context: 1 s + 1 s is fine, a third push taking it to 2.6 s is not.
        await ws.send(request("ctx", 'One <break time="1s"/>', cont=True))
        await ws.send(request("ctx", 'two <break time="1s"/>', cont=True))
        await ws.send(request("ctx", 'three <break time="600ms"/>', cont=True))
        ctx = await collect(ws, "ctx")
        assert ctx.types[-1] == "error"
        assert_error_frame(ctx.frames[-1], 413, "ctx", "2.6 s", "2.5 s", "max_break_seconds_per_context")
        await still_works(ws)


def test_limits_reject_nonsense() -> None:
    for bad in ({"max_connections": 0}, {"max_break_seconds_per_push": 0}, {"max_break_seconds_per_context": np.inf},
                {"max_break_seconds_per_push": float("nan")}, {"max_break_seconds_per_push": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ServerLimits(**bad)  # type: ignore[arg-type]


# 4. A failed start closes the engine the server made, and only that one.


async def test_a_failed_start_closes_the_engine_it_made(engine: EspeakEngine) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = TTSServer("127.0.0.1", port)
        own = server.engine
        with pytest.raises(OSError):
            await server.start()
        assert own.closed  # type: ignore[attr-defined]
        await server.close()
        # An engine passed in belongs to the caller: it stays open.
        with pytest.raises(OSError):
            await TTSServer("127.0.0.1", port, engine=engine).start()
        assert not engine.closed
    assert engine.synthesize("Still open.").duration > 0.3


# 5. The number of connections is bounded.


async def test_connections_beyond_the_limit_get_503_and_a_freed_slot_is_reused(engine: EspeakEngine) -> None:
    async with TTSServer(port=0, engine=engine, limits=ServerLimits(max_connections=2)) as server:
        # Refused handshakes (a bad origin, after process_request; a bad path, before) take no slot.
        for _ in range(3):
            with pytest.raises(InvalidStatus):
                async with connect(server.url, origin="https://evil.example"):  # type: ignore[arg-type]
                    pass
            with pytest.raises(InvalidStatus):
                async with connect(server.base_url + "/nope"):
                    pass
        first = await connect(server.url)
        second = await connect(server.url)
        with pytest.raises(InvalidStatus) as info:
            async with connect(server.url):
                pass
        response = info.value.response
        assert response.status_code == 503
        assert b"at most 2 connections" in response.body and response.headers["Retry-After"] == "1"
        # The open ones are served as usual.
        await second.send(request("two", "Second connection."))
        assert (await collect(second, "two")).types[-1] == "done"
        await first.close()
        # The server notices the close a moment later; then the slot is free again.
        async with asyncio.timeout(5):
            while True:
                try:
                    third = await connect(server.url)
                    break
                except InvalidStatus as exc:
                    assert exc.response.status_code == 503
                    await asyncio.sleep(0.02)
        await third.send(request("three", "Third connection."))
        result = await collect(third, "three")
        assert_speech(decode(result.audio, "pcm_f32le"), ENGINE_RATE, "Third connection.")
        await third.close()
        await second.close()
