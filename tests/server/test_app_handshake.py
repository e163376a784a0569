"""The handshake: path, the four ways to present an API key, version headers, and no key in logs."""

from __future__ import annotations

import logging
from urllib.parse import quote

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from speakwire.server import TTSServer
from speakwire.server.auth import RedactingLogger, admit, presented_keys
from speakwire.server.espeak import EspeakEngine
from tests.server.conftest import ENGINE_RATE, assert_speech, collect, decode, request

KEY = "sk-test-Zq8v1w2x3y4"


async def test_other_paths_get_404_at_the_handshake(server: TTSServer) -> None:
    for path in ("/", "/tts", "/tts/websocketx", "/api/tts/websocket"):
        with pytest.raises(InvalidStatus) as info:
            async with connect(server.base_url + path):
                pass
        assert info.value.response.status_code == 404
        assert b"/tts/websocket" in info.value.response.body


async def test_without_a_key_anything_is_accepted(server: TTSServer) -> None:
    headers = {"X-API-Key": "whatever", "Cartesia-Version": "1999-01-01"}
    async with connect(server.url + "?api_key=x&cartesia_version=nonsense", additional_headers=headers) as ws:
        await ws.send(request("c1", "Hi there."))
        result = await collect(ws, "c1")
    assert result.types[-1] == "done"
    assert_speech(decode(result.audio, "pcm_f32le"), ENGINE_RATE, "Hi there.")


@pytest.mark.parametrize(
    ("suffix", "headers"),
    [
        ("", {"Authorization": f"Bearer {KEY}", "cartesia-version": "2026-08-14"}),
        ("", {"X-API-Key": KEY, "Cartesia-Version": "2026-03-01"}),
        (f"?api_key={KEY}&cartesia_version=2024-11-13", {}),
        (f"?access_token={KEY}", {}),
        # The version header twice, different casing and dates: tolerated.
        ("", [("X-API-Key", KEY), ("Cartesia-Version", "2024-06-10"), ("cartesia-version", "2031-01-01")]),
    ],
    ids=["bearer", "x-api-key", "query-api_key", "query-access_token", "version-twice"],
)
async def test_each_way_of_presenting_the_key_is_accepted(
    engine: EspeakEngine, suffix: str, headers: dict[str, str] | list[tuple[str, str]]
) -> None:
    async with TTSServer(port=0, engine=engine, api_key=KEY) as server:
        async with connect(server.url + suffix, additional_headers=headers) as ws:
            await ws.send(request("c1", "Hello there."))
            result = await collect(ws, "c1")
    assert result.types[0] == "chunk"
    assert result.types[-1] == "done"
    assert_speech(decode(result.audio, "pcm_f32le"), ENGINE_RATE, "Hello there.")


@pytest.mark.parametrize(
    ("suffix", "headers"),
    [
        ("", {}),
        ("", {"X-API-Key": KEY + "x"}),
        ("", {"Authorization": f"Basic {KEY}"}),
        ("", {"Authorization": "Bearer "}),
        ("?api_key=", {}),
        (f"?apikey={KEY}", {}),
        ("", {"X-API-Key": KEY[:-1]}),
    ],
    ids=["none", "wrong", "basic-scheme", "empty-bearer", "empty-query", "misspelt-param", "prefix"],
)
async def test_anything_else_is_refused_with_401(
    engine: EspeakEngine, suffix: str, headers: dict[str, str]
) -> None:
    async with TTSServer(port=0, engine=engine, api_key=KEY) as server:
        with pytest.raises(InvalidStatus) as info:
            async with connect(server.url + suffix, additional_headers=headers):
                pass
    response = info.value.response
    assert response.status_code == 401
    assert KEY.encode() not in response.body
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_404_comes_before_auth(engine: EspeakEngine) -> None:
    async with TTSServer(port=0, engine=engine, api_key=KEY) as server:
        with pytest.raises(InvalidStatus) as info:
            async with connect(server.base_url + "/nope"):
                pass
    assert info.value.response.status_code == 404


async def test_the_key_never_reaches_logs_or_reprs(engine: EspeakEngine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with TTSServer(port=0, engine=engine, api_key=KEY) as server:
        assert KEY not in repr(server)
        async with connect(server.url + f"?api_key={KEY}", additional_headers={"X-API-Key": KEY}) as ws:
            await ws.send(request("c1", "Hi."))
            await collect(ws, "c1")
        with pytest.raises(InvalidStatus):
            async with connect(server.url + f"?api_key={KEY}x"):
                pass
    # The client's own websockets logger shows the key it sent; the server's records must not.
    server_log = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("speakwire"))
    # The handshake was logged at debug level (so the test looks where the key would leak)...
    assert "GET /tts/websocket?api_key=***" in server_log
    assert "X-API-Key: ***" in server_log
    # ...with the key scrubbed everywhere.
    assert KEY not in server_log


def test_admit_is_a_pure_function() -> None:
    assert admit("/tts/websocket", [], None).status == 101
    assert admit("/tts/websocket/", [], None).status == 101
    assert admit("/tts/websocket?x=1", [], "k").status == 401
    assert admit("/tts/websocket?access_token=k", [], "k").admitted
    assert admit("/other?access_token=k", [], "k").status == 404
    assert presented_keys([("x-api-key", " a "), ("AUTHORIZATION", "bearer b")], "api_key=c&access_token=d") == [
        "a",
        "b",
        "c",
        "d",
    ]


async def test_a_key_with_url_special_characters_works_and_is_scrubbed_encoded_too(
    engine: EspeakEngine, caplog: pytest.LogCaptureFixture
) -> None:
    key = "k+ey/with=odd&chars"
    caplog.set_level(logging.DEBUG)
    async with TTSServer(port=0, engine=engine, api_key=key) as server:
        async with connect(server.url + "?api_key=" + quote(key, safe="")) as ws:
            await ws.send(request("c1", "Odd key."))
            result = await collect(ws, "c1")
    assert result.types[-1] == "done"
    server_log = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("speakwire"))
    assert "api_key=***" in server_log
    assert key not in server_log and quote(key, safe="") not in server_log


def test_redacting_logger_scrubs_messages_arguments_and_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    log = RedactingLogger(logging.getLogger("speakwire.test"), "s3cret")
    caplog.set_level(logging.DEBUG, logger="speakwire.test")
    log.debug("header %s: %s", "X-API-Key", "s3cret")
    try:
        raise ValueError("bad key s3cret")
    except ValueError:
        log.error("failed", exc_info=True)
    assert [r.getMessage() for r in caplog.records] == ["header X-API-Key: ***", "failed: ValueError: bad key ***"]
    assert all(r.exc_info is None for r in caplog.records)
