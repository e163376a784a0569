"""RingBufferAudioTrack between two real aiortc peers on 127.0.0.1: content, pacing, barge-in.

The receiving peer offers (as a browser does) and the sending peer answers with the track; PCMU is
forced on the answering side before setRemoteDescription, Opus is aiortc's default.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from speakwire.dsp.resample import resample
from speakwire.errors import UnsupportedEncodingError
from speakwire.server.espeak import EspeakEngine
from speakwire.transport.loopback import connect_loopback
from speakwire.transport.track import RingBufferAudioTrack
from tests.transport.fixtures_track import Recorder, active_span, peak_frequency, rms, tone, tone_level

SINE_RMS = 0.5 / np.sqrt(2)


def _db(ratio: float) -> float:
    return 20 * np.log10(ratio)


class TimedTrack(RingBufferAudioTrack):
    """The real track, also noting when each frame left ``recv()`` (sender-side pacing)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent_times: list[float] = []

    async def recv(self):
        frame = await super().recv()
        self.sent_times.append(asyncio.get_running_loop().time())
        return frame


async def _play(
    track: RingBufferAudioTrack, codec: str | None, audio: np.ndarray, tail_s: float
) -> tuple[Recorder, str]:
    """Connect, let silence flow, write ``audio`` and record until it has played plus ``tail_s``."""
    call = await connect_loopback(track, codec=codec)
    recorder = Recorder(call.remote_track).start()
    try:
        await recorder.wait_frames(5)
        track.write(audio, mark="start")
        await asyncio.sleep(len(audio) / track.sample_rate + tail_s)
    finally:
        await recorder.stop()
        await call.close()
    return recorder, call.codec


async def test_pcmu_8k_tone_arrives_with_its_duration_level_and_frequency() -> None:
    track = RingBufferAudioTrack(8000)
    rec, codec = await _play(track, "audio/PCMU", tone(8000, 440, 1.0), tail_s=0.4)
    assert codec == "PCMU/8000"
    assert rec.rate == 8000 and {len(pcm) for _, _, pcm in rec.frames} == {160}
    x = rec.signal()
    start, end = active_span(x, 0.05)
    assert (end - start) / 8000 == pytest.approx(1.0, abs=0.003)
    steady = x[start + 800 : end - 800]
    assert peak_frequency(steady, 8000) == pytest.approx(440, abs=1)
    assert abs(_db(rms(steady) / SINE_RMS)) < 0.3
    assert rms(x[: start - 80]) < 1e-3 and rms(x[end + 80 :]) < 1e-3, "silence before and after"
    assert track.stats.underrun_frames > 0 and track.stats.audio_samples_sent == 8000


async def test_opus_16k_mono_espeak_speech_arrives_with_its_duration_and_level() -> None:
    with EspeakEngine() as engine:
        speech = engine.synthesize("Hello there, this is the speech track speaking over WebRTC.")
    sent = resample(speech.audio, speech.sample_rate, 16000).astype(np.float32)
    track = RingBufferAudioTrack(16000)
    rec, codec = await _play(track, None, sent, tail_s=0.4)
    assert codec == "opus/48000/2" and rec.rate == 48000
    x = rec.signal()
    threshold = 0.1 * float(np.max(np.abs(sent)))
    s0, s1 = active_span(sent, threshold)
    r0, r1 = active_span(x, threshold * 0.5)
    assert (r1 - r0) / 48000 == pytest.approx((s1 - s0) / 16000, abs=0.03)
    # Opus upmixes a mono track to stereo at -3 dB (why stereo tracks duplicate the channel).
    loss = _db(rms(x[r0:r1]) / rms(sent[s0:s1]))
    assert loss == pytest.approx(-3.0, abs=1.5)


