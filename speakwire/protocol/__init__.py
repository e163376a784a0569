"""Pure protocol layer: typed messages, the per-context state machine and inline markup. No I/O.

- :mod:`speakwire.protocol.messages`: the JSON frames of the TTS WebSocket protocol as
  dataclasses; :func:`encode`, :func:`decode_request` (server side), :func:`decode_response`
  (client side), all failures as :class:`~speakwire.errors.ProtocolError` with a status code.
- :mod:`speakwire.protocol.context`: :class:`ContextMachine` (one context, either role) and
  :class:`ContextRegistry` (a connection's contexts, bounded).
- :mod:`speakwire.protocol.markup`: ``<prosody>``, ``<speed/>``, ``<break/>``, ... into
  segments, and :class:`MarkupStream` to split a token stream without breaking tags or spans.

Like the ``websockets`` library's protocol objects, nothing here reads or writes a socket:
text and events go in, text and events come out, and every edge case is a plain unit test.
"""

from speakwire.protocol.context import (
    Action,
    ContextMachine,
    ContextRegistry,
    ContextState,
    Received,
    Role,
    Verdict,
)
from speakwire.protocol.markup import (
    Break,
    MarkupStream,
    Piece,
    Segment,
    Style,
    Text,
    parse,
    parse_push,
    plain_text,
    strip_markup,
)
from speakwire.protocol.messages import (
    DEFAULT_LIMITS,
    ENCODINGS,
    SAMPLE_RATES,
    STREAMING_STATUS,
    CancelRequest,
    Chunk,
    ClientMessage,
    Done,
    Encoding,
    ErrorMessage,
    ExperimentalControls,
    FlushDone,
    GenerationConfig,
    GenerationRequest,
    Limits,
    OutputFormat,
    PhonemeTimestamps,
    ServerMessage,
    Voice,
    WordTimestamps,
    context_id_of,
    decode_request,
    decode_response,
    encode,
)

__all__ = [
    "DEFAULT_LIMITS",
    "ENCODINGS",
    "SAMPLE_RATES",
    "STREAMING_STATUS",
    "Action",
    "Break",
    "CancelRequest",
    "Chunk",
    "ClientMessage",
    "ContextMachine",
    "ContextRegistry",
    "ContextState",
    "Done",
    "Encoding",
    "ErrorMessage",
    "ExperimentalControls",
    "FlushDone",
    "GenerationConfig",
    "GenerationRequest",
    "Limits",
    "MarkupStream",
    "OutputFormat",
    "PhonemeTimestamps",
    "Piece",
    "Received",
    "Role",
    "Segment",
    "ServerMessage",
    "Style",
    "Text",
    "Verdict",
    "Voice",
    "WordTimestamps",
    "context_id_of",
    "decode_request",
    "decode_response",
    "encode",
    "parse",
    "parse_push",
    "plain_text",
    "strip_markup",
]
