"""The Stretcher's contract: exact lengths, pass-through, chunking invariance, the time map, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speakwire.dsp import Stretcher, time_stretch
from speakwire.dsp.speed import DEFAULT_POLICY, KUGELAUDIO_POLICY, SpeedPolicy
from speakwire.dsp.timemap import TimeMap
from speakwire.dsp.wsola import WsolaLayout
from speakwire.errors import (
    AudioFormatError,
    ContextStateError,
    InvalidSpeedError,
    UnsupportedSampleRateError,
)

from .metrics import harmonic_glide

RATES = [8000, 16000, 22050, 24000, 44100, 48000]
SPEEDS = [0.5, 0.75, 0.9, 1.25, 1.5, 2.0]


def speechlike(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Voiced glides, noise bursts and silences: every branch of the search gets exercised."""
    rng = np.random.default_rng(seed)
    n = round(rate * seconds)
    x = np.zeros(n, np.float32)
    pos = 0
    while pos < n:
        kind = rng.integers(3)
        length = min(int(rng.integers(rate // 50, rate // 4)), n - pos)
        if kind == 0:
            f = rng.uniform(90, 300)
            x[pos : pos + length] = harmonic_glide(rate, length / rate, f, f * rng.uniform(0.8, 1.25), 0.4)
        elif kind == 1:
            x[pos : pos + length] = 0.1 * rng.standard_normal(length)
        pos += length
    return x


def run(stretcher: Stretcher, x: np.ndarray, sizes: list[int] | int) -> np.ndarray:
    """Feed ``x`` in chunks of ``sizes`` (cycled), flush, return everything."""
    sizes = [sizes] if isinstance(sizes, int) else sizes
    out, pos, i = [], 0, 0
    while pos < len(x):
        out.append(stretcher.process(x[pos : pos + sizes[i % len(sizes)]]))
        pos += sizes[i % len(sizes)]
        i += 1
    out.append(stretcher.flush())
    return np.concatenate(out)


def run_schedule(rate: int, x: np.ndarray, schedule: list[tuple[int, float]], sizes: list[int]) -> np.ndarray:
    """Feed ``x`` with speed changes at input positions (chunks are split there), in chunks of ``sizes``."""
    s = Stretcher(rate, schedule[0][1])
    cuts = sorted({p for p, _ in schedule[1:]} | {len(x)})
    changes = dict(schedule[1:])
    out, pos, i = [], 0, 0
    while pos < len(x):
        end = min(pos + sizes[i % len(sizes)], next(c for c in cuts if c > pos))
        out.append(s.process(x[pos:end]))
        pos, i = end, i + 1
        if pos in changes:
            s.set_speed(changes[pos])
    out.append(s.flush())
    return np.concatenate(out)


# -- pass-through and lengths ----------------------------------------------------------------


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("sizes", [1, 160, [7, 1, 333, 4096], 10**7])
def test_speed_one_is_bit_exact_passthrough(rate: int, sizes: int | list[int]) -> None:
    x = speechlike(rate, 0.4 if sizes == 1 else 1.3, seed=rate)
    y = run(Stretcher(rate, 1.0), x, sizes)
    assert y.dtype == np.float32
    assert np.array_equal(y, x)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("speed", SPEEDS)
def test_length_is_round_n_over_speed(rate: int, speed: float) -> None:
    for n in (0, 1, 2, 99, rate // 3 + 1, rate + 7):
        y = time_stretch(speechlike(rate, n / rate, seed=n), rate, speed)
        assert y.shape == (round(n / speed),), (n, speed)
        assert y.dtype == np.float32


def test_length_rounds_half_to_even_like_python() -> None:
    # 8001 / 2 = 4000.5 -> 4000 and 8003 / 2 = 4001.5 -> 4002 (Python's round, which callers use)
    assert time_stretch(np.zeros(8001, np.float32), 8000, 2.0).size == 4000
    assert time_stretch(np.zeros(8003, np.float32), 8000, 2.0).size == 4002


def test_output_keeps_pitch_and_content_at_speed_two() -> None:
    rate = 16000
    x = harmonic_glide(rate, 1.0, 200.0, 200.0)
    y = time_stretch(x, rate, 2.0)
    spectrum = np.abs(np.fft.rfft(y[800:-800] * np.hanning(y.size - 1600)))
    peak_hz = np.argmax(spectrum) * rate / (y.size - 1600)
    assert abs(peak_hz - 200.0) < 2.0
    assert np.sqrt(np.mean(y[800:-800] ** 2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=0.05)


# -- chunking invariance ---------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000, 44100])
@pytest.mark.parametrize("speed", [0.5, 0.8, 1.25, 2.0])
def test_any_chunking_gives_identical_output(rate: int, speed: float) -> None:
    x = speechlike(rate, 1.5, seed=3)
    whole = time_stretch(x, rate, speed)
    rng = np.random.default_rng(rate)
    for sizes in ([rate // 50], rng.integers(1, rate // 10, 50).tolist(), [len(x)]):
        assert np.array_equal(run(Stretcher(rate, speed), x, sizes), whole)
    one = run(Stretcher(rate, speed), x[: rate // 2], 1)
    assert np.array_equal(one, time_stretch(x[: rate // 2], rate, speed))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.sampled_from(RATES),
    speed=st.floats(0.5, 2.0),
    n=st.integers(0, 6000),
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=8),
    seed=st.integers(0, 2**16),
)
def test_property_chunking_length_finite(rate: int, speed: float, n: int, sizes: list[int], seed: int) -> None:
    x = speechlike(rate, n / rate, seed)
    y = run(Stretcher(rate, speed), x, sizes)
    assert y.shape == (round(n / speed),)
    assert np.isfinite(y).all()
    assert np.array_equal(y, time_stretch(x, rate, speed))


@settings(max_examples=25, deadline=None)
@given(rate=st.sampled_from(RATES), speed=st.floats(0.5, 2.0), n=st.integers(0, 5000),
       sizes=st.lists(st.integers(1, 2000), min_size=1, max_size=4))
def test_property_silence_in_silence_out(rate: int, speed: float, n: int, sizes: list[int]) -> None:
    y = run(Stretcher(rate, speed), np.zeros(n, np.float32), sizes)
    assert y.shape == (round(n / speed),)
    assert not y.any()


@settings(max_examples=25, deadline=None)
@given(
    speeds=st.lists(st.sampled_from([0.5, 0.7, 1.0, 1.3, 2.0]), min_size=2, max_size=5),
    cuts=st.lists(st.integers(1, 11999), min_size=4, max_size=4, unique=True),
    sizes=st.lists(st.integers(1, 900), min_size=1, max_size=5),
)
def test_property_speed_changes_take_effect_at_input_positions(
    speeds: list[float], cuts: list[int], sizes: list[int]
) -> None:
    rate = 16000
    x = speechlike(rate, 0.75, seed=11)
    schedule = [(0, speeds[0]), *zip(sorted(cuts), speeds[1:], strict=False)]
    y = run_schedule(rate, x, schedule, sizes)
    assert np.array_equal(y, run_schedule(rate, x, schedule, [len(x)]))
    ideal = TimeMap(rate, speeds[0])
    for c, s in schedule[1:]:
        ideal.set_speed(c, s)
    assert abs(y.size - ideal.output_position(len(x))) <= 0.5 + 1e-9


@pytest.mark.parametrize("rate", [8000, 44100])
def test_wide_custom_policy_keeps_the_contract(rate: int) -> None:
    wide = SpeedPolicy(0.2, 5.0, "raise", "wide")
    x = speechlike(rate, 1.2, seed=3)
    for speed in (0.2, 0.33, 3.0, 5.0):
        y = time_stretch(x, rate, speed, wide)
        assert y.size == round(x.size / speed)
        assert np.array_equal(run(Stretcher(rate, speed, wide), x, [1, 50, 333]), y)
    s = Stretcher(rate, 5.0, wide)
    out = [s.process(x[: rate // 3])]
    s.set_speed(0.2)
    out += [s.process(x[rate // 3 :]), s.flush()]
    assert sum(o.size for o in out) == round(s.output_position(x.size))


def test_speed_change_within_one_sample_per_change() -> None:
    rate = 16000
    x = speechlike(rate, 3.0)
    y = run_schedule(rate, x, [(0, 1.0), (16000, 2.0), (16001, 0.5), (32000, 1.5)], [320])
    exact = 16000 / 1.0 + 1 / 2.0 + 15999 / 0.5 + (x.size - 32000) / 1.5
    assert abs(y.size - exact) <= 3
    assert y.size == round(exact)


def test_constant_one_after_changes_copies_input_exactly() -> None:
    # Once back at 1.0 and within the search range, every hop continues the last one: a plain copy.
    rate = 16000
    x = speechlike(rate, 2.0, seed=5)
    s = Stretcher(rate, 0.8)
    head = s.process(x[:8000])
    s.set_speed(1.0)
    rest = np.concatenate((s.process(x[8000:]), s.flush()))
    y = np.concatenate((head, rest))
    # Output i is input i - 2000 + d for one drift d within the search range.
    search = s.layout.search
    start = y.size - 8000
    drifts = [d for d in range(-search, search + 1)
              if np.array_equal(y[start : start + 7000], x[start - 2000 + d : start + 5000 + d])]
    assert len(drifts) == 1


def test_reset_then_same_input_gives_same_output() -> None:
    rate = 22050
    x = speechlike(rate, 1.0, seed=9)
    s = Stretcher(rate, 1.3)
    first = run(s, x, 441)
    s.reset()
    assert s.input_samples == 0 and s.output_samples == 0
    assert np.array_equal(run(s, x, [100, 5000]), first)
    # reset mid-stream (not flushed) too, and after a speed change: speed survives, schedule restarts
    s.reset()
    s.process(x[:3000])
    s.set_speed(0.7)
    s.reset()
    assert s.speed == 0.7
    assert s.time_map.breakpoints == ((0, 0.0, 0.7),)
    assert np.array_equal(run(s, x, 441), time_stretch(x, rate, 0.7))


# -- the time map ----------------------------------------------------------------------------


def test_time_map_positions_and_times() -> None:
    rate = 16000
    s = Stretcher(rate, 2.0)
    assert s.output_position(16000) == 8000.0  # not seen yet: current speed
    s.process(np.zeros(16000, np.float32))
    s.set_speed(0.5)
    assert s.output_position(8000) == 4000.0  # already processed
    assert s.output_position(24000) == 8000.0 + 16000.0
    assert s.output_time(1.5) == pytest.approx(1.5)
    assert s.time_map.input_position(24000.0) == 24000.0
    assert s.time_map.input_time(0.25) == pytest.approx(0.5)
    assert s.time_map.breakpoints == ((0, 0.0, 2.0), (16000, 8000.0, 0.5))


def test_time_map_ignores_redundant_and_replaced_changes() -> None:
    tm = TimeMap(8000, 1.0)
    tm.set_speed(100, 1.0)
    assert tm.breakpoints == ((0, 0.0, 1.0),)
    tm.set_speed(100, 2.0)
    tm.set_speed(100, 1.0)  # back to the previous speed at the same position: no breakpoint
    assert tm.breakpoints == ((0, 0.0, 1.0),)
    tm.set_speed(200, 2.0)
    tm.set_speed(200, 0.5)
    assert tm.breakpoints == ((0, 0.0, 1.0), (200, 200.0, 0.5))
    assert tm.breakpoints_from(150.0) == [(0, 0.0, 1.0), (200, 200.0, 0.5)]
    assert tm.breakpoints_from(200.0) == [(200, 200.0, 0.5)]
    assert tm.breakpoints_from(1e9) == [(200, 200.0, 0.5)]
    with pytest.raises(ValueError, match="before the last"):
        tm.set_speed(150, 1.0)
    with pytest.raises(ValueError, match="finite"):
        tm.output_position(float("nan"))


# -- latency ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", RATES)
def test_latency_value_and_output_keeps_up(rate: int) -> None:
    lay = WsolaLayout.for_rate(rate)
    s = Stretcher(rate, 1.0)
    assert s.latency == lay.search + lay.hop + lay.overlap + lay.block + 1
    assert 0.034 < s.latency / rate < 0.036
    s.set_speed(2.0)
    assert s.latency == lay.search + lay.hop + lay.overlap + lay.block + math.ceil(lay.hop / 2) + 1
    for speed in (0.5, 1.25, 2.0):
        s = Stretcher(rate, speed)
        x = speechlike(rate, 0.6, seed=1)
        step = rate // 100
        out = 0
        for pos in range(0, x.size, step):
            out += s.process(x[pos : pos + step]).size
            fed = pos + step
            assert out >= s.output_position(fed - s.latency) - 1, (speed, fed)


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 0.0, -1.0, "fast", None, True])
def test_invalid_speeds_always_raise(bad: object) -> None:
    clamp = SpeedPolicy(0.5, 2.0, "clamp", "clamping")
    with pytest.raises(InvalidSpeedError):
        Stretcher(16000, bad, clamp)  # type: ignore[arg-type]
    s = Stretcher(16000, 1.0, clamp)
    with pytest.raises(InvalidSpeedError):
        s.set_speed(bad)  # type: ignore[arg-type]
    assert s.speed == 1.0


def test_default_policy_raises_outside_range_and_clamping_policy_clamps() -> None:
    with pytest.raises(InvalidSpeedError, match="outside"):
        Stretcher(16000, 2.5)
    s = Stretcher(16000, 1.0, DEFAULT_POLICY)
    with pytest.raises(InvalidSpeedError):
        s.set_speed(0.49)
    with pytest.raises(ValueError):  # InvalidSpeedError is a ValueError
        s.set_speed(3)
    assert Stretcher(16000, 1.5, KUGELAUDIO_POLICY).speed == 1.2
    k = Stretcher(16000, 1.0, KUGELAUDIO_POLICY)
    assert k.set_speed(0.1) == 0.8
    assert k.speed == 0.8
    assert k.policy is KUGELAUDIO_POLICY


@pytest.mark.parametrize("rate", [7999, 48001, 0, -16000])
def test_unsupported_sample_rates(rate: int) -> None:
    with pytest.raises(UnsupportedSampleRateError, match=str(rate)):
        Stretcher(rate)


def test_non_integer_sample_rate() -> None:
    with pytest.raises(UnsupportedSampleRateError, match="integer"):
        Stretcher(16000.0)  # type: ignore[arg-type]


def test_float64_and_lists_are_converted() -> None:
    x = speechlike(16000, 0.5, seed=2)
    want = time_stretch(x, 16000, 1.25)
    assert np.array_equal(time_stretch(x.astype(np.float64), 16000, 1.25), want)
    assert np.array_equal(run(Stretcher(16000, 1.25), x[::1].copy(), 500), want)
    s = Stretcher(16000, 1.25)
    strided = np.repeat(x, 2)[::2]  # non-contiguous view
    assert np.array_equal(np.concatenate((s.process(strided), s.flush())), want)
    s = Stretcher(16000, 1.25)
    got = np.concatenate((s.process(x[:100].tolist()), s.process(x[100:]), s.flush()))
    assert np.array_equal(got, want)


def test_read_only_input_needs_no_second_kernel() -> None:
    from speakwire.dsp import wsola

    x = speechlike(16000, 0.5, seed=6)
    want = time_stretch(x, 16000, 1.5)
    kernels = len(wsola._run.signatures)
    frozen = np.frombuffer(x.tobytes(), np.float32)  # read-only, as PCM decoded from bytes often is
    assert not frozen.flags.writeable
    assert np.array_equal(run(Stretcher(16000, 1.5), frozen, 320), want)
    assert np.array_equal(time_stretch(frozen, 16000, 1.5), want)
    assert len(wsola._run.signatures) == kernels


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        (np.zeros((160, 2), np.float32), "mono.*2-D.*shape \\(160, 2\\)"),
        (np.zeros((1, 160), np.float32), "mono"),
        (np.float32(0.5), "mono.*0-D"),
        (np.zeros(160, np.int16), "dtype int16.*scale integer PCM"),
        (np.zeros(160, np.complex64), "dtype complex64"),
    ],
)
def test_bad_chunks_raise_audio_format_error(chunk: np.ndarray, message: str) -> None:
    s = Stretcher(16000)
    with pytest.raises(AudioFormatError, match=message):
        s.process(chunk)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e39])
def test_non_finite_samples_are_rejected_and_nothing_is_lost(bad: float) -> None:
    rate = 16000
    x = speechlike(rate, 1.0, seed=4)
    want = time_stretch(x, rate, 0.8)
    s = Stretcher(rate, 0.8)
    head = s.process(x[:5000])
    poisoned = x[5000:6000].astype(np.float64)
    poisoned[123] = bad
    with pytest.raises(AudioFormatError, match=r"(non-finite|out of float32 range) sample .* at index 123"):
        s.process(poisoned)
    assert s.input_samples == 5000
    got = np.concatenate((head, s.process(x[5000:]), s.flush()))
    assert np.array_equal(got, want)


def test_time_stretch_names_the_global_index_of_a_bad_sample() -> None:
    x = np.zeros(200_000, np.float32)
    x[150_001] = np.nan
    with pytest.raises(AudioFormatError, match="non-finite sample \\(nan\\) at index 150001"):
        time_stretch(x, 16000, 1.5)
    with pytest.raises(AudioFormatError, match="mono"):
        time_stretch(np.zeros((2, 100), np.float32), 16000, 1.5)


def test_flush_ends_the_stream() -> None:
    s = Stretcher(8000, 1.5)
    head = s.process(np.ones(800, np.float32) * 0.1)
    assert head.size + s.flush().size == round(800 / 1.5)
    assert s.flush().size == 0
    with pytest.raises(ContextStateError, match="reset"):
        s.process(np.zeros(10, np.float32))
    assert s.input_samples == 800 and s.output_samples == round(800 / 1.5)
    s.reset()
    assert s.process(np.zeros(10, np.float32)).size == 0


def test_large_chunks_grow_the_buffer() -> None:
    rate = 48000
    x = speechlike(rate, 4.0, seed=8)
    assert np.array_equal(run(Stretcher(rate, 0.6), x, [len(x)]), run(Stretcher(rate, 0.6), x, [960]))


def test_kernels_are_compiled_without_fast_math() -> None:
    # Reassociated sums would depend on memory alignment, and alignment depends on the chunking.
    from speakwire.dsp import wsola

    kernels = [wsola._run, wsola._search, wsola._best, wsola._dot_energy, wsola._absorb, wsola._first_bad]
    for kernel in kernels:
        assert not kernel.targetoptions.get("fastmath"), kernel
        assert kernel.targetoptions["nogil"]
        assert type(kernel._cache).__name__ == "FunctionCache"  # cache=True: JIT once per machine


def test_repr_and_layout() -> None:
    s = Stretcher(44100, 1.25)
    assert repr(s) == "Stretcher(sample_rate=44100, speed=1.25, policy='default', input_samples=0, output_samples=0)"
    assert s.layout == WsolaLayout(44100, hop=794, overlap=397, search=331, block=11)
    assert s.layout.segment == 794 + 397