async def test_opus_44k1_stereo_tone_keeps_level_frequency_and_pacing() -> None:
    track = TimedTrack(44100, channels=2)
    rec, _ = await _play(track, None, tone(44100, 1000, 3.0), tail_s=0.4)
    x = rec.signal()
    start, end = active_span(x, 0.05)
    assert (end - start) / 48000 == pytest.approx(3.0, abs=0.01)
    steady = x[start + 4800 : end - 4800]
    assert peak_frequency(steady, 48000) == pytest.approx(1000, abs=1)
    assert abs(_db(rms(steady) / SINE_RMS)) < 1.0, "stereo arrives without Opus's mono loss"
    # Pacing: frames per second from a least-squares fit of send and arrival times (robust to
    # jitter at the ends), over the whole run of about 3.6 s.
    sent = np.array(track.sent_times)
    sender_fps = 1 / np.polyfit(np.arange(len(sent)), sent, 1)[0]
    arrived = np.array(rec.arrivals[10:])
    receiver_fps = 1 / np.polyfit(np.arange(len(arrived)), arrived, 1)[0]
    assert sender_fps == pytest.approx(50, rel=0.01)
    assert receiver_fps == pytest.approx(50, rel=0.01)
    (mark,) = track.pop_played_marks()
    due = mark.sent_at - mark.pts / 44100 + np.arange(len(sent)) * 0.02
    lateness = sent - due
    assert lateness.min() >= -0.001, "a frame left before it was due (burst)"
    assert track.stats.resyncs == 0


@pytest.mark.parametrize(("rate", "codec", "channels"), [(8000, "audio/PCMU", 1), (48000, None, 2)])
async def test_barge_in_silences_the_receiver_within_60_ms_with_no_old_audio_after(
    rate: int, codec: str | None, channels: int
) -> None:
    track = RingBufferAudioTrack(rate, channels=channels)  # type: ignore[arg-type]
    call = await connect_loopback(track, codec=codec)
    rec = Recorder(call.remote_track).start()
    loop = asyncio.get_running_loop()
    try:
        await rec.wait_frames(5)
        track.write(tone(rate, 440, 3.0), mark="old")
        await asyncio.sleep(0.8)
        clear_pts = track.stats.samples_sent  # everything before this pts had already been sent
        clear_time = loop.time()
        dropped = track.clear()
        await asyncio.sleep(0.3)
        track.write(tone(rate, 1000, 0.5), mark="new")
        await asyncio.sleep(0.9)
    finally:
        await rec.stop()
        await call.close()
    assert dropped > rate  # more than a second of the old tone was still queued
    marks = {m.mark: m for m in track.pop_played_marks()}
    assert set(marks) == {"old", "new"}
    out_rate = rec.rate
    x = rec.signal()
    old_start = active_span(x, 0.05)[0]
    # Map the sender's pts onto the received timeline through the old tone's onset.
    offset = old_start / out_rate - marks["old"].pts / rate
    clear_at = round((clear_pts / rate + offset) * out_rate)
    new_start = round((marks["new"].pts / rate + offset) * out_rate)
    ms = out_rate // 1000
    assert tone_level(x[clear_at - 100 * ms : clear_at - 20 * ms], out_rate, 440) == pytest.approx(0.5, abs=0.05)
    gap = x[clear_at : new_start - 5 * ms]
    old_end = clear_at + active_span(gap, 0.01)[1]
    assert (old_end - clear_at) / out_rate < 0.060, "old audio went on after the barge-in"
    assert np.max(np.abs(x[clear_at + 60 * ms : new_start - 5 * ms])) < 0.01
    new = x[new_start + 20 * ms : new_start + 480 * ms]
    assert tone_level(new, out_rate, 1000) == pytest.approx(0.5, abs=0.05)
    assert tone_level(new, out_rate, 440) < 0.005, "old-context samples after the new context began"
    # Wall clock: the sender handed out the fade frame at most a frame (plus scheduling) after clear().
    assert track.stats.last_clear_latency_s is not None and track.stats.last_clear_latency_s < 0.06
    # Receiver wall clock, minus the path latency measured on the old tone's onset.
    path = rec.arrival_of(old_start) - marks["old"].sent_at
    heard_stop = rec.arrival_of(old_end - 1) - clear_time - path
    assert heard_stop < 0.060


async def test_an_unknown_codec_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedEncodingError, match=r"audio/G729.*audio/PCMU"):
        await connect_loopback(RingBufferAudioTrack(8000), codec="audio/G729")
