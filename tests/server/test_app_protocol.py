"""Protocol behaviour over a real socket with a raw websockets client: streaming, flush, done, cancel."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np

from speakwire.server import TTSServer
from tests.server.conftest import (
    ENGINE_RATE,
    assert_speech,
    assert_timestamps,
    collect,
    collect_many,
    connect,
    decode,
    quiet,
    request,
)

SENTENCE = "Hello, world! I'm generating audio on speakwire."


async def test_one_request_streams_chunks_then_exactly_one_done(server: TTSServer) -> None:
    async with connect(server.url) as ws:
        await ws.send(request("c1", SENTENCE, add_timestamps=True))
        result = await collect(ws, "c1")
        assert await quiet(ws) == []  # nothing after done
    chunks = result.of_type("chunk")
    assert len(chunks) >= 3  # streamed, not one blob
    assert result.types.count("done") == 1 and result.types[-1] == "done"
    assert result.frames[-1] == {"type": "done", "context_id": "c1", "done": True, "status_code": 206}
    for chunk in chunks:
        assert chunk["done"] is False and chunk["status_code"] == 206
        assert "flush_id" not in chunk  # no flush was asked for
        assert isinstance(chunk["step_time"], float | int) and chunk["step_time"] >= 0
        assert len(chunk["data"]) % 4 == 0
    audio = decode(result.audio, "pcm_f32le")
    duration = assert_speech(audio, ENGINE_RATE, SENTENCE)
    assert_timestamps(result, duration)
    # Punctuation stays on its word (pipecat matches words back to its text).
    assert result.words == ["Hello,", "world!", "I'm", "generating", "audio", "on", "speakwire."]
    # Timestamps arrive after the audio they describe, before done.
    assert result.types.index("timestamps") > result.types.index("chunk")


async def test_continued_tokens_start_speaking_before_the_input_ends(server: TTSServer) -> None:
    tokens = ["Sure", ",", " I", " can", " help", " with", " that", " right", " away", ".", " First", ","]
    tokens += [" open", " the", " settings", " page", " and", " look", " around", "."]
    async with connect(server.url) as ws:
        for token in tokens:
            await ws.send(request("t1", token, cont=True, add_timestamps=True))
            await asyncio.sleep(0.02)
        # The first sentence is out before the turn ends: no need to wait for continue false.
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert first["type"] == "chunk" and first["context_id"] == "t1"
        await ws.send(request("t1", "", cont=False))
        result = await collect(ws, "t1")
    text = "".join(tokens)
    audio = decode(result.audio, "pcm_f32le")
    duration = assert_speech(np.concatenate([decode(first_chunk(first), "pcm_f32le"), audio]), ENGINE_RATE, text)
    assert result.types.count("done") == 1 and result.types[-1] == "done"
    assert result.words == text.split()
    assert_timestamps(result, duration)


def first_chunk(frame: dict[str, object]) -> bytes:
    return base64.b64decode(str(frame["data"]))


async def test_without_punctuation_the_buffer_delay_releases_complete_words(server: TTSServer) -> None:
    async with connect(server.url) as ws:
        sent = time.perf_counter()
        # Two words, one of them complete: too few for the first-unit rule (three complete words).
        await ws.send(request("d1", "no punctuation", cont=True, max_buffer_delay_ms=100))
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        waited = time.perf_counter() - sent
        assert first["type"] == "chunk"
        # Released by the 100 ms window, not by the end of input (which never came).
        assert 0.09 <= waited < 1.0
        await ws.send(request("d1", "", cont=False))
        result = await collect(ws, "d1")
    # "punctuation" was held back as a possibly unfinished word and spoken at the close.
    assert result.types[-1] == "done"


async def test_without_max_buffer_delay_the_default_window_is_a_quarter_second(server: TTSServer) -> None:
    # pipecat's token mode leaves max_buffer_delay_ms out; Cartesia's 3 s default would be 3 s of
    # dead air whenever the LLM writes no punctuation.
    async with connect(server.url) as ws:
        sent = time.perf_counter()
        await ws.send(request("w1", "tokens without", cont=True))
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        waited = time.perf_counter() - sent
        await ws.send(request("w1", "", cont=False))
        await collect(ws, "w1")
    assert first["type"] == "chunk"
    assert 0.24 <= waited < 1.0


async def test_zero_buffer_delay_speaks_each_push_at_once(server: TTSServer) -> None:
    async with connect(server.url) as ws:
        await ws.send(request("z1", "No full stop here", cont=True, max_buffer_delay_ms=0))
        first = json.loads(await asyncio.wait_for(ws.recv(), 2))
        assert first["type"] == "chunk"
        await ws.send(request("z1", "", cont=False))
        await collect(ws, "z1")


async def test_flush_ids_count_from_one_and_flush_done_follows_the_audio(server: TTSServer) -> None:
    async with connect(server.url) as ws:
        # Before any flush: chunks carry no flush_id (SDK 2.x would crash on one).
        await ws.send(request("f1", "Before any flush.", cont=True, max_buffer_delay_ms=0))
        before = await collect(ws, "f1", until=("chunk",))
        await asyncio.sleep(0.2)
        await ws.send(request("f1", "First flush.", cont=True, flush=True))
        first = await collect(ws, "f1", until=("flush_done",))
        await ws.send(request("f1", "Second flush.", cont=True, flush=True))
        second = await collect(ws, "f1", until=("flush_done",))
        await ws.send(request("f1", "", cont=True, flush=True))  # an empty flush still answers
        third = await collect(ws, "f1", until=("flush_done",))
        await ws.send(request("f1", "The end.", cont=False))
        last = await collect(ws, "f1")
    assert "flush_id" not in before.frames[0]
    assert first.frames[-1] == {
        "type": "flush_done",
        "context_id": "f1",
        "done": False,
        "flush_done": True,
        "flush_id": 1,
        "status_code": 206,
    }
    assert second.frames[-1]["flush_id"] == 2 and third.frames[-1]["flush_id"] == 3
    assert third.types == ["flush_done"]
    # Audio for the flushed text arrives before its flush_done, tagged with the flush id.
    assert {c.get("flush_id") for c in second.of_type("chunk")} == {2}
    assert_speech(decode(second.audio, "pcm_f32le"), ENGINE_RATE, "Second flush.")
    assert {c["flush_id"] for c in last.of_type("chunk")} == {3}
    assert last.types.count("done") == 1 and last.types[-1] == "done"


async def test_cancel_stops_the_context_at_once_and_spares_the_others(server: TTSServer) -> None:
    # ~40 sentences, ~150 s of 48 kHz float audio (~40 MB of frames): far more than the socket
    # buffers hold, so the server is still generating when the cancel lands.
    victim_text = " ".join(f"Sentence number {i} is here to keep the engine and the socket busy." for i in range(40))
    async with connect(server.url, max_queue=4) as ws:
        await ws.send(request("victim", victim_text, cont=True, encoding="pcm_f32le", rate=48000))
        await collect(ws, "victim", until=("chunk",))
        await ws.send(json.dumps({"context_id": "victim", "cancel": True}))
        await ws.send(request("bystander", "I will finish my sentence.", add_timestamps=True))
        results = await collect_many(ws, {"bystander"})
        # A late push for the cancelled context is ignored, not answered.
        await ws.send(request("victim", "More text.", cont=False))
        after = await quiet(ws, 0.5)
    assert after == []
    bystander = results["bystander"]
    assert bystander.types.count("done") == 1 and bystander.types[-1] == "done"
    assert_speech(decode(bystander.audio, "pcm_f32le"), ENGINE_RATE, "I will finish my sentence.")


async def test_after_cancel_only_frames_already_in_flight_arrive(server: TTSServer) -> None:
    victim_text = " ".join(f"Sentence number {i} is here to keep the engine and the socket busy." for i in range(40))
    async with connect(server.url, max_queue=4) as ws:
        await ws.send(request("victim", victim_text, cont=True, encoding="pcm_f32le", rate=48000))
        await collect(ws, "victim", until=("chunk",))
        await ws.send(json.dumps({"context_id": "victim", "cancel": True}))
        late = [f for f in await quiet(ws, 1.0) if f.get("context_id") == "victim"]
    seconds = sum(len(base64.b64decode(f["data"])) for f in late if f["type"] == "chunk") / 4 / 48000
    # The whole text is ~150 s; what arrives is bounded by the socket buffers, and no done ever.
    assert seconds < 10, seconds
    assert "done" not in [f["type"] for f in late]


async def test_many_contexts_on_one_connection_all_finish(server: TTSServer) -> None:
    ids = {f"ctx-{i}" for i in range(10)}
    async with connect(server.url) as ws:
        for cid in sorted(ids):
            await ws.send(request(cid, f"Context {cid[-1]} says hello.", add_timestamps=True))
        results = await collect_many(ws, ids)
    for cid, result in results.items():
        assert result.types.count("done") == 1 and result.types[-1] == "done", cid
        duration = assert_speech(decode(result.audio, "pcm_f32le"), ENGINE_RATE, "Context x says hello.")
        assert_timestamps(result, duration)


async def test_sdk2_empty_close_does_not_reconfigure_the_context(server: TTSServer) -> None:
    async with connect(server.url) as ws:
        await ws.send(request("legacy", "Sixteen bit audio.", cont=True, encoding="pcm_s16le", rate=16000))
        close = json.loads(request("legacy", "", cont=False, encoding="pcm_f32le", rate=44100))
        close["voice"] = {"mode": "embedding", "embedding": [0.0] * 192}
        close.update(stream=True, duration=None, use_original_timestamps=None)
        await ws.send(json.dumps(close))
        result = await collect(ws, "legacy")
    assert result.types[-1] == "done"
    samples = decode(result.audio, "pcm_s16le")
    assert_speech(samples, 16000, "Sixteen bit audio.")


async def test_a_push_after_the_input_closed_is_a_409_for_that_context(server: TTSServer) -> None:
    async with connect(server.url) as ws:
        await ws.send(request("closed", "One.", cont=False))
        await ws.send(request("closed", "Two.", cont=True))
        result = await collect(ws, "closed", until=("error",))
    assert result.frames[-1]["status_code"] == 409
