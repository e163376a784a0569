"""Phone calls over Twilio Media Streams: pipecat's transport and serializer, and TTS at 8 kHz mu-law.

A phone bot is a FastAPI WebSocket endpoint that Twilio connects to (``<Connect><Stream url=...>``
in the call's TwiML). For each call::

    @app.websocket("/ws")
    async def call(websocket: WebSocket) -> None:
        await websocket.accept()
        twilio = await accept_twilio_call(websocket)        # reads Twilio's connected + start
        transport = twilio_transport(websocket, twilio)
        tts = phone_tts(speed=1.1)
        pipeline = Pipeline([transport.input(), DTMFAggregator(), llm, tts, transport.output()])
        worker = PipelineWorker(pipeline, params=phone_pipeline_params())
        ...

Decisions where pipecat and Twilio leave a choice:

- **No needless conversion**: the pipeline runs at 8 kHz in and out, so pipecat's serializer
  never resamples (its soxr stream is skipped when the rates match), and the TTS asks the
  server for ``pcm_mulaw`` at 8 kHz, a quarter of the bytes of ``pcm_f32le``. The plugin hands
  pipecat s16 PCM; the serializer's mu-law encode of a decoded mu-law sample gives the same
  byte back (bar mu-law's negative zero), so the audio reaches Twilio as the server encoded it.
- **Speed on the phone** is therefore the server's (``speed_mode="native"``: Cartesia's hosted
  API and speakwire's embedded server both stretch natively). Pass ``speed_mode="local"`` to
  :func:`phone_tts` to stretch here instead (the server then sends 8 kHz ``pcm_f32le``).
- **Barge-in**: pipecat's output transport writes the serializer's ``clear`` event as soon as an
  ``InterruptionFrame`` reaches it, before any further media; the TTS cancels its context and
  drops late audio. Anything upstream that interrupts works: VAD-based turn taking, or
  pipecat's ``DTMFAggregator``, which interrupts on the caller's first key press.
- **Outbound frames of 20 ms** (``audio_out_10ms_chunks=2``), the size Twilio itself sends, so a
  ``clear`` never waits behind a long frame.
- **Auto hang-up is off** unless :class:`TwilioCredentials` are given: pipecat's serializer would
  otherwise refuse to start without them, and with them it calls Twilio's REST API at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from pipecat.pipeline.worker import PipelineParams
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

from speakwire.errors import ProtocolError
from speakwire.plugin.tts import SpeakwireTTSService

if TYPE_CHECKING:
    from fastapi import WebSocket

__all__ = [
    "PHONE_ENCODING",
    "PHONE_SAMPLE_RATE",
    "TwilioCall",
    "TwilioCredentials",
    "accept_twilio_call",
    "phone_pipeline_params",
    "phone_tts",
    "twilio_serializer",
    "twilio_transport",
]

#: Twilio Media Streams audio: 8 kHz mono mu-law, both ways.
PHONE_SAMPLE_RATE: Final = 8000
PHONE_ENCODING: Final = "pcm_mulaw"


@dataclass(frozen=True, slots=True)
class TwilioCall:
    """What Twilio's ``start`` event says about a call: its stream, call and custom parameters."""

    stream_sid: str
    call_sid: str | None = None
    custom_parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TwilioCredentials:
    """Twilio REST credentials, used only to hang the call up when the pipeline ends."""

    account_sid: str
    auth_token: str = field(repr=False)


async def accept_twilio_call(websocket: WebSocket) -> TwilioCall:
    """Read Twilio's ``connected`` and ``start`` events from an accepted WebSocket.

    Raises :class:`~speakwire.errors.ProtocolError` if the peer is not a Twilio Media Stream
    (another provider, or a ``start`` without ``streamSid``).
    """
    provider, data = await parse_telephony_websocket(websocket)
    if provider != "twilio":
        raise ProtocolError(f"expected a Twilio Media Stream, the peer speaks {provider!r}", field="event")
    stream_sid = data.get("stream_id")
    if not isinstance(stream_sid, str) or not stream_sid:
        raise ProtocolError("Twilio's start event has no streamSid", field="start.streamSid")
    call_sid = data.get("call_id")
    body = data.get("body") or {}
    return TwilioCall(stream_sid, call_sid if isinstance(call_sid, str) else None, dict(body))


def twilio_serializer(call: TwilioCall, credentials: TwilioCredentials | None = None) -> TwilioFrameSerializer:
    """pipecat's Twilio serializer for ``call``: 8 kHz both ways.

    Auto hang-up (a REST call to Twilio when the pipeline ends) is on only with ``credentials``
    and a known ``call.call_sid``; otherwise the serializer never leaves the WebSocket.
    """
    hang_up = credentials is not None and call.call_sid is not None
    return TwilioFrameSerializer(
        stream_sid=call.stream_sid,
        call_sid=call.call_sid,
        account_sid=credentials.account_sid if hang_up and credentials else None,
        auth_token=credentials.auth_token if hang_up and credentials else None,
        params=TwilioFrameSerializer.InputParams(
            twilio_sample_rate=PHONE_SAMPLE_RATE, sample_rate=PHONE_SAMPLE_RATE, auto_hang_up=hang_up
        ),
    )


def twilio_transport(
    websocket: WebSocket,
    call: TwilioCall,
    *,
    credentials: TwilioCredentials | None = None,
    **params: Any,
) -> FastAPIWebsocketTransport:
    """pipecat's FastAPI WebSocket transport speaking Twilio Media Streams at 8 kHz.

    ``params`` override :class:`FastAPIWebsocketParams` fields (e.g. ``vad_analyzer``).
    """
    settings: dict[str, Any] = {
        "audio_in_enabled": True,
        "audio_out_enabled": True,
        "audio_in_sample_rate": PHONE_SAMPLE_RATE,
        "audio_out_sample_rate": PHONE_SAMPLE_RATE,
        "audio_out_10ms_chunks": 2,
        "add_wav_header": False,
        "serializer": twilio_serializer(call, credentials),
    }
    settings.update(params)
    return FastAPIWebsocketTransport(websocket, params=FastAPIWebsocketParams(**settings))


def phone_tts(**kwargs: Any) -> SpeakwireTTSService:
    """A :class:`SpeakwireTTSService` that asks for 8 kHz mu-law (speed applied by the server).

    Keyword arguments go to the service (``speed``, ``settings``, ``api_key``, ``url``, ...);
    with ``speed_mode="local"`` the encoding is left to the service (``pcm_f32le``).
    """
    kwargs.setdefault("sample_rate", PHONE_SAMPLE_RATE)
    kwargs.setdefault("speed_mode", "native")
    if kwargs["speed_mode"] == "native":
        kwargs.setdefault("encoding", PHONE_ENCODING)
    return SpeakwireTTSService(**kwargs)


def phone_pipeline_params(**kwargs: Any) -> PipelineParams:
    """``PipelineParams`` at 8 kHz in and out, so no stage resamples."""
    kwargs.setdefault("audio_in_sample_rate", PHONE_SAMPLE_RATE)
    kwargs.setdefault("audio_out_sample_rate", PHONE_SAMPLE_RATE)
    return PipelineParams(**kwargs)
