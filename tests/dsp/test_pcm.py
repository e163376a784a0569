"""speakwire.dsp.pcm against the G.711 tables, CPython's audioop (where it still exists) and round trips."""

from __future__ import annotations

import array
import shutil
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from speakwire.dsp import pcm
from speakwire.errors import AudioFormatError, UnsupportedEncodingError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop  # an independent G.711 reference; removed in Python 3.13
    except ImportError:
        audioop = None

needs_audioop = pytest.mark.skipif(audioop is None, reason=f"audioop is gone in Python {sys.version_info[:2]}")

ALL_S16 = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)


# --- names, widths, errors -------------------------------------------------------------------


def test_encodings_and_widths() -> None:
    assert pcm.ENCODINGS == ("pcm_f32le", "pcm_s16le", "pcm_mulaw", "pcm_alaw")
    assert [pcm.bytes_per_sample(e) for e in pcm.ENCODINGS] == [4, 2, 1, 1]


@pytest.mark.parametrize(
    "call",
    [
        lambda: pcm.bytes_per_sample("pcm_s24le"),
        lambda: pcm.encode(np.zeros(4, np.float32), "pcm_s24le"),
        lambda: pcm.decode(b"\x00" * 6, "pcm_s24le"),
        lambda: pcm.silence(3, "pcm_s24le"),
    ],
)
def test_unknown_encoding_names_it_and_the_known_ones(call) -> None:
    with pytest.raises(UnsupportedEncodingError) as info:
        call()
    message = str(info.value)
    assert "'pcm_s24le'" in message
    for known in pcm.ENCODINGS:
        assert known in message
    assert isinstance(info.value, AudioFormatError) and isinstance(info.value, ValueError)


def test_non_string_encoding_is_unsupported() -> None:
    with pytest.raises(UnsupportedEncodingError, match="None"):
        pcm.bytes_per_sample(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("encoding", "nbytes", "trailing"), [("pcm_s16le", 3, 1), ("pcm_f32le", 10, 2)])
def test_partial_sample_is_refused_with_the_count(encoding: str, nbytes: int, trailing: int) -> None:
    with pytest.raises(AudioFormatError) as info:
        pcm.decode(b"\x01" * nbytes, encoding)
    assert f"{nbytes} bytes" in str(info.value)
    assert f"{trailing} trailing" in str(info.value)


@pytest.mark.parametrize("encoding", pcm.ENCODINGS)
def test_nan_raises_and_names_the_index(encoding: str) -> None:
    samples = np.array([0.0, 0.5, np.nan, np.nan], dtype=np.float32)
    with pytest.raises(AudioFormatError, match=r"2 of 4, first at index 2"):
        pcm.encode(samples, encoding)


def test_nan_in_f32_bytes_raises() -> None:
    data = struct.pack("<3f", 0.25, float("nan"), 0.0)
    with pytest.raises(AudioFormatError, match="first at index 1"):
        pcm.decode(data, "pcm_f32le")


@pytest.mark.parametrize("encoding", pcm.ENCODINGS)
def test_integer_samples_are_refused(encoding: str) -> None:
    with pytest.raises(AudioFormatError, match="int16; use s16_to_float"):
        pcm.encode(np.array([1, 2], dtype=np.int16), encoding)
    with pytest.raises(AudioFormatError, match="int64"):
        pcm.encode([0, 1], encoding)


def test_str_is_not_audio() -> None:
    with pytest.raises(TypeError, match="not str"):
        pcm.decode("abcd", "pcm_s16le")  # type: ignore[arg-type]


def test_non_contiguous_buffer_is_refused() -> None:
    view = memoryview(bytes(range(16)))[::2]
    with pytest.raises(AudioFormatError, match="contiguous"):
        pcm.decode(view, "pcm_mulaw")


# --- pcm_s16le ------------------------------------------------------------------------------------


def test_s16_scale_rounding_and_clipping() -> None:
    samples = [0.0, 0.5, -0.5, -1.0, 1.0, 2.0, -2.0, np.inf, -np.inf, 1 / 65536, 3 / 65536, -1 / 65536]
    expected = [0, 16384, -16384, -32768, 32767, 32767, -32768, 32767, -32768, 0, 2, 0]
    assert pcm.encode(np.array(samples), "pcm_s16le") == struct.pack(f"<{len(expected)}h", *expected)
    assert pcm.float_to_s16(samples).tolist() == expected


def test_s16_little_endian_bytes() -> None:
    assert pcm.encode([0.5, -1.0 / 32768], "pcm_s16le") == b"\x00\x40\xff\xff"
    assert pcm.decode(b"\x00\x40\xff\xff", "pcm_s16le").tolist() == [0.5, -1.0 / 32768]


