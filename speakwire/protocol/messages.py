"""Typed messages of the TTS WebSocket protocol (Cartesia-compatible), and their JSON form.

Every frame is a JSON text frame. A client sends :class:`GenerationRequest` and
:class:`CancelRequest`; a server sends the :data:`ServerMessage` types (:class:`Chunk`,
:class:`WordTimestamps`, :class:`PhonemeTimestamps`, :class:`FlushDone`, :class:`Done`,
:class:`ErrorMessage`). The same three functions serve both ends::

    text = encode(message)                      # any message -> compact JSON
    request = decode_request(text, limits)      # server side: what a client sent
    message = decode_response(text)             # client side: what a server sent

Wire names are exactly those of ``docs/protocol.md``; Python names differ only where the wire
name is a keyword (``continue`` -> ``continue_``) or ``__private`` (``__experimental_controls``
-> ``experimental_controls``). Audio is ``bytes`` in :class:`Chunk` and base64 on the wire.

Decoding is tolerant of what real clients send (unknown keys, explicit ``null`` meaning
"absent", SDK 2.x's ``stream``/``duration``/``use_original_timestamps``) and strict about
everything else: any malformed input raises :class:`~speakwire.errors.ProtocolError` whose
``field`` names the key at fault (dotted for nested keys, e.g. ``output_format.sample_rate``) and
whose ``status_code`` is the status a server answers with:

- 400: not JSON, not an object, a binary frame, a wrong type, a missing ``context_id``;
- 413: the message, the transcript or the context id is larger than :class:`Limits` allows;
- 422: the right type but an unacceptable value (unknown encoding, unsupported sample rate,
  container other than ``raw``, a NaN speed, an unknown experimental speed label, ...).

No other exception escapes the decoders, whatever the input. The speed range is not checked
here (a server applies its :class:`~speakwire.dsp.speed.SpeedPolicy` to
:attr:`GenerationRequest.effective_speed`), only that speeds are finite.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, TypeAlias

from speakwire.dsp.speed import cartesia_experimental_speed
from speakwire.errors import InvalidSpeedError, ProtocolError

__all__ = [
    "DEFAULT_LIMITS",
    "ENCODINGS",
    "EXPERIMENTAL_EMOTIONS",
    "EXPERIMENTAL_EMOTION_LEVELS",
    "MAX_BUFFER_DELAY_MS",
    "SAMPLE_RATES",
    "STREAMING_STATUS",
    "CancelRequest",
    "Chunk",
    "ClientMessage",
    "Done",
    "Encoding",
    "ErrorMessage",
    "ExperimentalControls",
    "FlushDone",
    "GenerationConfig",
    "GenerationRequest",
    "Limits",
    "OutputFormat",
    "PhonemeTimestamps",
    "ServerMessage",
    "Voice",
    "WordTimestamps",
    "context_id_of",
    "decode_request",
    "decode_response",
    "encode",
]

Encoding: TypeAlias = Literal["pcm_f32le", "pcm_s16le", "pcm_mulaw", "pcm_alaw"]

#: Audio encodings a request may ask for, in order of preference of the local server.
ENCODINGS: Final[tuple[Encoding, ...]] = ("pcm_f32le", "pcm_s16le", "pcm_mulaw", "pcm_alaw")
#: Sample rates a request may ask for (Hz).
SAMPLE_RATES: Final[tuple[int, ...]] = (8000, 16000, 22050, 24000, 44100, 48000)
#: ``status_code`` of every streamed (non-error) server message.
STREAMING_STATUS: Final = 206
#: Upper bound of ``max_buffer_delay_ms`` (SDK 4.x docs: [0, 5000]).
MAX_BUFFER_DELAY_MS: Final = 5000
#: Emotion names of the deprecated ``__experimental_controls.emotion`` (seed 001).
EXPERIMENTAL_EMOTIONS: Final = frozenset({"anger", "positivity", "surprise", "sadness", "curiosity"})
#: Levels an experimental emotion may carry after a colon; no level means moderate.
EXPERIMENTAL_EMOTION_LEVELS: Final = frozenset({"lowest", "low", "high", "highest"})


@dataclass(frozen=True, slots=True)
class Limits:
    """Size bounds the request decoder enforces (each breach is a 413 :class:`ProtocolError`).

    ``max_open_contexts`` is not a decoder limit: it bounds a connection's
    :class:`~speakwire.protocol.context.ContextRegistry` (429 beyond it), and lives here so
    that one object configures a server.
    """

    max_message_bytes: int = 64 * 1024
    max_transcript_chars: int = 10_000
    max_context_id_length: int = 256
    max_open_contexts: int = 32

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_transcript_chars", "max_context_id_length", "max_open_contexts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive int, got {value!r}")


DEFAULT_LIMITS: Final = Limits()


# --- request parts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """``output_format``: always ``container: "raw"``; encoding and rate from the supported sets."""

    encoding: Encoding
    sample_rate: int
    container: Literal["raw"] = "raw"

    @property
    def bytes_per_sample(self) -> int:
        """Bytes per (mono) sample on the wire: 4 for pcm_f32le, 2 for pcm_s16le, 1 for the G.711 laws."""
        return {"pcm_f32le": 4, "pcm_s16le": 2}.get(self.encoding, 1)


@dataclass(frozen=True, slots=True)
class ExperimentalControls:
    """``voice.__experimental_controls`` (deprecated, seed 001): a speed name or number in [-1, 1],
    and additive emotion tags like ``"positivity:high"`` or ``"curiosity"``."""

    speed: str | float | None = None
    emotion: tuple[str, ...] = ()

    @property
    def speed_factor(self) -> float | None:
        """The speed as a factor (``2 ** s``; see :func:`~speakwire.dsp.speed.cartesia_experimental_speed`)."""
        return None if self.speed is None else cartesia_experimental_speed(self.speed)


@dataclass(frozen=True, slots=True)
class Voice:
    """A voice object: ``{"mode": "id", "id": ...}`` or SDK 2.x's ``{"mode": "embedding", "embedding": [...]}``.

    A voice sent as a bare id string stays a ``str`` in :attr:`GenerationRequest.voice`.
    Unknown keys of the voice object are tolerated and dropped.
    """

    mode: Literal["id", "embedding"] = "id"
    id: str | None = None
    embedding: tuple[float, ...] | None = None
    experimental_controls: ExperimentalControls | None = None


@dataclass(frozen=True, slots=True)
class GenerationConfig:
    """``generation_config`` (sonic-3): per-push values that replace the context's, not merge with them."""

    speed: float | None = None
    volume: float | None = None
    emotion: str | None = None


