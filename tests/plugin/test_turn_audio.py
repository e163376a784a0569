"""TurnAudio: wire audio of one context to pipeline s16, with speed switches at flushes and word timing."""

from __future__ import annotations

import numpy as np
import pytest

from speakwire.dsp.pcm import decode, encode, float_to_s16
from speakwire.errors import AudioFormatError, InvalidSpeedError
from speakwire.plugin import TurnAudio
from speakwire.protocol.messages import ENCODINGS, SAMPLE_RATES


def tone(seconds: float, rate: int, freq: float = 440.0, level: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def feed(audio: TurnAudio, data: bytes, chunk: int) -> bytes:
    out = b"".join(audio.audio(data[i : i + chunk]) for i in range(0, len(data), chunk))
    return out + audio.finish()[0]


def s16(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<i2").astype(np.float64) / 32768.0


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def test_speed_one_is_bit_exact_whatever_the_chunking() -> None:
    x = tone(0.5, 24000)
    expected = float_to_s16(x).astype("<i2").tobytes()
    for chunk in (7, 4000, 10**6):  # odd byte counts split samples across chunks
        assert feed(TurnAudio("pcm_f32le", 24000, 24000, speed=1.0), encode(x, "pcm_f32le"), chunk) == expected


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("wire_rate", SAMPLE_RATES)
def test_every_encoding_and_rate_becomes_pipeline_s16(encoding: str, wire_rate: int) -> None:
    x = tone(0.4, wire_rate, 440.0)
    out = s16(feed(TurnAudio(encoding, wire_rate, 16000, speed=None), encode(x, encoding), 999))
    assert len(out) == round(len(x) * 16000 / wire_rate)
    middle = out[len(out) // 4 : -len(out) // 4]
    assert peak_hz(middle, 16000) == pytest.approx(440.0, abs=5.0)
    # G.711 is ~8 bits: the level survives within a few percent.
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.03)


def test_speed_switches_exactly_at_the_scheduled_flush() -> None:
    rate = 24000
    audio = TurnAudio("pcm_f32le", rate, rate, speed=1.0)
    audio.schedule(1, 2.0)
    first = audio.audio(encode(tone(1.0, rate), "pcm_f32le"))
    audio.flush_done(2)  # not the scheduled one: nothing changes
    assert audio.speed == 1.0
    audio.flush_done(1)
    assert audio.speed == 2.0
    rest = audio.audio(encode(tone(1.0, rate, 300.0), "pcm_f32le"))
    tail, _ = audio.finish()
    total = len(first) + len(rest) + len(tail)
    assert total // 2 == rate + rate // 2  # 1 s at 1x then 1 s at 2x
    out = s16(first + rest + tail)
    # Pitch is kept: the second part is still 300 Hz, only shorter.
    assert peak_hz(out[rate + 2400 :], rate) == pytest.approx(300.0, abs=5.0)


def test_words_are_mapped_through_the_time_map_and_held_until_heard() -> None:
    rate = 24000
    audio = TurnAudio("pcm_f32le", rate, rate, speed=2.0)
    out = audio.audio(encode(tone(1.0, rate), "pcm_f32le"))
    heard = len(out) // 2 / rate
    assert 0.4 < heard <= 0.5
    released = audio.words(["one", "two", "three"], [0.1, 0.6, 0.99])
    # 0.1 s and 0.6 s of input land at 0.05 s and 0.3 s: heard. 0.99 s lands at 0.495 s: not yet.
    assert released == [("one", 0.05), ("two", 0.3)]
    _, rest = audio.finish()
    assert rest == [("three", 0.495)]


def test_discarded_words_are_never_released() -> None:
    audio = TurnAudio("pcm_s16le", 8000, 8000, speed=None)
    assert audio.words(["late"], [0.5]) == []
    assert audio.discard_words() == 1
    assert audio.finish() == (b"", [])


def test_invalid_scheduled_speed_raises_at_once() -> None:
    audio = TurnAudio("pcm_f32le", 24000, 24000, speed=1.0)
    with pytest.raises(InvalidSpeedError, match=r"speed 4\.0 is outside"):
        audio.schedule(1, 4.0)
    with pytest.raises(InvalidSpeedError, match="finite"):
        audio.set_speed(float("inf"))


def test_fast_paths_are_bit_identical_to_decode_then_float_to_s16() -> None:
    """TurnAudio converts f32 itself (fewer copies): same bytes as the reference functions."""
    edges = np.array([0.0, -0.0, 1.0, -1.0, 1.5, -7.0, np.inf, -np.inf, 32767.4 / 32768, 32767.5 / 32768,
                      32766.5 / 32768, -32767.5 / 32768, 0.5 / 32768, 1.5 / 32768, -2.5 / 32768, 3e38], np.float32)
    rng = np.random.default_rng(5)
    x = np.concatenate((edges, rng.uniform(-1.2, 1.2, 4001).astype(np.float32)))
    data = encode(x, "pcm_f32le")
    expected = float_to_s16(decode(data, "pcm_f32le")).astype("<i2").tobytes()
    for chunk in (1, 4, 999, len(data)):
        assert feed(TurnAudio("pcm_f32le", 24000, 24000, speed=None), data, chunk) == expected
    # Stretching at 1.0 is the identity: the same bytes through the stretcher too.
    assert feed(TurnAudio("pcm_f32le", 16000, 16000, speed=1.0), data, 998) == expected


def test_nan_on_the_wire_raises_decodes_error() -> None:
    audio = TurnAudio("pcm_f32le", 24000, 24000, speed=1.0)
    bad = np.array([0.1, np.nan, 0.2], "<f4").tobytes()
    with pytest.raises(AudioFormatError, match=r"samples contain NaN \(1 of 3, first at index 1\)"):
        audio.audio(bad)