def test_every_s16_value_round_trips_exactly() -> None:
    data = ALL_S16.astype("<i2").tobytes()
    decoded = pcm.decode(data, "pcm_s16le")
    assert decoded.dtype == np.float32
    assert decoded.min() == -1.0 and decoded.max() == 32767 / 32768
    assert pcm.encode(decoded, "pcm_s16le") == data
    assert np.array_equal(pcm.float_to_s16(pcm.s16_to_float(ALL_S16)), ALL_S16)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(0, 300), elements=st.floats(-1, 1, width=32)))
def test_s16_quantisation_error_is_at_most_half_an_lsb(samples: np.ndarray) -> None:
    decoded = pcm.decode(pcm.encode(samples, "pcm_s16le"), "pcm_s16le")
    assert decoded.shape == samples.shape
    clipped = np.minimum(samples.astype(np.float64), 32767 / 32768)
    assert np.all(np.abs(decoded - clipped) <= 0.5 / 32768)


def test_s16_helpers_want_int16() -> None:
    with pytest.raises(AudioFormatError, match="int16"):
        pcm.s16_to_float(np.array([1, 2], dtype=np.int32))
    with pytest.raises(AudioFormatError, match="int16"):
        pcm.s16_to_mulaw(np.array([1.0]))
    with pytest.raises(AudioFormatError, match="uint8"):
        pcm.mulaw_to_s16(np.array([1, 2], dtype=np.int16))


# --- pcm_f32le -----------------------------------------------------------------------------------


def test_f32_bytes_and_clipping() -> None:
    assert pcm.encode([1.0, -0.5], "pcm_f32le") == b"\x00\x00\x80\x3f\x00\x00\x00\xbf"
    assert pcm.encode([3.0, -np.inf], "pcm_f32le") == struct.pack("<2f", 1.0, -1.0)
    assert pcm.decode(struct.pack("<3f", 1.5, -7.0, 0.125), "pcm_f32le").tolist() == [1.0, -1.0, 0.125]


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(0, 300), elements=st.floats(-1, 1, width=32)))
def test_f32_round_trips_bit_exactly(samples: np.ndarray) -> None:
    data = samples.astype("<f4").tobytes()
    assert pcm.encode(samples, "pcm_f32le") == data
    assert pcm.encode(pcm.decode(data, "pcm_f32le"), "pcm_f32le") == data


def test_float64_input_is_accepted() -> None:
    assert pcm.encode(np.array([0.25], dtype=np.float64), "pcm_f32le") == struct.pack("<f", 0.25)


# --- buffers and shapes -------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", pcm.ENCODINGS)
def test_bytes_bytearray_memoryview_decode_alike(encoding: str) -> None:
    data = pcm.encode(np.linspace(-1, 1, 64), encoding)
    expected = pcm.decode(data, encoding)
    for buffer in (bytearray(data), memoryview(data), memoryview(b"xx" + data + b"yy")[2:-2]):
        assert np.array_equal(pcm.decode(buffer, encoding), expected)


def test_typed_memoryview_counts_bytes_not_items() -> None:
    values = array.array("h", [100, -200, 32767])
    decoded = pcm.decode(memoryview(values), "pcm_s16le")
    assert (decoded * 32768).tolist() == [100, -200, 32767]


@pytest.mark.parametrize("encoding", pcm.ENCODINGS)
def test_decoded_array_is_a_writable_copy(encoding: str) -> None:
    data = bytearray(pcm.encode([0.5, -0.25], encoding))
    decoded = pcm.decode(data, encoding)
    decoded[0] = 0.0
    data[:] = bytes(len(data))
    assert decoded[1] != 0.0


def test_empty_input() -> None:
    for encoding in pcm.ENCODINGS:
        assert pcm.encode(np.zeros(0, np.float32), encoding) == b""
        decoded = pcm.decode(b"", encoding)
        assert decoded.dtype == np.float32 and decoded.shape == (0,)


def test_frames_by_channels_encode_interleaved() -> None:
    stereo = np.array([[0.5, -0.5], [0.25, -0.25]], dtype=np.float32)
    assert pcm.encode(stereo, "pcm_s16le") == struct.pack("<4h", 16384, -16384, 8192, -8192)


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [("pcm_f32le", b"\x00" * 12), ("pcm_s16le", b"\x00" * 6), ("pcm_mulaw", b"\xff" * 3), ("pcm_alaw", b"\xd5" * 3)],
)
def test_silence(encoding: str, expected: bytes) -> None:
    assert pcm.silence(3, encoding) == expected
    assert pcm.encode(np.zeros(3), encoding) == expected
    # A-law has no zero code: its silence is the smallest positive level, 8/32768.
    assert np.all(np.abs(pcm.decode(expected, encoding)) <= 8 / 32768)
    with pytest.raises(ValueError, match="-1"):
        pcm.silence(-1, encoding)