# --- client -> server -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One push of text on a context.

    ``continue_`` false (or absent on the wire) ends the context's input; ``transcript=""`` with
    ``continue_=False`` only closes it, with ``flush=True`` only flushes. Fields left ``None``
    are omitted on the wire; the boolean flags are omitted when false, except ``continue``,
    which is always written (as every official client does).
    """

    context_id: str
    transcript: str = ""
    continue_: bool = False
    model_id: str | None = None
    voice: Voice | str | None = None
    language: str | None = None
    output_format: OutputFormat | None = None
    add_timestamps: bool = False
    add_phoneme_timestamps: bool = False
    use_normalized_timestamps: bool | None = None
    max_buffer_delay_ms: int | None = None
    generation_config: GenerationConfig | None = None
    flush: bool = False
    pronunciation_dict_id: str | None = None
    #: SDK 4.x's top-level ``speed`` ("slow", "normal", "fast"), same scale as the experimental one.
    speed: str | float | None = None
    #: Legacy SDK 2.x keys, kept only so they survive a round trip.
    stream: bool | None = None
    duration: float | None = None
    use_original_timestamps: bool | None = None

    @property
    def voice_id(self) -> str | None:
        """The voice id, whether sent bare or as ``{"mode": "id", "id": ...}``; None for embeddings."""
        if isinstance(self.voice, str):
            return self.voice
        return None if self.voice is None else self.voice.id

    @property
    def effective_speed(self) -> float | None:
        """The speed factor this push asks for, or None for "unchanged".

        ``generation_config.speed`` if given, else ``voice.__experimental_controls.speed`` mapped
        to a factor, else the top-level ``speed`` label on the same scale. Not range-checked:
        apply a :class:`~speakwire.dsp.speed.SpeedPolicy`.
        """
        if self.generation_config is not None and self.generation_config.speed is not None:
            return self.generation_config.speed
        if isinstance(self.voice, Voice) and self.voice.experimental_controls is not None:
            factor = self.voice.experimental_controls.speed_factor
            if factor is not None:
                return factor
        return None if self.speed is None else cartesia_experimental_speed(self.speed)

    @property
    def closes_input(self) -> bool:
        """True when this push ends the context's input (``continue`` false)."""
        return not self.continue_


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """``{"context_id": ..., "cancel": true}``: stop generating for a context."""

    context_id: str


