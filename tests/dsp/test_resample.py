"""speakwire.dsp.resample: chunking independence, exact lengths, content, latency."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from speakwire.dsp.resample import QUALITIES, SUPPORTED_RATES, StreamResampler, resample
from speakwire.errors import AudioFormatError, UnsupportedSampleRateError

PAIRS = list(itertools.permutations(SUPPORTED_RATES, 2))


def noise(n: int, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def run_chunked(resampler: StreamResampler, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    out, pos = [], 0
    for size in sizes:
        out.append(resampler.process(x[pos : pos + size]))
        pos += size
    out.append(resampler.process(x[pos:]))
    out.append(resampler.flush())
    return np.concatenate(out)


# --- construction and errors ----------------------------------------------------------------------


def test_supported_rates() -> None:
    assert SUPPORTED_RATES == (8000, 16000, 22050, 24000, 44100, 48000)
    assert QUALITIES == ("LQ", "MQ", "HQ", "VHQ")


@pytest.mark.parametrize("rate", [0, 11025, 32000, 96000, -8000, 16000.5, True, "16000", None])
def test_unsupported_rate_is_named(rate: object) -> None:
    with pytest.raises(UnsupportedSampleRateError) as info:
        StreamResampler(rate, 16000)  # type: ignore[arg-type]
    assert repr(rate) in str(info.value) and "8000, 16000, 22050, 24000, 44100, 48000" in str(info.value)
    with pytest.raises(UnsupportedSampleRateError, match="output sample rate"):
        resample(np.zeros(4, np.float32), 16000, rate)  # type: ignore[arg-type]


def test_float_rate_equal_to_a_supported_one_is_accepted() -> None:
    assert StreamResampler(16000.0, 8000).in_rate == 16000  # type: ignore[arg-type]


@pytest.mark.parametrize("quality", ["QQ", "hq", "best", None])
def test_unknown_quality(quality: object) -> None:
    with pytest.raises(AudioFormatError, match="quality"):
        StreamResampler(16000, 8000, quality)  # type: ignore[arg-type]


def test_input_must_be_mono_float() -> None:
    r = StreamResampler(16000, 8000)
    with pytest.raises(AudioFormatError, match=r"shape \(4, 2\)"):
        r.process(np.zeros((4, 2), np.float32))
    with pytest.raises(AudioFormatError, match="int16"):
        r.process(np.zeros(4, np.int16))
    assert r.consumed == 0


# --- passthrough ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", SUPPORTED_RATES)
def test_same_rate_is_a_passthrough(rate: int) -> None:
    r = StreamResampler(rate, rate)
    x = noise(1000)
    assert r.passthrough
    y = r.process(x)
    assert y.dtype == np.float32 and np.array_equal(y, x) and y is not x
    assert r.latency == 0.0
    assert r.flush().size == 0
    assert np.array_equal(resample(x.astype(np.float64), rate, rate), x)


# --- chunking independence ------------------------------------------------------------------------


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_output_is_identical_for_any_chunking(in_rate: int, out_rate: int) -> None:
    n = int(0.3 * in_rate)
    x = noise(n, seed=in_rate + out_rate)
    whole = resample(x, in_rate, out_rate)
    assert whole.dtype == np.float32 and whole.size == round(n * out_rate / in_rate)
    one_sample = run_chunked(StreamResampler(in_rate, out_rate), x, [1] * n)
    twenty_ms = run_chunked(StreamResampler(in_rate, out_rate), x, [in_rate // 50] * (n // (in_rate // 50)))
    sizes = np.random.default_rng(n).integers(0, 2000, size=n // 500).tolist()
    random_sizes = run_chunked(StreamResampler(in_rate, out_rate), x, sizes)
    for chunked in (one_sample, twenty_ms, random_sizes):
        assert np.array_equal(chunked, whole)


@settings(max_examples=60, deadline=None)
@given(
    pair=st.sampled_from(PAIRS),
    quality=st.sampled_from(QUALITIES),
    n=st.integers(0, 6000),
    sizes=st.lists(st.integers(0, 1500), max_size=40),
    seed=st.integers(0, 2**16),
)
def test_chunking_independence_property(
    pair: tuple[int, int], quality: str, n: int, sizes: list[int], seed: int
) -> None:
    in_rate, out_rate = pair
    x = noise(n, seed)
    whole = resample(x, in_rate, out_rate, quality)  # type: ignore[arg-type]
    chunked = run_chunked(StreamResampler(in_rate, out_rate, quality), x, sizes)  # type: ignore[arg-type]
    assert np.array_equal(chunked, whole)
    assert whole.size == (2 * n * out_rate + in_rate) // (2 * in_rate)


def test_matches_soxr_one_shot() -> None:
    x = noise(24000, seed=7)
    assert np.array_equal(resample(x, 24000, 16000), soxr.resample(x, 24000, 16000, quality="HQ"))


# --- lengths ------------------------------------------------------------------------------------


@pytest.mark.parametrize("quality", QUALITIES)
def test_total_length_rule_is_round_half_up(quality: str) -> None:
    for in_rate, out_rate in PAIRS:
        r = StreamResampler(in_rate, out_rate, quality)  # type: ignore[arg-type]
        for n in (0, 1, 2, 3, 5, 37, 441, 1001):
            y = run_chunked(r, noise(n), [])
            assert y.size == (2 * n * out_rate + in_rate) // (2 * in_rate) == r.expected_length(n)


def test_lq_exact_half_that_soxr_rounds_down_is_padded() -> None:
    # 34720 * 22050 / 48000 = 15949.5 exactly; libsoxr's LQ stream yields 15949 samples.
    x = noise(34720, seed=3)
    raw = soxr.resample(x, 48000, 22050, quality="LQ")
    ours = resample(x, 48000, 22050, "LQ")
    assert raw.size == 15949 and ours.size == 15950
    assert np.array_equal(ours[:-1], raw) and ours[-1] == 0.0


def test_one_input_sample() -> None:
    assert resample(np.ones(1, np.float32), 8000, 48000).size == 6
    assert resample(np.ones(1, np.float32), 48000, 8000).size == 0  # 1/6 rounds to 0


def test_flush_starts_a_new_stream_and_reset_drops_pending() -> None:
    x = noise(4800, seed=11)
    r = StreamResampler(24000, 16000)
    first = run_chunked(r, x, [480] * 10)
    assert r.consumed == r.produced == 0
    assert np.array_equal(run_chunked(r, x, [1000, 1000]), first)
    r.process(noise(3000, seed=12))
    assert r.latency > 0
    r.reset()
    assert r.consumed == 0 and r.latency == 0
    assert np.array_equal(run_chunked(r, x, []), first)


def test_empty_chunks_change_nothing() -> None:
    r = StreamResampler(44100, 16000)
    assert r.process(np.zeros(0, np.float32)).size == 0
    assert r.flush().size == 0


# --- content ------------------------------------------------------------------------------------


def _peak_frequency(y: np.ndarray, rate: int) -> float:
    window = np.hanning(y.size)
    spectrum = np.abs(np.fft.rfft(y * window))
    k = int(np.argmax(spectrum))
    # Parabolic interpolation on the log magnitude: sub-bin accuracy for a windowed sine.
    a, b, c = np.log(spectrum[k - 1 : k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / y.size


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_sine_keeps_frequency_and_level(in_rate: int, out_rate: int) -> None:
    t = np.arange(in_rate) / in_rate  # 1 s
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    y = run_chunked(StreamResampler(in_rate, out_rate), x, [in_rate // 50] * 49)
    assert y.size == out_rate
    middle = y[out_rate // 10 : -out_rate // 10].astype(np.float64)  # skip the filter's edge transients
    assert _peak_frequency(middle, out_rate) == pytest.approx(1000.0, abs=0.5)
    rms_db = 20 * np.log10(np.sqrt(np.mean(middle**2)) / (0.5 / np.sqrt(2)))
    assert abs(rms_db) < 0.01
    crossings = np.count_nonzero(np.diff(np.signbit(middle)))
    assert abs(crossings - 2 * 1000 * middle.size / out_rate) <= 2


def test_content_above_the_new_nyquist_is_removed() -> None:
    t = np.arange(24000) / 24000
    x = (0.5 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)  # above 4 kHz: must not alias to 2 kHz
    y = resample(x, 24000, 8000)[800:-800].astype(np.float64)
    assert 20 * np.log10(np.sqrt(np.mean(y**2)) / (0.5 / np.sqrt(2))) < -90


# --- latency --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("in_rate", "out_rate"), [(24000, 16000), (24000, 8000), (22050, 48000), (8000, 48000)])
def test_impulse_is_aligned_and_latency_accounts_for_it(in_rate: int, out_rate: int) -> None:
    position = in_rate // 10  # impulse at 100 ms
    x = np.zeros(in_rate, np.float32)
    x[position] = 1.0
    target = position * out_rate // in_rate  # exact: every pair here has an integer image of 100 ms
    r = StreamResampler(in_rate, out_rate)
    chunk = in_rate // 50
    out: list[np.ndarray] = []
    emerged_after = None
    for start in range(0, x.size, chunk):
        owed_before = r.latency
        out.append(r.process(x[start : start + chunk]))
        assert r.latency == pytest.approx(r.consumed * out_rate / in_rate - r.produced)
        if emerged_after is None and r.produced > target:
            emerged_after = start + chunk
            held_s = (start - position) / in_rate  # impulse age before this call, in seconds
            assert owed_before / out_rate >= held_s  # it was still inside the owed audio
            assert r.latency_seconds < (emerged_after - position) / in_rate  # and no longer is
    y = np.concatenate([*out, r.flush()])
    assert int(np.argmax(y)) == target
    # A band-limited impulse peaks at (cutoff / Nyquist): soxr HQ cuts at ~95.7 % of the lower Nyquist.
    assert y[target] == pytest.approx(0.957 * min(1.0, out_rate / in_rate), rel=0.002)
    assert emerged_after is not None and emerged_after - position <= 0.2 * in_rate


# Worst owed audio (ms) over 1 s of 20 ms chunks, HQ, measured with soxr 1.0.0 / libsoxr 0.1.3:
# the figures the transport has to budget for. Re-measure if soxr changes.
HQ_MAX_LATENCY_MS = {
    (24000, 16000): 36.6, (24000, 8000): 73.0, (24000, 48000): 37.9, (22050, 8000): 80.4,
    (22050, 16000): 40.0, (22050, 48000): 40.0, (44100, 16000): 40.0, (44100, 48000): 20.9,
    (8000, 16000): 113.8, (8000, 48000): 170.8, (48000, 8000): 154.6, (16000, 48000): 36.6,
}


@pytest.mark.parametrize(("pair", "expected_ms"), HQ_MAX_LATENCY_MS.items())
def test_latency_figures(pair: tuple[int, int], expected_ms: float) -> None:
    in_rate, out_rate = pair
    r = StreamResampler(in_rate, out_rate)
    worst = 0.0
    for _ in range(50):
        r.process(np.zeros(in_rate // 50, np.float32))
        worst = max(worst, r.latency_seconds * 1000)
    assert worst == pytest.approx(expected_ms, abs=0.1)
