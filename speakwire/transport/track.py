"""An aiortc audio track fed from a ring buffer and paced on the wall clock.

The producer (a TTS stream) calls :meth:`RingBufferAudioTrack.write` with float32 mono samples at
the track's rate, as fast as they come; aiortc's sender awaits :meth:`~RingBufferAudioTrack.recv`
and sends each frame at once, so pacing is the track's job (an unpaced track pushed 1.9 s of audio
in 0.05 s on this machine). Frame ``k`` is due at ``start + pts_k / rate``, where ``start`` is the
loop time of the first ``recv()``: the schedule is computed from the sample count, never by adding
sleeps, so it cannot drift.

Rules the encoder imposes (aiortc configures its resampler from the first frame and silently stops
sending on a later mismatch): one fixed rate, layout and format (s16) per track, and ``pts`` and
``time_base`` always set. Stereo duplicates the mono channel: Opus upmixes mono to stereo and loses
3 dB, a duplicated channel arrives at full level.

Underrun never blocks: the missing part of a frame is silence, and counted. Barge-in is
:meth:`~RingBufferAudioTrack.clear`: queued audio is dropped except a short linear fade (5 ms by
default) so the cut has no click; the next frame carries that fade and then silence or whatever was
written after the clear. Samples are read from the ring only when a frame is due, so nothing queued
before a clear can be sent after it.

Playout position: the ring's positions (:mod:`speakwire.dsp.ring`) number the producer's samples
as they are played: silence padding has none, cleared samples are never played and their positions
are reused. A ``mark`` given to :meth:`~RingBufferAudioTrack.write` labels the first sample of that
write; :meth:`~RingBufferAudioTrack.pop_played_marks` returns the marks whose sample has been sent,
with the ``pts`` and time it went out, so a plugin knows which words were heard. Marks of cleared
samples are dropped with them.
"""

from __future__ import annotations

import asyncio
import fractions
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from speakwire.dsp.pcm import float_to_s16
from speakwire.dsp.ring import RingBuffer
from speakwire.errors import AudioFormatError, UnsupportedSampleRateError

__all__ = [
    "TRACK_SAMPLE_RATES",
    "PlayedMark",
    "RingBufferAudioTrack",
    "TrackStats",
]

#: Sample rates a :class:`RingBufferAudioTrack` accepts: telephony, wideband, CD and Opus's own.
TRACK_SAMPLE_RATES: Final[tuple[int, ...]] = (8000, 16000, 44100, 48000)

# Played marks nobody collects are kept up to this many (the oldest go first), so a caller that
# never pops them cannot grow memory without bound over a long call.
_MAX_PENDING_PLAYED_MARKS: Final = 4096


@dataclass(frozen=True, slots=True)
class PlayedMark:
    """A producer's mark whose sample has been sent.

    ``position`` is the sample's index in the played audio (producer samples only, no silence),
    ``pts`` its presentation timestamp in the sent stream (samples since the track started, silence
    included) and ``sent_at`` the loop time (``loop.time()``, seconds) its frame was due.
    """

    mark: object
    position: int
    pts: int
    sent_at: float


@dataclass(frozen=True, slots=True)
class TrackStats:
    """A snapshot of a track's counters (see :attr:`RingBufferAudioTrack.stats`).

    ``underrun_frames`` counts frames with at least one padded sample; ``resyncs`` counts times the
    consumer was more than ``max_catchup_s`` late and the schedule was moved instead of bursting;
    ``last_clear_latency_s`` is the time from the last :meth:`~RingBufferAudioTrack.clear` to the
    frame carrying its fade being handed to the sender (``None`` before the first such frame).
    """

    frames_sent: int
    samples_sent: int
    audio_samples_sent: int
    underrun_frames: int
    underrun_samples: int
    clears: int
    cleared_samples: int
    last_clear_latency_s: float | None
    resyncs: int
    resync_total_s: float
    queued_samples: int


