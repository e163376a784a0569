"""Speed factors: validation policies and the label vocabularies of the reference systems.

A speed factor is a plain float: 1.0 is unchanged, 1.25 plays 25 % faster (output is ``1/1.25``
as long), 0.8 is 20 % slower.

Label mapping chosen for Cartesia's deprecated ``__experimental_controls.speed`` (seed 001), which
documents only the names and that numbers lie in [-1, 1] with 0 the default: a number ``s`` maps to
``2 ** s`` (so -1 -> 0.5x, 0 -> 1x, +1 -> 2x: symmetric in perceived tempo, and the whole [-1, 1]
range lands exactly on our default [0.5, 2.0] range); the names sit at ``s = -1, -0.5, 0, 0.5, 1``:

    slowest 0.5   slow 0.707   normal 1.0   fast 1.414   fastest 2.0

KugelAudio's labels (seed 003) are its documented factors: slow 0.8, medium 1.0, fast 1.2.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

from speakwire.errors import InvalidSpeedError

__all__ = [
    "CARTESIA_LABELS",
    "CARTESIA_POLICY",
    "DEFAULT_POLICY",
    "KUGELAUDIO_LABELS",
    "KUGELAUDIO_POLICY",
    "SPEECH_SDK_POLICY",
    "SpeedPolicy",
    "cartesia_experimental_speed",
    "kugelaudio_speed",
]

#: Cartesia ``__experimental_controls.speed`` names, as positions on its [-1, 1] scale.
CARTESIA_LABELS: dict[str, float] = {
    "slowest": -1.0,
    "slow": -0.5,
    "normal": 0.0,
    "fast": 0.5,
    "fastest": 1.0,
}

#: KugelAudio ``<prosody rate>`` / speed-toggle names, as speed factors.
KUGELAUDIO_LABELS: dict[str, float] = {"slow": 0.8, "medium": 1.0, "fast": 1.2}


def _require_finite_positive(speed: object) -> float:
    # numbers.Real admits numpy scalars (np.float32(1.25)); bool is an int but never a speed.
    if isinstance(speed, bool) or not isinstance(speed, numbers.Real):
        raise InvalidSpeedError(f"speed must be a number, got {type(speed).__name__} {speed!r}")
    value = float(speed)
    if math.isnan(value) or math.isinf(value):
        raise InvalidSpeedError(f"speed must be finite, got {value!r}")
    if value <= 0.0:
        raise InvalidSpeedError(f"speed must be > 0, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class SpeedPolicy:
    """The allowed speed range and what happens outside it.

    NaN, infinities, non-numbers and values <= 0 always raise :class:`InvalidSpeedError`,
    whatever the policy: clamping them would hide a bug.
    """

    min_speed: float = 0.5
    max_speed: float = 2.0
    out_of_range: Literal["raise", "clamp"] = "raise"
    name: str = "default"

    def __post_init__(self) -> None:
        if not (0.0 < self.min_speed <= 1.0 <= self.max_speed) or not math.isfinite(self.max_speed):
            raise InvalidSpeedError(
                f"policy range must satisfy 0 < min <= 1 <= max < inf, got [{self.min_speed}, {self.max_speed}]"
            )
        if self.out_of_range not in ("raise", "clamp"):
            raise ValueError(f"out_of_range must be 'raise' or 'clamp', got {self.out_of_range!r}")

    def apply(self, speed: object) -> float:
        """Return the speed to use for ``speed``, or raise :class:`InvalidSpeedError`."""
        value = _require_finite_positive(speed)
        if self.min_speed <= value <= self.max_speed:
            return value
        if self.out_of_range == "clamp":
            return min(max(value, self.min_speed), self.max_speed)
        raise InvalidSpeedError(
            f"speed {value!r} is outside [{self.min_speed}, {self.max_speed}] ({self.name} policy)"
        )

    def __contains__(self, speed: object) -> bool:
        try:
            value = _require_finite_positive(speed)
        except InvalidSpeedError:
            return False
        return self.min_speed <= value <= self.max_speed


#: speakwire's own range: what WSOLA handles cleanly.
DEFAULT_POLICY = SpeedPolicy(0.5, 2.0, "raise", "default")
#: speech-sdk (seed 002): finite numbers in [0.75, 1.5], RangeError outside.
SPEECH_SDK_POLICY = SpeedPolicy(0.75, 1.5, "raise", "speech-sdk")
#: KugelAudio (seed 003): values outside 0.8-1.2 are clamped.
KUGELAUDIO_POLICY = SpeedPolicy(0.8, 1.2, "clamp", "kugelaudio")
#: Cartesia ``generation_config.speed`` (protocol.md): [0.6, 1.5]; the hosted API refuses others.
CARTESIA_POLICY = SpeedPolicy(0.6, 1.5, "raise", "cartesia")


def cartesia_experimental_speed(value: object) -> float:
    """Map a Cartesia ``__experimental_controls.speed`` (name or number in [-1, 1]) to a factor."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key not in CARTESIA_LABELS:
            raise InvalidSpeedError(
                f"unknown __experimental_controls speed {value!r}; expected one of "
                f"{', '.join(CARTESIA_LABELS)} or a number in [-1, 1]"
            )
        return 2.0 ** CARTESIA_LABELS[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InvalidSpeedError(f"__experimental_controls speed must be a name or a finite number, got {value!r}")
    if not -1.0 <= float(value) <= 1.0:
        raise InvalidSpeedError(f"__experimental_controls speed {value!r} is outside [-1, 1]")
    return 2.0 ** float(value)


def kugelaudio_speed(value: object, policy: SpeedPolicy = KUGELAUDIO_POLICY) -> float:
    """Map a KugelAudio rate (slow, medium, fast, or a number) to a factor under ``policy``."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in KUGELAUDIO_LABELS:
            return KUGELAUDIO_LABELS[key]
        try:
            number = float(key)
        except ValueError:
            raise InvalidSpeedError(
                f"unknown rate {value!r}; expected slow, medium, fast or a number"
            ) from None
        return policy.apply(number)
    return policy.apply(value)
