"""WebRTC output benchmarks, each side by side with pipecat's SmallWebRTC ``RawAudioTrack`` in one run.

    .venv/bin/python benchmarks/webrtc.py [--trials 20] [--seconds 4] [--max-tracks 1024] [--no-write]

1. Barge-in. Two pipecat pipelines run in one event loop and get the same frames: ours ends in
   :class:`~speakwire.plugin.track_output.TrackOutputProcessor` writing a 16 kHz
   ``RingBufferAudioTrack``; pipecat's is its real ``BaseOutputTransport`` (soxr resampling,
   4 x 10 ms chunks, interruption handling) with ``write_audio_frame`` doing exactly what
   ``SmallWebRTCClient.write_audio_frame`` does, ``await RawAudioTrack.add_audio_bytes(...)``, into
   a real ``RawAudioTrack``. A consumer awaits each track's ``recv()`` in real time, as aiortc's
   sender does. Each trial sends 1.5 s of a 24 kHz tone as ``TTSAudioRawFrame`` s (20 ms), waits
   0.3-0.9 s into playout, then queues an ``InterruptionFrame`` to both (order alternating). Per
   path: time from queueing the interruption to the first frame leaving the track that is silent
   (ours: the frame carrying the 5 ms fade, then zeros), and the stale samples (old audio at full
   level) that left the track after the interruption. Goal: 0 stale samples, at most 20 ms.
2. Concurrent tracks on one core (``os.sched_setaffinity``): N 16 kHz tracks, each fed by a
   producer stretching real espeak-ng speech with ``speakwire.dsp.wsola.Stretcher`` at 1.25 in
   20 ms chunks (keeping 60 ms queued) and drained by a consumer awaiting ``recv()`` in real time.
   N doubles from 16 until a track underruns, then bisects three times; the same sweep runs with pipecat's
   ``RawAudioTrack`` (its queue counted as underrun when ``recv()`` finds it empty, the stretched
   audio cut in 10 ms multiples as ``add_audio_bytes`` requires). Encoding (Opus/PCMU) is not
   included: this is the track and DSP cost.

Tables go to stdout and, unless ``--no-write``, to the "WebRTC" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from pipecat.frames.frames import EndFrame, InterruptionFrame, OutputAudioRawFrame, StartFrame, TTSAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.transport import RawAudioTrack
from pipecat.workers.runner import WorkerRunner
from results import RESULTS, write_section

from speakwire.dsp.pcm import float_to_s16
from speakwire.dsp.resample import resample
from speakwire.dsp.wsola import Stretcher
from speakwire.plugin.track_output import TrackOutputProcessor
from speakwire.server.espeak import EspeakEngine
from speakwire.transport.track import RingBufferAudioTrack

TTS_RATE = 24000
TRACK_RATE = 16000
SPEED = 1.25
TEXT = (
    "Thanks for calling. Your order shipped this morning and should arrive on Thursday between nine "
    "and five. Is there anything else I can help you with today? "
)


# -- 1. barge-in ---------------------------------------------------------------------------------


class RawTrackOutput(BaseOutputTransport):
    """pipecat's output transport writing into a RawAudioTrack exactly as SmallWebRTCClient does."""

    def __init__(self, track: RawAudioTrack, params: TransportParams) -> None:
        super().__init__(params)
        self.raw_track = track

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        await self.raw_track.add_audio_bytes(frame.audio)
        return True


@dataclass
class Sent:
    """What a consumer saw: return time, samples, and (ours) the track's clear count at that frame."""

    times: list[float] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)
    clears: list[int] = field(default_factory=list)


async def _consume(track: RingBufferAudioTrack | RawAudioTrack, sent: Sent) -> None:
    loop = asyncio.get_running_loop()
    while True:
        frame = await track.recv()
        sent.times.append(loop.time())
        sent.frames.append(frame.to_ndarray().reshape(-1))
        sent.clears.append(track.stats.clears if isinstance(track, RingBufferAudioTrack) else 0)


