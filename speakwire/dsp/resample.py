"""Streaming sample-rate conversion on python-soxr, with chunking-independent output.

:class:`StreamResampler` wraps :class:`soxr.ResampleStream` (float32, mono):

- **Chunking does not matter.** libsoxr queues its input in a FIFO and filters fixed-size blocks
  from it, so the concatenated output is a function of the concatenated input only. soxr does not
  document this, so the test suite proves it (hypothesis over every rate pair and quality, chunk
  sizes from 1 sample to the whole buffer: bit-identical). ``"QQ"`` (soxr's cubic "quick"
  quality) is not offered: its flush crashes libsoxr (``std::bad_array_new_length``) for some
  rate pairs, e.g. 22050 -> 8000.
- **Exact length.** After :meth:`~StreamResampler.flush`, a stream of ``n`` input samples has
  produced exactly ``floor(n * out_rate / in_rate + 1/2)`` samples (half rounds up). soxr gets
  this right except for a few exact halves at ``"LQ"``, which are padded with a zero sample.
- **Alignment and latency.** soxr compensates its filter's group delay: input sample ``k`` lands at
  output time ``k * out_rate / in_rate`` (an impulse at input 0 peaks at output 0). It does so by
  holding input back: :attr:`~StreamResampler.latency` is the number of output samples the stream
  owes for the input it has taken (``consumed * out/in - produced``), in *output samples*;
  ``latency_seconds`` gives it in seconds. It is not constant, because soxr filters whole blocks:
  at ``"HQ"`` with 20 ms chunks the worst case is 37 ms for 24 -> 16 kHz or 48 kHz, 73 ms for
  24 -> 8 kHz, 80 ms for 22.05 -> 8 kHz, 114 ms for 8 -> 16 kHz and 171 ms for 8 -> 48 kHz;
  ``"LQ"`` roughly halves those (20, 40, 43, 61, 48 ms). ``HQ_MAX_LATENCY_MS`` in
  ``tests/dsp/test_resample.py`` pins the measured table. A real-time consumer should budget for it
  (or pick ``"LQ"``/``"MQ"``, ample for 8 kHz telephony) and call :meth:`flush` at end of turn.

Same rate in and out is a passthrough: the output is a float32 copy of the input, latency 0.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import soxr

from speakwire.errors import AudioFormatError, UnsupportedSampleRateError

__all__ = ["QUALITIES", "SUPPORTED_RATES", "Quality", "StreamResampler", "resample"]

#: Sample rates the resampler converts between (the wire protocol's set).
SUPPORTED_RATES: Final[tuple[int, ...]] = (8000, 16000, 22050, 24000, 44100, 48000)

Quality = Literal["LQ", "MQ", "HQ", "VHQ"]
#: soxr quality presets offered, from cheapest to best.
QUALITIES: Final[tuple[str, ...]] = ("LQ", "MQ", "HQ", "VHQ")

_EMPTY: Final = np.zeros(0, dtype=np.float32)
_EMPTY.flags.writeable = False


def _check_rate(rate: object, role: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate not in SUPPORTED_RATES:
        raise UnsupportedSampleRateError(
            f"unsupported {role} sample rate {rate!r}; supported: {', '.join(map(str, SUPPORTED_RATES))}"
        )
    return int(rate)


def _as_mono_float32(chunk: npt.ArrayLike) -> np.ndarray:
    array = np.asarray(chunk)
    if array.ndim != 1:
        raise AudioFormatError(f"resampler input must be mono (1-D), got shape {array.shape}")
    if array.dtype.kind != "f":
        raise AudioFormatError(f"resampler input must be floating point, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


class StreamResampler:
    """Convert a mono float32 stream from ``in_rate`` to ``out_rate``, chunk by chunk.

    ``process(chunk)`` returns whatever output is ready; ``flush()`` ends the stream, returns the
    tail, and leaves the resampler ready for a new stream (as :meth:`reset` does). The
    concatenated output is bit-identical whatever the chunk sizes, and equals
    :func:`resample` of the whole input. Not thread-safe: one stream, one caller.
    """

    def __init__(self, in_rate: int, out_rate: int, quality: Quality = "HQ") -> None:
        self.in_rate: Final[int] = _check_rate(in_rate, "input")
        self.out_rate: Final[int] = _check_rate(out_rate, "output")
        if quality not in QUALITIES:
            raise AudioFormatError(f"unsupported resampler quality {quality!r}; expected one of {QUALITIES}")
        self.quality: Final[str] = quality
        self._stream = (
            None
            if self.in_rate == self.out_rate
            else soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32", quality=quality)
        )
        self._consumed = 0
        self._produced = 0

    @property
    def passthrough(self) -> bool:
        """True when in and out rates are equal and samples are only copied."""
        return self._stream is None

    @property
    def consumed(self) -> int:
        """Input samples taken since the stream started."""
        return self._consumed

    @property
    def produced(self) -> int:
        """Output samples returned since the stream started."""
        return self._produced

    @property
    def latency(self) -> float:
        """Output samples owed for the input taken so far: ``consumed * out/in - produced``.

        This is audio held inside soxr; it comes out with later input or at :meth:`flush`.
        """
        return self._consumed * self.out_rate / self.in_rate - self._produced

    @property
    def latency_seconds(self) -> float:
        """:attr:`latency` in seconds."""
        return self.latency / self.out_rate

    def expected_length(self, num_input: int) -> int:
        """Output samples a whole stream of ``num_input`` samples yields: round half up of n*out/in."""
        return (2 * num_input * self.out_rate + self.in_rate) // (2 * self.in_rate)

    def process(self, chunk: npt.ArrayLike) -> np.ndarray:
        """Feed mono float samples; return the float32 output that is ready (possibly empty)."""
        samples = _as_mono_float32(chunk)
        self._consumed += samples.size
        if self._stream is None:
            out = samples.copy()
        elif samples.size == 0:
            return _EMPTY.copy()
        else:
            out = self._stream.resample_chunk(samples)
        self._produced += out.size
        return out

    def flush(self) -> np.ndarray:
        """End the stream: return the remaining output, then reset for a new stream."""
        if self._stream is None:
            self.reset()
            return _EMPTY.copy()
        tail = self._stream.resample_chunk(_EMPTY, last=True)
        # Pin the total to the documented rule: soxr misses it by one sample on a few exact halves.
        missing = self.expected_length(self._consumed) - self._produced - tail.size
        if missing > 0:
            tail = np.concatenate([tail, np.zeros(missing, dtype=np.float32)])
        elif missing < 0:
            tail = tail[: tail.size + missing]
        self.reset()
        return tail

    def reset(self) -> None:
        """Drop any buffered audio and start a new stream with the same rates."""
        if self._stream is not None:
            self._stream.clear()
        self._consumed = 0
        self._produced = 0

    def __repr__(self) -> str:
        return f"StreamResampler({self.in_rate}, {self.out_rate}, quality={self.quality!r})"


def resample(x: npt.ArrayLike, in_rate: int, out_rate: int, quality: Quality = "HQ") -> np.ndarray:
    """Resample a whole mono buffer; identical to one :class:`StreamResampler` stream over ``x``."""
    resampler = StreamResampler(in_rate, out_rate, quality)
    head = resampler.process(x)
    return np.concatenate([head, resampler.flush()])