ClientMessage: TypeAlias = GenerationRequest | CancelRequest


# --- server -> client -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chunk:
    """Audio in the context's output format. ``flush_id`` stays None until the first flush
    (SDK 2.x indexes a list with it and crashes otherwise)."""

    type: ClassVar[str] = "chunk"
    context_id: str
    audio: bytes
    step_time: float = 0.0
    flush_id: int | None = None
    status_code: int = STREAMING_STATUS


@dataclass(frozen=True, slots=True)
class WordTimestamps:
    """Word timings in seconds from the start of the context (``word_timestamps`` on the wire).

    Punctuation stays attached to its word (``"there,"``): pipecat matches words to its text.
    """

    type: ClassVar[str] = "timestamps"
    context_id: str
    words: tuple[str, ...]
    start: tuple[float, ...]
    end: tuple[float, ...]
    flush_id: int | None = None
    status_code: int = STREAMING_STATUS


@dataclass(frozen=True, slots=True)
class PhonemeTimestamps:
    """Phoneme timings in seconds from the start of the context (``phoneme_timestamps`` on the wire)."""

    type: ClassVar[str] = "phoneme_timestamps"
    context_id: str
    phonemes: tuple[str, ...]
    start: tuple[float, ...]
    end: tuple[float, ...]
    flush_id: int | None = None
    status_code: int = STREAMING_STATUS


@dataclass(frozen=True, slots=True)
class FlushDone:
    """All audio of the text sent up to flush number ``flush_id`` (1, 2, ...) has been sent."""

    type: ClassVar[str] = "flush_done"
    context_id: str
    flush_id: int
    status_code: int = STREAMING_STATUS


@dataclass(frozen=True, slots=True)
class Done:
    """The context is finished: its input ended and all its audio was sent. Exactly one per context."""

    type: ClassVar[str] = "done"
    context_id: str
    status_code: int = STREAMING_STATUS


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """An ``error`` frame; it ends its context (``done: true``). ``context_id`` None: connection-level.

    The wire carries both ``error`` (what SDK 2.x reads) and ``title``/``message`` (what 4.x
    reads); ``error`` defaults to ``"title: message"``, the form SDK 4.x rebuilds.
    """

    type: ClassVar[str] = "error"
    status_code: int
    title: str
    message: str
    context_id: str | None = None
    error: str = field(default="")

    def __post_init__(self) -> None:
        if not self.error:
            object.__setattr__(self, "error", f"{self.title}: {self.message}")

    @classmethod
    def from_exception(cls, exc: ProtocolError, context_id: str | None = None) -> ErrorMessage:
        """The frame a server answers a rejected request with."""
        title = {
            400: "Bad Request",
            404: "Not Found",
            409: "Conflict",
            413: "Payload Too Large",
            422: "Unprocessable Entity",
            429: "Too Many Requests",
        }.get(exc.status_code, "Error")
        return cls(status_code=exc.status_code, title=title, message=str(exc), context_id=context_id)


ServerMessage: TypeAlias = Chunk | WordTimestamps | PhonemeTimestamps | FlushDone | Done | ErrorMessage


# --- encoding -------------------------------------------------------------------------------