async def _start_worker(processor: object) -> tuple[PipelineWorker, asyncio.Task[None]]:
    worker = PipelineWorker(
        Pipeline([processor]),
        params=PipelineParams(audio_out_sample_rate=TRACK_RATE),
        cancel_on_idle_timeout=False,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(_worker: object, _frame: object) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    task = asyncio.get_running_loop().create_task(runner.run())
    await asyncio.wait_for(started.wait(), 5)
    return worker, task


def _trial_result(sent: Sent, t0: float, ours: bool) -> tuple[float, int, int]:
    """(latency s, stale full-level samples, fade samples) for the interruption queued at ``t0``."""
    after = [i for i, t in enumerate(sent.times) if t >= t0]
    clears_before = sent.clears[after[0] - 1] if after and after[0] > 0 else 0
    stale = 0
    for i in after:
        x = sent.frames[i]
        if ours and sent.clears[i] > clears_before:
            fade = int(np.count_nonzero(x))
            cut = int(np.flatnonzero(x)[-1]) + 1 if fade else 0
            assert cut <= 80, f"non-fade audio after the clear: {cut} samples"
            return sent.times[i] - t0, stale, fade
        if not ours and not np.any(x):
            return sent.times[i] - t0, stale, 0
        stale += int(np.count_nonzero(x))
    raise RuntimeError("no silent frame after the interruption")


async def bargein(trials: int, seed: int) -> tuple[dict[str, list[tuple[float, int, int]]], list[float]]:
    rng = random.Random(seed)
    our_track = RingBufferAudioTrack(TRACK_RATE)
    ours = TrackOutputProcessor(our_track)
    params = TransportParams(audio_out_enabled=True, audio_out_sample_rate=TRACK_RATE, audio_out_end_silence_secs=0)
    raw_track = RawAudioTrack(TRACK_RATE)
    theirs = RawTrackOutput(raw_track, params)
    sent = {"speakwire": Sent(), "pipecat": Sent()}
    consumers = [
        asyncio.create_task(_consume(our_track, sent["speakwire"])),
        asyncio.create_task(_consume(raw_track, sent["pipecat"])),
    ]
    workers = {"speakwire": await _start_worker(ours), "pipecat": await _start_worker(theirs)}
    t = np.arange(round(1.5 * TTS_RATE)) / TTS_RATE
    pcm = float_to_s16((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)).tobytes()
    step = TTS_RATE // 50 * 2
    results: dict[str, list[tuple[float, int, int]]] = {"speakwire": [], "pipecat": []}
    clear_to_frame: list[float] = []
    loop = asyncio.get_running_loop()
    try:
        for trial in range(trials):
            context = f"turn-{trial}"
            for worker, _ in workers.values():
                for i in range(0, len(pcm), step):
                    frame = TTSAudioRawFrame(pcm[i : i + step], TTS_RATE, 1, context_id=context)
                    await worker.queue_frame(frame)
            await asyncio.sleep(rng.uniform(0.3, 0.9))
            order = list(workers) if trial % 2 == 0 else list(reversed(workers))
            t0 = loop.time()
            for name in order:
                await workers[name][0].queue_frame(InterruptionFrame())
            await asyncio.sleep(0.3)
            for name in workers:
                results[name].append(_trial_result(sent[name], t0, name == "speakwire"))
            # Of our latency, the part after clear(): the rest is the frame's trip through pipecat.
            clear_to_frame.append(our_track.stats.last_clear_latency_s or float("nan"))
    finally:
        for worker, task in workers.values():
            await worker.queue_frame(EndFrame())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task, 5)
        for consumer in consumers:
            consumer.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
    return results, clear_to_frame


# -- 2. concurrent tracks on one core ------------------------------------------------------------


class CountingRawAudioTrack(RawAudioTrack):
    """pipecat's RawAudioTrack, counting the frames ``recv()`` found nothing queued for."""

    underruns = 0

    async def recv(self):  # type: ignore[no-untyped-def]
        # The parent's own pacing, done first so the queue is looked at when the frame is due
        # (speech has digital silence of its own, so the frame's content cannot tell).
        if self._timestamp > 0:
            wait = self._start + self._timestamp / self._sample_rate - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        if not self._chunk_queue:
            self.underruns += 1
        return await super().recv()


def speech_16k() -> np.ndarray:
    with EspeakEngine() as engine:
        result = engine.synthesize(TEXT)
    return resample(result.audio, result.sample_rate, TRACK_RATE).astype(np.float32)


async def _produce(track: RingBufferAudioTrack | RawAudioTrack, speech: np.ndarray, offset: int) -> None:
    stretcher = Stretcher(TRACK_RATE, SPEED)
    chunk = TRACK_RATE // 50
    target = 3 * chunk  # 60 ms queued
    pending = np.zeros(0, np.int16)
    ten_ms = TRACK_RATE // 100
    position = offset
    while True:
        if isinstance(track, RingBufferAudioTrack):
            queued = track.queued_samples
        else:
            queued = len(track._chunk_queue) * ten_ms
        if queued >= target:
            await asyncio.sleep(0.01)
            continue
        piece = speech[position : position + chunk]
        position = (position + chunk) % (len(speech) - chunk)
        out = stretcher.process(piece)
        if isinstance(track, RingBufferAudioTrack):
            track.write(out)
        else:
            pending = np.concatenate([pending, float_to_s16(out)])
            whole = len(pending) // ten_ms * ten_ms
            if whole:
                track.add_audio_bytes(pending[:whole].tobytes())
                pending = pending[whole:]
        await asyncio.sleep(0)


