"""A pipecat processor that ends a pipeline in a :class:`~speakwire.transport.track.RingBufferAudioTrack`.

:class:`TrackOutputProcessor` takes ``OutputAudioRawFrame`` (``TTSAudioRawFrame`` included: s16,
any channel count, any rate the resampler supports) flowing downstream, mixes it to mono,
resamples it to the track's fixed rate and writes it into the track, marked with the frame's
``context_id``. The track paces it out in real time to aiortc's sender.

Barge-in: on ``InterruptionFrame`` the track is cleared at once, before the frame is passed on, so
what leaves the track next is the 5 ms fade and then silence: the cut reaches the wire within one
track frame (20 ms), where pipecat's SmallWebRTC ``RawAudioTrack`` has no clear() and still plays
the chunk being written. Audio the resampler was holding back is dropped too, and late audio
frames of any context that had been written before the interruption are dropped when they
arrive, so no sample of an interrupted context is played after it (pipecat's TTS services open a
new context id for the turn after an interruption; the last 256 interrupted ids are remembered).
Frames marked uninterruptible are cleared like the rest: the track has one queue.

Resampler quality, chosen per path because soxr's block filtering holds back audio at turn start:
at 20 ms chunks ``"HQ"`` holds up to 37 ms (24 -> 16 or 48 kHz) and 73 ms (24 -> 8 kHz), ``"LQ"``
about half (20 and 40 ms). For 8 and 16 kHz tracks the codec band-limits anyway (PCMU, wideband
Opus) so ``"LQ"`` buys 17-33 ms of time to first audio for nothing audible; for 44.1 and 48 kHz
tracks ``"HQ"`` keeps the full band (LQ's passband would dull everything above ~8 kHz from 24 kHz
input) for 18 ms. ``quality=`` overrides it. The held-back tail is flushed at ``TTSStoppedFrame``,
at a change of context or input rate, and at ``EndFrame``.

Audio frames are consumed (the track plays them); every other frame is passed on unchanged. When
more than ``max_queued_s`` of audio waits in the track, the processor waits for it to drain
rather than fill the ring: the producer is paced by playout, as pipecat's own output transport is.
The wait is bounded: once the track has ended (the peer went away and aiortc stopped it, so
nothing reads the ring again) audio frames are dropped at once, and if a live track does not drain
within the time its queued audio takes to play plus one second (its reader stalled), the frame is
dropped; both are counted in :attr:`TrackOutputProcessor.undelivered_frames`. A pipeline never
blocks for good on a track nobody plays.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Final

import numpy as np
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputAudioRawFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from speakwire.dsp.pcm import decode
from speakwire.dsp.resample import Quality, StreamResampler
from speakwire.errors import AudioFormatError, RingOverflowError
from speakwire.transport.track import RingBufferAudioTrack

__all__ = ["TrackOutputProcessor", "default_quality"]

# Interrupted contexts remembered to drop their late frames; older ones cannot still be in flight.
_MAX_INTERRUPTED_CONTEXTS: Final = 256
# Beyond the audio's own playing time, how long a live track may take to make room: aiortc's
# sender reads every 20 ms, so a second without progress means it stalled.
_DRAIN_GRACE_S: Final = 1.0


def default_quality(track_rate: int) -> Quality:
    """The resampler quality used for a track at ``track_rate`` Hz (see the module docstring)."""
    return "LQ" if track_rate <= 16000 else "HQ"


class TrackOutputProcessor(FrameProcessor):
    """Write pipecat output audio into ``track``; clear it on ``InterruptionFrame``.

    ``quality`` is the soxr preset for converting to the track's rate (default:
    :func:`default_quality`). ``max_queued_s`` bounds the audio waiting in the track before the
    processor waits for playout (see the module docstring for how long); it may not exceed the
    track's capacity (``ValueError``). ``forward_audio`` also passes audio frames downstream after
    writing them (off by default: the track is the pipeline's audio sink). Other keyword arguments
    go to :class:`~pipecat.processors.frame_processor.FrameProcessor`.
    """

    def __init__(
        self,
        track: RingBufferAudioTrack,
        *,
        quality: Quality | None = None,
        max_queued_s: float = 5.0,
        forward_audio: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not max_queued_s > 0:
            raise ValueError(f"max_queued_s must be positive, got {max_queued_s!r}")
        capacity = track.capacity_samples
        max_queued = round(max_queued_s * track.sample_rate)
        if max_queued > capacity:
            raise ValueError(
                f"max_queued_s {max_queued_s!r} exceeds the track's capacity of {capacity / track.sample_rate:g} s"
            )
        self._track = track
        self._quality: Quality = quality if quality is not None else default_quality(track.sample_rate)
        self._max_queued = max_queued
        self._forward_audio = forward_audio
        self._resampler: StreamResampler | None = None
        self._context: str | None = None
        self._interrupted: deque[str] = deque(maxlen=_MAX_INTERRUPTED_CONTEXTS)
        self._dropped_frames = 0
        self._undelivered_frames = 0
        self._epoch = 0

    @property
    def track(self) -> RingBufferAudioTrack:
        """The track this processor writes into."""
        return self._track

    @property
    def quality(self) -> Quality:
        """The soxr quality preset in use."""
        return self._quality

    @property
    def dropped_frames(self) -> int:
        """Audio frames dropped because they belonged to audio an interruption had cut."""
        return self._dropped_frames

    @property
    def undelivered_frames(self) -> int:
        """Audio frames dropped because the track had ended or stopped draining."""
        return self._undelivered_frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Write audio into the track, clear it on interruption, pass everything else on."""
        if isinstance(frame, InterruptionFrame):
            # Clear before anything awaits, so the next frame the track sends is already the fade.
            self._interrupt()
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)
            return
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM and isinstance(frame, OutputAudioRawFrame):
            await self._write_audio(frame)
            if self._forward_audio:
                await self.push_frame(frame, direction)
            return
        if isinstance(frame, (TTSStoppedFrame, EndFrame)):
            await self._flush()
        await self.push_frame(frame, direction)

    def _interrupt(self) -> None:
        self._track.clear()
        self._epoch += 1
        if self._resampler is not None:
            self._resampler.reset()
        if self._context is not None and self._context not in self._interrupted:
            self._interrupted.append(self._context)
        self._context = None

    async def _write_audio(self, frame: OutputAudioRawFrame) -> None:
        context = frame.context_id if isinstance(frame, TTSAudioRawFrame) else None
        if context is not None and context in self._interrupted:
            self._dropped_frames += 1
            return
        if self._track.readyState != "live":
            self._undelivered_frames += 1
            return
        try:
            samples = self._mono(frame)
            if self._resampler is None or self._resampler.in_rate != frame.sample_rate:
                await self._flush()
                self._resampler = StreamResampler(frame.sample_rate, self._track.sample_rate, self._quality)
        except AudioFormatError as exc:
            await self.push_error(f"{self} cannot play {frame}: {exc}", exception=exc)
            return
        if context != self._context:
            await self._flush()
            self._context = context
        out = self._resampler.process(samples)
        epoch = self._epoch
        room = await self._wait_for_room(out.size)
        # An interruption during the wait cancels this task in a queued processor; in direct mode
        # it does not, and these samples belong to the audio that was cut.
        if epoch != self._epoch:
            self._dropped_frames += 1
            return
        if not room:
            self._undelivered_frames += 1
            return
        if out.size:
            try:
                self._track.write(out, mark=context)
            except RingOverflowError as exc:
                await self.push_error(f"{self} cannot queue {frame}: {exc}", exception=exc)

    @staticmethod
    def _mono(frame: OutputAudioRawFrame) -> np.ndarray:
        channels = frame.num_channels
        if not isinstance(channels, int) or channels < 1:
            raise AudioFormatError(f"num_channels must be a positive integer, got {channels!r}")
        samples = decode(frame.audio, "pcm_s16le")
        if samples.size % channels:
            raise AudioFormatError(f"{samples.size} samples do not split into {channels} channels")
        if channels > 1:
            samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
        return samples

    async def _flush(self) -> None:
        if self._resampler is None:
            return
        tail = self._resampler.flush()
        if tail.size and self._track.readyState == "live":
            try:
                # The tail belongs to audio already written: no new mark.
                self._track.write(tail)
            except RingOverflowError as exc:
                await self.push_error(f"{self} cannot queue the resampler's tail: {exc}", exception=exc)

    async def _wait_for_room(self, n: int) -> bool:
        """Wait until ``n`` samples fit under ``max_queued_s``; False if the track ended or stalled."""
        track = self._track
        rate = track.sample_rate
        period = track.frame_samples / rate
        loop = asyncio.get_running_loop()
        excess = track.queued_samples + n - self._max_queued
        deadline = loop.time() + max(excess, 0) / rate + _DRAIN_GRACE_S
        while track.queued_samples + n > self._max_queued and track.queued_samples > 0:
            if track.readyState != "live" or loop.time() >= deadline:
                return False
            await asyncio.sleep(period)
        return track.readyState == "live"