def _voice_to_wire(voice: Voice | str) -> str | dict[str, Any]:
    if isinstance(voice, str):
        return voice
    out: dict[str, Any] = {"mode": voice.mode}
    if voice.id is not None:
        out["id"] = voice.id
    if voice.embedding is not None:
        out["embedding"] = list(voice.embedding)
    controls = voice.experimental_controls
    if controls is not None:
        wire: dict[str, Any] = {}
        if controls.speed is not None:
            wire["speed"] = controls.speed
        if controls.emotion:
            wire["emotion"] = list(controls.emotion)
        out["__experimental_controls"] = wire
    return out


def _request_to_wire(msg: GenerationRequest) -> dict[str, Any]:
    out: dict[str, Any] = {"context_id": msg.context_id}
    if msg.model_id is not None:
        out["model_id"] = msg.model_id
    out["transcript"] = msg.transcript
    if msg.voice is not None:
        out["voice"] = _voice_to_wire(msg.voice)
    if msg.language is not None:
        out["language"] = msg.language
    if msg.output_format is not None:
        fmt = msg.output_format
        out["output_format"] = {"container": fmt.container, "encoding": fmt.encoding, "sample_rate": fmt.sample_rate}
    out["continue"] = msg.continue_
    for name in ("add_timestamps", "add_phoneme_timestamps", "flush"):
        if getattr(msg, name):
            out[name] = True
    optional = (
        "use_normalized_timestamps",
        "max_buffer_delay_ms",
        "pronunciation_dict_id",
        "speed",
        "stream",
        "duration",
        "use_original_timestamps",
    )
    for name in optional:
        value = getattr(msg, name)
        if value is not None:
            out[name] = value
    config = msg.generation_config
    if config is not None:
        out["generation_config"] = {
            k: v
            for k, v in (("speed", config.speed), ("volume", config.volume), ("emotion", config.emotion))
            if v is not None
        }
    return out


