"""RingBufferAudioTrack on its own: frames, timestamps, underrun, barge-in fade, marks, pacing."""

from __future__ import annotations

import asyncio
import fractions
import time

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from speakwire.dsp.pcm import float_to_s16
from speakwire.errors import AudioFormatError, RingOverflowError, UnsupportedSampleRateError
from speakwire.transport.track import RingBufferAudioTrack
from tests.transport.fixtures_track import tone


def _mono(frame) -> np.ndarray:
    return frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]


@pytest.mark.parametrize(("rate", "size"), [(8000, 160), (16000, 320), (44100, 882), (48000, 960)])
async def test_frames_have_exact_size_pts_time_base_and_samples(rate: int, size: int) -> None:
    track = RingBufferAudioTrack(rate)
    audio = tone(rate, 440, 3 * size / rate)
    track.write(audio)
    frames = [await track.recv() for _ in range(3)]
    assert [f.samples for f in frames] == [size] * 3
    assert [f.pts for f in frames] == [0, size, 2 * size]
    assert all(f.time_base == fractions.Fraction(1, rate) for f in frames)
    assert all(f.sample_rate == rate and f.format.name == "s16" and f.layout.name == "mono" for f in frames)
    np.testing.assert_array_equal(np.concatenate([_mono(f) for f in frames]), float_to_s16(audio))
    assert track.stats.underrun_frames == 0
    assert track.played_samples == 3 * size


async def test_stereo_frames_duplicate_the_channel() -> None:
    track = RingBufferAudioTrack(48000, channels=2)
    audio = tone(48000, 1000, 0.02)
    track.write(audio)
    frame = await track.recv()
    assert frame.layout.name == "stereo" and frame.samples == 960
    interleaved = frame.to_ndarray()
    assert interleaved.shape == (1, 1920)
    pairs = interleaved.reshape(-1, 2)
    np.testing.assert_array_equal(pairs[:, 0], float_to_s16(audio))
    np.testing.assert_array_equal(pairs[:, 1], pairs[:, 0])


async def test_underrun_pads_with_silence_and_is_counted() -> None:
    track = RingBufferAudioTrack(8000)
    track.write(np.full(100, 0.25, np.float32))
    first = _mono(await track.recv())
    np.testing.assert_array_equal(first[:100], np.full(100, 8192, np.int16))
    np.testing.assert_array_equal(first[100:], np.zeros(60, np.int16))
    second = _mono(await track.recv())  # nothing queued: a silent frame, at once on schedule
    np.testing.assert_array_equal(second, np.zeros(160, np.int16))
    stats = track.stats
    assert (stats.frames_sent, stats.underrun_frames, stats.underrun_samples) == (2, 2, 220)
    assert (stats.samples_sent, stats.audio_samples_sent, stats.queued_samples) == (320, 100, 0)


async def test_clear_fades_out_within_5_ms_then_silence_and_new_audio_follows() -> None:
    track = RingBufferAudioTrack(16000)
    track.write(np.full(16000, 0.5, np.float32))  # DC: the fade's envelope is the signal itself
    np.testing.assert_array_equal(_mono(await track.recv()), np.full(320, 16384, np.int16))
    dropped = track.clear()
    assert dropped == 16000 - 320 - track.fade_samples
    assert track.fade_samples == 80  # 5 ms at 16 kHz
    track.write(np.full(400, -0.25, np.float32), mark="new")
    after = np.concatenate([_mono(await track.recv()) for _ in range(2)]).astype(np.int32)
    fade = after[:80]
    assert 0 < fade[0] <= 16384
    assert np.all(np.diff(fade) <= 0), "the fade must decay monotonically"
    assert np.all(after[80:480] == -8192), "new audio follows the fade directly"
    assert np.all(after[480:] == 0)
    stats = track.stats
    assert (stats.clears, stats.cleared_samples) == (1, dropped)
    assert stats.last_clear_latency_s is not None and stats.last_clear_latency_s < 0.1
    assert [(m.mark, m.position, m.pts) for m in track.pop_played_marks()] == [("new", 400, 400)]


async def test_clear_of_a_nearly_empty_ring_keeps_what_there_is() -> None:
    track = RingBufferAudioTrack(8000)
    track.write(np.full(10, 0.5, np.float32))
    assert track.clear() == 0
    frame = _mono(await track.recv()).astype(np.int32)
    assert np.all(np.diff(frame[:10]) <= 0) and np.all(frame[10:] == 0)
    assert track.played_samples == 10


async def test_marks_report_position_pts_and_are_dropped_with_cleared_audio() -> None:
    track = RingBufferAudioTrack(8000)
    track.write(np.full(100, 0.1, np.float32), mark=("ctx", 0))
    track.write(np.full(100, 0.1, np.float32), mark=("ctx", 1))
    track.write(np.full(400, 0.1, np.float32), mark=("ctx", 2))
    await track.recv()  # samples 0..159: passes marks 0 and 1
    played = track.pop_played_marks()
    assert [(m.mark, m.position, m.pts) for m in played] == [(("ctx", 0), 0, 0), (("ctx", 1), 100, 100)]
    assert played[1].sent_at - played[0].sent_at == pytest.approx(100 / 8000)
    assert track.pop_played_marks() == []
    track.clear()  # mark 2 (position 200) is beyond the 40-sample fade: never played
    track.write(np.full(50, 0.1, np.float32), mark=("ctx2", 0))
    await track.recv()
    assert [(m.mark, m.position, m.pts) for m in track.pop_played_marks()] == [(("ctx2", 0), 200, 200)]


