"""The ideal input -> output time map of a speed schedule (piecewise-constant speed).

A speed ``s`` that holds from input sample ``c`` on maps input position ``x >= c`` to output
position ``Y(c) + (x - c) / s``. The map is continuous and strictly increasing, so word timestamps
can be rescaled both ways. Positions past the last breakpoint use the current (last) speed, so a
position the stretcher has not seen yet is mapped as if the speed did not change again.

Breakpoints are built with plain float64 arithmetic in the order they were added, so the same
schedule always gives the same numbers, whatever the chunking of the audio that went with it.
"""

from __future__ import annotations

import math
from bisect import bisect_right

__all__ = ["TimeMap"]


class TimeMap:
    """Input <-> output positions for a schedule of speed changes at input sample positions."""

    __slots__ = ("_in", "_out", "_rate", "_speed")

    def __init__(self, sample_rate: int, speed: float = 1.0) -> None:
        self._rate = sample_rate
        self._in: list[int] = [0]
        self._out: list[float] = [0.0]
        self._speed: list[float] = [float(speed)]

    @property
    def sample_rate(self) -> int:
        """Samples per second of both the input and the output."""
        return self._rate

    @property
    def speed(self) -> float:
        """The speed from the last breakpoint on."""
        return self._speed[-1]

    @property
    def breakpoints(self) -> tuple[tuple[int, float, float], ...]:
        """``(input_position, output_position, speed)`` for each segment of the schedule."""
        return tuple(zip(self._in, self._out, self._speed, strict=True))

    def breakpoints_from(self, output_position: float) -> list[tuple[int, float, float]]:
        """The breakpoints from the one whose segment holds ``output_position`` to the last."""
        i = max(bisect_right(self._out, output_position) - 1, 0)
        return list(zip(self._in[i:], self._out[i:], self._speed[i:], strict=True))

    def set_speed(self, input_position: int, speed: float) -> None:
        """Make ``speed`` hold from ``input_position`` (>= the last breakpoint) on.

        A change at the last breakpoint's position replaces it; a change to the current speed
        adds nothing (so redundant calls cannot perturb later positions by a rounding).
        """
        if input_position < self._in[-1]:
            raise ValueError(
                f"speed change at input sample {input_position} is before the last one at {self._in[-1]}"
            )
        speed = float(speed)
        if speed == self._speed[-1]:
            return
        if input_position == self._in[-1]:
            self._speed[-1] = speed
            # Two changes at one position may have made this breakpoint redundant.
            if len(self._speed) > 1 and self._speed[-2] == speed:
                del self._in[-1], self._out[-1], self._speed[-1]
            return
        self._out.append(self.output_position(input_position))
        self._in.append(input_position)
        self._speed.append(speed)

    def output_position(self, input_samples: float) -> float:
        """Where input sample position ``input_samples`` lands in the output, in samples."""
        x = _finite(input_samples, "input position")
        i = max(bisect_right(self._in, x) - 1, 0)
        return self._out[i] + (x - self._in[i]) / self._speed[i]

    def input_position(self, output_samples: float) -> float:
        """The input sample position that lands at ``output_samples`` (the inverse map)."""
        y = _finite(output_samples, "output position")
        i = max(bisect_right(self._out, y) - 1, 0)
        return self._in[i] + (y - self._out[i]) * self._speed[i]

    def output_time(self, input_seconds: float) -> float:
        """Where input time ``input_seconds`` lands in the output, in seconds."""
        return self.output_position(_finite(input_seconds, "input time") * self._rate) / self._rate

    def input_time(self, output_seconds: float) -> float:
        """The input time, in seconds, that lands at output time ``output_seconds``."""
        return self.input_position(_finite(output_seconds, "output time") * self._rate) / self._rate

    def __repr__(self) -> str:
        return f"TimeMap(sample_rate={self._rate}, breakpoints={list(self.breakpoints)!r})"


def _finite(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return value
