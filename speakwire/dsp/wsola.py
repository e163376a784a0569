"""Streaming WSOLA time-stretching: change speech tempo, keep its pitch.

Each step emits one hop ``H`` of output: the previous step's natural continuation (its ``tail``)
cross-fades over ``O`` samples into an input segment chosen near where the ideal time map says
this hop belongs, then that segment is copied up to the end of the hop. The segment start is the
position within ``±W`` of the target whose first ``O`` samples best match the tail (normalised
cross-correlation): first on a block-summed copy of the input at about 4 kHz, then at full rate
within one block of the winner. When the winner is the natural continuation itself the hop is a
plain copy, which is why speed 1.0 returns the input bit for bit.

Every decision depends only on absolute input positions and on the speed schedule, never on
where a chunk ended, and the compiled kernel uses no fast-math reassociation: the output is
identical whatever the chunk sizes. A step runs as soon as all the input it may read is there.

Sizes (fixed in milliseconds, rounded to samples): hop 18 ms, overlap 9 ms, search ±7.5 ms
(a 15 ms range holds a whole pitch period down to 67 Hz), blocks of ``round(rate / 4000)``.
Measured against 15 and 20 ms hops on the warble tone and onset markers: 18/9 keeps the
envelope error below sox's at every speed while onsets stay within 9 ms peak to peak (the
drift inside one hop is ``±hop/2 * |1 - 1/speed|`` of output time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from speakwire.dsp.speed import DEFAULT_POLICY, SpeedPolicy
from speakwire.dsp.timemap import TimeMap
from speakwire.errors import AudioFormatError, ContextStateError, UnsupportedSampleRateError

__all__ = ["MAX_SAMPLE_RATE", "MIN_SAMPLE_RATE", "Stretcher", "WsolaLayout", "time_stretch"]

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000

_F32 = np.dtype(np.float32)
_EMPTY = np.empty(0, np.float32)
_EMPTY.flags.writeable = False  # shared by every empty result
_NO_INPUT = np.empty(0, np.float32)  # writeable: a read-only array would compile a second kernel

# Integer state slots shared with the kernel.
_BASE = 0  # absolute input index of buf[0]; a multiple of the block size
_NIN = 1  # input samples received
_NDEC = 2  # complete blocks summed into dec (absolute count)
_K = 3  # index of the next step
_Q = 4  # absolute input position of the tail (natural continuation of the last segment)
_OUT = 5  # output samples emitted
_NSCHED = 6  # rows in use in the schedule array
_BAD = 7  # index of the first non-finite sample of the rejected chunk, or -1
_HOP = 10
_OVERLAP = 11
_SEARCH = 12
_BLOCK = 13
_STATE_SIZE = 16


@dataclass(frozen=True, slots=True)
class WsolaLayout:
    """The WSOLA sizes used at one sample rate, in samples."""

    sample_rate: int
    #: output samples emitted per step
    hop: int
    #: cross-fade length between the previous segment's continuation and the new segment
    overlap: int
    #: the segment start is searched within ``±search`` of its ideal position
    search: int
    #: block size of the coarse search (block sums bring the signal to about 4 kHz)
    block: int

    @classmethod
    def for_rate(cls, sample_rate: int) -> WsolaLayout:
        """The layout used at ``sample_rate``."""
        block = max(1, round(sample_rate / 4000))
        return cls(
            sample_rate=sample_rate,
            hop=round(0.018 * sample_rate),
            overlap=round(0.009 * sample_rate),
            search=round(0.0075 * sample_rate),
            block=block,
        )

    @property
    def segment(self) -> int:
        """Input samples one step reads from its segment start (hop plus the next tail)."""
        return self.hop + self.overlap

    def latency(self, speed: float) -> int:
        """Input samples that must follow a sample before all output derived from it is returned.

        A step waits for its whole search range and segment, and (at high speeds) for the input
        that maps past the end of its hop, so that no output can outrun the final length.
        """
        drift = math.ceil(max(0.0, speed - 1.0) * self.hop / 2) + 1
        return max(self.search + self.segment + self.block + drift, math.ceil(speed * self.hop) + 2)


# --------------------------------------------------------------------------------------------
# The compiled kernel. nogil so other threads (the event loop) run meanwhile; cache so the JIT
# cost is paid once per machine; no fastmath so sums keep their order and results stay exact.


@njit(nogil=True, cache=True)
def _source_position(y, sched, nsched):
    i = nsched - 1
    while i > 0 and sched[i, 1] > y:
        i -= 1
    return sched[i, 0] + (y - sched[i, 1]) * sched[i, 2], sched[i, 2]


@njit(nogil=True, cache=True)
def _step_target(k, hop, sched, nsched):
    # Centre the segment on the ideal map: its middle should come from X(middle of the hop).
    x, speed = _source_position(k * hop + 0.5 * hop, sched, nsched)
    return np.int64(math.floor(x - 0.5 * hop + 0.5)), speed


@njit(nogil=True, cache=True)
def _best(acc, energy, count, first, step, target):
    # Ranks acc / sqrt(energy) through its signed square, acc * |acc| / energy: same order, no sqrt.
    best_pos = first
    best_score = -np.inf
    for i in range(count):
        pos = first + i * step
        a = np.float64(acc[i])
        score = a * abs(a) / (np.float64(energy[i]) + 1e-30)
        if score > best_score or (score == best_score and abs(pos - target) < abs(best_pos - target)):
            best_score = score
            best_pos = pos
    return best_pos, best_score


@njit(nogil=True, cache=True)
def _dot_energy(a, b):
    # Four interleaved partial sums, combined in a fixed order: the sum order depends only on the
    # data, never on alignment, yet the adds no longer wait on each other.
    n = a.shape[0]
    c0 = c1 = c2 = c3 = np.float32(0.0)
    e0 = e1 = e2 = e3 = np.float32(0.0)
    m = n - n % 4
    for j in range(0, m, 4):
        v0 = b[j]
        v1 = b[j + 1]
        v2 = b[j + 2]
        v3 = b[j + 3]
        c0 += a[j] * v0
        c1 += a[j + 1] * v1
        c2 += a[j + 2] * v2
        c3 += a[j + 3] * v3
        e0 += v0 * v0
        e1 += v1 * v1
        e2 += v2 * v2
        e3 += v3 * v3
    for j in range(m, n):
        v = b[j]
        c0 += a[j] * v
        e0 += v * v
    return (c0 + c1) + (c2 + c3), (e0 + e1) + (e2 + e3)


@njit(nogil=True, cache=True)
def _search(buf, dec, tail, refd, acc, energy, base, target, lo, hi, q, overlap, block):
    nblocks = overlap // block
    for j in range(nblocks):
        r = np.float32(0.0)
        for i in range(block):
            r += tail[j * block + i]
        refd[j] = r
    # Coarse: candidates on the block grid, compared block sum against block sum.
    b0 = (lo + block - 1) // block
    b1 = hi // block
    count = b1 - b0 + 1
    centre = target
    if count > 0:
        off = b0 - base // block
        acc[:count] = 0.0
        energy[:count] = 0.0
        for j in range(nblocks):
            r = refd[j]
            # Slices keep indices provably >= 0: no wraparound checks, so the loop vectorises.
            d = dec[off + j : off + j + count]
            for i in range(count):
                v = d[i]
                acc[i] += r * v
                energy[i] += v * v
        centre, _ = _best(acc, energy, count, b0 * block, block, target)
    # Refine at full rate within one block of the coarse winner.
    r0 = max(lo, centre - block + 1)
    r1 = min(hi, centre + block - 1)
    count = r1 - r0 + 1
    off = r0 - base
    # Whole vectors of 8 lanes: the extra candidates cost nothing and are never chosen.
    lanes = (count + 7) // 8 * 8
    acc[:lanes] = 0.0
    energy[:lanes] = 0.0
    for j in range(overlap):
        r = tail[j]
        d = buf[off + j : off + j + lanes]
        for i in range(lanes):
            v = d[i]
            acc[i] += r * v
            energy[i] += v * v
    pos, score = _best(acc, energy, count, r0, 1, target)
    # The natural continuation matches the tail perfectly; take it whenever it is in range.
    if lo <= q <= hi and (q < r0 or q > r1):
        c, e = _dot_energy(tail, buf[q - base : q - base + overlap])
        qscore = np.float64(c) * abs(np.float64(c)) / (np.float64(e) + 1e-30)
        if qscore > score or (qscore == score and abs(q - target) < abs(pos - target)):
            pos = q
    return pos


@njit(nogil=True, cache=True)
def _absorb(chunk, buf, dec, st):
    base = st[_BASE]
    nin = st[_NIN]
    block = st[_BLOCK]
    start = nin - base
    buf[start : start + chunk.shape[0]] = chunk
    nin += chunk.shape[0]
    st[_NIN] = nin
    b = st[_NDEC]
    while (b + 1) * block <= nin:
        s = np.float32(0.0)
        seg = buf[b * block - base : (b + 1) * block - base]
        for i in range(block):
            s += seg[i]
        dec[b - base // block] = s
        b += 1
    st[_NDEC] = b


@njit(nogil=True, cache=True)
def _first_bad(chunk):
    # Integer test of the exponent bits vectorises; a float comparison chain would not.
    bits = chunk.view(np.uint32)
    flag = np.uint32(0)
    for i in range(bits.shape[0]):
        flag |= np.uint32((bits[i] & np.uint32(0x7F800000)) == np.uint32(0x7F800000))
    if flag == 0:
        return -1
    for i in range(bits.shape[0]):
        if (bits[i] & np.uint32(0x7F800000)) == np.uint32(0x7F800000):
            return i
    return -1


@njit(nogil=True, cache=True)
def _run(chunk, final, target_len, buf, dec, work, st, sched, out):
    # Returns the output count written to ``out``; -1 for a rejected chunk; -2 - n when ``out``
    # needs n samples (the chunk is absorbed: call again with an empty one). Few arguments and
    # no returned array: at 20 ms chunks the dispatcher's per-call cost is a fair share of the work.
    bad = _first_bad(chunk)
    st[_BAD] = bad
    if bad >= 0:
        return -1
    _absorb(chunk, buf, dec, st)
    hop = st[_HOP]
    overlap = st[_OVERLAP]
    search = st[_SEARCH]
    block = st[_BLOCK]
    nsched = st[_NSCHED]
    segment = hop + overlap
    nin = st[_NIN]
    tail = work[:overlap]
    fade_in = work[overlap : 2 * overlap]
    fade_out = work[2 * overlap : 3 * overlap]
    ncand = (work.shape[0] - 3 * overlap - (overlap // block + 1)) // 2
    refd = work[3 * overlap : 3 * overlap + overlap // block + 1]
    acc = work[3 * overlap + overlap // block + 1 :][:ncand]
    energy = work[3 * overlap + overlap // block + 1 + ncand :][:ncand]
    # How many steps are ready: each needs all the input its search and segment may read.
    k = st[_K]
    steps = 0
    if final:
        steps = (max(target_len - st[_OUT], 0) + hop - 1) // hop
    else:
        while True:
            if k == 0:
                need = segment
            else:
                t, _ = _step_target(k, hop, sched, nsched)
                need = t + search + segment + block
            # Never emit output the final length could fall short of (short streams, high speeds).
            x_end, _ = _source_position(np.float64((k + 1) * hop), sched, nsched)
            need = max(need, np.int64(math.ceil(x_end)) + 1)
            if need > nin:
                break
            k += 1
            steps += 1
    n_out = steps * hop
    if final:
        n_out = max(target_len - st[_OUT], 0)
    if n_out > out.shape[0]:
        return -2 - n_out
    base = st[_BASE]
    q = st[_Q]
    k = st[_K]
    w = 0
    for _ in range(steps):
        if k == 0:
            p = 0
            first = 0
        else:
            t, speed = _step_target(k, hop, sched, nsched)
            lo = max(t - search, 0)
            hi = t + search
            if speed == 1.0 and lo <= q <= hi:
                p = q
            else:
                p = _search(buf, dec, tail, refd, acc, energy, base, t, lo, hi, q, overlap, block)
            first = 0 if p == q else overlap
        src = p - base
        m = min(hop, n_out - w)
        # Cross-fade only when the segment does not simply continue the last one.
        nf = min(first, m)
        o = out[w : w + nf]
        a = buf[src : src + nf]
        for j in range(nf):
            o[j] = tail[j] * fade_out[j] + a[j] * fade_in[j]
        if m > nf:
            out[w + nf : w + m] = buf[src + nf : src + m]
        tail[:] = buf[src + hop : src + hop + overlap]
        q = p + hop
        w += m
        k += 1
    st[_K] = k
    st[_Q] = q
    st[_OUT] += w
    # Drop input no future step can read, in big moves so the copying stays O(1) per sample.
    if k > 0:
        t, _ = _step_target(k, hop, sched, nsched)
        # A later speed change can only move targets to >= nin - hop / 2.
        keep = min(t, nin - hop) - search - block
    else:
        keep = 0
    keep = max((keep // block) * block, base)
    drop = keep - base
    fill = nin - base
    if drop > 0 and 2 * drop >= fill:
        buf[: fill - drop] = buf[drop:fill].copy()
        dblocks = drop // block
        ndec = st[_NDEC] - base // block
        dec[: ndec - dblocks] = dec[dblocks:ndec].copy()
        st[_BASE] = keep
        base = keep
    return w


# --------------------------------------------------------------------------------------------


class Stretcher:
    """Streaming, pitch-preserving time-stretcher for mono float32 audio.

    Feed chunks of any size to :meth:`process`, then call :meth:`flush` once at the end; the
    concatenated output is identical whatever the chunk sizes and has ``round(n / speed)``
    samples for a constant speed. :meth:`set_speed` takes effect from the next input sample.
    The ideal input -> output map (for rescaling word timestamps) is :attr:`time_map`.

    One object is one stream and is not thread-safe; the compiled kernel releases the GIL, so
    separate stretchers can run in parallel threads.
    """

    __slots__ = (
        "_buf", "_dec", "_history", "_layout", "_map", "_out", "_policy", "_room", "_sched", "_st", "_work"
    )

    def __init__(self, sample_rate: int, speed: float = 1.0, policy: SpeedPolicy = DEFAULT_POLICY) -> None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
            raise UnsupportedSampleRateError(
                f"sample_rate must be an integer number of Hz, got {type(sample_rate).__name__} {sample_rate!r}"
            )
        if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            raise UnsupportedSampleRateError(
                f"sample_rate {sample_rate} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz"
            )
        self._policy = policy
        self._layout = WsolaLayout.for_rate(int(sample_rate))
        lay = self._layout
        # Input held after any call is at most twice the reach of the next step (see the kernel's
        # compaction), so a chunk of up to cap - history samples always fits without a check.
        s_max = max(policy.max_speed, 1.0)
        reach = max(lay.search + lay.segment + lay.block, math.ceil((s_max + 1) * lay.hop / 2) + 3, lay.hop)
        self._history = 2 * (reach + lay.search + 2 * lay.block) + 16
        self._map = TimeMap(lay.sample_rate, policy.apply(speed))
        self._init_state()

    def _init_state(self) -> None:
        lay = self._layout
        cap = self._history + 8192
        self._buf = np.zeros(cap, np.float32)
        self._dec = np.zeros(cap // lay.block + 2, np.float32)
        self._room = cap - self._history
        self._out = np.empty(4 * lay.hop, np.float32)
        ramp = (np.arange(lay.overlap, dtype=np.float64) + 0.5) / lay.overlap
        fade_in = 0.5 - 0.5 * np.cos(np.pi * ramp)
        ncand = 2 * lay.search // lay.block + 2 * lay.block + 16
        # tail | fade in | fade out | reference block sums | correlations | energies
        self._work = np.concatenate((
            np.zeros(lay.overlap), fade_in, 1.0 - fade_in, np.zeros(lay.overlap // lay.block + 1 + 2 * ncand)
        )).astype(np.float32)
        self._st = np.zeros(_STATE_SIZE, np.int64)
        self._st[_HOP] = lay.hop
        self._st[_OVERLAP] = lay.overlap
        self._st[_SEARCH] = lay.search
        self._st[_BLOCK] = lay.block
        self._st[_BAD] = -1
        self._load_schedule()

    # -- properties ---------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        """Samples per second of the input and the output."""
        return self._layout.sample_rate

    @property
    def speed(self) -> float:
        """The speed applied to the next input sample."""
        return self._map.speed

    @property
    def policy(self) -> SpeedPolicy:
        """The policy that validates (and possibly clamps) speeds."""
        return self._policy

    @property
    def layout(self) -> WsolaLayout:
        """The WSOLA sizes in use."""
        return self._layout

    @property
    def latency(self) -> int:
        """Algorithmic latency in input samples at the current speed.

        Once ``latency`` more samples have been fed after a sample, all output that depends on it
        has been returned.
        """
        return self._layout.latency(self._map.speed)

    @property
    def time_map(self) -> TimeMap:
        """The ideal input -> output map of the speed schedule so far (read it; do not modify)."""
        return self._map

    @property
    def input_samples(self) -> int:
        """Input samples fed so far."""
        return int(self._st[_NIN])

    @property
    def output_samples(self) -> int:
        """Output samples returned so far."""
        return int(self._st[_OUT])

    # -- operations ---------------------------------------------------------------------------

    def set_speed(self, speed: float) -> float:
        """Use ``speed`` from the next input sample on; returns the speed applied (after clamping).

        Raises :class:`~speakwire.errors.InvalidSpeedError` for NaN, infinities, values <= 0 and,
        under a raising policy, values outside its range.
        """
        value = self._policy.apply(speed)
        self._map.set_speed(int(self._st[_NIN]), value)
        self._load_schedule()
        return value

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Stretch the next chunk of input; returns the float32 output that is ready (possibly empty).

        ``chunk`` is mono: a 1-D array (or sequence) of floating-point samples, converted to float32.
        Raises :class:`~speakwire.errors.AudioFormatError` for 2-D, integer or non-finite input (the
        chunk is then ignored: the stream goes on as if it had never been passed) and
        :class:`~speakwire.errors.ContextStateError` after :meth:`flush`.
        """
        x = chunk
        # The fast path takes only what the compiled kernel was built for; a read-only or strided
        # array would make numba compile a second kernel mid-stream.
        if (
            type(x) is not np.ndarray
            or x.dtype is not _F32
            or x.ndim != 1
            or not (flags := x.flags).c_contiguous
            or not flags.writeable
        ):
            x = _as_mono_float32(chunk)
        if x.shape[0] > self._room:  # also true for any chunk once flushed (room -1)
            self._make_room(x.shape[0])
        n = _run(x, False, 0, self._buf, self._dec, self._work, self._st, self._sched, self._out)
        if n > 0:
            return self._out[:n].copy()
        if n == 0:
            return _EMPTY
        if n == -1:
            raise _non_finite(chunk, int(self._st[_BAD]))
        return self._rerun(n, False, 0)

    def flush(self) -> np.ndarray:
        """Return the rest of the output: the stream then totals ``round(time_map.output_position(n))``.

        A second flush returns an empty array; :meth:`reset` starts a new stream.
        """
        if self._room < 0:
            return _EMPTY
        lay = self._layout
        total = round(self._map.output_position(self.input_samples))
        # Steps past the end read zeros: make room for them and for the last partial block.
        top = max(self._sched[: int(self._st[_NSCHED]), 2].max(), 1.0)
        pad = math.ceil(top * (lay.hop / 2 + 1)) + lay.search + lay.segment + 2 * lay.block + lay.hop
        pad += (-(self.input_samples + pad)) % lay.block
        self._make_room(pad)
        n = _run(np.zeros(pad, np.float32), True, total, self._buf, self._dec, self._work, self._st,
                 self._sched, self._out)
        out = self._out[:n].copy() if n >= 0 else self._rerun(n, True, total)
        self._st[_NIN] -= pad  # the padding was not input
        self._room = -1
        return out

    def reset(self) -> None:
        """Return to the state of a new stretcher at the current speed (e.g. after a barge-in).

        The speed survives (a listener's chosen speed outlives one utterance); the schedule and
        the time map restart at input sample 0.
        """
        self._map = TimeMap(self._layout.sample_rate, self._map.speed)
        self._init_state()

    def output_position(self, input_samples: float) -> float:
        """Where input sample position ``input_samples`` lands in the output (ideal map), in samples."""
        return self._map.output_position(input_samples)

    def output_time(self, input_seconds: float) -> float:
        """Where input time ``input_seconds`` lands in the output (ideal map), in seconds."""
        return self._map.output_time(input_seconds)

    def __repr__(self) -> str:
        return (
            f"Stretcher(sample_rate={self.sample_rate}, speed={self.speed}, policy={self._policy.name!r}, "
            f"input_samples={self.input_samples}, output_samples={self.output_samples})"
        )

    # -- internals ----------------------------------------------------------------------------

    def _load_schedule(self) -> None:
        # The kernel only needs the breakpoints from the one holding the next step's target on.
        rows = self._map.breakpoints_from((int(self._st[_K]) + 0.5) * self._layout.hop)
        self._sched = np.array(rows, dtype=np.float64).reshape(-1, 3)
        self._st[_NSCHED] = len(rows)

    def _rerun(self, code: int, final: bool, total: int) -> np.ndarray:
        # The output buffer was too small for the steps now ready: grow it and run them.
        self._out = np.empty(max(2 * self._out.shape[0], -2 - code), np.float32)
        n = _run(_NO_INPUT, final, total, self._buf, self._dec, self._work, self._st, self._sched, self._out)
        return self._out[:n].copy()

    def _make_room(self, extra: int) -> None:
        if self._room < 0:
            raise ContextStateError("process() after flush(): call reset() to start a new stream")
        fill = int(self._st[_NIN] - self._st[_BASE])
        if fill + extra <= self._buf.shape[0]:
            return
        cap = max(2 * self._buf.shape[0], 2 * (fill + extra))
        buf = np.zeros(cap, np.float32)
        buf[:fill] = self._buf[:fill]
        dec = np.zeros(cap // self._layout.block + 2, np.float32)
        dec[: self._dec.shape[0]] = self._dec
        self._buf, self._dec = buf, dec
        self._room = cap - self._history


def time_stretch(
    x: np.ndarray, sample_rate: int, speed: float, policy: SpeedPolicy = DEFAULT_POLICY
) -> np.ndarray:
    """Stretch a whole mono buffer: ``round(len(x) / speed)`` float32 samples, pitch unchanged."""
    stretcher = Stretcher(sample_rate, speed, policy)
    samples = _as_mono_float32(x)
    bad = _first_bad(samples)
    if bad >= 0:
        raise _non_finite(x, int(bad))
    x = samples
    # Pieces keep the input buffer small (no copy of the whole input); the output is the same.
    piece = 1 << 16
    parts = [stretcher.process(x[i : i + piece]) for i in range(0, x.shape[0], piece)]
    parts.append(stretcher.flush())
    return np.concatenate(parts)


def _as_mono_float32(chunk: object) -> np.ndarray:
    x = np.asarray(chunk)
    if x.ndim != 1:
        raise AudioFormatError(
            f"audio must be mono: a 1-D array of samples, got a {x.ndim}-D array of shape {x.shape}"
        )
    if x.dtype.kind not in "f":
        raise AudioFormatError(
            f"audio samples must be floating point in [-1, 1], got dtype {x.dtype}"
            + (" (scale integer PCM to floats first)" if x.dtype.kind in "iu" else "")
        )
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf: rejected next
        x = np.ascontiguousarray(x, dtype=np.float32)
    return x if x.flags.writeable else x.copy()


def _non_finite(chunk: object, index: int) -> AudioFormatError:
    value = float(np.asarray(chunk).reshape(-1)[index])
    what = "non-finite" if not math.isfinite(value) else "out of float32 range"
    return AudioFormatError(
        f"audio chunk has a {what} sample ({value!r}) at index {index}; the chunk was rejected"
    )
