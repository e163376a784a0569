"""How a context's text becomes units over a real socket: a quick first unit, no pause where a sentence was cut."""

from __future__ import annotations

import asyncio
import itertools
import json

import numpy as np

from speakwire.server import TTSServer
from speakwire.server.espeak import EspeakEngine
from tests.server.conftest import ENGINE_RATE, Result, collect, connect, decode, quiet, request


def silences(audio: np.ndarray, rate: int, level: float = 0.01, frame: float = 0.01) -> list[float]:
    """Lengths (s) of the quiet runs between the first and the last loud 10 ms frame."""
    size = round(frame * rate)
    frames = len(audio) // size
    peaks = np.abs(audio[: frames * size]).reshape(frames, size).max(axis=1)
    loud = np.flatnonzero(peaks > level)
    return [(b - a - 1) * frame for a, b in itertools.pairwise(loud) if b - a > 1]


def unit_words(result: Result) -> list[list[str]]:
    """The words of each unit: the server sends one timestamps frame after each unit's audio."""
    return [f["word_timestamps"]["words"] for f in result.of_type("timestamps")]


async def send_tokens(ws: object, context_id: str, tokens: list[str], gap: float) -> None:
    for token in tokens:
        await ws.send(request(context_id, token, cont=True, add_timestamps=True))  # type: ignore[attr-defined]
        await asyncio.sleep(gap)


async def test_first_unit_goes_after_three_complete_words_without_waiting_for_the_window(
    engine: EspeakEngine,
) -> None:
    # A 30 s window: anything spoken before the close was released by the first-unit rule.
    async with TTSServer(port=0, engine=engine, default_max_delay=30.0) as server, connect(server.url) as ws:
        await send_tokens(ws, "f1", ["The", " weather", " in"], 0.02)
        assert await quiet(ws, 0.3) == []  # "in" may still become "inside"
        await ws.send(request("f1", " Lisbon", cont=True, add_timestamps=True))
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert first["type"] == "chunk"
        head = await collect(ws, "f1", until=("timestamps",))
        assert head.frames[-1]["word_timestamps"]["words"] == ["The", "weather", "in"]
        # The rest waits for a boundary: a sentence end here.
        await send_tokens(ws, "f1", [" is", " sunny", ".", " Bring"], 0.02)
        await ws.send(request("f1", " a hat.", cont=False, add_timestamps=True))
        rest = await collect(ws, "f1")
    assert unit_words(rest) == [["Lisbon", "is", "sunny."], ["Bring", "a", "hat."]]
    # "in" ends, "Lisbon" starts: no sentence pause between them (espeak's is 0.3 s).
    in_end = head.frames[-1]["word_timestamps"]["end"][-1]
    lisbon_start = rest.of_type("timestamps")[0]["word_timestamps"]["start"][0]
    assert 0.0 <= lisbon_start - in_end < 0.05


async def test_a_sentence_sent_token_by_token_has_no_gap_where_it_was_cut(server: TTSServer) -> None:
    text = (
        "The weather in Lisbon this weekend looks mostly sunny and warm and it should stay dry"
        " until Sunday evening when the wind turns"
    )
    tokens = [text.split()[0]] + [" " + w for w in text.split()[1:]] + ["."]
    async with connect(server.url) as ws:
        # 60 ms a token: slower than most LLMs, so the 250 ms window cuts the sentence too.
        await send_tokens(ws, "g1", tokens, 0.06)
        await ws.send(request("g1", "", cont=False))
        result = await collect(ws, "g1")
    units = unit_words(result)
    assert units[0] == ["The", "weather", "in"]
    assert len(units) >= 3, units  # the first-unit rule and at least one window cut
    assert [w for unit in units for w in unit] == (text + ".").split()
    audio = decode(result.audio, "pcm_f32le")
    gaps = silences(audio, ENGINE_RATE)
    # Stop closures and word gaps inside a unit are < 0.1 s; a sentence pause at a cut would be 0.3 s.
    assert max(gaps) < 0.15, gaps
    # Only the sentence's real end keeps espeak's end pause.
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    assert (len(audio) - 1 - loud[-1]) / ENGINE_RATE > 0.25


async def test_a_message_with_a_markup_span_is_not_cut_by_the_first_unit_rule(server: TTSServer) -> None:
    text = 'Our callback number is <prosody rate="slow">0 8 0 0</prosody>. Thanks'
    async with connect(server.url) as ws:
        await ws.send(request("m1", text, cont=True, add_timestamps=True))
        await ws.send(request("m1", "", cont=False))
        result = await collect(ws, "m1")
    assert unit_words(result) == [["Our", "callback", "number", "is", "0", "8", "0", "0."], ["Thanks"]]
