"""speakwire.dsp.ring: exact contents, overflow policy, underruns, barge-in clears, marks, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from speakwire.dsp.ring import RingBuffer
from speakwire.errors import AudioFormatError, RingOverflowError


def ramp(start: int, n: int) -> np.ndarray:
    # Distinct, exactly representable values so every sample can be traced.
    return (np.arange(start, start + n) / 1024).astype(np.float32)


# --- construction -------------------------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [0, -1, 2.5, True, "8"])
def test_bad_capacity(capacity: object) -> None:
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(capacity)  # type: ignore[arg-type]


def test_bad_policy_and_history() -> None:
    with pytest.raises(ValueError, match="'drop'"):
        RingBuffer(8, overflow="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mark_history"):
        RingBuffer(8, mark_history=0)


def test_fresh_ring() -> None:
    ring: RingBuffer[str] = RingBuffer(8)
    assert (ring.capacity, ring.fill, ring.free, ring.overflow) == (8, 0, 8, "raise")
    assert (ring.total_written, ring.total_read, ring.underrun_samples, ring.underrun_events) == (0, 0, 0, 0)
    assert ring.overflow_events == 0 and ring.mark_at(0) is None and ring.pop_marks() == []
    assert repr(ring) == "RingBuffer(capacity=8, overflow='raise', fill=0)"


def test_bad_sample_arrays() -> None:
    ring: RingBuffer[str] = RingBuffer(8)
    with pytest.raises(AudioFormatError, match=r"shape \(2, 2\)"):
        ring.write(np.zeros((2, 2), np.float32))
    with pytest.raises(AudioFormatError, match="int16"):
        ring.write(np.zeros(2, np.int16))
    with pytest.raises(ValueError, match="-1"):
        ring.read(-1)
    with pytest.raises(ValueError, match="fade_samples"):
        ring.clear(-3)
    assert ring.total_written == 0


# --- reading and writing ------------------------------------------------------------------------------


def test_write_then_read_exact_values() -> None:
    ring: RingBuffer[str] = RingBuffer(8)
    assert ring.write(ramp(0, 5)) == 5
    assert (ring.fill, ring.free) == (5, 3)
    out = ring.read(3)
    assert out.dtype == np.float32 and np.array_equal(out, ramp(0, 3))
    assert np.array_equal(ring.read(2), ramp(3, 2))
    assert (ring.fill, ring.total_written, ring.total_read) == (0, 5, 5)


def test_wrap_around_keeps_order() -> None:
    ring: RingBuffer[str] = RingBuffer(8)
    ring.write(ramp(0, 6))
    assert np.array_equal(ring.read(5), ramp(0, 5))
    assert ring.write(ramp(6, 7)) == 7  # occupies slots 6, 7, 0..4: wraps
    assert ring.fill == 8 and ring.free == 0
    assert np.array_equal(ring.read(8), ramp(5, 8))
    for _ in range(5):  # many laps with a chunk size that does not divide the capacity
        ring.write(ramp(100, 5))
        assert np.array_equal(ring.read(5), ramp(100, 5))


def test_exact_capacity_write_and_one_more() -> None:
    ring: RingBuffer[str] = RingBuffer(16)
    assert ring.write(ramp(0, 16)) == 16
    with pytest.raises(RingOverflowError) as info:
        ring.write(ramp(16, 1))
    assert "write of 1 samples does not fit: 0 of 16 free, 1 samples over" in str(info.value)
    assert isinstance(info.value, BufferError)
    assert (ring.fill, ring.total_written, ring.overflow_events) == (16, 16, 1)
    assert np.array_equal(ring.read(16), ramp(0, 16))


def test_overflow_raise_writes_nothing_and_names_the_shortfall() -> None:
    ring: RingBuffer[str] = RingBuffer(10)
    ring.write(ramp(0, 7))
    with pytest.raises(RingOverflowError, match="write of 5 samples does not fit: 3 of 10 free, 2 samples over"):
        ring.write(ramp(7, 5), mark="lost")
    assert ring.fill == 7 and ring.write_position == 7 and ring.mark_at(100) is None
    assert np.array_equal(ring.read(10)[:7], ramp(0, 7))


def test_overflow_refuse_returns_zero_and_counts() -> None:
    ring: RingBuffer[str] = RingBuffer(10, overflow="refuse")
    ring.write(ramp(0, 7))
    assert ring.write(ramp(7, 5), mark="lost") == 0
    assert ring.write(ramp(7, 11)) == 0  # larger than the whole ring
    assert (ring.overflow_events, ring.fill, ring.total_written) == (2, 7, 7)
    assert ring.mark_at(100) is None
    assert ring.write(ramp(7, 3)) == 3
    assert np.array_equal(ring.read(10), ramp(0, 10))


def test_write_larger_than_capacity_on_empty_ring() -> None:
    ring: RingBuffer[str] = RingBuffer(4)
    with pytest.raises(RingOverflowError, match="write of 5 samples does not fit: 4 of 4 free, 1 samples over"):
        ring.write(ramp(0, 5))


def test_zero_length_reads_and_writes() -> None:
    ring: RingBuffer[str] = RingBuffer(4)
    assert ring.read(0).shape == (0,)
    assert ring.write(np.zeros(0, np.float32)) == 0
    assert (ring.underrun_events, ring.overflow_events, ring.total_written) == (0, 0, 0)
    ring.write(ramp(0, 4))
    assert ring.write(np.zeros(0, np.float32)) == 0  # full ring: an empty write still fits
    assert ring.read(0).shape == (0,) and ring.fill == 4 and ring.overflow_events == 0


def test_underrun_pads_silence_and_counts() -> None:
    ring: RingBuffer[str] = RingBuffer(8)
    ring.write(ramp(1, 3))
    out = ring.read(5)
    assert out.tolist() == [*ramp(1, 3).tolist(), 0.0, 0.0]
    assert (ring.underrun_samples, ring.underrun_events, ring.total_read) == (2, 1, 3)
    assert ring.read(4).tolist() == [0.0] * 4
    assert (ring.underrun_samples, ring.underrun_events, ring.total_read) == (6, 2, 3)
    ring.write(ramp(10, 2))
    assert np.array_equal(ring.read(2), ramp(10, 2))  # an exact read is not an underrun
    assert (ring.underrun_samples, ring.underrun_events) == (6, 2)


def test_float64_and_lists_are_converted() -> None:
    ring: RingBuffer[str] = RingBuffer(4)
    ring.write([0.5, -0.25])
    ring.write(np.array([0.125], dtype=np.float64))
    assert ring.read(3).tolist() == [0.5, -0.25, 0.125]


def test_numpy_integer_read_size() -> None:
    ring: RingBuffer[str] = RingBuffer(4)
    ring.write(ramp(0, 4))
    assert np.array_equal(ring.read(np.int64(2)), ramp(0, 2))


# --- clear / barge-in ---------------------------------------------------------------------------------


def test_clear_drops_everything_queued() -> None:
    ring: RingBuffer[str] = RingBuffer(8)
    ring.write(ramp(0, 6))
    ring.read(2)
    assert ring.clear() == 4
    assert (ring.fill, ring.total_dropped, ring.write_position, ring.total_written) == (0, 4, 2, 6)
    assert ring.read(3).tolist() == [0.0] * 3
    assert ring.clear() == 0


def test_clear_with_fade_keeps_a_linear_ramp() -> None:
    ring: RingBuffer[str] = RingBuffer(16)
    ring.write(np.full(12, 0.5, np.float32))
    assert ring.clear(fade_samples=4) == 8
    assert ring.fill == 4
    assert ring.read(6).tolist() == [0.5, 0.375, 0.25, 0.125, 0.0, 0.0]


def test_fade_longer_than_queue_fades_what_is_there() -> None:
    ring: RingBuffer[str] = RingBuffer(16)
    ring.write(np.ones(4, np.float32))
    assert ring.clear(fade_samples=100) == 0
    assert ring.read(4).tolist() == [1.0, 0.75, 0.5, 0.25]


def test_clear_during_wrap_fades_across_the_seam() -> None:
    ring: RingBuffer[str] = RingBuffer(8)
    ring.write(np.ones(6, np.float32))
    ring.read(6)
    ring.write(np.full(7, -1.0, np.float32))  # slots 6, 7, 0..4
    assert ring.clear(fade_samples=4) == 3  # the fade covers slots 6, 7, 0, 1
    assert ring.read(5).tolist() == [-1.0, -0.75, -0.5, -0.25, 0.0]
    ring.write(ramp(0, 8))  # the write position was rewound: the ring is whole again
    assert np.array_equal(ring.read(8), ramp(0, 8))


def test_positions_stay_contiguous_after_clear() -> None:
    ring: RingBuffer[str] = RingBuffer(32)
    ring.write(ramp(0, 10), mark="turn1")
    ring.read(4)
    ring.clear(fade_samples=2)  # keeps positions 4, 5
    assert ring.write_position == 6
    assert ring.write(ramp(50, 3), mark="turn2") == 3
    ring.read(5)
    assert ring.pop_marks() == [(0, "turn1"), (6, "turn2")]
    assert ring.read_position == ring.total_read == 9


# --- marks --------------------------------------------------------------------------------------------


def test_marks_are_passed_when_their_sample_is_read() -> None:
    ring: RingBuffer[tuple[str, int]] = RingBuffer(16)
    ring.write(ramp(0, 4), mark=("ctx", 0))
    assert ring.mark(("ctx", 1)) == 4
    ring.write(ramp(4, 4))
    ring.write(ramp(8, 4), mark=("ctx", 2))
    assert ring.pop_marks() == []
    ring.read(4)
    assert ring.pop_marks() == [(0, ("ctx", 0))]
    ring.read(1)
    assert ring.pop_marks() == [(4, ("ctx", 1))]
    assert ring.pop_marks() == []
    ring.read(7)
    assert ring.pop_marks() == [(8, ("ctx", 2))]
    assert ring.mark_at(3) == (0, ("ctx", 0))
    assert ring.mark_at(4) == (4, ("ctx", 1))
    assert ring.mark_at(11) == (8, ("ctx", 2))
    assert ring.mark_at(-1) is None


def test_mark_on_empty_write_and_shared_positions() -> None:
    ring: RingBuffer[str] = RingBuffer(8)
    assert ring.write(np.zeros(0, np.float32), mark="a") == 0
    ring.mark("b")
    ring.write(ramp(0, 2), mark="c")
    ring.read(1)
    assert ring.pop_marks() == [(0, "a"), (0, "b"), (0, "c")]
    assert ring.mark_at(0) == (0, "c")  # the last attached wins


def test_marks_until_holds_back_later_marks() -> None:
    ring: RingBuffer[str] = RingBuffer(64)
    for i in range(4):
        ring.write(ramp(i * 10, 10), mark=f"w{i}")
    ring.read(40)
    assert ring.marks_until(10) == [(0, "w0")]
    assert ring.marks_until(10) == []
    assert ring.marks_until(31) == [(10, "w1"), (20, "w2"), (30, "w3")]
    ring.write(ramp(0, 5), mark="unread")
    assert ring.marks_until(1000) == []  # not passed by the reader yet
    assert ring.pop_marks() == []


def test_marks_across_wrap() -> None:
    ring: RingBuffer[int] = RingBuffer(8)
    for lap in range(6):
        ring.write(ramp(0, 5), mark=lap)
        ring.read(5)
        assert ring.pop_marks() == [(5 * lap, lap)]
    assert ring.mark_at(29) == (25, 5) and ring.mark_at(24) == (20, 4)


def test_clear_drops_marks_of_cleared_samples() -> None:
    ring: RingBuffer[str] = RingBuffer(16)
    ring.write(ramp(0, 4), mark="played")
    ring.write(ramp(4, 4), mark="faded")
    ring.write(ramp(8, 4), mark="dropped")
    ring.mark("pending")
    ring.read(3)
    assert ring.clear(fade_samples=3) == 6  # keeps positions 3, 4, 5
    assert ring.mark_at(100) == (4, "faded")
    ring.read(3)
    assert ring.pop_marks() == [(0, "played"), (4, "faded")]
    ring.write(ramp(0, 1), mark="next")
    assert ring.mark_at(6) == (6, "next")


def test_clear_over_the_wrap_drops_marks() -> None:
    ring: RingBuffer[str] = RingBuffer(8)
    ring.write(ramp(0, 6), mark="a")
    ring.read(6)
    ring.write(ramp(6, 3), mark="b")  # slots 6, 7, 0
    ring.write(ramp(9, 3), mark="c")  # slots 1..3
    ring.clear(fade_samples=2)
    assert ring.pop_marks() == [(0, "a")]
    ring.read(8)
    assert ring.pop_marks() == [(6, "b")]
    assert ring.mark_at(1000) == (6, "b")


def test_mark_history_is_bounded_but_pending_marks_are_kept() -> None:
    ring: RingBuffer[int] = RingBuffer(1000, mark_history=3)
    for i in range(10):
        ring.write(ramp(0, 10), mark=i)
    ring.read(100)
    ring.pop_marks()
    ring.read(0)  # pruning happens on reads
    assert ring.mark_at(95) == (90, 9) and ring.mark_at(70) == (70, 7)
    assert ring.mark_at(65) is None  # older history forgotten
    undelivered: RingBuffer[int] = RingBuffer(1000, mark_history=1)
    for i in range(10):
        undelivered.write(ramp(0, 10), mark=i)
    undelivered.read(100)
    assert [obj for _, obj in undelivered.pop_marks()] == list(range(10))


# --- threads ------------------------------------------------------------------------------------------


def test_one_producer_one_consumer_thread_lose_nothing() -> None:
    total = 200_000
    ring: RingBuffer[int] = RingBuffer(997, overflow="refuse")
    source = ramp(0, total)
    received: list[np.ndarray] = []
    marks: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            rng = np.random.default_rng(1)
            pos = 0
            while pos < total:
                size = min(int(rng.integers(1, 400)), total - pos)
                if ring.write(source[pos : pos + size], mark=pos) == size:
                    pos += size
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    def consume() -> None:
        try:
            rng = np.random.default_rng(2)
            got = 0
            while got < total:
                size = int(rng.integers(1, 300))
                fill = ring.fill  # only read what is there: the stream must come out unpadded
                chunk = ring.read(min(size, fill))
                received.append(chunk)
                got += chunk.size
                marks.extend(ring.pop_marks())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and not any(t.is_alive() for t in threads)
    assert np.array_equal(np.concatenate(received), source)
    assert all(position == obj for position, obj in marks)
    assert ring.underrun_events == 0 and ring.total_read == total


# --- model-based state machine ------------------------------------------------------------------------


class RingModel(RuleBasedStateMachine):
    """The ring against a plain Python list of queued samples and a list of marks."""

    @initialize(capacity=st.integers(1, 40), policy=st.sampled_from(["raise", "refuse"]))
    def setup(self, capacity: int, policy: str) -> None:
        self.ring: RingBuffer[int] = RingBuffer(capacity, overflow=policy)  # type: ignore[arg-type]
        self.capacity, self.policy = capacity, policy
        self.queue: list[np.float32] = []
        self.read_pos = self.written = self.dropped = 0
        self.underrun_samples = self.underrun_events = self.overflow_events = 0
        self.marks: list[tuple[int, int]] = []  # every live mark, in order
        self.delivered = 0
        self.next_value = 0
        self.next_mark = 0

    @property
    def write_pos(self) -> int:
        return self.read_pos + len(self.queue)

    @rule(n=st.integers(0, 45), with_mark=st.booleans())
    def write(self, n: int, with_mark: bool) -> None:
        samples = ramp(self.next_value, n)
        self.next_value += n
        mark = self.next_mark if with_mark else None
        self.next_mark += 1
        if n > self.capacity - len(self.queue):
            self.overflow_events += 1
            if self.policy == "raise":
                with pytest.raises(RingOverflowError, match=f"{n - (self.capacity - len(self.queue))} samples over"):
                    self.ring.write(samples, mark=mark)
            else:
                assert self.ring.write(samples, mark=mark) == 0
            return
        if mark is not None:
            self.marks.append((self.write_pos, mark))
        assert self.ring.write(samples, mark=mark) == n
        self.queue.extend(samples)
        self.written += n

    @rule()
    def mark(self) -> None:
        self.marks.append((self.write_pos, self.next_mark))
        assert self.ring.mark(self.next_mark) == self.write_pos
        self.next_mark += 1

    @rule(n=st.integers(0, 45))
    def read(self, n: int) -> None:
        real = self.queue[:n]
        del self.queue[:n]
        expected = np.array(real + [np.float32(0)] * (n - len(real)), dtype=np.float32)
        assert np.array_equal(self.ring.read(n), expected)
        self.read_pos += len(real)
        if len(real) < n:
            self.underrun_samples += n - len(real)
            self.underrun_events += 1

    @rule(fade=st.integers(0, 45))
    def clear(self, fade: int) -> None:
        keep = min(fade, len(self.queue))
        gain = (1.0 - np.arange(keep, dtype=np.float64) / max(keep, 1)).astype(np.float32)
        self.queue = [np.float32(v * g) for v, g in zip(self.queue[:keep], gain, strict=True)]
        dropped_now = self.ring.clear(fade)
        self.dropped += dropped_now
        self.marks = [m for m in self.marks if m[0] < self.write_pos]
        self.delivered = min(self.delivered, len(self.marks))

    def _passed(self) -> int:
        return sum(1 for position, _ in self.marks if position < self.read_pos)

    @rule()
    def pop_marks(self) -> None:
        passed = self._passed()
        assert self.ring.pop_marks() == self.marks[self.delivered : passed]
        self.delivered = max(self.delivered, passed)

    @rule(back=st.integers(0, 50))
    def marks_until(self, back: int) -> None:
        limit = self.read_pos - back
        end = sum(1 for position, _ in self.marks if position < min(limit, self.read_pos))
        assert self.ring.marks_until(limit) == self.marks[self.delivered : max(end, self.delivered)]
        self.delivered = max(self.delivered, end)

    @precondition(lambda self: self.write_pos > 0)
    @rule(data=st.data())
    def mark_at(self, data: st.DataObject) -> None:
        position = data.draw(st.integers(-1, self.write_pos + 2))
        before = [m for m in self.marks if m[0] <= position]
        assert self.ring.mark_at(position) == (before[-1] if before else None)

    @invariant()
    def counters_agree(self) -> None:
        ring = self.ring
        assert ring.fill == len(self.queue) and ring.free == self.capacity - len(self.queue)
        assert ring.total_read == ring.read_position == self.read_pos
        assert ring.write_position == self.write_pos
        assert ring.total_written == self.written and ring.total_dropped == self.dropped
        assert (ring.underrun_samples, ring.underrun_events) == (self.underrun_samples, self.underrun_events)
        assert ring.overflow_events == self.overflow_events


RingModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestRingModel = RingModel.TestCase
