"""The audio itself: every encoding at every rate, speed, volume, breaks, prosody spans, timestamps."""

from __future__ import annotations

import pytest

from speakwire.server import TTSServer
from tests.server.conftest import (
    BYTES_PER_SAMPLE,
    ENGINE_RATE,
    Result,
    assert_speech,
    assert_timestamps,
    collect,
    connect,
    decode,
    median_f0,
    request,
    rms,
    spectrum_similarity,
)

TEXT = "The quick brown fox jumps over the lazy dog."
RATES = [8000, 16000, 22050, 24000, 44100, 48000]


async def speak(server: TTSServer, text: str = TEXT, **kwargs: object) -> Result:
    async with connect(server.url) as ws:
        await ws.send(request("a", text, **kwargs))  # type: ignore[arg-type]
        result = await collect(ws, "a")
    assert result.types[-1] == "done", result.frames[-1]
    return result


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("encoding", list(BYTES_PER_SAMPLE))
async def test_every_encoding_at_every_rate(server: TTSServer, encoding: str, rate: int) -> None:
    ref = await speak(server, encoding="pcm_f32le", rate=ENGINE_RATE)
    ref_audio = decode(ref.audio, "pcm_f32le")
    result = await speak(server, encoding=encoding, rate=rate)
    width = BYTES_PER_SAMPLE[encoding]
    for chunk in result.of_type("chunk"):
        assert len(__import__("base64").b64decode(chunk["data"])) % width == 0  # whole samples only
    audio = decode(result.audio, encoding)
    assert len(result.audio) == len(audio) * width
    # Same speech, resampled: same duration (espeak itself drifts a few ms between calls).
    assert abs(len(audio) / rate - len(ref_audio) / ENGINE_RATE) < 0.03
    assert_speech(audio, rate, TEXT)
    # Same spectrum: audio with a wrong rate label would have it scaled by rate / 22050.
    assert spectrum_similarity(audio, rate, ref_audio, ENGINE_RATE) > 0.95
    assert median_f0(audio, rate) == pytest.approx(median_f0(ref_audio, ENGINE_RATE), rel=0.05)
    assert rms(audio) == pytest.approx(rms(ref_audio), rel=0.15)


async def test_speed_shortens_the_audio_keeps_the_pitch_and_rescales_timestamps(server: TTSServer) -> None:
    normal = await speak(server, add_timestamps=True)
    fast = await speak(server, add_timestamps=True, generation_config={"speed": 1.5})
    slow = await speak(server, add_timestamps=True, generation_config={"speed": 0.6})
    a, f, s = (decode(r.audio, "pcm_f32le") for r in (normal, fast, slow))
    assert len(f) / len(a) == pytest.approx(1 / 1.5, rel=0.05)
    assert len(s) / len(a) == pytest.approx(1 / 0.6, rel=0.05)
    # Pitch preserved (resampling to change speed would move it by the speed factor).
    assert median_f0(f, ENGINE_RATE) == pytest.approx(median_f0(a, ENGINE_RATE), rel=0.08)
    assert median_f0(s, ENGINE_RATE) == pytest.approx(median_f0(a, ENGINE_RATE), rel=0.08)
    for result, audio in ((normal, a), (fast, f), (slow, s)):
        assert_timestamps(result, len(audio) / ENGINE_RATE)
        assert result.words == TEXT.split()
    assert fast.starts[-1] == pytest.approx(normal.starts[-1] / 1.5, rel=0.06)
    assert slow.starts[-1] == pytest.approx(normal.starts[-1] / 0.6, rel=0.06)


async def test_our_speed_range_goes_beyond_cartesias(server: TTSServer) -> None:
    normal = decode((await speak(server)).audio, "pcm_f32le")
    double = decode((await speak(server, generation_config={"speed": 2.0})).audio, "pcm_f32le")
    assert len(double) / len(normal) == pytest.approx(0.5, rel=0.05)


async def test_experimental_controls_speed(server: TTSServer) -> None:
    voice = {"mode": "id", "id": "v", "__experimental_controls": {"speed": "fastest", "emotion": ["curiosity"]}}
    normal = decode((await speak(server)).audio, "pcm_f32le")
    fastest = decode((await speak(server, voice=voice)).audio, "pcm_f32le")
    assert len(fastest) / len(normal) == pytest.approx(0.5, rel=0.05)  # "fastest" is 2x


async def test_volume_is_a_clip_safe_gain(server: TTSServer) -> None:
    normal = decode((await speak(server)).audio, "pcm_f32le")
    quiet = decode((await speak(server, generation_config={"volume": 0.5})).audio, "pcm_f32le")
    loud = decode((await speak(server, generation_config={"volume": 2.0})).audio, "pcm_f32le")
    assert rms(quiet) / rms(normal) == pytest.approx(0.5, rel=0.05)
    assert 1.5 < rms(loud) / rms(normal) <= 2.05
    assert max(abs(loud)) <= 1.0


