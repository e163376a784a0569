"""A fixed-capacity float32 sample ring for one producer and one consumer, with position marks.

Positions: every sample that enters the ring gets an absolute *position*, the index it will have in
the sequence of real samples the reader receives. ``read_position`` (== ``total_read``) counts the
real samples read so far; ``write_position`` is where the next written sample goes. Silence padded
in on underrun has no position. :meth:`RingBuffer.clear` rewinds ``write_position`` to just after
what is kept, so positions stay contiguous for the reader and a mark's position is exactly the
read position of the sample it labels.

Marks: any object attached to a position (e.g. ``(context_id, word_index)``) by
``write(samples, mark=obj)`` or :meth:`RingBuffer.mark`. A mark is *passed* once the sample at
its position has been read. The reader collects passed marks with :meth:`~RingBuffer.pop_marks`
or :meth:`~RingBuffer.marks_until`, and asks which mark a played sample belongs to with
:meth:`~RingBuffer.mark_at`. Marks on samples that :meth:`~RingBuffer.clear` drops are dropped
with them.

Overflow never loses audio silently: a write that does not fit writes nothing, and either raises
:class:`RingOverflowError` (``overflow="raise"``) or returns 0 (``overflow="refuse"``); both count
an overflow event.

Threading: every public method and property takes one internal :class:`threading.Lock`, so a
producer thread and a consumer thread (or more) may share a ring. Critical sections are one or
two ``memcpy``-sized numpy slice copies, so contention is negligible at audio frame rates.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from typing import Final, Generic, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from speakwire.errors import AudioFormatError, RingOverflowError

__all__ = ["OverflowPolicy", "RingBuffer"]

OverflowPolicy = Literal["raise", "refuse"]
M = TypeVar("M")


class RingBuffer(Generic[M]):
    """Fixed-capacity mono float32 FIFO: ``write`` samples in, ``read(n)`` exactly ``n`` out.

    ``capacity`` is in samples. ``mark_history`` bounds how many delivered marks (already
    returned by :meth:`pop_marks`/:meth:`marks_until`) are kept for :meth:`mark_at`; marks not
    yet delivered are never pruned. Generic in the mark type:
    ``RingBuffer[tuple[str, int]]`` for ``(context_id, word_index)`` marks.
    """

    def __init__(
        self, capacity: int, *, overflow: OverflowPolicy = "raise", mark_history: int = 4096
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0:
            raise ValueError(f"capacity must be a positive int (samples), got {capacity!r}")
        if overflow not in ("raise", "refuse"):
            raise ValueError(f"overflow must be 'raise' or 'refuse', got {overflow!r}")
        if isinstance(mark_history, bool) or not isinstance(mark_history, int) or mark_history < 1:
            raise ValueError(f"mark_history must be an int >= 1, got {mark_history!r}")
        self._capacity: Final = capacity
        self._overflow: Final = overflow
        self._mark_history: Final = mark_history
        self._buffer = np.zeros(capacity, dtype=np.float32)
        self._lock = threading.Lock()
        self._write_pos = 0  # absolute position of the next written sample
        self._read_pos = 0  # absolute position of the next sample to read
        self._total_written = 0
        self._dropped = 0
        self._underrun_samples = 0
        self._underrun_events = 0
        self._overflow_events = 0
        # Marks sorted by position (ties keep insertion order). Those at positions < _read_pos
        # have been passed; the first _delivered_count were handed out by pop_marks/marks_until.
        self._mark_positions: list[int] = []
        self._mark_objects: list[M] = []
        self._delivered_count = 0

    # --- properties -----------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Maximum number of queued samples."""
        return self._capacity

    @property
    def overflow(self) -> OverflowPolicy:
        """The overflow policy: ``"raise"`` or ``"refuse"``."""
        return self._overflow

    @property
    def fill(self) -> int:
        """Samples queued and not yet read."""
        with self._lock:
            return self._write_pos - self._read_pos

    @property
    def free(self) -> int:
        """Samples a write can still take."""
        with self._lock:
            return self._capacity - (self._write_pos - self._read_pos)

    @property
    def write_position(self) -> int:
        """Absolute position the next written sample will get."""
        with self._lock:
            return self._write_pos

    @property
    def read_position(self) -> int:
        """Absolute position of the next sample to read; equals :attr:`total_read`."""
        with self._lock:
            return self._read_pos

    @property
    def total_written(self) -> int:
        """Samples accepted by :meth:`write` since creation (including ones later cleared)."""
        with self._lock:
            return self._total_written

    @property
    def total_read(self) -> int:
        """Real samples :meth:`read` has returned (silence padding is not counted)."""
        with self._lock:
            return self._read_pos

    @property
    def total_dropped(self) -> int:
        """Samples :meth:`clear` has dropped since creation."""
        with self._lock:
            return self._dropped

    @property
    def underrun_samples(self) -> int:
        """Silence samples :meth:`read` padded in because the ring ran short."""
        with self._lock:
            return self._underrun_samples

    @property
    def underrun_events(self) -> int:
        """Reads that came up short (each one counts once, however short).

        A read of an idle, empty ring counts too: a consumer that paces out silence between
        turns can look at :attr:`fill` first to tell idling from starvation.
        """
        with self._lock:
            return self._underrun_events

    @property
    def overflow_events(self) -> int:
        """Writes refused (or raised) because they did not fit."""
        with self._lock:
            return self._overflow_events

    # --- producer side ----------------------------------------------------------------------------

    def write(self, samples: npt.ArrayLike, mark: M | None = None) -> int:
        """Queue ``samples`` (1-D, floating point); return how many were written.

        All or nothing: a write that does not fit raises :class:`RingOverflowError` naming the
        shortfall (``overflow="raise"``) or returns 0 (``overflow="refuse"``); nothing is written
        and ``mark`` is not attached. Otherwise ``mark`` (when not None) is attached to the
        write's first sample, i.e. the current :attr:`write_position`.
        """
        array = np.asarray(samples)
        if array.ndim != 1:
            raise AudioFormatError(f"ring buffer takes mono (1-D) samples, got shape {array.shape}")
        if array.dtype.kind != "f":
            raise AudioFormatError(f"ring buffer takes floating point samples, got dtype {array.dtype}")
        n = array.size
        with self._lock:
            free = self._capacity - (self._write_pos - self._read_pos)
            if n > free:
                self._overflow_events += 1
                if self._overflow == "refuse":
                    return 0
                raise RingOverflowError(
                    f"write of {n} samples does not fit: {free} of {self._capacity} free, "
                    f"{n - free} samples over; nothing was written"
                )
            if mark is not None:
                self._add_mark(self._write_pos, mark)
            start = self._write_pos % self._capacity
            first = min(n, self._capacity - start)
            self._buffer[start : start + first] = array[:first]
            self._buffer[: n - first] = array[first:]
            self._write_pos += n
            self._total_written += n
            return n

    def mark(self, obj: M) -> int:
        """Attach ``obj`` to the current write position (the next sample written); return it."""
        with self._lock:
            self._add_mark(self._write_pos, obj)
            return self._write_pos

    def _add_mark(self, position: int, obj: M) -> None:
        # Positions only grow between clears, and clear() truncates the tail, so append keeps order.
        self._mark_positions.append(position)
        self._mark_objects.append(obj)

    # --- consumer side ----------------------------------------------------------------------------

    def read(self, n: int) -> np.ndarray:
        """Return exactly ``n`` samples: queued ones first, then silence if the ring runs short."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"read size must be an int >= 0, got {n!r}")
        out = np.zeros(int(n), dtype=np.float32)
        with self._lock:
            available = min(int(n), self._write_pos - self._read_pos)
            start = self._read_pos % self._capacity
            first = min(available, self._capacity - start)
            out[:first] = self._buffer[start : start + first]
            out[first:available] = self._buffer[: available - first]
            self._read_pos += available
            if available < n:
                self._underrun_samples += int(n) - available
                self._underrun_events += 1
            self._prune_marks()
        return out

    def _passed_count(self) -> int:
        return bisect_left(self._mark_positions, self._read_pos)

    def _prune_marks(self) -> None:
        # Forget the oldest delivered marks beyond the history bound; pending ones always stay.
        excess = min(self._delivered_count, self._passed_count() - self._mark_history)
        if excess > 0:
            del self._mark_positions[:excess]
            del self._mark_objects[:excess]
            self._delivered_count -= excess

    def pop_marks(self) -> list[tuple[int, M]]:
        """Return the marks passed since the last call, as ``(position, obj)`` in position order."""
        with self._lock:
            return self._deliver(self._passed_count())

    def marks_until(self, position: int) -> list[tuple[int, M]]:
        """Like :meth:`pop_marks`, but only marks at positions < ``position`` (e.g. the playout
        position when the reader runs ahead of the speaker); later passed marks stay pending."""
        with self._lock:
            end = min(self._passed_count(), bisect_left(self._mark_positions, position))
            return self._deliver(end)

    def _deliver(self, end: int) -> list[tuple[int, M]]:
        start = self._delivered_count
        if end <= start:
            return []
        self._delivered_count = end
        return list(zip(self._mark_positions[start:end], self._mark_objects[start:end], strict=True))

    def mark_at(self, position: int) -> tuple[int, M] | None:
        """The most recent mark at or before ``position`` as ``(position, obj)``, or None.

        Looks at every mark still held: pending ones and the last ``mark_history`` passed ones.
        When several marks share a position, the last attached wins.
        """
        with self._lock:
            index = bisect_right(self._mark_positions, position) - 1
            if index < 0:
                return None
            return self._mark_positions[index], self._mark_objects[index]

    # --- barge-in ------------------------------------------------------------------------------------

    def clear(self, fade_samples: int = 0) -> int:
        """Drop queued audio; return how many samples were dropped.

        With ``fade_samples > 0`` the next ``min(fade_samples, fill)`` samples stay queued under a
        linear fade (gain ``1 - i/k`` for the i-th of k samples: the first is untouched, the
        last is ``1/k``, and the silence after it is the ramp's zero), so playout stops without
        a click. Marks on dropped samples, and marks at the write position, are removed.
        """
        if isinstance(fade_samples, bool) or not isinstance(fade_samples, (int, np.integer)) or fade_samples < 0:
            raise ValueError(f"fade_samples must be an int >= 0, got {fade_samples!r}")
        with self._lock:
            fill = self._write_pos - self._read_pos
            keep = min(int(fade_samples), fill)
            if keep:
                gain = 1.0 - np.arange(keep, dtype=np.float64) / keep
                start = self._read_pos % self._capacity
                first = min(keep, self._capacity - start)
                self._buffer[start : start + first] *= gain[:first].astype(np.float32)
                self._buffer[: keep - first] *= gain[first:].astype(np.float32)
            dropped = fill - keep
            self._write_pos = self._read_pos + keep
            self._dropped += dropped
            # Delivered marks were passed (position < read position <= new write position): none is cut.
            cut = bisect_left(self._mark_positions, self._write_pos)
            del self._mark_positions[cut:]
            del self._mark_objects[cut:]
            return dropped

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"RingBuffer(capacity={self._capacity}, overflow={self._overflow!r}, "
                f"fill={self._write_pos - self._read_pos})"
            )