class RingBufferAudioTrack(MediaStreamTrack):
    """An aiortc audio track playing what a producer writes, paced in real time.

    ``sample_rate`` is one of :data:`TRACK_SAMPLE_RATES`; ``frame_ms`` must give a whole number of
    samples (20 ms: 160, 320, 882, 960); ``channels`` is 1 (mono) or 2 (the mono signal duplicated).
    ``capacity_s`` bounds the queued audio; ``overflow`` is the ring's policy when a write does
    not fit: ``"raise"`` (:class:`~speakwire.errors.RingOverflowError`, nothing written) or
    ``"refuse"`` (nothing written, ``write`` returns 0). ``clear_fade_ms`` is the fade-out length
    at barge-in (at most 5 ms). If the consumer is late by more than ``max_catchup_s``, the schedule
    is moved to now rather than sending the backlog back to back: the stream stays continuous (no
    sample dropped, pts contiguous) and the receiver sees one late frame instead of a burst.

    :meth:`write` and :meth:`clear` may be called from another thread than the event loop's.
    """

    kind = "audio"

    def __init__(
        self,
        sample_rate: int = 48000,
        *,
        frame_ms: int = 20,
        channels: Literal[1, 2] = 1,
        capacity_s: float = 30.0,
        overflow: Literal["raise", "refuse"] = "raise",
        clear_fade_ms: float = 5.0,
        max_catchup_s: float = 0.06,
    ) -> None:
        super().__init__()
        if sample_rate not in TRACK_SAMPLE_RATES:
            raise UnsupportedSampleRateError(
                f"track sample_rate {sample_rate!r} is not supported; use one of {TRACK_SAMPLE_RATES}"
            )
        if not isinstance(frame_ms, int) or frame_ms <= 0 or (sample_rate * frame_ms) % 1000:
            raise AudioFormatError(
                f"frame_ms {frame_ms!r} must be a positive integer giving whole frames at {sample_rate} Hz"
            )
        if channels not in (1, 2):
            raise AudioFormatError(f"channels must be 1 or 2, got {channels!r}")
        if not 0.0 <= clear_fade_ms <= 5.0:
            raise ValueError(f"clear_fade_ms must be within [0, 5], got {clear_fade_ms!r}")
        if not capacity_s > 0:
            raise ValueError(f"capacity_s must be positive, got {capacity_s!r}")
        if not max_catchup_s >= 0:
            raise ValueError(f"max_catchup_s must be >= 0, got {max_catchup_s!r}")
        self._rate = sample_rate
        self._channels = channels
        self._layout = "mono" if channels == 1 else "stereo"
        self._frame_samples = sample_rate * frame_ms // 1000
        self._fade_samples = round(clear_fade_ms * sample_rate / 1000)
        self._max_catchup = float(max_catchup_s)
        self._time_base = fractions.Fraction(1, sample_rate)
        self._ring = RingBuffer(max(self._frame_samples, round(capacity_s * sample_rate)), overflow=overflow)
        # The ring locks itself; this lock keeps the track's own counters consistent across threads.
        self._lock = threading.Lock()
        self._played_marks: deque[PlayedMark] = deque(maxlen=_MAX_PENDING_PLAYED_MARKS)
        self._start: float | None = None
        self._pts = 0
        self._frames_sent = 0
        self._underrun_frames = 0
        self._underrun_samples = 0
        self._clears = 0
        self._cleared_samples = 0
        self._clear_pending_since: float | None = None
        self._last_clear_latency: float | None = None
        self._resyncs = 0
        self._resync_total = 0.0

    # -- configuration ------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        """The track's sample rate in Hz (fixed for its life)."""
        return self._rate

    @property
    def channels(self) -> int:
        """1 for mono frames, 2 for stereo frames carrying the same signal twice."""
        return self._channels

    @property
    def frame_samples(self) -> int:
        """Samples per channel in each frame ``recv()`` returns."""
        return self._frame_samples

    @property
    def fade_samples(self) -> int:
        """Length of the barge-in fade, in samples."""
        return self._fade_samples

    # -- producer side ------------------------------------------------------------------------

    def write(self, samples: npt.ArrayLike, mark: object | None = None) -> int:
        """Queue float32 mono ``samples`` (in [-1, 1], at the track rate) for playout.

        ``mark`` (any object, e.g. ``(context_id, word_index)``) labels the first sample of this
        write. Returns the number of samples queued: all of them, or 0 when the ring is full under
        the ``"refuse"`` policy (under ``"raise"`` it raises
        :class:`~speakwire.errors.RingOverflowError` instead). Never a partial write.
        """
        array = np.asarray(samples)
        if array.ndim != 1:
            raise AudioFormatError(f"track samples must be one-dimensional mono, got shape {array.shape}")
        if array.dtype.kind != "f":
            raise AudioFormatError(f"track samples must be floating point in [-1, 1], got dtype {array.dtype}")
        if array.size and not np.isfinite(array).all():
            bad = int(np.flatnonzero(~np.isfinite(array))[0])
            raise AudioFormatError(f"track samples must be finite; sample {bad} is {array[bad]}")
        return self._ring.write(array.astype(np.float32, copy=False), mark)

    def clear(self) -> int:
        """Barge-in: drop the queued audio and its marks, keeping only a short fade-out.

        The next frame sent starts with the fade (at most :attr:`fade_samples` samples decaying
        linearly to zero) followed by silence, or by audio written after this call. Returns the
        number of samples dropped.
        """
        dropped = self._ring.clear(self._fade_samples)
        with self._lock:
            self._clears += 1
            self._cleared_samples += dropped
            self._clear_pending_since = time.monotonic()
            return dropped

    @property
    def capacity_samples(self) -> int:
        """How many samples the track can hold queued (``capacity_s`` at its rate)."""
        return self._ring.capacity

    @property
    def queued_samples(self) -> int:
        """Samples written and not yet sent."""
        return self._ring.fill

    @property
    def played_samples(self) -> int:
        """Producer samples sent so far (silence padding excluded, cleared samples never counted).

        This is the ring's read position: a mark at position ``p`` has been heard once it is below.
        """
        return self._ring.read_position

    def pop_played_marks(self) -> list[PlayedMark]:
        """The marks whose sample has been sent since the last call, oldest first.

        Up to 4096 uncollected marks are kept; beyond that the oldest are forgotten.
        """
        with self._lock:
            marks = list(self._played_marks)
            self._played_marks.clear()
            return marks

    @property
    def stats(self) -> TrackStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return TrackStats(
                frames_sent=self._frames_sent,
                samples_sent=self._pts,
                audio_samples_sent=self._ring.read_position,
                underrun_frames=self._underrun_frames,
                underrun_samples=self._underrun_samples,
                clears=self._clears,
                cleared_samples=self._cleared_samples,
                last_clear_latency_s=self._last_clear_latency,
                resyncs=self._resyncs,
                resync_total_s=self._resync_total,
                queued_samples=self._ring.fill,
            )

    # -- consumer side (aiortc's sender) ------------------------------------------------------

    async def recv(self) -> av.AudioFrame:
        """The next frame, returned when it is due: ``start + pts / sample_rate``.

        Raises :class:`aiortc.mediastreams.MediaStreamError` once the track is stopped.
        """
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        due = self._start + self._pts / self._rate
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
            if self.readyState != "live":
                raise MediaStreamError
        elif -wait > self._max_catchup:
            # Too late to catch up without a burst: move the schedule, keep every sample.
            self._start -= wait
            due -= wait
            self._resyncs += 1
            self._resync_total -= wait
        return self._next_frame(due)

    def _next_frame(self, due: float) -> av.AudioFrame:
        n = self._frame_samples
        # Only this method reads the ring, so its read position cannot move under us; writes and
        # clears meanwhile only touch positions at or after it.
        first = self._ring.read_position
        samples = self._ring.read(n)
        real = self._ring.read_position - first
        passed = self._ring.pop_marks()
        with self._lock:
            for position, mark in passed:
                offset = position - first
                self._played_marks.append(PlayedMark(mark, position, self._pts + offset, due + offset / self._rate))
            if real < n:
                self._underrun_frames += 1
                self._underrun_samples += n - real
            if self._clear_pending_since is not None:
                self._last_clear_latency = time.monotonic() - self._clear_pending_since
                self._clear_pending_since = None
            pts = self._pts
            self._pts += n
            self._frames_sent += 1
        pcm = float_to_s16(samples)
        if self._channels == 2:
            pcm = np.repeat(pcm, 2)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout=self._layout)
        frame.sample_rate = self._rate
        frame.pts = pts
        frame.time_base = self._time_base
        return frame
