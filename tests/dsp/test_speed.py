"""Speed policies and label vocabularies."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from speakwire.dsp.speed import (
    CARTESIA_POLICY,
    DEFAULT_POLICY,
    KUGELAUDIO_POLICY,
    SPEECH_SDK_POLICY,
    SpeedPolicy,
    cartesia_experimental_speed,
    kugelaudio_speed,
)
from speakwire.errors import InvalidSpeedError

ALL_POLICIES = [DEFAULT_POLICY, SPEECH_SDK_POLICY, KUGELAUDIO_POLICY, CARTESIA_POLICY]


@pytest.mark.parametrize("policy", ALL_POLICIES, ids=lambda p: p.name)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, "1.0", None, True])
def test_non_finite_non_positive_and_non_numbers_always_raise(policy: SpeedPolicy, bad: object) -> None:
    with pytest.raises(InvalidSpeedError):
        policy.apply(bad)
    assert bad not in policy


def test_invalid_speed_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="finite"):
        DEFAULT_POLICY.apply(math.nan)


@pytest.mark.parametrize(
    ("policy", "lo", "hi", "mode"),
    [
        (DEFAULT_POLICY, 0.5, 2.0, "raise"),
        (SPEECH_SDK_POLICY, 0.75, 1.5, "raise"),
        (KUGELAUDIO_POLICY, 0.8, 1.2, "clamp"),
        (CARTESIA_POLICY, 0.6, 1.5, "raise"),
    ],
)
def test_presets(policy: SpeedPolicy, lo: float, hi: float, mode: str) -> None:
    assert (policy.min_speed, policy.max_speed, policy.out_of_range) == (lo, hi, mode)
    assert policy.apply(lo) == lo and policy.apply(hi) == hi and policy.apply(1) == 1.0
    if mode == "raise":
        with pytest.raises(InvalidSpeedError, match=r"outside \["):
            policy.apply(hi * 1.01)
        with pytest.raises(InvalidSpeedError):
            policy.apply(lo * 0.99)
    else:
        assert policy.apply(hi * 3) == hi
        assert policy.apply(lo / 3) == lo


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_clamp_policy_never_returns_out_of_range(value: float) -> None:
    try:
        out = KUGELAUDIO_POLICY.apply(value)
    except InvalidSpeedError:
        assert not (math.isfinite(value) and value > 0)
    else:
        assert 0.8 <= out <= 1.2


def test_bad_policy_ranges_are_refused() -> None:
    with pytest.raises(InvalidSpeedError):
        SpeedPolicy(1.2, 2.0)
    with pytest.raises(InvalidSpeedError):
        SpeedPolicy(0.0, 2.0)
    with pytest.raises(ValueError):
        SpeedPolicy(0.5, 2.0, "ignore")  # type: ignore[arg-type]


def test_cartesia_labels_and_numbers() -> None:
    assert cartesia_experimental_speed("normal") == 1.0
    assert cartesia_experimental_speed("slowest") == 0.5
    assert cartesia_experimental_speed("fastest") == 2.0
    assert cartesia_experimental_speed("slow") == pytest.approx(2 ** -0.5)
    assert cartesia_experimental_speed("FAST") == pytest.approx(2 ** 0.5)
    assert cartesia_experimental_speed(0) == 1.0
    assert cartesia_experimental_speed(-0.1) == pytest.approx(2 ** -0.1)
    for bad in ["warp", 1.5, -1.01, math.nan, None, True]:
        with pytest.raises(InvalidSpeedError):
            cartesia_experimental_speed(bad)


def test_kugelaudio_labels_and_numbers() -> None:
    assert [kugelaudio_speed(x) for x in ("slow", "medium", "fast")] == [0.8, 1.0, 1.2]
    assert kugelaudio_speed("0.9") == 0.9
    assert kugelaudio_speed("2.5") == 1.2  # clamped, as seed 003 says
    assert kugelaudio_speed(0.1) == 0.8
    with pytest.raises(InvalidSpeedError, match="unknown rate 'x-fast'"):
        kugelaudio_speed("x-fast")
    with pytest.raises(InvalidSpeedError):
        kugelaudio_speed("nan")
    assert kugelaudio_speed("1.4", DEFAULT_POLICY) == 1.4


def test_numpy_scalars_are_numbers_but_numpy_bools_are_not() -> None:
    import numpy as np

    assert DEFAULT_POLICY.apply(np.float32(1.25)) == 1.25
    assert DEFAULT_POLICY.apply(np.int64(1)) == 1.0
    with pytest.raises(InvalidSpeedError):
        DEFAULT_POLICY.apply(np.float64("nan"))
    with pytest.raises(InvalidSpeedError):
        DEFAULT_POLICY.apply(np.bool_(True))
