"""One turn's audio on its way from the wire to the pipeline: decode, stretch, resample, s16.

:class:`TurnAudio` is pure (no asyncio, no pipecat): the service feeds it what a context's
event stream carries and forwards what comes out, so every timing rule is a plain unit test.

- **Speed** is applied locally with :class:`~speakwire.dsp.wsola.Stretcher` (``local`` mode), so
  it works for any model. A change can be made now (:meth:`set_speed`, before any audio) or
  scheduled at a flush (:meth:`schedule`): the server sends a context's frames strictly in order,
  so everything received before ``flush_done`` ``n`` is the audio of the text pushed before
  flush ``n``, and the speed switches at exactly that input sample. The stretcher cross-fades
  across the switch, so there is no click. Without a stretcher (``native`` mode) the audio is
  only converted.
- **Word timestamps** arrive in the server's (unstretched) time; they are mapped through the
  stretcher's time map, and a word is released only once the audio where it starts has been
  returned, so a word is never reported before (or without) its audio.

Every chunk of every turn passes through here, so the per-chunk path avoids what it can: no
copy of the wire bytes (a sample split across chunks aside), ``pcm_f32le`` decoded and
quantised with one temporary array each, no resampler at all when the rates match. The output
is bit-identical to that of :func:`~speakwire.dsp.pcm.decode` then
:func:`~speakwire.dsp.pcm.float_to_s16`, and NaN on the wire raises decode's error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from speakwire.dsp.pcm import decode
from speakwire.dsp.resample import StreamResampler
from speakwire.dsp.speed import DEFAULT_POLICY, SpeedPolicy
from speakwire.dsp.wsola import Stretcher

__all__ = ["TurnAudio"]

_S16_SCALE = np.float32(32768.0)


class TurnAudio:
    """Wire audio of one context in, pipeline PCM (s16le mono at ``out_rate``) out.

    ``speed=None`` disables stretching (the server applies speed itself); any float starts a
    stretcher at that speed, validated by ``policy``
    (:class:`~speakwire.errors.InvalidSpeedError` otherwise).
    """

    def __init__(
        self,
        encoding: str,
        wire_rate: int,
        out_rate: int,
        *,
        speed: float | None = 1.0,
        policy: SpeedPolicy = DEFAULT_POLICY,
    ) -> None:
        self.encoding = encoding
        self.wire_rate = wire_rate
        self.out_rate = out_rate
        self._stretcher = Stretcher(wire_rate, speed, policy) if speed is not None else None
        # Equal rates: the resampler would only copy.
        self._resampler = StreamResampler(wire_rate, out_rate) if wire_rate != out_rate else None
        self._partial = b""
        self._width = 4 if encoding == "pcm_f32le" else 2 if encoding == "pcm_s16le" else 1
        self._scheduled: dict[int, float] = {}
        self._pending_words: list[tuple[str, float]] = []
        self._emitted = 0  # output samples at out_rate handed out
        self._received = False
        self._finished = False

    @property
    def stretching(self) -> bool:
        """True when speed is applied here (local mode)."""
        return self._stretcher is not None

    @property
    def speed(self) -> float:
        """The speed applied to the next received sample (1.0 when not stretching)."""
        return self._stretcher.speed if self._stretcher is not None else 1.0

    @property
    def received_audio(self) -> bool:
        """True once any audio was fed."""
        return self._received

    @property
    def emitted_seconds(self) -> float:
        """Duration of the audio returned so far, in seconds."""
        return self._emitted / self.out_rate

    def set_speed(self, speed: float) -> float:
        """Apply ``speed`` from the next received sample; returns the speed in force (after the policy)."""
        if self._stretcher is None:
            return 1.0
        return self._stretcher.set_speed(speed)

    def schedule(self, flush_id: int, speed: float) -> None:
        """Switch to ``speed`` when ``flush_done`` number ``flush_id`` arrives (validated now)."""
        if self._stretcher is not None:
            self._scheduled[flush_id] = self._stretcher.policy.apply(speed)

    def flush_done(self, flush_id: int) -> None:
        """The server finished flush ``flush_id``: apply the speed scheduled there, if any."""
        speed = self._scheduled.pop(flush_id, None)
        if speed is not None and self._stretcher is not None:
            self._stretcher.set_speed(speed)

    def audio(self, data: bytes) -> bytes:
        """Convert one chunk of wire audio; returns the s16le bytes ready now (possibly empty)."""
        if data:
            self._received = True
        if self._partial:
            data = self._partial + data
        whole = len(data) - len(data) % self._width
        view: bytes | memoryview = data
        if whole != len(data):
            self._partial = bytes(data[whole:])
            view = memoryview(data)[:whole]
        else:
            self._partial = b""
        samples = self._decode(view)
        if self._stretcher is not None:
            samples = self._stretcher.process(samples)
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        return self._out(samples)

    def words(self, words: Sequence[str], starts: Sequence[float]) -> list[tuple[str, float]]:
        """Take the server's word timestamps; return those whose audio has been returned.

        Times are seconds from the start of the turn's audio as this object outputs it.
        """
        if not words and not self._pending_words:
            return []
        for word, start in zip(words, starts, strict=False):
            mapped = self._stretcher.output_time(start) if self._stretcher is not None else float(start)
            self._pending_words.append((word, max(mapped, 0.0)))
        return self._release(final=False)

    def finish(self) -> tuple[bytes, list[tuple[str, float]]]:
        """End of the turn: the rest of the audio, and every word still held back. Idempotent."""
        if self._finished:
            return b"", []
        self._finished = True
        tail = np.empty(0, np.float32)
        if self._stretcher is not None:
            tail = self._stretcher.flush()
        if self._resampler is not None:
            tail = np.concatenate((self._resampler.process(tail), self._resampler.flush()))
        return self._out(tail), self._release(final=True)

    def discard_words(self) -> int:
        """Forget the words held back (their audio will never play); returns how many."""
        count = len(self._pending_words)
        self._pending_words.clear()
        return count

    def _decode(self, data: bytes | memoryview) -> np.ndarray:
        if self.encoding != "pcm_f32le":
            return decode(data, self.encoding)
        # decode()'s result (NaN raises; the rest clipped to [-1, 1]) with one array, not three.
        # (np.clip costs more in Python overhead than the two ufuncs do on a chunk.)
        samples = np.maximum(np.frombuffer(data, "<f4"), -1.0)
        np.minimum(samples, 1.0, out=samples)
        if np.isnan(np.add.reduce(samples)):  # the clipped values are finite unless NaN
            return decode(data, self.encoding)  # raises AudioFormatError naming the sample
        return samples

    def _out(self, samples: np.ndarray) -> bytes:
        count = len(samples)
        if not count:
            return b""
        self._emitted += count
        # float_to_s16 with one temporary: scaling by 2**15 is exact, and clipping to
        # [-32768, 32767] before rounding gives its clip-round-cap result. No NaN check: the
        # samples are finite by construction (decoding rejects NaN, the stretcher any
        # non-finite input, and the rest come from tables or soxr on finite input).
        scaled = samples * _S16_SCALE
        np.maximum(scaled, -32768.0, out=scaled)
        np.minimum(scaled, 32767.0, out=scaled)
        np.rint(scaled, out=scaled)
        return scaled.astype("<i2").tobytes()

    def _release(self, *, final: bool) -> list[tuple[str, float]]:
        if final:
            released, self._pending_words = self._pending_words, []
            return released
        horizon = self.emitted_seconds
        # Words come in time order: release the prefix that has started playing.
        count = 0
        while count < len(self._pending_words) and self._pending_words[count][1] < horizon:
            count += 1
        released, self._pending_words = self._pending_words[:count], self._pending_words[count:]
        return released
