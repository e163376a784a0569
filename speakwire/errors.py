"""The exception types speakwire raises.

Every error is a :class:`SpeakwireError` and also subclasses the builtin a caller would
naturally catch (``ValueError`` for bad input, ``ConnectionError`` for the network, ...), so
``except ValueError`` keeps working for code that does not know about speakwire.

Messages name what was wrong (the field, the value, the position) and never contain
credentials: API keys must not reach logs, reprs or error text.
"""

from __future__ import annotations

__all__ = [
    "AudioFormatError",
    "AuthenticationError",
    "ContextStateError",
    "EngineError",
    "InvalidSpeedError",
    "MarkupError",
    "PeerConnectionError",
    "ProtocolError",
    "RingOverflowError",
    "ServerError",
    "SpeakwireError",
    "TTSConnectionError",
    "UnsupportedEncodingError",
    "UnsupportedSampleRateError",
]


class SpeakwireError(Exception):
    """Base class of every error speakwire raises."""


class InvalidSpeedError(SpeakwireError, ValueError):
    """A speed factor that is not a finite positive number, or outside the policy's range."""


class AudioFormatError(SpeakwireError, ValueError):
    """Audio data or an audio format description that cannot be used (e.g. a partial sample)."""


class UnsupportedEncodingError(AudioFormatError):
    """An encoding name speakwire does not know (known: pcm_f32le, pcm_s16le, pcm_mulaw, pcm_alaw)."""


class UnsupportedSampleRateError(AudioFormatError):
    """A sample rate outside the supported set."""


class MarkupError(SpeakwireError, ValueError):
    """Malformed inline markup (``<prosody>``, ``<speed/>``, ``<break/>``, ...).

    ``position`` is the 0-based character offset in the text where the fault was found.
    """

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at character {position})")
        self.position = position


class ProtocolError(SpeakwireError, ValueError):
    """A message that breaks the TTS WebSocket protocol.

    ``field`` names the offending field (``None`` when the whole message is at fault),
    ``status_code`` is the HTTP-style status a server answers with (400, 401, 404, 413, 422, ...)
    and ``context_id`` the context the message was for, when it could be read.
    """

    def __init__(
        self, message: str, *, field: str | None = None, status_code: int = 400, context_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.field = field
        self.status_code = status_code
        self.context_id = context_id


class ContextStateError(SpeakwireError, RuntimeError):
    """An operation a context's state does not allow (e.g. a push after its input was closed)."""


class RingOverflowError(SpeakwireError, BufferError):
    """A write that does not fit in a ring buffer under the 'raise' overflow policy."""


class TTSConnectionError(SpeakwireError, ConnectionError):
    """The TTS WebSocket could not be opened, or was lost."""


class PeerConnectionError(SpeakwireError, ConnectionError):
    """A WebRTC peer connection failed, or did not connect in time."""


class AuthenticationError(TTSConnectionError, PermissionError):
    """The server refused the credentials (HTTP 401/403 at the handshake)."""


class ServerError(SpeakwireError, RuntimeError):
    """The server answered a context with an ``error`` frame."""

    def __init__(self, message: str, *, status_code: int, context_id: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.context_id = context_id


class EngineError(SpeakwireError, RuntimeError):
    """The local speech engine failed to load or to synthesise."""
