"""speakwire.plugin: the pipecat TTS service (the only part of speakwire that imports pipecat).

- :class:`SpeakwireTTSService`: a drop-in beside pipecat's ``CartesiaTTSService`` that streams
  each LLM token at once, applies speed locally with WSOLA (service-wide, per turn, mid-stream,
  per ``<prosody rate>`` span), cancels cleanly on barge-in, and runs against an embedded local
  server when no API key or URL is given.
- :class:`TurnSpeedFrame`: speak one turn at its own speed.
- :class:`TurnAudio`: one turn's wire audio to pipeline PCM, with speed and word timing (pure).
- :class:`TrackOutputProcessor`: ends a pipeline in a WebRTC :class:`RingBufferAudioTrack`
  (imported lazily: aiortc loads only when it is used).
"""

from typing import Any

from speakwire.plugin.frames import TurnSpeedFrame
from speakwire.plugin.tts import CARTESIA_URL, DEFAULT_VOICE, SpeakwireTTSService
from speakwire.plugin.turn_audio import TurnAudio

__all__ = [
    "CARTESIA_URL",
    "DEFAULT_VOICE",
    "SpeakwireTTSService",
    "TrackOutputProcessor",
    "TurnAudio",
    "TurnSpeedFrame",
]


def __getattr__(name: str) -> Any:
    if name == "TrackOutputProcessor":
        from speakwire.plugin.track_output import TrackOutputProcessor

        return TrackOutputProcessor
    raise AttributeError(f"module 'speakwire.plugin' has no attribute {name!r}")
