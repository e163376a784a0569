"""SpeakwireTTSService under pipecat's run_test, against the real local server over a real socket."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from pipecat.frames.frames import (
    Frame,
    TextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.services.cartesia.tts import GenerationConfig
from pipecat.services.tts_service import TextAggregationMode

from speakwire.errors import InvalidSpeedError, UnsupportedEncodingError, UnsupportedSampleRateError
from speakwire.plugin import CARTESIA_URL, SpeakwireTTSService, TurnSpeedFrame
from speakwire.server import TTSServer
from speakwire.server.espeak import EspeakEngine
from tests.plugin.conftest import RecordingProxy
from tests.plugin.tts_helpers import (
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

TOKENS = SENTENCE_1 + SENTENCE_2
TEXT = "".join(TOKENS)


@pytest.fixture
async def server(tts_engine: EspeakEngine):
    async with TTSServer(port=0, engine=tts_engine) as srv:
        yield srv


async def test_token_stream_is_pushed_token_by_token_and_spoken(server: TTSServer) -> None:
    async with RecordingProxy(server.url) as proxy:
        down, up = await speak(service(proxy.url), turn(TOKENS))
    assert errors(up) == []
    samples = audio_of(down)
    assert_speech(samples, TEXT)
    # Every word, in order, punctuation attached, and one start/stop pair.
    assert words_of(down) == TEXT.split()
    assert sum(isinstance(f, TTSStartedFrame) for f in down) == 1 and stops(down) == 1
    # On the wire: one context, one message per token as it came (whitespace kept), continue
    # true; then the close. Local speed mode asks for float PCM and never sends a speed.
    [cid] = {m["context_id"] for m in proxy.sent}
    sent = proxy.for_context(cid)
    assert [m["transcript"] for m in sent] == [*TOKENS, ""]
    assert [m["continue"] for m in sent] == [True] * len(TOKENS) + [False]
    assert all(m["output_format"] == {"container": "raw", "encoding": "pcm_f32le", "sample_rate": RATE} for m in sent)
    assert all(m["add_timestamps"] is True and "generation_config" not in m for m in sent)
    assert not any(m.get("flush") for m in sent)


async def test_service_wide_speed_shortens_audio_and_rescales_words(server: TTSServer) -> None:
    down_1, _ = await speak(service(server.url), turn(TOKENS))
    down_fast, up = await speak(service(server.url, speed=1.5), turn(TOKENS))
    assert errors(up) == []
    normal, fast = audio_of(down_1), audio_of(down_fast)
    # WSOLA output is round(n / speed) samples; n itself varies by a few ms from run to run
    # (the server's segmentation depends on token timing), hence 1 %.
    assert len(fast) == pytest.approx(len(normal) / 1.5, rel=0.01)
    assert rms(fast) == pytest.approx(rms(normal), rel=0.1)
    assert words_of(down_fast) == TEXT.split()
    # Word times follow the stretched audio: the last word starts 1.5x earlier.
    last_normal = [f.pts for f in down_1 if f.__class__.__name__ == "TTSTextFrame"]
    last_fast = [f.pts for f in down_fast if f.__class__.__name__ == "TTSTextFrame"]
    span_normal = last_normal[-1] - last_normal[0]
    span_fast = last_fast[-1] - last_fast[0]
    assert span_fast == pytest.approx(span_normal / 1.5, rel=0.02)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples))))


async def test_settings_update_mid_stream_changes_speed_from_the_next_text(server: TTSServer) -> None:
    """The audio after the change is shorter by the ratio; the audio before it is untouched."""
    down_first, _ = await speak(service(server.url), turn(SENTENCE_1))
    down_all, _ = await speak(service(server.url), turn(TOKENS))
    first, whole = seconds(audio_of(down_first)), seconds(audio_of(down_all))
    update = TTSUpdateSettingsFrame(delta=SpeakwireTTSService.Settings(generation_config=GenerationConfig(speed=2.0)))
    frames = turn(TOKENS)
    frames.insert(1 + len(SENTENCE_1), update)
    async with RecordingProxy(server.url) as proxy:
        tts = service(proxy.url)
        down, up = await speak(tts, frames)
    assert errors(up) == []
    changed = seconds(audio_of(down))
    assert changed == pytest.approx(first + (whole - first) / 2.0, rel=0.03)
    assert tts.speed == 2.0
    # The switch is an empty flush between the two sentences; no speed goes to the server.
    sent = [m for m in proxy.sent if m["transcript"] or m.get("flush")]
    flushes = [i for i, m in enumerate(sent) if m.get("flush")]
    assert flushes == [len(SENTENCE_1)] and sent[len(SENTENCE_1)]["transcript"] == ""
    assert words_of(down) == TEXT.split()
    # No click at the switch: no sample-to-sample jump larger than the speech itself makes.
    samples = audio_of(down)
    assert np.max(np.abs(np.diff(samples))) < 0.5


async def test_turn_speed_applies_to_one_turn_only(server: TTSServer) -> None:
    down, up = await speak(
        service(server.url, speed=1.25), [TurnSpeedFrame(speed=0.8), *turn(SENTENCE_2), *turn(SENTENCE_2)]
    )
    assert errors(up) == []
    first, second = context_ids(down)
    slow, default = audio_of(down, first), audio_of(down, second)
    # Same text, 0.8x then the service's 1.25x: the ratio of lengths is 1.25 / 0.8.
    assert len(slow) / len(default) == pytest.approx(1.25 / 0.8, rel=0.015)
    assert words_of(down, first) == words_of(down, second) == "".join(SENTENCE_2).split()


async def test_turn_speed_sent_inside_a_turn_applies_to_that_turn(server: TTSServer) -> None:
    reference, _ = await speak(service(server.url), turn(SENTENCE_2))
    frames = turn(SENTENCE_2)
    frames.insert(1, TurnSpeedFrame(speed=2.0))
    down, up = await speak(service(server.url), [*frames, *turn(SENTENCE_2)])
    assert errors(up) == []
    first, second = context_ids(down)
    base = len(audio_of(reference))
    assert len(audio_of(down, first)) == pytest.approx(base / 2.0, rel=0.015)
    assert len(audio_of(down, second)) == pytest.approx(base, rel=0.01)


def marked(rate: str) -> list[str]:
    return ["Call", " us", " at", f' <prosody rate="{rate}">', "0800", " 5834552.", "</prosody>",
            " We", " look", " forward", " to", " it", "."]


async def test_prosody_span_is_stretched_at_its_rate(server: TTSServer) -> None:
    span_only, _ = await speak(service(server.url), turn(["0800", " 5834552."]))
    # "medium" (1.0) is delimited the same way, so the server speaks the same units.
    medium, _ = await speak(service(server.url), turn(marked("medium")))
    async with RecordingProxy(server.url) as proxy:
        down, up = await speak(service(proxy.url), turn(marked("slow")))
    assert errors(up) == []
    d_span, d_medium, d_slow = (seconds(audio_of(x)) for x in (span_only, medium, down))
    # Slow is 0.8x: the span's audio grows by 1/0.8, the rest is unchanged.
    assert d_slow == pytest.approx(d_medium + d_span * (1 / 0.8 - 1), rel=0.02)
    # On the wire: a flush before the span, the span without its tags and with a flush.
    pushes = [(m["transcript"], bool(m.get("flush"))) for m in proxy.sent]
    assert pushes[:7] == [("Call", False), (" us", False), (" at", False), (" ", False), ("", True),
                          ("0800 5834552.", True), (" We", False)]
    assert not any("prosody" in t for t, _ in pushes)
    assert words_of(down) == "Call us at 0800 5834552. We look forward to it.".split()


async def test_native_speed_mode_forwards_the_speed(server: TTSServer) -> None:
    async with RecordingProxy(server.url) as proxy:
        down, up = await speak(
            service(proxy.url, speed=1.5, speed_mode="native", encoding="pcm_s16le"), turn(SENTENCE_2)
        )
    reference, _ = await speak(service(server.url), turn(SENTENCE_2))
    assert errors(up) == []
    assert all(m["generation_config"] == {"speed": 1.5} for m in proxy.sent if m["transcript"])
    assert all(m["output_format"]["encoding"] == "pcm_s16le" for m in proxy.sent)
    # The server stretched it: the length is the local 1.5x within the server's rounding.
    assert seconds(audio_of(down)) == pytest.approx(seconds(audio_of(reference)) / 1.5, rel=0.03)


@pytest.mark.parametrize(
    ("encoding", "wire_rate"),
    [("pcm_f32le", 48000), ("pcm_s16le", 16000), ("pcm_mulaw", 8000), ("pcm_alaw", 44100)],
)
async def test_every_wire_encoding_reaches_the_pipeline_as_s16(
    server: TTSServer, encoding: str, wire_rate: int
) -> None:
    tts = service(server.url, speed_mode="native", encoding=encoding, server_sample_rate=wire_rate)
    down, up = await speak(tts, turn(SENTENCE_2))
    reference, _ = await speak(service(server.url), turn(SENTENCE_2))
    assert errors(up) == []
    samples = audio_of(down)  # checks 24 kHz s16 mono
    assert_speech(samples, "".join(SENTENCE_2))
    # Same speech at another wire rate and encoding: same duration within resampler rounding.
    assert seconds(samples) == pytest.approx(seconds(audio_of(reference)), rel=0.015)


async def test_local_speed_at_another_wire_rate(server: TTSServer) -> None:
    down, up = await speak(service(server.url, speed=0.8, server_sample_rate=8000), turn(SENTENCE_2))
    reference, _ = await speak(service(server.url, server_sample_rate=8000), turn(SENTENCE_2))
    assert errors(up) == []
    assert seconds(audio_of(down)) == pytest.approx(seconds(audio_of(reference)) / 0.8, rel=0.015)


async def test_embedded_default_runs_its_own_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CARTESIA_API_KEY", raising=False)
    tts = SpeakwireTTSService(sample_rate=RATE)
    assert tts.embedded and tts.url is None
    down, up = await speak(tts, turn(SENTENCE_1))
    assert errors(up) == []
    assert_speech(audio_of(down), "".join(SENTENCE_1))
    assert words_of(down) == "".join(SENTENCE_1).split()


def test_api_key_targets_cartesia_and_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CARTESIA_API_KEY", raising=False)
    key = "sk-secret-0123456789"
    tts = SpeakwireTTSService(api_key=key)
    assert not tts.embedded and tts.url == CARTESIA_URL
    assert key not in repr(tts) and key not in str(tts)
    monkeypatch.setenv("CARTESIA_API_KEY", key)
    assert not SpeakwireTTSService().embedded


def test_constructor_rejects_bad_configuration() -> None:
    with pytest.raises(InvalidSpeedError, match=r"speed 3\.0 is outside \[0\.5, 2\.0\]"):
        SpeakwireTTSService(url="ws://127.0.0.1:1/tts/websocket", speed=3.0)
    with pytest.raises(InvalidSpeedError, match="finite"):
        SpeakwireTTSService(
            url="ws://127.0.0.1:1/tts/websocket",
            settings=SpeakwireTTSService.Settings(generation_config=GenerationConfig(speed=float("nan"))),
        )
    with pytest.raises(UnsupportedEncodingError, match="pcm_s24le"):
        SpeakwireTTSService(url="ws://127.0.0.1:1/tts/websocket", encoding="pcm_s24le")
    with pytest.raises(UnsupportedSampleRateError, match="12345"):
        SpeakwireTTSService(url="ws://127.0.0.1:1/tts/websocket", server_sample_rate=12345)


async def test_speak_frame_and_sentence_mode(server: TTSServer) -> None:
    async with RecordingProxy(server.url) as proxy:
        tts = service(proxy.url, text_aggregation_mode=TextAggregationMode.SENTENCE)
        down, up = await speak(tts, [TTSSpeakFrame("Good morning to you."), *turn(TOKENS)])
    assert errors(up) == []
    first, second = context_ids(down)
    assert words_of(down, first) == ["Good", "morning", "to", "you."]
    assert words_of(down, second) == TEXT.split()
    # Sentence mode pushes whole sentences (pipecat's aggregation), still continue: true.
    texts = [m["transcript"] for m in proxy.for_context(second) if m["transcript"]]
    assert [t.strip() for t in texts] == ["Hello there, my friend.", "The weather is lovely and warm today."]
    assert all(m["max_buffer_delay_ms"] == 0 for m in proxy.sent)


async def test_native_speed_change_mid_stream_is_forwarded_from_the_next_push(server: TTSServer) -> None:
    update = TTSUpdateSettingsFrame(delta=SpeakwireTTSService.Settings(generation_config=GenerationConfig(speed=1.0)))
    frames = turn(TOKENS)
    frames.insert(1 + len(SENTENCE_1), update)
    async with RecordingProxy(server.url) as proxy:
        down, up = await speak(service(proxy.url, speed=1.5, speed_mode="native"), frames)
    assert errors(up) == []
    speeds = [m["generation_config"]["speed"] for m in proxy.sent if m["transcript"]]
    # Back to 1.0 is sent explicitly: a push without generation_config would keep 1.5.
    assert speeds == [1.5] * len(SENTENCE_1) + [1.0] * len(SENTENCE_2)
    assert words_of(down) == TEXT.split()


async def test_text_outside_a_reply_is_spoken_and_closed_at_once(server: TTSServer) -> None:
    async with asyncio.timeout(10):  # an unclosed context would stall on pipecat's 3 s timeouts
        down, up = await speak(service(server.url), [TextFrame("Good morning."), *turn(SENTENCE_1)])
    assert errors(up) == []
    first, second = context_ids(down)
    assert words_of(down, first) == ["Good", "morning."]
    assert words_of(down, second) == "".join(SENTENCE_1).split()
    assert stops(down) == 2


def switched(tokens_before: list[str], tokens_after: list[str], *extra: object) -> list[Frame]:
    """One turn whose language changes to German between two token runs (``extra`` frames go
    right before the change)."""
    frames = turn(tokens_before + tokens_after)
    change = TTSUpdateSettingsFrame(delta=SpeakwireTTSService.Settings(language="de"))
    frames[1 + len(tokens_before) : 1 + len(tokens_before)] = [*extra, change]  # type: ignore[list-item]
    return frames


async def test_language_change_mid_turn_finishes_the_context_and_opens_a_new_one(server: TTSServer) -> None:
    english, _ = await speak(service(server.url), turn(SENTENCE_1))
    english_2, _ = await speak(service(server.url), turn(SENTENCE_2))
    german, _ = await speak(service(server.url, settings=SpeakwireTTSService.Settings(language="de")),
                            turn(SENTENCE_2))
    async with RecordingProxy(server.url) as proxy:
        down, up = await speak(service(proxy.url), switched(SENTENCE_1, SENTENCE_2))
    assert errors(up) == []
    # On the wire: the first context gets the first sentence and is closed with continue: false
    # before the second context (German) gets a single token; both keep their own settings.
    first, second = dict.fromkeys(m["context_id"] for m in proxy.sent)
    sent_1, sent_2 = proxy.for_context(first), proxy.for_context(second)
    assert [(m["transcript"], m["continue"]) for m in sent_1] == [*((t, True) for t in SENTENCE_1), ("", False)]
    assert [(m["transcript"], m["continue"]) for m in sent_2] == [*((t, True) for t in SENTENCE_2), ("", False)]
    assert {m["language"] for m in sent_1} == {"en"} and {m["language"] for m in sent_2} == {"de"}
    assert proxy.sent.index(sent_1[-1]) < proxy.sent.index(sent_2[0])
    # In pipecat: two audio contexts in order, each with its own start/stop pair (as pipecat's
    # CartesiaTTSService does), the first one's audio entirely before the second's.
    assert context_ids(down) == [first, second]
    kinds = [(type(f).__name__, f.context_id) for f in down
             if isinstance(f, (TTSStartedFrame, TTSStoppedFrame, TTSAudioRawFrame))]
    runs = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    assert runs == [("TTSStartedFrame", first), ("TTSAudioRawFrame", first), ("TTSStoppedFrame", first),
                    ("TTSStartedFrame", second), ("TTSAudioRawFrame", second), ("TTSStoppedFrame", second)]
    # Each part is the speech of its sentence in its language: the same length as that sentence
    # spoken alone in that language (espeak's German voice is ~6 % slower on this sentence, more
    # than the 2 % tolerance: the English voice would fail).
    assert seconds(audio_of(german)) > 1.04 * seconds(audio_of(english_2))
    part_1, part_2 = audio_of(down, first), audio_of(down, second)
    assert_speech(part_1, "".join(SENTENCE_1)) and assert_speech(part_2, "".join(SENTENCE_2))
    assert seconds(part_1) == pytest.approx(seconds(audio_of(english)), rel=0.02)
    assert seconds(part_2) == pytest.approx(seconds(audio_of(german)), rel=0.02)
    # Every word of the turn, each reported on the context that spoke it.
    assert words_of(down, first) == "".join(SENTENCE_1).split()
    assert words_of(down, second) == "".join(SENTENCE_2).split()


async def test_turn_speed_carries_over_a_mid_turn_language_change(server: TTSServer) -> None:
    english, _ = await speak(service(server.url), turn(SENTENCE_1))
    german, _ = await speak(service(server.url, settings=SpeakwireTTSService.Settings(language="de")),
                            turn(SENTENCE_2))
    frames = switched(SENTENCE_1, SENTENCE_2)
    frames.insert(1, TurnSpeedFrame(speed=2.0))
    down, up = await speak(service(server.url, speed=1.25), [*frames, *turn(SENTENCE_1)])
    assert errors(up) == []
    first, second, third = context_ids(down)
    # Both contexts of the turn at the turn's 2.0, not the service's 1.25; the next turn (still
    # German: the change is service-wide) back at 1.25.
    assert len(audio_of(down, first)) == pytest.approx(len(audio_of(english)) / 2.0, rel=0.015)
    assert len(audio_of(down, second)) == pytest.approx(len(audio_of(german)) / 2.0, rel=0.015)
    assert words_of(down, second) == "".join(SENTENCE_2).split()
    assert words_of(down, third) == "".join(SENTENCE_1).split()


async def test_span_open_at_a_language_change_is_spoken_whole_on_the_new_context(server: TTSServer) -> None:
    tokens = marked("slow")
    async with RecordingProxy(server.url) as proxy:
        down, up = await speak(service(proxy.url), switched(tokens[:5], tokens[5:]))
    assert errors(up) == []
    first, second = context_ids(down)
    pushes = [[(m["transcript"], bool(m.get("flush")), m["continue"]) for m in proxy.for_context(c)]
              for c in (first, second)]
    # The text before the tag stays on the first context; the span, held by the parser until it
    # closes, goes whole (with its flush) to the second, first thing: no speed flush is needed there.
    assert pushes[0] == [("Call", False, True), (" us", False, True), (" at", False, True), (" ", False, True),
                         ("", False, False)]
    assert pushes[1][:2] == [("0800 5834552.", True, True), (" We", False, True)]
    assert pushes[1][-1] == ("", False, False)
    # Words only where heard: nothing of the span on the first context. pipecat's sequencer filed
    # the span's first token ("0800") under the first context, so the second cannot report it.
    assert words_of(down, first) == ["Call", "us", "at"]
    assert words_of(down, second) == "5834552. We look forward to it.".split()
