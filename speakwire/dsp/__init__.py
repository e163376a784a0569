"""Pure signal processing: no I/O, no asyncio. Streaming objects follow python-soxr's shape:
one object, ``process(chunk)``, a final ``flush()``; output is identical whatever the chunk sizes.

Names are imported lazily so that ``import speakwire.dsp.pcm`` does not pay for the WSOLA kernel.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from speakwire.dsp.resample import StreamResampler
    from speakwire.dsp.ring import RingBuffer
    from speakwire.dsp.speed import (
        CARTESIA_POLICY,
        DEFAULT_POLICY,
        KUGELAUDIO_POLICY,
        SPEECH_SDK_POLICY,
        SpeedPolicy,
    )
    from speakwire.dsp.timemap import TimeMap
    from speakwire.dsp.wsola import Stretcher, WsolaLayout, time_stretch

_EXPORTS = {
    "Stretcher": "wsola",
    "time_stretch": "wsola",
    "WsolaLayout": "wsola",
    "TimeMap": "timemap",
    "StreamResampler": "resample",
    "RingBuffer": "ring",
    "SpeedPolicy": "speed",
    "DEFAULT_POLICY": "speed",
    "SPEECH_SDK_POLICY": "speed",
    "KUGELAUDIO_POLICY": "speed",
    "CARTESIA_POLICY": "speed",
}

__all__ = [
    "CARTESIA_POLICY",
    "DEFAULT_POLICY",
    "KUGELAUDIO_POLICY",
    "SPEECH_SDK_POLICY",
    "RingBuffer",
    "SpeedPolicy",
    "StreamResampler",
    "Stretcher",
    "TimeMap",
    "WsolaLayout",
    "time_stretch",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'speakwire.dsp' has no attribute {name!r}")
    return getattr(importlib.import_module(f"speakwire.dsp.{module}"), name)
