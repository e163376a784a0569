"""Barge-in and failures: what reaches the pipeline, what is reported as spoken, and the next turn."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pipecat.frames.frames import (
    InterruptionFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.services.cartesia.tts import GenerationConfig
from pipecat.tests.utils import SleepFrame

from speakwire.plugin import SpeakwireTTSService, TurnSpeedFrame
from speakwire.server import TTSServer
from speakwire.server.espeak import EspeakEngine
from tests.plugin.conftest import RecordingProxy
from tests.plugin.tts_helpers import (
    FAST_RECONNECT,
    RATE,
    SENTENCE_1,
    SENTENCE_2,
    assert_speech,
    audio_of,
    context_ids,
    errors,
    seconds,
    service,
    speak,
    stops,
    turn,
    words_of,
)

LONG = [t for _ in range(6) for t in SENTENCE_2]  # ~18 s of speech


@pytest.fixture
async def server(tts_engine: EspeakEngine):
    async with TTSServer(port=0, engine=tts_engine) as srv:
        yield srv


async def test_interruption_cancels_the_context_and_the_next_turn_speaks(server: TTSServer) -> None:
    partial = [" Zebras", " gallop"]  # a sentence the interruption cuts: never spoken
    frames = [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(t) for t in SENTENCE_1),
        SleepFrame(sleep=0.5),  # the first sentence is heard...
        *(LLMTextFrame(t) for t in [*LONG, *partial]),  # ...more is generated, the last sentence is cut
        # InterruptionFrame is a system frame: it would overtake the tokens still queued.
        SleepFrame(sleep=0.2),
        InterruptionFrame(),
        *turn(SENTENCE_1),
    ]
    async with RecordingProxy(server.url) as proxy:
        down, up = await speak(service(proxy.url), frames)
    assert errors(up) == []
    old, new = context_ids(down)
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    # Nothing of the old context after the interruption; it had started speaking before it.
    assert not [f for f in down[cut:] if isinstance(f, TTSAudioRawFrame) and f.context_id == old]
    assert seconds(audio_of(down[:cut], old)) > 0.5
    # The server was told: exactly the cancel message, as the old context's last message.
    assert proxy.for_context(old)[-1] == {"context_id": old, "cancel": True}
    # Only words whose audio was emitted: a prefix of the text, never the cut sentence.
    old_words = words_of(down, old)
    spoken = "".join(SENTENCE_1 + LONG).split()
    assert len(old_words) >= len("".join(SENTENCE_1).split()) and old_words == spoken[: len(old_words)]
    assert "Zebras" not in words_of(down)
    # The next turn is clean: all its audio and words, in its own context.
    assert_speech(audio_of(down, new), "".join(SENTENCE_1))
    assert words_of(down, new) == "".join(SENTENCE_1).split()


async def test_server_killed_then_restarted(tts_engine: EspeakEngine) -> None:
    server = TTSServer(port=0, engine=tts_engine)
    await server.start()
    port = server.port
    tts = service(server.url)
    restarted: list[TTSServer] = []

    async def outage() -> None:
        await asyncio.sleep(0.6)  # turn 1 is long done
        await server.close()
        await asyncio.sleep(0.8)  # turn 2 runs into the closed port at ~1.0 s
        again = TTSServer(port=port, engine=tts_engine)
        await again.start()
        restarted.append(again)

    task = asyncio.create_task(outage())
    frames = [
        *turn(SENTENCE_1), SleepFrame(sleep=1.0),
        *turn(SENTENCE_2), SleepFrame(sleep=1.0),
        *turn(SENTENCE_1),
    ]
    try:
        down, up = await speak(tts, frames)
    finally:
        await task
        for srv in restarted:
            await srv.close()
    first, last = context_ids(down)
    assert_speech(audio_of(down, first), "".join(SENTENCE_1))
    assert_speech(audio_of(down, last), "".join(SENTENCE_1))
    assert words_of(down, last) == "".join(SENTENCE_1).split()
    # Turn 2 failed loudly, and none of its text is reported as spoken.
    assert errors(up), "no ErrorFrame for the turn spoken while the server was down"
    assert all(e.startswith("TTS error: cannot connect to ws://127.0.0.1:") for e in errors(up)), errors(up)
    assert not set("".join(SENTENCE_2).split()) & set(words_of(down))


async def test_bad_speeds_become_error_frames_and_the_pipeline_goes_on(server: TTSServer) -> None:
    bad_update = TTSUpdateSettingsFrame(
        delta=SpeakwireTTSService.Settings(generation_config=GenerationConfig(speed=9.0))
    )
    reference, _ = await speak(service(server.url), turn(SENTENCE_2))
    tts = service(server.url, speed=1.25)
    down, up = await speak(tts, [TurnSpeedFrame(speed=-1.0), bad_update, *turn(SENTENCE_2)])
    assert errors(up) == [
        "invalid turn speed: speed must be > 0, got -1.0",
        "invalid speed in settings update: speed 9.0 is outside [0.5, 2.0] (default policy)",
    ]
    # Neither changed anything: the turn is spoken at the service's 1.25.
    assert tts.speed == 1.25
    assert seconds(audio_of(down)) == pytest.approx(seconds(audio_of(reference)) / 1.25, rel=0.015)
    assert words_of(down) == "".join(SENTENCE_2).split()


async def test_malformed_markup_is_reported_and_the_rest_is_spoken(server: TTSServer) -> None:
    tokens = ["Hello", " there", ".", ' <prosody rate="warp">', "fast", " words", "</prosody>", " Goodbye", " now", "."]
    down, up = await speak(service(server.url), [*turn(tokens), *turn(SENTENCE_1)])
    assert len(errors(up)) == 1
    assert errors(up)[0].startswith("malformed markup in TTS text: ") and "'warp'" in errors(up)[0], errors(up)
    first, second = context_ids(down)
    # Only the bad tag is dropped (and its stray close, not reported twice): the words are spoken.
    assert words_of(down, first) == ["Hello", "there.", "fast", "words", "Goodbye", "now."]
    assert_speech(audio_of(down, second), "".join(SENTENCE_1))


async def test_unclosed_span_at_the_end_of_a_turn_is_reported(server: TTSServer) -> None:
    tokens = ["Hello", " there", ".", ' <prosody rate="slow">', "never", " closed"]
    down, up = await speak(service(server.url), [*turn(tokens), *turn(SENTENCE_1)])
    [error] = errors(up)
    assert error.startswith("malformed markup in TTS text: ") and "prosody" in error
    first, second = context_ids(down)
    assert words_of(down, first) == ["Hello", "there."]
    assert words_of(down, second) == "".join(SENTENCE_1).split()


async def test_nothing_listening_reports_errors_and_no_spoken_text() -> None:
    tts = service("ws://127.0.0.1:9/tts/websocket")
    down, up = await speak(tts, [*turn(SENTENCE_1), *turn(SENTENCE_2), *turn(SENTENCE_1), *turn(SENTENCE_2)])
    refused = (
        "TTS error: cannot connect to ws://127.0.0.1:9/tts/websocket: gave up after 2 attempts "
        "(ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 9))"
    )
    # One at start, one per turn; each names the URL and the cause, and is reported once.
    assert errors(up) == [refused] * 5
    assert words_of(down) == [] and audio_of(down).size == 0
    # Failed turns are not "silent contexts": the service is not written off and will speak
    # again once the server is back.
    assert tts.is_usable


async def test_server_error_frame_is_reported_and_a_fixed_turn_speaks(server: TTSServer) -> None:
    tts = service(server.url, settings=SpeakwireTTSService.Settings(language="tlh"))
    fix = TTSUpdateSettingsFrame(delta=SpeakwireTTSService.Settings(language="en"))
    down, up = await speak(tts, [*turn(SENTENCE_1), SleepFrame(sleep=0.3), fix, *turn(SENTENCE_1)])
    [error] = errors(up)
    assert error.startswith("TTS server error: context ") and "language 'tlh' is not available" in error
    [spoken] = context_ids(down)
    assert words_of(down) == words_of(down, spoken) == "".join(SENTENCE_1).split()


async def test_interruption_after_a_mid_turn_language_change_cancels_both_contexts(server: TTSServer) -> None:
    change = TTSUpdateSettingsFrame(delta=SpeakwireTTSService.Settings(language="de"))
    frames = [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(t) for t in [*SENTENCE_1, *LONG]),
        change,  # the rest of the turn goes on a German context
        *(LLMTextFrame(t) for t in [*LONG, " Zebras", " gallop"]),
        SleepFrame(sleep=0.2),
        InterruptionFrame(),
        *turn(SENTENCE_1),
    ]
    async with RecordingProxy(server.url) as proxy:
        down, up = await speak(service(proxy.url), frames)
    assert errors(up) == []
    old, new, following = dict.fromkeys(m["context_id"] for m in proxy.sent)
    assert {m["language"] for m in proxy.for_context(new) if "transcript" in m} == {"de"}
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    # Nothing of either context of the interrupted turn after the interruption.
    assert not [f for f in down[cut:] if isinstance(f, TTSAudioRawFrame) and f.context_id in (old, new)]
    # Every context of the turn still generating was cancelled: the new one (18 s of German
    # just pushed), and the old one unless the server had already finished it.
    assert proxy.for_context(new)[-1] == {"context_id": new, "cancel": True}
    first_cancel = next(i for i, (way, _, m) in enumerate(proxy.log) if way == "sent" and m.get("cancel"))
    old_done = ("received", old, "done") in proxy.log[:first_cancel]
    assert old_done or proxy.for_context(old)[-1] == {"context_id": old, "cancel": True}
    # Words only as heard, on the context that spoke them.
    for context_id, text in ((old, SENTENCE_1 + LONG), (new, LONG)):
        heard, spoken = words_of(down, context_id), "".join(text).split()
        assert heard == spoken[: len(heard)]
    assert "Zebras" not in words_of(down)
    assert_speech(audio_of(down, following), "".join(SENTENCE_1))
    assert words_of(down, following) == "".join(SENTENCE_1).split()


class _FlushHeldAtItsPush(SpeakwireTTSService):
    """Holds ``flush_audio`` inside its push of the released markup until the turn's receive task
    has ended (on the server's error for that very push): the interleaving in which the receive
    task finishes first while the input is still open, and ``flush_audio`` resumes second."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.held: str | None = None  # the context held, once
        self.dead_while_held: set[str] = set()
        self._flushing = False

    async def flush_audio(self, context_id: str | None = None) -> None:
        self._flushing = True
        try:
            await super().flush_audio(context_id)
        finally:
            self._flushing = False

    async def _push_pieces(self, turn: Any, pieces: list[Any]) -> None:
        await super()._push_pieces(turn, pieces)
        if self._flushing and pieces and self.held is None and turn.task is not None:
            self.held = turn.ctx.context_id
            await asyncio.wait_for(asyncio.shield(turn.task), 5.0)
            self.dead_while_held = set(self._dead)


async def test_server_error_arriving_while_flush_audio_is_suspended_closes_the_context_once(
    server: TTSServer,
) -> None:
    # "<" may begin a tag, so the parser holds it back: nothing reaches the server before
    # flush_audio releases it, and the server's 422 for the unknown language can only come back
    # while flush_audio is suspended in that push.
    fix = TTSUpdateSettingsFrame(delta=SpeakwireTTSService.Settings(language="en"))
    async with RecordingProxy(server.url) as proxy:
        tts = _FlushHeldAtItsPush(
            url=proxy.url, sample_rate=RATE, reconnect=FAST_RECONNECT,
            settings=SpeakwireTTSService.Settings(language="tlh"),
        )
        down, up = await speak(tts, [*turn(["<"]), SleepFrame(sleep=0.3), fix, *turn(SENTENCE_1)])
    failed = tts.held
    assert failed is not None, "flush_audio never pushed the held text"
    # The race happened: the receive task had ended, with the input still open.
    assert tts.dead_while_held == {failed}
    assert [m["transcript"] for m in proxy.for_context(failed)] == ["<"]
    [error] = errors(up)
    assert error.startswith(f"TTS server error: context {failed!r}: ") and "language 'tlh'" in error, error
    # Its audio context ended exactly once, and nothing of it is left behind.
    assert [f.context_id for f in down if isinstance(f, TTSStoppedFrame)].count(failed) == 1
    assert tts._dead == set() and tts._turns == {}
    # The next turn is clean: its own context, all its audio and words.
    [spoken] = context_ids(down)
    assert spoken != failed
    assert_speech(audio_of(down, spoken), "".join(SENTENCE_1))
    assert words_of(down) == words_of(down, spoken) == "".join(SENTENCE_1).split()
    assert stops(down) == 2


async def test_malformed_chunk_fails_the_turn_and_the_next_turn_speaks(server: TTSServer) -> None:
    async with RecordingProxy(server.url, corrupt_chunk=2) as proxy:
        down, up = await speak(service(proxy.url), [*turn(SENTENCE_2), SleepFrame(sleep=0.3), *turn(SENTENCE_1)])
    failed = proxy.corrupted
    assert failed is not None and len(proxy.chunk_bytes) == 1
    [error] = errors(up)
    assert error.startswith(f"TTS error: context {failed!r}: malformed frame: "), error
    # The transport retired the context and told the server.
    assert proxy.for_context(failed)[-1] == {"context_id": failed, "cancel": True}
    # At most the first chunk's audio was played (f32 on the wire, s16 out), and no word beyond it.
    played = seconds(audio_of(down, failed))
    assert 0.0 < played <= proxy.chunk_bytes[0] / 4 / RATE
    heard = words_of(down, failed)
    assert heard == "".join(SENTENCE_2).split()[: len(heard)] and len(heard) <= 1
    assert [f.context_id for f in down if isinstance(f, TTSStoppedFrame)].count(failed) == 1
    # The next turn is clean.
    following = next(c for c in context_ids(down) if c != failed)
    assert_speech(audio_of(down, following), "".join(SENTENCE_1))
    assert words_of(down, following) == "".join(SENTENCE_1).split()
    assert stops(down) == 2