async def _drain(track: RingBufferAudioTrack | RawAudioTrack) -> None:
    while True:
        await track.recv()


async def concurrent_run(kind: str, n: int, seconds: float, speech: np.ndarray) -> tuple[int, int, float, int]:
    """(underrun frames after warm-up, frames sent, CPU seconds / wall second, resyncs) for ``n`` tracks.

    Resyncs are our track's moves of its schedule when its consumer was over 60 ms late; pipecat's
    track has none: it bursts the backlog instead.
    """
    tracks: list[RingBufferAudioTrack | CountingRawAudioTrack] = [
        RingBufferAudioTrack(TRACK_RATE) if kind == "speakwire" else CountingRawAudioTrack(TRACK_RATE)
        for _ in range(n)
    ]
    rng = np.random.default_rng(n)
    tasks = []
    for track in tracks:
        tasks.append(asyncio.create_task(_produce(track, speech, int(rng.integers(0, len(speech) // 2)))))
    await asyncio.sleep(0.1)  # let every producer queue its first 60 ms before playout starts
    tasks += [asyncio.create_task(_drain(track)) for track in tracks]
    await asyncio.sleep(0.5)
    base = [_underruns(track) for track in tracks]
    resyncs0 = sum(t.stats.resyncs for t in tracks if isinstance(t, RingBufferAudioTrack))
    frames0 = sum(_frames(track) for track in tracks)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    underruns = sum(_underruns(track) for track in tracks) - sum(base)
    frames = sum(_frames(track) for track in tracks) - frames0
    resyncs = sum(t.stats.resyncs for t in tracks if isinstance(t, RingBufferAudioTrack)) - resyncs0
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for track in tracks:
        track.stop()
    return underruns, frames, cpu, resyncs


def _underruns(track: RingBufferAudioTrack | CountingRawAudioTrack) -> int:
    return track.stats.underrun_frames if isinstance(track, RingBufferAudioTrack) else track.underruns


def _frames(track: RingBufferAudioTrack | CountingRawAudioTrack) -> int:
    if isinstance(track, RingBufferAudioTrack):
        return track.stats.frames_sent
    return track._timestamp // (TRACK_RATE // 100)


Rows = list[tuple[int, int, int, float, int]]


async def concurrent(seconds: float, max_tracks: int, speech: np.ndarray) -> dict[str, Rows]:
    """Per track kind: N doubles from 16 until a run underruns, then three bisection steps."""
    results: dict[str, Rows] = {"speakwire": [], "pipecat": []}

    async def step(kind: str, n: int) -> bool:
        underruns, frames, cpu, resyncs = await concurrent_run(kind, n, seconds, speech)
        results[kind].append((n, underruns, frames, cpu, resyncs))
        print(
            f"  {kind:9s} N={n:4d}: underrun frames {underruns:5d} of {frames:6d}, cpu {cpu:.2f}, resyncs {resyncs}",
            flush=True,
        )
        return underruns == 0

    for kind in ("speakwire", "pipecat"):
        good, bad, n = 0, 0, 16
        while n <= max_tracks:
            if not await step(kind, n):
                bad = n
                break
            good, n = n, n * 2
        for _ in range(3 if bad else 0):
            mid = (good + bad) // 2
            if mid in (good, bad):
                break
            if await step(kind, mid):
                good = mid
            else:
                bad = mid
    return results


def sustained(rows: Rows) -> int:
    return max((row[0] for row in rows if row[1] == 0), default=0)


# -- report --------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def bargein_table(results: dict[str, list[tuple[float, int, int]]], clear_to_frame: list[float]) -> str:
    lines = [
        "| path | interruption -> first silent frame, median / p90 / max (ms) | stale samples after it, "
        "median / max (ms at 16 kHz) | fade samples |",
        "|---|---:|---:|---:|",
    ]
    for name, label in (("speakwire", "speakwire TrackOutputProcessor + RingBufferAudioTrack"),
                        ("pipecat", "pipecat BaseOutputTransport + SmallWebRTC RawAudioTrack")):
        rows = results[name]
        lat = [r[0] * 1000 for r in rows]
        stale = [r[1] for r in rows]
        fade = sorted({r[2] for r in rows})
        lines.append(
            f"| {label} | {statistics.median(lat):.1f} / {_pct(lat, 90):.1f} / {max(lat):.1f} | "
            f"{statistics.median(stale):.0f} / {max(stale)} ({statistics.median(stale) / 16:.1f} / "
            f"{max(stale) / 16:.1f} ms) | {', '.join(map(str, fade))} |"
        )
    ours, theirs = results["speakwire"], results["pipecat"]
    ratio = statistics.median([r[0] for r in theirs]) / max(statistics.median([r[0] for r in ours]), 1e-6)
    lines.append("")
    travel = [(r[0] - c) * 1000 for r, c in zip(ours, clear_to_frame, strict=True)]
    lines.append(
        f"Median time to silence, pipecat / speakwire: {ratio:.1f}x; stale samples: speakwire max "
        f"{max(r[1] for r in ours)} in {sum(r[1] > 0 for r in ours)} of {len(ours)} trials, pipecat max "
        f"{max(r[1] for r in theirs)} in {sum(r[1] > 0 for r in theirs)} of {len(theirs)}. Of speakwire's time, "
        "the InterruptionFrame's trip through the pipecat worker to clear() took median "
        f"{statistics.median(travel):.1f} / max {max(travel):.1f} ms; a frame due inside that trip still "
        "carries old audio (the stale trials)."
    )
    return "\n".join(lines)


def concurrent_table(results: dict[str, Rows]) -> str:
    lines = [
        "| track | N tracks | underrun frames / frames sent | CPU s per wall s | schedule resyncs (>60 ms late) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("speakwire", "pipecat"):
        for n, underruns, frames, cpu, resyncs in sorted(results[name]):
            shown = resyncs if name == "speakwire" else "n/a (bursts)"
            lines.append(f"| {name} | {n} | {underruns} / {frames} | {cpu:.2f} | {shown} |")
    ours, theirs = sustained(results["speakwire"]), sustained(results["pipecat"])
    lines.append("")
    lines.append(
        f"Sustained with zero underruns on one core: speakwire {ours} tracks, pipecat RawAudioTrack {theirs} "
        f"tracks (ratio {ours / max(theirs, 1):.2f})."
    )
    return "\n".join(lines)




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="barge-in trials (about 1.2 s each)")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per concurrent-tracks step")
    parser.add_argument("--max-tracks", type=int, default=1024)
    parser.add_argument("--core", type=int, default=None, help="core to pin to (default: the last allowed)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--skip-bargein", action="store_true")
    parser.add_argument("--skip-concurrent", action="store_true")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join([".venv/bin/python benchmarks/webrtc.py", *([shlex.join(given)] if given else [])])
    parts = []
    speech = speech_16k()  # before pinning: the engine has its own thread
    core = args.core if args.core is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if not args.skip_bargein:
        print(f"barge-in: {args.trials} trials", flush=True)
        results, clear_to_frame = asyncio.run(bargein(args.trials, args.seed))
        table = bargein_table(results, clear_to_frame)
        print(table)
        parts.append(
            f"### Barge-in\n\nCommand: `{command}` ({stamp}; one core pinned; {args.trials} trials; "
            "24 kHz TTS frames of 20 ms, 16 kHz tracks, both pipelines in one event loop with the same frames "
            "and interruption instants).\n\n" + table
        )
    if not args.skip_concurrent:
        print(f"concurrent tracks at {TRACK_RATE} Hz, WSOLA {SPEED}, {args.seconds} s per step", flush=True)
        results_c = asyncio.run(concurrent(args.seconds, args.max_tracks, speech))
        table = concurrent_table(results_c)
        print(table)
        parts.append(
            f"### Concurrent tracks on one core\n\nCommand: `{command}` ({stamp}; core {core} pinned with "
            f"os.sched_setaffinity; {args.seconds} s measured per step after 0.6 s warm-up; espeak-ng speech "
            f"resampled to {TRACK_RATE} Hz, stretched at {SPEED} in 20 ms chunks, 60 ms kept queued; consumers "
            "await recv() in real time, no codec). CPU is the process's CPU seconds per wall second on that core: "
            "a step can underrun below 1.0, when wake-ups of the many producer and consumer tasks come later than "
            "the 60 ms queue allows.\n\n" + table
        )
    if parts and not args.no_write:
        write_section("WebRTC", "\n\n".join(parts))
        print(f"\nwritten to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
