"""speakwire.server: the local Cartesia-compatible TTS WebSocket server and its offline engine.

``async with TTSServer(port=0) as server: ...`` (or ``url = server.start_in_thread()`` from
synchronous code) serves ``server.url``; ``speakwire serve`` runs it from the command line.
"""

from speakwire.server.app import DEFAULT_HOST, DEFAULT_PORT, ServerLimits, TTSServer
from speakwire.server.auth import TTS_PATH
from speakwire.server.engine import Engine
from speakwire.server.espeak import EspeakEngine
from speakwire.server.segmenter import DEFAULT_MAX_DELAY, Segmenter

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_DELAY",
    "DEFAULT_PORT",
    "TTS_PATH",
    "Engine",
    "EspeakEngine",
    "Segmenter",
    "ServerLimits",
    "TTSServer",
]
