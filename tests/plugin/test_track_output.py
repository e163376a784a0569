"""TrackOutputProcessor under pipecat's own run_test harness, writing into a real paced track."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import numpy as np
import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from speakwire.dsp.pcm import float_to_s16
from speakwire.plugin.track_output import TrackOutputProcessor, default_quality
from speakwire.transport.track import RingBufferAudioTrack
from tests.transport.fixtures_track import active_span, peak_frequency, rms, tone, tone_level


@dataclass
class Playout:
    """Awaits the track's recv() in real time, as aiortc's sender does, noting the clear count per frame."""

    track: RingBufferAudioTrack
    frames: list[np.ndarray] = field(default_factory=list)
    clears: list[int] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> Playout:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            frame = await self.track.recv()
            # recv() reads the ring synchronously as it returns: this count is the one it saw.
            self.clears.append(self.track.stats.clears)
            channels = len(frame.layout.channels)
            self.frames.append(frame.to_ndarray().reshape(-1, channels)[:, 0].astype(np.float32) / 32768)

    async def drain(self, extra_frames: int = 3) -> None:
        async with asyncio.timeout(10):
            while self.track.queued_samples:
                await asyncio.sleep(0.01)
            count = len(self.frames) + extra_frames
            while len(self.frames) < count:
                await asyncio.sleep(0.01)
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def signal(self, first: int = 0) -> np.ndarray:
        return np.concatenate(self.frames[first:])


def _pcm(x: np.ndarray) -> bytes:
    return float_to_s16(x).tobytes()


def _tts_frames(x: np.ndarray, rate: int, context: str, chunk_ms: int = 20) -> list[TTSAudioRawFrame]:
    step = rate * chunk_ms // 1000
    return [
        TTSAudioRawFrame(audio=_pcm(x[i : i + step]), sample_rate=rate, num_channels=1, context_id=context)
        for i in range(0, len(x), step)
    ]


def test_quality_is_chosen_per_track_rate() -> None:
    assert [default_quality(r) for r in (8000, 16000, 44100, 48000)] == ["LQ", "LQ", "HQ", "HQ"]


async def test_24k_tts_audio_arrives_at_16k_with_its_length_frequency_level_and_mark() -> None:
    track = RingBufferAudioTrack(16000)
    processor = TrackOutputProcessor(track)
    playout = Playout(track).start()
    sent = tone(24000, 440, 0.5)
    await run_test(
        processor,
        frames_to_send=[*_tts_frames(sent, 24000, "ctx-1"), TTSStoppedFrame(context_id="ctx-1")],
        expected_down_frames=[TTSStoppedFrame],
    )
    await playout.drain()
    stats = track.stats
    # Every input sample came out, resampled: 0.5 s at 16 kHz exactly, the soxr tail flushed at stop.
    assert stats.audio_samples_sent == 8000 and stats.clears == 0
    x = playout.signal()
    assert {len(f) for f in playout.frames} == {320}
    start, end = active_span(x, 0.05)
    assert (end - start) / 16000 == pytest.approx(0.5, abs=0.002)
    steady = x[start + 800 : end - 800]
    assert peak_frequency(steady, 16000) == pytest.approx(440, abs=0.5)
    assert 20 * np.log10(rms(steady) / (0.5 / np.sqrt(2))) == pytest.approx(0, abs=0.1)
    marks = track.pop_played_marks()
    # One mark per write that produced audio: soxr's LQ filter holds the whole first 20 ms frame.
    assert {m.mark for m in marks} == {"ctx-1"} and len(marks) == 24
    assert marks[0].position == 0 and marks[0].pts == marks[0].position + (stats.samples_sent - 8000 - 320 * 3)


async def test_stereo_48k_output_audio_is_mixed_to_mono_and_resampled_to_8k() -> None:
    track = RingBufferAudioTrack(8000)
    processor = TrackOutputProcessor(track)
    playout = Playout(track).start()
    left, right = tone(48000, 300, 0.4, 0.4), tone(48000, 300, 0.4, 0.2)
    stereo = np.stack([left, right], axis=1).reshape(-1)
    frames = [
        OutputAudioRawFrame(audio=_pcm(stereo[i : i + 1920]), sample_rate=48000, num_channels=2)
        for i in range(0, len(stereo), 1920)
    ]
    await run_test(processor, frames_to_send=frames, expected_down_frames=[])
    await playout.drain()
    assert track.stats.audio_samples_sent == 3200
    x = playout.signal()
    start, end = active_span(x, 0.05)
    steady = x[start + 400 : end - 400]
    assert peak_frequency(steady, 8000) == pytest.approx(300, abs=0.5)
    assert tone_level(steady, 8000, 300) == pytest.approx(0.3, abs=0.005)  # mean of 0.4 and 0.2


async def test_interruption_cuts_to_a_fade_and_silence_and_no_old_context_sample_follows() -> None:
    track = RingBufferAudioTrack(16000)
    processor = TrackOutputProcessor(track)
    playout = Playout(track).start()
    old = tone(24000, 440, 2.0)
    new = tone(24000, 880, 0.3)
    late_old = _tts_frames(tone(24000, 440, 0.1), 24000, "old")
    await run_test(
        processor,
        frames_to_send=[
            *_tts_frames(old, 24000, "old"),
            SleepFrame(sleep=0.4),
            InterruptionFrame(),
            *late_old,  # the TTS service had these in flight: they must not play
            SleepFrame(sleep=0.1),
            *_tts_frames(new, 24000, "new"),
            TTSStoppedFrame(context_id="new"),
        ],
        expected_down_frames=[InterruptionFrame, TTSStoppedFrame],
    )
    await playout.drain()
    assert processor.dropped_frames == len(late_old) == 5
    cut = playout.clears.index(1)
    assert 10 <= cut <= 40, f"the clear landed at frame {cut}, expected about 0.4 s in"
    before = playout.signal(0)[: cut * 320]
    assert peak_frequency(before[-3200:], 16000) == pytest.approx(440, abs=1)
    after = playout.signal(cut)
    # The first frame after the clear: at most the 5 ms fade (80 samples) decaying to zero, then silence.
    fade = after[:80]
    assert np.all(np.abs(after[80:320]) == 0)
    envelope = np.abs(fade) / np.maximum(np.linspace(1, 0, 80, endpoint=False), 1e-9)
    assert np.all(envelope <= 0.5 + 2e-4), "the fade stays under a linear ramp from the old level"
    # Then silence until the new context, which is pure 880 Hz: not one 440 Hz sample after the cut.
    start, end = active_span(after[80:], 0.01)
    assert start > 0 and np.all(after[80 : 80 + start] == 0)
    newer = after[80 + start : 80 + end]
    assert len(newer) == pytest.approx(4800, abs=40)
    assert tone_level(newer, 16000, 440) < 0.002
    assert tone_level(newer[400:-400], 16000, 880) == pytest.approx(0.5, abs=0.01)
    first_audio = next(i for i, f in enumerate(playout.frames) if np.any(f))
    # Old audio played in whole frames up to the cut, then the 80-sample fade, then all of the new context.
    assert track.stats.audio_samples_sent == 320 * (cut - first_audio) + 80 + 4800
    marks = [m.mark for m in track.pop_played_marks()]
    # 14 of the 15 new frames write audio (soxr holds the first); the old marks all come before them.
    assert marks == ["old"] * marks.index("new") + ["new"] * 14 and marks.index("new") >= 10


async def test_a_bad_frame_is_reported_upstream_and_later_audio_still_plays() -> None:
    track = RingBufferAudioTrack(16000)
    processor = TrackOutputProcessor(track)
    playout = Playout(track).start()
    good = tone(16000, 500, 0.2) + np.float32(0.25)  # offset: no zero sample, so its start is unambiguous
    _, up = await run_test(
        processor,
        frames_to_send=[
            TTSAudioRawFrame(audio=b"\x01\x02\x03", sample_rate=16000, num_channels=1, context_id="c"),
            TTSAudioRawFrame(audio=_pcm(good[:320]), sample_rate=11025, num_channels=1, context_id="c"),
            *_tts_frames(good, 16000, "c"),
        ],
        expected_down_frames=[],
        expected_up_frames=[ErrorFrame, ErrorFrame],
    )
    assert "3 bytes is not a whole number of pcm_s16le samples" in up[0].error
    assert "unsupported input sample rate 11025" in up[1].error
    await playout.drain()
    assert track.stats.audio_samples_sent == 3200
    np.testing.assert_array_equal(
        playout.signal()[np.flatnonzero(playout.signal())[0] :][:3200], float_to_s16(good) / np.float32(32768)
    )


def _one_second(rate: int = 16000) -> TTSAudioRawFrame:
    return TTSAudioRawFrame(audio=_pcm(tone(rate, 440, 1.0)), sample_rate=rate, num_channels=1, context_id="c")


async def test_audio_for_an_ended_track_is_dropped_at_once_even_by_a_writer_already_waiting() -> None:
    track = RingBufferAudioTrack(16000)
    processor = TrackOutputProcessor(track, quality="LQ")
    # Nothing reads the track: 5 s fill max_queued_s, the sixth second waits for playout.
    for _ in range(5):
        await processor._write_audio(_one_second())
    queued = track.queued_samples
    assert queued >= 5 * 16000 - 400
    waiting = asyncio.ensure_future(processor._write_audio(_one_second()))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    loop = asyncio.get_running_loop()
    stopped_at = loop.time()
    track.stop()  # the peer went away: aiortc stops the track and nobody calls recv() again
    async with asyncio.timeout(1):
        await waiting
    assert loop.time() - stopped_at < 0.1  # within a couple of 20 ms polls
    started = loop.time()
    await processor._write_audio(_one_second())
    assert loop.time() - started < 0.01
    assert (processor.undelivered_frames, processor.dropped_frames, track.queued_samples) == (2, 0, queued)


async def test_a_live_track_that_stops_draining_bounds_the_wait_by_its_playing_time() -> None:
    track = RingBufferAudioTrack(16000)
    processor = TrackOutputProcessor(track, quality="LQ", max_queued_s=1.0)
    half = TTSAudioRawFrame(audio=_pcm(tone(16000, 440, 0.5)), sample_rate=16000, num_channels=1, context_id="c")
    await processor._write_audio(half)
    await processor._write_audio(half)
    queued = track.queued_samples
    loop = asyncio.get_running_loop()
    started = loop.time()
    # Live but never read (a stalled sender): wait the ~0.5 s the excess takes to play plus 1 s, then drop.
    async with asyncio.timeout(5):
        await processor._write_audio(half)
    waited = loop.time() - started
    expected = (queued + 8000 - 16000) / 16000 + 1.0
    assert expected == pytest.approx(1.5, abs=0.03)
    assert waited == pytest.approx(expected, abs=0.1)
    assert (processor.undelivered_frames, track.queued_samples) == (1, queued)


def test_max_queued_beyond_the_tracks_capacity_is_refused() -> None:
    track = RingBufferAudioTrack(16000, capacity_s=2.0)
    with pytest.raises(ValueError, match=r"max_queued_s 5.0 exceeds the track's capacity of 2 s"):
        TrackOutputProcessor(track)
    assert TrackOutputProcessor(track, max_queued_s=2.0).track is track


async def test_a_tail_that_does_not_fit_is_reported_upstream_not_raised() -> None:
    track = RingBufferAudioTrack(16000, capacity_s=1.0)
    processor = TrackOutputProcessor(track, quality="HQ", max_queued_s=1.0)
    track.write(np.zeros(16000, dtype=np.float32))  # full to the brim, and nothing reads it
    _, up = await run_test(
        processor,
        # The resampler holds back the end of this frame; TTSStoppedFrame flushes it into the full ring.
        frames_to_send=[*_tts_frames(tone(24000, 440, 0.02), 24000, "c"), TTSStoppedFrame()],
        expected_down_frames=[TTSStoppedFrame],
        expected_up_frames=[ErrorFrame],
    )
    assert "cannot queue the resampler's tail" in up[0].error
    assert track.queued_samples == 16000