# --- G.711 ---------------------------------------------------------------------------------------

# Decoder outputs from the G.711 tables (mu-law Table 2a in 14-bit units x 4; A-law Table 1a in
# 13-bit units x 8), as 16-bit values.
MULAW_REFERENCE = {
    0xFF: 0, 0x7F: 0, 0xFE: 8, 0x7E: -8, 0xF0: 120, 0xEF: 132, 0xDF: 396,
    0x80: 32124, 0x00: -32124, 0x8F: 16764, 0x90: 15996,
}
ALAW_REFERENCE = {
    0xD5: 8, 0x55: -8, 0xD4: 24, 0xC5: 264, 0x45: -264,
    0xAA: 32256, 0x2A: -32256, 0xA5: 16896,
}


def test_mulaw_reference_values() -> None:
    codes = np.array(list(MULAW_REFERENCE), dtype=np.uint8)
    assert pcm.mulaw_to_s16(codes).tolist() == list(MULAW_REFERENCE.values())
    decoded = pcm.decode(codes.tobytes(), "pcm_mulaw")
    assert (decoded * 32768).tolist() == list(MULAW_REFERENCE.values())


def test_alaw_reference_values() -> None:
    codes = np.array(list(ALAW_REFERENCE), dtype=np.uint8)
    assert pcm.alaw_to_s16(codes).tolist() == list(ALAW_REFERENCE.values())
    decoded = pcm.decode(codes.tobytes(), "pcm_alaw")
    assert (decoded * 32768).tolist() == list(ALAW_REFERENCE.values())


def test_g711_encoder_reference_values() -> None:
    # 14-bit mu-law decision levels are 0, 1, 3, 5, ...: s16 3 is still code 0xFF, s16 4 is 0xFE.
    values = np.array([0, -1, 3, 4, 32767, -32768, 16764, -16764], dtype=np.int16)
    assert pcm.s16_to_mulaw(values).tolist() == [0xFF, 0x7F, 0xFF, 0xFE, 0x80, 0x00, 0x8F, 0x0F]
    assert pcm.s16_to_alaw(np.array([0, -1, 15, 16, 32767, -32768], dtype=np.int16)).tolist() == [
        0xD5, 0x55, 0xD5, 0xD4, 0xAA, 0x2A,
    ]


@pytest.mark.parametrize("encoding", ["pcm_mulaw", "pcm_alaw"])
def test_every_code_round_trips_through_float(encoding: str) -> None:
    data = bytes(range(256))
    assert pcm.encode(pcm.decode(data, encoding), encoding) == data


def test_mulaw_negative_zero_keeps_its_sign() -> None:
    assert np.signbit(pcm.decode(b"\x7f\xff", "pcm_mulaw")).tolist() == [True, False]
    assert pcm.encode([-1e-6, 1e-6, -0.0, 0.0], "pcm_mulaw") == b"\x7f\xff\x7f\xff"
    assert pcm.encode([-1e-6, 1e-6], "pcm_alaw") == b"\xd5\xd5"


@pytest.mark.parametrize(
    ("encode_s16", "decode_s16"), [(pcm.s16_to_mulaw, pcm.mulaw_to_s16), (pcm.s16_to_alaw, pcm.alaw_to_s16)]
)
def test_g711_codes_are_sign_symmetric(encode_s16, decode_s16) -> None:
    positive = ALL_S16[ALL_S16 >= 0]
    mirrored = (-positive.astype(np.int32) - 1).astype(np.int16)
    assert np.array_equal(encode_s16(mirrored), encode_s16(positive) ^ 0x80)
    assert np.array_equal(decode_s16(ALL_CODES ^ 0x80), -decode_s16(ALL_CODES))


def _segment_steps(codes: np.ndarray, law: str) -> np.ndarray:
    # Quantisation step (16-bit units) of each code's segment, from the G.711 tables' layout.
    c = codes.astype(np.int32)
    if law == "mu":
        return 8 << ((~c >> 4) & 7)
    return 16 << np.maximum((((c ^ 0x55) & 0x7F) >> 4) - 1, 0)


