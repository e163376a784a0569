"""speakwire.transport: how audio gets to and from the outside world.

- :mod:`speakwire.transport.websocket`: :class:`TTSConnection`, the multiplexed TTS WebSocket
  client (many :class:`Context` turns on one socket, keepalive, bounded reconnect, backpressure).
- :mod:`speakwire.transport.track`: :class:`RingBufferAudioTrack`, an aiortc audio track fed from a
  ring buffer and paced in real time; :mod:`speakwire.transport.loopback`: WebRTC on 127.0.0.1 only.
- :mod:`speakwire.transport.signaling`: :class:`SignalingServer` / :class:`OfferEndpoint`, the
  ``POST /offer`` route (aiohttp) that answers a browser's or aiortc peer's offer.

The WebRTC names are imported lazily, so that using the WebSocket client does not load aiortc.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from speakwire.transport.websocket import (
    DEFAULT_VERSION,
    ConnectionStats,
    Context,
    ReconnectPolicy,
    TTSConnection,
    TTSEvent,
)

if TYPE_CHECKING:
    from speakwire.transport.loopback import LoopbackCall, connect_loopback, loopback_configuration
    from speakwire.transport.signaling import OfferEndpoint, SignalingServer, strip_non_loopback_candidates
    from speakwire.transport.track import TRACK_SAMPLE_RATES, PlayedMark, RingBufferAudioTrack, TrackStats

_LAZY = {
    "TRACK_SAMPLE_RATES": "track",
    "PlayedMark": "track",
    "RingBufferAudioTrack": "track",
    "TrackStats": "track",
    "LoopbackCall": "loopback",
    "connect_loopback": "loopback",
    "loopback_configuration": "loopback",
    "OfferEndpoint": "signaling",
    "SignalingServer": "signaling",
    "strip_non_loopback_candidates": "signaling",
}

__all__ = [
    "DEFAULT_VERSION",
    "TRACK_SAMPLE_RATES",
    "ConnectionStats",
    "Context",
    "LoopbackCall",
    "OfferEndpoint",
    "PlayedMark",
    "ReconnectPolicy",
    "RingBufferAudioTrack",
    "SignalingServer",
    "TTSConnection",
    "TTSEvent",
    "TrackStats",
    "connect_loopback",
    "loopback_configuration",
    "strip_non_loopback_candidates",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'speakwire.transport' has no attribute {name!r}")
    return getattr(importlib.import_module(f"speakwire.transport.{module}"), name)