async def test_pacing_follows_the_sample_clock_and_never_drifts() -> None:
    track = RingBufferAudioTrack(8000)
    track.write(np.zeros(1, np.float32), mark="first")
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(26):
        await track.recv()
        times.append(loop.time())
        time.sleep(0.005)  # the sender's own work: a schedule built from sleeps would drift 125 ms
    (first,) = track.pop_played_marks()
    offsets = np.array(times) - first.sent_at - np.arange(26) * 0.02  # sent_at: frame 0's due time
    assert offsets.min() >= -0.001, "a frame was sent before it was due"
    assert offsets[-1] < 0.03, "the schedule drifted"
    assert track.stats.resyncs == 0


async def test_a_late_consumer_moves_the_schedule_instead_of_bursting() -> None:
    track = RingBufferAudioTrack(8000, max_catchup_s=0.06)
    loop = asyncio.get_running_loop()
    await track.recv()
    await asyncio.sleep(0.2)  # the sender stalls for 10 frames
    late = loop.time()
    await track.recv()
    await track.recv()
    second = loop.time()
    assert track.stats.resyncs == 1
    assert 0.17 <= track.stats.resync_total_s < 0.3
    assert second - late >= 0.018, "the frame after a stall must wait for its slot, not burst"
    assert track.stats.samples_sent == 3 * 160  # pts stay contiguous


async def test_stop_ends_recv() -> None:
    track = RingBufferAudioTrack(8000)
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


def test_bad_configuration_is_refused_with_clear_errors() -> None:
    with pytest.raises(UnsupportedSampleRateError, match="22050"):
        RingBufferAudioTrack(22050)
    with pytest.raises(AudioFormatError, match="frame_ms 7"):
        RingBufferAudioTrack(44100, frame_ms=7)
    with pytest.raises(AudioFormatError, match="channels"):
        RingBufferAudioTrack(8000, channels=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clear_fade_ms"):
        RingBufferAudioTrack(8000, clear_fade_ms=10)


def test_bad_samples_are_refused_and_nothing_is_queued() -> None:
    track = RingBufferAudioTrack(8000)
    with pytest.raises(AudioFormatError, match="int16"):
        track.write(np.zeros(10, np.int16))
    with pytest.raises(AudioFormatError, match="shape"):
        track.write(np.zeros((10, 2), np.float32))
    with pytest.raises(AudioFormatError, match="sample 3 is nan"):
        track.write(np.array([0, 0, 0, np.nan], np.float32))
    assert track.queued_samples == 0


def test_overflow_policies_never_write_partially() -> None:
    raising = RingBufferAudioTrack(8000, capacity_s=0.05)  # 400 samples
    raising.write(np.zeros(300, np.float32))
    with pytest.raises(RingOverflowError):
        raising.write(np.zeros(101, np.float32), mark="lost")
    assert raising.queued_samples == 300
    refusing = RingBufferAudioTrack(8000, capacity_s=0.05, overflow="refuse")
    assert refusing.write(np.zeros(400, np.float32)) == 400
    assert refusing.write(np.zeros(1, np.float32), mark="lost") == 0
    assert refusing.queued_samples == 400


async def test_a_producer_thread_and_the_consumer_lose_and_reorder_nothing() -> None:
    track = RingBufferAudioTrack(16000)
    rng = np.random.default_rng(7)
    audio = rng.uniform(0.1, 0.9, 6400).astype(np.float32)  # no zeros: padding is told apart
    chunks = np.split(audio, np.cumsum(rng.integers(1, 200, 100)).clip(max=6400))

    def produce() -> None:
        for i, chunk in enumerate(chunks):
            track.write(chunk, mark=i)
            time.sleep(0.002)

    producer = asyncio.get_running_loop().run_in_executor(None, produce)
    frames = [_mono(await track.recv()) for _ in range(25)]
    await producer
    received = np.concatenate(frames)
    np.testing.assert_array_equal(received[received != 0], float_to_s16(audio))
    marks = track.pop_played_marks()
    starts = np.concatenate([[0], np.cumsum([len(c) for c in chunks])[:-1]])
    nonempty = [i for i, c in enumerate(chunks) if len(c)]
    assert [m.mark for m in marks] == nonempty
    assert [m.position for m in marks] == [int(starts[i]) for i in nonempty]
    # Each mark's pts points at its own first sample in the sent stream, padding included.
    assert all(frames[m.pts // 320][m.pts % 320] == float_to_s16(audio[m.position : m.position + 1])[0] for m in marks)