async def test_a_push_generation_config_replaces_the_default_for_its_text(server: TTSServer) -> None:
    # Seed 000: two pushes on one context, the second faster.
    first, second = "I am speaking at a normal pace. ", "But now I am speaking much faster!"
    async with connect(server.url) as ws:
        await ws.send(request("s", first, cont=True, add_timestamps=True))
        await ws.send(request("s", second, cont=True, add_timestamps=True, generation_config={"speed": 1.5}))
        await ws.send(request("s", "", cont=False))
        both = await collect(ws, "s")
    plain = await speak(server, first + second, add_timestamps=True)
    n_both, n_plain = len(decode(both.audio, "pcm_f32le")), len(decode(plain.audio, "pcm_f32le"))
    # Only the second sentence is faster: between all-normal and all-fast.
    assert n_plain / 1.5 < n_both < n_plain * 0.95
    assert both.words == (first + second).split()
    assert_timestamps(both, n_both / ENGINE_RATE)


async def test_break_tags_become_exact_silence(server: TTSServer) -> None:
    plain = decode((await speak(server, "Before the pause. After it.")).audio, "pcm_f32le")
    paused = decode((await speak(server, 'Before the pause. <break time="1s"/> After it.')).audio, "pcm_f32le")
    assert (len(paused) - len(plain)) / ENGINE_RATE == pytest.approx(1.0, abs=0.06)
    # One run of at least a second of digital silence.
    silent = paused == 0.0
    longest = run = 0
    for value in silent:
        run = run + 1 if value else 0
        longest = max(longest, run)
    assert longest >= ENGINE_RATE


async def test_prosody_spans_and_speed_tags_change_the_speed_of_their_text(server: TTSServer) -> None:
    digits = "zero eight hundred five eight three four five five two"
    plain = decode((await speak(server, f"Call {digits}.")).audio, "pcm_f32le")
    # A span is its own engine job: compare with the same split at rate 1 ("medium").
    medium = decode((await speak(server, f'Call <prosody rate="medium">{digits}.</prosody>')).audio, "pcm_f32le")
    slow = decode((await speak(server, f'Call <prosody rate="slow">{digits}.</prosody>')).audio, "pcm_f32le")
    tagged = decode((await speak(server, f'<speed ratio="1.5"/>Call {digits}.')).audio, "pcm_f32le")
    # Only the digits (most of the audio) run at 0.8: a bit less than 1 / 0.8 overall.
    assert 1.12 < len(slow) / len(medium) < 1.0 / 0.8 + 0.02
    assert len(tagged) / len(plain) == pytest.approx(1 / 1.5, rel=0.06)


async def test_markup_never_reaches_the_timestamps(server: TTSServer) -> None:
    result = await speak(server, 'Say <emotion value="happy"/>hello <volume ratio="1.2"/>there, friend.',
                         add_timestamps=True)
    assert result.words == ["Say", "hello", "there,", "friend."]


async def test_phoneme_timestamps_when_asked(server: TTSServer) -> None:
    result = await speak(server, "Hello there.", add_phoneme_timestamps=True)
    assert result.of_type("timestamps") == []  # words only when asked for
    frames = result.of_type("phoneme_timestamps")
    assert frames
    stamps = frames[0]["phoneme_timestamps"]
    duration = len(decode(result.audio, "pcm_f32le")) / ENGINE_RATE
    assert len(stamps["phonemes"]) >= 6 and all(isinstance(p, str) and p for p in stamps["phonemes"])
    assert stamps["start"] == sorted(stamps["start"])
    assert all(0 <= s <= e <= duration + 0.05 for s, e in zip(stamps["start"], stamps["end"], strict=True))


async def test_a_prosody_span_keeps_words_and_punctuation_together(server: TTSServer) -> None:
    text = 'Call <prosody rate="slow">0800 5834552</prosody>. Thanks.'
    result = await speak(server, text, add_timestamps=True)
    assert result.words == ["Call", "0800", "5834552.", "Thanks."]
    assert_timestamps(result, len(decode(result.audio, "pcm_f32le")) / ENGINE_RATE)


async def test_language_selects_the_espeak_voice(server: TTSServer) -> None:
    from speakwire.server.espeak import EspeakEngine

    text = "Guten Tag, wie geht es Ihnen heute?"
    german = await speak(server, text, language="de", add_timestamps=True)
    english = await speak(server, text, language="en")
    audio = decode(german.audio, "pcm_f32le")
    duration = assert_speech(audio, ENGINE_RATE, text)
    assert_timestamps(german, duration)
    with EspeakEngine("de") as de, EspeakEngine("en-us") as en:
        de_ref, en_ref = de.synthesize(text).duration, en.synthesize(text).duration
    # German and English espeak read this text at clearly different lengths; each matches its voice.
    assert abs(de_ref - en_ref) > 0.1
    assert duration == pytest.approx(de_ref, abs=0.05)
    assert len(decode(english.audio, "pcm_f32le")) / ENGINE_RATE == pytest.approx(en_ref, abs=0.05)


async def test_an_unknown_language_is_a_422_for_its_context(server: TTSServer) -> None:
    async with connect(server.url) as ws:
        await ws.send(request("xx", "Hello.", language="xx"))
        result = await collect(ws, "xx")
    assert result.types == ["error"]
    assert result.frames[0]["status_code"] == 422
    assert "language" in result.frames[0]["message"]