def _streamed(msg: ServerMessage, extra: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": msg.type, "context_id": msg.context_id, "done": False}
    out.update(extra)
    out["status_code"] = msg.status_code
    flush_id = getattr(msg, "flush_id", None)
    if flush_id is not None:
        out["flush_id"] = flush_id
    return out


def _to_wire(msg: ClientMessage | ServerMessage) -> dict[str, Any]:
    if isinstance(msg, GenerationRequest):
        return _request_to_wire(msg)
    if isinstance(msg, CancelRequest):
        return {"context_id": msg.context_id, "cancel": True}
    if isinstance(msg, Chunk):
        data = base64.b64encode(msg.audio).decode("ascii")
        return _streamed(msg, {"data": data, "step_time": msg.step_time})
    if isinstance(msg, WordTimestamps):
        stamps = {"words": list(msg.words), "start": list(msg.start), "end": list(msg.end)}
        return _streamed(msg, {"word_timestamps": stamps})
    if isinstance(msg, PhonemeTimestamps):
        stamps = {"phonemes": list(msg.phonemes), "start": list(msg.start), "end": list(msg.end)}
        return _streamed(msg, {"phoneme_timestamps": stamps})
    if isinstance(msg, FlushDone):
        return _streamed(msg, {"flush_done": True})
    if isinstance(msg, Done):
        return {"type": "done", "context_id": msg.context_id, "done": True, "status_code": msg.status_code}
    if isinstance(msg, ErrorMessage):
        # A connection-level error still carries the key, as null: pipecat reads msg["context_id"]
        # unguarded, and a missing key costs it a KeyError and a reconnect.
        out: dict[str, Any] = {"type": "error", "context_id": msg.context_id}
        out.update(done=True, status_code=msg.status_code, error=msg.error, title=msg.title, message=msg.message)
        return out
    raise TypeError(f"encode() takes a protocol message, got {type(msg).__name__}")


def encode(msg: ClientMessage | ServerMessage) -> str:
    """Serialise ``msg`` to its compact JSON text frame.

    Server messages always carry ``type``, ``context_id`` (null on a connection-level error),
    ``done`` and ``status_code``. A non-finite float in ``msg`` raises :class:`ProtocolError`
    (422): JSON has no NaN, and the peer's decoder would refuse it.
    """
    wire = _to_wire(msg)
    try:
        return json.dumps(wire, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ProtocolError(
            f"cannot encode {type(msg).__name__}: it holds a NaN or infinite number", status_code=422
        ) from None


# --- decoding -------------------------------------------------------------------------------

_MISSING: Final = object()


def _bad(field_name: str | None, message: str, status: int = 400) -> ProtocolError:
    return ProtocolError(message, field=field_name, status_code=status)


def _get(obj: Mapping[str, Any], key: str) -> Any:
    """The value at ``key``, with an explicit null read as absent."""
    value = obj.get(key, _MISSING)
    return _MISSING if value is None else value


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}.get(
        type(value), type(value).__name__
    )


def _str(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value = _get(obj, key)
    if value is _MISSING:
        return None
    if not isinstance(value, str):
        raise _bad(path, f"{path} must be a string, got {_type_name(value)}")
    return value


def _bool(obj: Mapping[str, Any], key: str, path: str) -> bool | None:
    value = _get(obj, key)
    if value is _MISSING:
        return None
    if not isinstance(value, bool):
        raise _bad(path, f"{path} must be a boolean, got {_type_name(value)}")
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(path, f"{path} must be a number, got {_type_name(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise _bad(path, f"{path} must be a finite number, got {value!r}", 422)
    return number


def _opt_number(obj: Mapping[str, Any], key: str, path: str) -> float | None:
    value = _get(obj, key)
    return None if value is _MISSING else _number(value, path)


def _int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(path, f"{path} must be an integer, got {_type_name(value)}")
    return value


def _object(obj: Mapping[str, Any], key: str, path: str) -> dict[str, Any] | None:
    value = _get(obj, key)
    if value is _MISSING:
        return None
    if not isinstance(value, dict):
        raise _bad(path, f"{path} must be an object, got {_type_name(value)}")
    return value


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _parse_object(text: str | bytes | bytearray | memoryview, max_bytes: int | None) -> dict[str, Any]:
    if not isinstance(text, str):
        raise _bad(None, "binary frames are not part of the protocol; send JSON text frames")
    # len(text) is a lower bound of the UTF-8 size and 4 * len(text) an upper one: only
    # count bytes when the cheap bounds disagree.
    if max_bytes is not None and len(text) * 4 > max_bytes and (len(text) > max_bytes or _utf8_len(text) > max_bytes):
        raise _bad(None, f"message is larger than {max_bytes} bytes", 413)
    try:
        obj = json.loads(text)
    except RecursionError:
        raise _bad(None, "message is not valid JSON: nested too deeply") from None
    except ValueError as exc:
        # JSONDecodeError, and the int-digits limit; the message says where, never the content.
        raise _bad(None, f"message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _bad(None, f"message must be a JSON object, got {_type_name(obj)}")
    return obj


def _context_id(obj: Mapping[str, Any], limits: Limits | None, required: bool = True) -> str | None:
    value = _get(obj, "context_id")
    if value is _MISSING:
        if required:
            raise _bad("context_id", "context_id is required")
        return None
    if not isinstance(value, str):
        raise _bad("context_id", f"context_id must be a string, got {_type_name(value)}")
    if not value:
        raise _bad("context_id", "context_id must not be empty", 422)
    if limits is not None and len(value) > limits.max_context_id_length:
        raise _bad("context_id", f"context_id is longer than {limits.max_context_id_length} characters", 413)
    return value


def context_id_of(text: str | bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> str | None:
    """Best effort: the valid ``context_id`` of a frame, or None. Never raises.

    For a server answering a rejected request: the error frame should name the context, so
    that a client waiting on that context (SDK 4.x ``receive()``) ends instead of hanging.
    """
    try:
        obj = _parse_object(text, limits.max_message_bytes)
        return _context_id(obj, limits)
    except ProtocolError:
        return None


def _decode_output_format(obj: Mapping[str, Any]) -> OutputFormat | None:
    fmt = _object(obj, "output_format", "output_format")
    if fmt is None:
        return None
    container = _str(fmt, "container", "output_format.container")
    if container is None:
        container = "raw"
    if container != "raw":
        raise _bad("output_format.container", f"output_format.container {container!r} is not supported; use 'raw'", 422)
    encoding = _str(fmt, "encoding", "output_format.encoding")
    if encoding is None:
        raise _bad("output_format.encoding", "output_format.encoding is required")
    if encoding not in ENCODINGS:
        raise _bad(
            "output_format.encoding",
            f"output_format.encoding {encoding!r} is not supported; use one of {', '.join(ENCODINGS)}",
            422,
        )
    rate = _get(fmt, "sample_rate")
    if rate is _MISSING:
        raise _bad("output_format.sample_rate", "output_format.sample_rate is required")
    if isinstance(rate, float) and rate.is_integer():
        rate = int(rate)
    rate = _int(rate, "output_format.sample_rate")
    if rate not in SAMPLE_RATES:
        raise _bad(
            "output_format.sample_rate",
            f"output_format.sample_rate {rate} is not supported; use one of {', '.join(map(str, SAMPLE_RATES))}",
            422,
        )
    return OutputFormat(encoding=encoding, sample_rate=rate)  # type: ignore[arg-type]


def _decode_speed_label(value: Any, path: str) -> str | float:
    if isinstance(value, str):
        speed: str | float = value
    else:
        speed = _number(value, path)
    try:
        cartesia_experimental_speed(speed)
    except InvalidSpeedError as exc:
        raise _bad(path, f"{path}: {exc}", 422) from None
    return speed


def _decode_controls(voice: Mapping[str, Any]) -> ExperimentalControls | None:
    path = "voice.__experimental_controls"
    controls = _object(voice, "__experimental_controls", path)
    if controls is None:
        return None
    speed_value = _get(controls, "speed")
    speed = None if speed_value is _MISSING else _decode_speed_label(speed_value, f"{path}.speed")
    emotion_value = _get(controls, "emotion")
    emotions: tuple[str, ...] = ()
    if emotion_value is not _MISSING:
        if not isinstance(emotion_value, list) or not all(isinstance(e, str) for e in emotion_value):
            raise _bad(f"{path}.emotion", f"{path}.emotion must be an array of strings")
        for tag in emotion_value:
            name, _, level = tag.partition(":")
            if name not in EXPERIMENTAL_EMOTIONS or (level and level not in EXPERIMENTAL_EMOTION_LEVELS):
                raise _bad(
                    f"{path}.emotion",
                    f"{path}.emotion {tag!r} is not 'name' or 'name:level' with name in "
                    f"{', '.join(sorted(EXPERIMENTAL_EMOTIONS))} and level in "
                    f"{', '.join(sorted(EXPERIMENTAL_EMOTION_LEVELS))}",
                    422,
                )
        emotions = tuple(emotion_value)
    return ExperimentalControls(speed=speed, emotion=emotions)


def _decode_voice(obj: Mapping[str, Any]) -> Voice | str | None:
    value = _get(obj, "voice")
    if value is _MISSING or isinstance(value, str):
        return None if value is _MISSING else value
    if not isinstance(value, dict):
        raise _bad("voice", f"voice must be a string or an object, got {_type_name(value)}")
    mode = _str(value, "mode", "voice.mode")
    voice_id = _str(value, "id", "voice.id")
    embedding_value = _get(value, "embedding")
    embedding: tuple[float, ...] | None = None
    if embedding_value is not _MISSING:
        if not isinstance(embedding_value, list):
            raise _bad("voice.embedding", f"voice.embedding must be an array, got {_type_name(embedding_value)}")
        embedding = tuple(_number(x, "voice.embedding") for x in embedding_value)
    if mode is None:
        mode = "embedding" if embedding is not None and voice_id is None else "id"
    if mode not in ("id", "embedding"):
        raise _bad("voice.mode", f"voice.mode {mode!r} is not supported; use 'id' or 'embedding'", 422)
    if mode == "id" and voice_id is None:
        raise _bad("voice.id", "voice.id is required when voice.mode is 'id'")
    if mode == "embedding" and embedding is None:
        raise _bad("voice.embedding", "voice.embedding is required when voice.mode is 'embedding'")
    return Voice(mode=mode, id=voice_id, embedding=embedding, experimental_controls=_decode_controls(value))  # type: ignore[arg-type]


def _decode_generation_config(obj: Mapping[str, Any]) -> GenerationConfig | None:
    config = _object(obj, "generation_config", "generation_config")
    if config is None:
        return None
    return GenerationConfig(
        speed=_opt_number(config, "speed", "generation_config.speed"),
        volume=_opt_number(config, "volume", "generation_config.volume"),
        emotion=_str(config, "emotion", "generation_config.emotion"),
    )


def _decode_generation(obj: Mapping[str, Any], context_id: str, limits: Limits) -> GenerationRequest:
    transcript = _str(obj, "transcript", "transcript") or ""
    if len(transcript) > limits.max_transcript_chars:
        raise _bad("transcript", f"transcript is longer than {limits.max_transcript_chars} characters", 413)
    delay_value = _get(obj, "max_buffer_delay_ms")
    delay: int | None = None
    if delay_value is not _MISSING:
        if isinstance(delay_value, float) and delay_value.is_integer():
            delay_value = int(delay_value)
        delay = _int(delay_value, "max_buffer_delay_ms")
        if not 0 <= delay <= MAX_BUFFER_DELAY_MS:
            raise _bad("max_buffer_delay_ms", f"max_buffer_delay_ms {delay} is outside [0, {MAX_BUFFER_DELAY_MS}]", 422)
    speed_value = _get(obj, "speed")
    return GenerationRequest(
        context_id=context_id,
        transcript=transcript,
        continue_=bool(_bool(obj, "continue", "continue")),
        model_id=_str(obj, "model_id", "model_id"),
        voice=_decode_voice(obj),
        language=_str(obj, "language", "language"),
        output_format=_decode_output_format(obj),
        add_timestamps=bool(_bool(obj, "add_timestamps", "add_timestamps")),
        add_phoneme_timestamps=bool(_bool(obj, "add_phoneme_timestamps", "add_phoneme_timestamps")),
        use_normalized_timestamps=_bool(obj, "use_normalized_timestamps", "use_normalized_timestamps"),
        max_buffer_delay_ms=delay,
        generation_config=_decode_generation_config(obj),
        flush=bool(_bool(obj, "flush", "flush")),
        pronunciation_dict_id=_str(obj, "pronunciation_dict_id", "pronunciation_dict_id"),
        speed=None if speed_value is _MISSING else _decode_speed_label(speed_value, "speed"),
        stream=_bool(obj, "stream", "stream"),
        duration=_opt_number(obj, "duration", "duration"),
        use_original_timestamps=_bool(obj, "use_original_timestamps", "use_original_timestamps"),
    )


def decode_request(
    text: str | bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS
) -> GenerationRequest | CancelRequest:
    """Decode a frame a client sent. Raises :class:`ProtocolError` (and nothing else) if malformed.

    ``{"context_id": ..., "cancel": true}`` is a :class:`CancelRequest` (other keys ignored);
    ``"cancel": false`` is read as absent. A ``bytes`` frame is a 400 error.
    """
    obj = _parse_object(text, limits.max_message_bytes)
    context_id = _context_id(obj, limits)
    assert context_id is not None
    if _bool(obj, "cancel", "cancel"):
        return CancelRequest(context_id=context_id)
    return _decode_generation(obj, context_id, limits)


def _flush_id(obj: Mapping[str, Any], required: bool) -> int | None:
    value = _get(obj, "flush_id")
    if value is _MISSING:
        if required:
            raise _bad("flush_id", "flush_id is required")
        return None
    flush_id = _int(value, "flush_id")
    if flush_id < 1:
        raise _bad("flush_id", f"flush_id must be >= 1, got {flush_id}", 422)
    return flush_id


def _status(obj: Mapping[str, Any], default: int) -> int:
    value = _get(obj, "status_code")
    return default if value is _MISSING else _int(value, "status_code")


def _times(
    stamps: Mapping[str, Any], label_key: str, path: str
) -> tuple[tuple[str, ...], tuple[float, ...], tuple[float, ...]]:
    arrays: dict[str, list[Any]] = {}
    for key in (label_key, "start", "end"):
        value = _get(stamps, key)
        if not isinstance(value, list):
            raise _bad(f"{path}.{key}", f"{path}.{key} must be an array")
        arrays[key] = value
    labels = arrays[label_key]
    if not all(isinstance(label, str) for label in labels):
        raise _bad(f"{path}.{label_key}", f"{path}.{label_key} must be an array of strings")
    starts = tuple(_number(x, f"{path}.start") for x in arrays["start"])
    ends = tuple(_number(x, f"{path}.end") for x in arrays["end"])
    if not len(labels) == len(starts) == len(ends):
        raise _bad(
            path,
            f"{path} arrays differ in length ({len(labels)} {label_key}, {len(starts)} start, {len(ends)} end)",
            422,
        )
    return tuple(labels), starts, ends


def decode_response(text: str | bytes | bytearray | memoryview) -> ServerMessage:
    """Decode a frame a server sent. Raises :class:`ProtocolError` (and nothing else) if malformed.

    A missing or unknown ``type`` is an error (unlike the SDK, which reads it as a chunk); a
    missing ``status_code`` reads as 206 (500 on an error frame). No size limit: the socket
    layer bounds frames, and a chunk of audio can be large.
    """
    obj = _parse_object(text, None)
    kind = _get(obj, "type")
    if kind is _MISSING:
        raise _bad("type", "type is required")
    if not isinstance(kind, str):
        raise _bad("type", f"type must be a string, got {_type_name(kind)}")
    if kind == "error":
        title = _str(obj, "title", "title")
        message = _str(obj, "message", "message")
        error = _str(obj, "error", "error")
        return ErrorMessage(
            status_code=_status(obj, 500),
            title=title if title is not None else "Error",
            message=message if message is not None else (error or ""),
            context_id=_context_id(obj, None, required=False),
            error=error or "",
        )
    context_id = _context_id(obj, None)
    assert context_id is not None
    status = _status(obj, STREAMING_STATUS)
    if kind == "chunk":
        data = _get(obj, "data")
        if data is _MISSING:
            data = ""
        if not isinstance(data, str):
            raise _bad("data", f"data must be a base64 string, got {_type_name(data)}")
        try:
            # Strict mode alone rejects what a pre-check regex would (whitespace, a foreign
            # alphabet, misplaced or excess padding) and a non-ASCII str raises ValueError; a
            # regex first doubled the cost per chunk (see tests of chunk data).
            audio = binascii.a2b_base64(data, strict_mode=True)
        except ValueError:  # binascii.Error is a ValueError
            raise _bad("data", "data is not valid base64") from None
        step = _get(obj, "step_time")
        return Chunk(
            context_id=context_id,
            audio=audio,
            step_time=0.0 if step is _MISSING else _number(step, "step_time"),
            flush_id=_flush_id(obj, required=False),
            status_code=status,
        )
    if kind == "timestamps":
        stamps = _object(obj, "word_timestamps", "word_timestamps")
        if stamps is None:
            raise _bad("word_timestamps", "word_timestamps is required")
        words, starts, ends = _times(stamps, "words", "word_timestamps")
        return WordTimestamps(context_id, words, starts, ends, _flush_id(obj, required=False), status)
    if kind == "phoneme_timestamps":
        stamps = _object(obj, "phoneme_timestamps", "phoneme_timestamps")
        if stamps is None:
            raise _bad("phoneme_timestamps", "phoneme_timestamps is required")
        phonemes, starts, ends = _times(stamps, "phonemes", "phoneme_timestamps")
        return PhonemeTimestamps(context_id, phonemes, starts, ends, _flush_id(obj, required=False), status)
    if kind == "flush_done":
        flush_id = _flush_id(obj, required=True)
        assert flush_id is not None
        return FlushDone(context_id=context_id, flush_id=flush_id, status_code=status)
    if kind == "done":
        return Done(context_id=context_id, status_code=status)
    raise _bad("type", f"unknown message type {kind!r}", 422)