def test_mulaw_quantisation_error_within_half_a_step() -> None:
    codes = pcm.s16_to_mulaw(ALL_S16)
    error = np.abs(pcm.mulaw_to_s16(codes).astype(np.int32) - ALL_S16)
    in_range = np.abs(ALL_S16.astype(np.int32)) <= 32635  # 8159 in 14-bit units: the top decision level
    assert np.all(error[in_range] <= _segment_steps(codes, "mu")[in_range] // 2)
    assert set(pcm.mulaw_to_s16(codes[~in_range]).tolist()) == {-32124, 32124}


def test_alaw_quantisation_error_within_half_a_step() -> None:
    codes = pcm.s16_to_alaw(ALL_S16)
    error = np.abs(pcm.alaw_to_s16(codes).astype(np.int32) - ALL_S16)
    assert np.all(error <= _segment_steps(codes, "a") // 2)
    assert error.max() == 512


@needs_audioop
def test_g711_decoders_match_audioop() -> None:
    raw = ALL_CODES.tobytes()
    assert np.array_equal(pcm.mulaw_to_s16(ALL_CODES), np.frombuffer(audioop.ulaw2lin(raw, 2), "<i2"))
    assert np.array_equal(pcm.alaw_to_s16(ALL_CODES), np.frombuffer(audioop.alaw2lin(raw, 2), "<i2"))


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed")
@pytest.mark.parametrize(("sox_name", "decode_s16"), [("mu-law", pcm.mulaw_to_s16), ("a-law", pcm.alaw_to_s16)])
def test_g711_decoders_match_sox(sox_name: str, decode_s16) -> None:
    # A second reference that outlives audioop. (sox's encoders round before quantising, so they
    # differ from G.191 at decision edges; only its decoders are a reference.)
    command = ["sox", "-t", "raw", "-e", sox_name, "-b", "8", "-r", "8000", "-c", "1", "-"]
    command += ["-t", "raw", "-e", "signed", "-b", "16", "-L", "-"]
    out = subprocess.run(command, input=ALL_CODES.tobytes(), capture_output=True, check=True, timeout=30).stdout
    assert np.array_equal(decode_s16(ALL_CODES), np.frombuffer(out, "<i2"))


@needs_audioop
def test_g711_encoders_match_audioop() -> None:
    raw = ALL_S16.astype("<i2").tobytes()
    assert pcm.s16_to_alaw(ALL_S16).tobytes() == audioop.lin2alaw(raw, 2)
    ours = pcm.s16_to_mulaw(ALL_S16)
    theirs = np.frombuffer(audioop.lin2ulaw(raw, 2), np.uint8)
    # audioop floor-shifts negatives before negating, G.191 takes the one's complement: the two agree on
    # every non-negative input, and on negatives once audioop's input is moved by 4 (one 14-bit LSB).
    assert np.array_equal(ours[ALL_S16 >= 0], theirs[ALL_S16 >= 0])
    negative = ALL_S16[ALL_S16 < -4]
    shifted = np.frombuffer(audioop.lin2ulaw((negative + 4).astype("<i2").tobytes(), 2), np.uint8)
    assert np.array_equal(pcm.s16_to_mulaw(negative), shifted)
    assert int((ours != theirs).sum()) == 508


# 997 Hz rather than 1 kHz: a tone that divides 8 kHz repeats the same 8 samples, so its quantisation
# error is periodic rather than noise-like and the SNR depends on the phase (34 dB for 1 kHz here).
@pytest.mark.parametrize(("encoding", "min_snr_db"), [("pcm_mulaw", 36.0), ("pcm_alaw", 38.0)])
def test_g711_keeps_a_sine_level_and_snr(encoding: str, min_snr_db: float) -> None:
    rate = 8000
    t = np.arange(rate) / rate
    sine = (0.5 * np.sin(2 * np.pi * 997 * t)).astype(np.float32)
    decoded = pcm.decode(pcm.encode(sine, encoding), encoding).astype(np.float64)
    level_db = 20 * np.log10(np.sqrt(np.mean(decoded**2)) / np.sqrt(np.mean(sine.astype(np.float64) ** 2)))
    snr_db = 10 * np.log10(np.sum(sine.astype(np.float64) ** 2) / np.sum((decoded - sine) ** 2))
    assert abs(level_db) < 0.05
    assert snr_db > min_snr_db
    spectrum = np.abs(np.fft.rfft(decoded))
    assert np.argmax(spectrum) == 997  # 1 s of signal: bin k is k Hz


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(["pcm_mulaw", "pcm_alaw", "pcm_s16le"]))
def test_encode_decode_is_identity_on_bytes(data: bytes, encoding: str) -> None:
    data = data[: len(data) - len(data) % pcm.bytes_per_sample(encoding)]
    assert pcm.encode(pcm.decode(data, encoding), encoding) == data
