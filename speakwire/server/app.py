"""The local Cartesia-compatible TTS WebSocket server (``speakwire serve``).

A thin asyncio shell over pure parts: :mod:`speakwire.server.auth` admits the handshake,
:mod:`speakwire.server.segmenter` decides when buffered text is spoken, the protocol and markup
modules parse what clients send, an :class:`~speakwire.server.engine.Engine` synthesises on its
own worker thread, and the dsp modules stretch, resample and encode. One connection carries many
contexts; each context owns a worker task that speaks its units strictly in order, so a context's
audio, ``flush_done`` and ``done`` frames can never overtake each other, while contexts (and
connections) share the engine round-robin.

Wire behaviour, decided where the protocol is silent:

- Every frame is JSON text; errors are ``error`` frames (``error`` plus ``title``/``message`` and an
  HTTP-style ``status_code``, ``context_id`` null when no context is concerned) and leave the
  connection open. An error for a context ends that context (``done: true`` in the frame; both
  official clients stop reading it there) and cancels its work, without touching the others.
- Continued text is spoken at sentence ends, at clause marks once a clause has 24 characters, at
  a flush, at the end of input, or when ``max_buffer_delay_ms`` runs out (complete words only).
  Without ``max_buffer_delay_ms`` (pipecat's token mode) the window is
  :data:`~speakwire.server.segmenter.DEFAULT_MAX_DELAY` (250 ms), not Cartesia's 3 s.
  A context's first unit goes sooner, for time to first audio: at any clause mark, or after
  :data:`~speakwire.server.segmenter.FIRST_UNIT_WORDS` (3) complete words. A unit cut
  mid-sentence (that rule, the window, the length cap) is synthesised without the engine's end
  pause, so the sentence runs on into the next unit without a gap.
- Chunks: a unit's first engine buffer (~60 ms) goes out at once, the rest in ~200 ms chunks.
- ``flush_id`` follows :class:`~speakwire.protocol.context.ContextMachine`: absent until the
  context's first flush, then the number of flushes received when the chunk was sent.
- After ``cancel`` nothing more is sent for that context; later requests for the same id are
  ignored (pipecat and the SDK drop them anyway, and an answer would break "nothing after cancel").
- Speed: ``generation_config.speed`` (or the deprecated ``__experimental_controls.speed``, or the
  top-level ``speed`` label) is validated with the server's policy, by default speakwire's own
  range [0.5, 2.0], a superset of Cartesia's hosted [0.6, 1.5]; ``volume`` must lie in [0.5, 2.0]
  and is a plain gain (clipped at full scale by the encoder). A push's ``generation_config``
  replaces speed and volume from that push on (a key it leaves out means 1.0: replaced, not
  merged); pushes without one keep what is in force, including inline ``<speed>``/``<volume>``.
- Markup (:mod:`speakwire.protocol.markup`): ``<break>`` is exact digital silence (not scaled by
  speed), ``<prosody rate>`` and ``<speed ratio>`` change the speed of their text, ``<spell>``
  spells characters out, ``<emotion>`` is accepted and ignored (espeak has no emotions).
- ``language`` (fixed by a context's first request) picks the espeak-ng voice for that language
  (``zh`` is ``cmn``, ``pt_BR`` is ``pt-br``; 422 if espeak has none); anything but a language code
  such as ``en``, ``pt-BR``, ``es-419`` is a 422 in any push, since espeak would open a voice name
  that is a path. ``voice`` and ``model_id`` are accepted and ignored.
- ``<break>`` silence is bounded per message and per context (:class:`ServerLimits`, 413): a
  short transcript of many breaks would otherwise ask for hours of audio.
- Handshakes: web pages (an ``Origin`` header) get 403 unless their origin is allowed; beyond
  :attr:`ServerLimits.max_connections` open connections, 503.
- Word timestamps are seconds from the start of the context, mapped through the stretcher's time
  map, punctuation attached to its word, sent after the audio of their sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from speakwire.dsp.pcm import encode as encode_pcm
from speakwire.dsp.resample import StreamResampler
from speakwire.dsp.speed import DEFAULT_POLICY, SpeedPolicy
from speakwire.dsp.wsola import Stretcher
from speakwire.errors import EngineError, InvalidSpeedError, MarkupError, ProtocolError
from speakwire.protocol.context import ContextMachine, ContextRegistry, ContextState
from speakwire.protocol.markup import Break, Segment, Style, parse_push
from speakwire.protocol.messages import (
    ErrorMessage,
    GenerationRequest,
    Limits,
    ServerMessage,
    context_id_of,
    decode_request,
    encode,
)
from speakwire.server.auth import TTS_PATH, RedactingLogger, admit, normalize_origin
from speakwire.server.engine import (
    AudioEvent,
    EndEvent,
    Engine,
    ErrorEvent,
    PhonemeTiming,
    WordsEvent,
    WordTiming,
)
from speakwire.server.espeak import EspeakEngine
from speakwire.server.piper import PiperEngine
from speakwire.server.segmenter import DEFAULT_MAX_DELAY, FIRST_UNIT_WORDS, Pause, Segmenter, Unit

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ServerLimits", "TTSServer"]

logger = logging.getLogger("speakwire.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

#: After a unit's first chunk, audio goes out in chunks of about this many seconds.
CHUNK_SECONDS = 0.2
#: generation_config.volume range (Cartesia's documented range).
VOLUME_RANGE = (0.5, 2.0)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Bounds on what one client may ask of the server; each breach gets its own error frame.

    ``max_message_bytes``: one client frame (413). ``max_transcript_chars``: one message's
    transcript (413); ``max_context_chars``: everything pushed to one context (413).
    ``max_context_id_length``: (413). ``max_contexts``: contexts open at once on one connection
    (429). ``max_connections``: WebSocket connections open at once on the server (503 at the
    handshake). ``max_break_seconds_per_push`` and ``max_break_seconds_per_context``: the
    ``<break>`` silence one message, and one context in all, may ask for (413): each tag is
    bounded by the markup parser, but a transcript of a thousand tags would otherwise turn 20 KB
    into hours of audio. ``idle_timeout``: seconds without a client message, while no context
    has anything left to say, before the connection is closed (``None``: never).
    """

    max_message_bytes: int = 256 * 1024
    max_transcript_chars: int = 20_000
    max_context_chars: int = 200_000
    max_context_id_length: int = 256
    max_contexts: int = 64
    max_connections: int = 256
    max_break_seconds_per_push: float = 30.0
    max_break_seconds_per_context: float = 120.0
    idle_timeout: float | None = 300.0

    def __post_init__(self) -> None:
        for name in (
            "max_message_bytes",
            "max_transcript_chars",
            "max_context_chars",
            "max_context_id_length",
            "max_contexts",
            "max_connections",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ServerLimits.{name} must be a positive int, got {value!r}")
        for name in ("max_break_seconds_per_push", "max_break_seconds_per_context"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"ServerLimits.{name} must be a positive number of seconds, got {value!r}")
        if self.idle_timeout is not None and not self.idle_timeout > 0:
            raise ValueError(f"ServerLimits.idle_timeout must be > 0 seconds or None, got {self.idle_timeout!r}")

    def protocol_limits(self) -> Limits:
        """The subset the request decoder enforces."""
        return Limits(
            max_message_bytes=self.max_message_bytes,
            max_transcript_chars=self.max_transcript_chars,
            max_context_id_length=self.max_context_id_length,
            max_open_contexts=self.max_contexts,
        )


class TTSServer:
    """The local TTS WebSocket server.

    Use as ``async with TTSServer(port=0) as server: server.url``, or from synchronous code as
    ``url = server.start_in_thread()`` ... ``server.stop()``. ``engine`` defaults to a new
    :class:`~speakwire.server.espeak.EspeakEngine` (closed with the server); an engine passed in
    stays open. Without ``api_key`` every client is admitted. Handshakes from web pages (those
    with an ``Origin`` header) are refused with 403 unless the origin is in ``allowed_origins``
    (``"https://app.example.com"``; see :func:`~speakwire.server.auth.normalize_origin`), so a
    page the user happens to open cannot use the server; such a page still needs the key, as
    ``?access_token=``, when there is one. ``default_max_delay`` is the
    buffering window (seconds) for contexts that send no ``max_buffer_delay_ms``;
    ``first_unit_words`` releases a context's first unit after that many complete words (``None``
    or ``0``: off; see :class:`~speakwire.server.segmenter.Segmenter`).
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        api_key: str | None = None,
        engine: Engine | None = None,
        limits: ServerLimits | None = None,
        allowed_origins: Iterable[str] = (),
        speed_policy: SpeedPolicy = DEFAULT_POLICY,
        default_max_delay: float = DEFAULT_MAX_DELAY,
        first_unit_words: int | None = FIRST_UNIT_WORDS,
    ) -> None:
        # Checked here, not in a client's first push: a bad setting is the operator's error.
        Segmenter(max_delay=default_max_delay, first_unit_words=first_unit_words)
        self.host = host
        self.port = port
        self.limits = limits or ServerLimits()
        self.speed_policy = speed_policy
        self.default_max_delay = default_max_delay
        self.first_unit_words = first_unit_words
        self._api_key = api_key or None
        if isinstance(allowed_origins, str):
            allowed_origins = (allowed_origins,)
        #: Origins of the web pages that may connect (normalised); no other page can.
        self.allowed_origins: tuple[str, ...] = tuple(dict.fromkeys(map(normalize_origin, allowed_origins)))
        self._engine = engine
        self._owns_engine = engine is None
        # espeak voices for other languages, made on first use (handles on the same worker).
        self._language_engines: dict[str, Engine] = {}
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._connections: set[_Connection] = set()
        # Admitted handshakes, from process_request until their handler ends: what max_connections
        # counts (the server's own set only holds connections whose handshake has finished).
        self._admitted: set[ServerConnection] = set()
        self._log = RedactingLogger(logger, self._api_key)

    def __repr__(self) -> str:
        state = "serving" if self._server is not None else "stopped"
        auth = "api key required" if self._api_key else "open"
        return f"<TTSServer {self.url} {state} ({auth})>"

    @property
    def base_url(self) -> str:
        """``ws://host:port``: what the official SDK takes as ``websocket_base_url``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The full endpoint, ``ws://host:port/tts/websocket`` (what pipecat takes as ``url``)."""
        return self.base_url + TTS_PATH

    @property
    def engine(self) -> Engine:
        """The speech engine (created on first use)."""
        if self._engine is None:
            self._engine = EspeakEngine()
        return self._engine

    async def _engine_for(self, language: str | None) -> Engine:
        """The engine for a context's ``language``: with espeak, that language's voice.

        No language, or the default engine's own language: :attr:`engine`. Piper speaks only its
        model's language (any region of it: ``en-US``, ``en-GB`` for an English voice); other
        engines take any language. Raises :class:`ProtocolError` (422, field ``language``)
        naming the language and the engine when espeak has no such voice, or Piper's model
        speaks another language, and for anything that is not a language code (see
        :func:`_check_language`).
        """
        _check_language(language)
        engine = self.engine
        if not language:
            return engine
        # BCP 47 spells it "pt-BR", ICU and POSIX "pt_BR"; espeak knows only the first.
        code = language.lower().replace("_", "-")
        if isinstance(engine, PiperEngine):
            base = _voice_language(code)
            if _ESPEAK_VOICES.get(base, base) != _ESPEAK_VOICES.get(engine.language, engine.language):
                raise ProtocolError(
                    f"language {language!r} is not available with the piper engine"
                    f" (voice {engine.voice} speaks {engine.language!r})",
                    field="language",
                    status_code=422,
                )
            return engine
        if not isinstance(engine, EspeakEngine):
            return engine
        if code == _voice_language(engine.voice):
            return engine
        voice = _ESPEAK_VOICES.get(code, code)
        found = self._language_engines.get(voice)
        if found is not None:
            return found
        try:
            # Making a voice waits for the engine's worker: keep that off the event loop.
            made = await asyncio.to_thread(EspeakEngine, voice)
        except EngineError:
            raise ProtocolError(
                f"language {language!r} is not available with the espeak engine", field="language", status_code=422
            ) from None
        found = self._language_engines.setdefault(voice, made)
        if found is not made:
            made.close()  # another context made it meanwhile
        return found

    async def start(self) -> None:
        """Bind and start accepting connections; with ``port=0`` a free port is picked."""
        if self._server is not None:
            return
        _ = self.engine
        try:
            await asyncio.to_thread(_warm_up)
            self._server = await serve(
                self._handle,
                self.host,
                self.port,
                process_request=self._process_request,
                # None: clients that send no Origin (not a browser page) are welcome; websockets
                # answers any other origin with 403.
                origins=[None, *self.allowed_origins],
                # Frames up to 16x the limit are read and answered with a 413 error frame; beyond
                # that websockets closes the connection (1009) rather than buffer without bound.
                max_size=self.limits.max_message_bytes * 16,
                # Base64 PCM barely compresses; deflate would only add latency and CPU.
                compression=None,
                logger=self._log,
            )
        except BaseException:
            # A port in use must not leave our engine's worker running for nobody.
            if self._owns_engine and self._engine is not None:
                self._engine.close()
                self._engine = None
            raise
        sockname = next(iter(self._server.sockets)).getsockname()
        self.port = int(sockname[1])

    async def close(self) -> None:
        """Stop accepting, cancel every context, close connections, close an engine we created."""
        server, self._server = self._server, None
        if server is None:
            return
        for connection in list(self._connections):
            connection.abort_all()
        server.close()
        await server.wait_closed()
        for engine in self._language_engines.values():
            engine.close()
        self._language_engines.clear()
        if self._owns_engine and self._engine is not None:
            self._engine.close()
            self._engine = None

    async def serve_forever(self) -> None:
        """Start (if needed) and serve until cancelled."""
        await self.start()
        assert self._server is not None
        try:
            await self._server.serve_forever()
        finally:
            await self.close()

    async def __aenter__(self) -> TTSServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def start_in_thread(self, timeout: float = 10.0) -> str:
        """Run the server on its own event loop in a daemon thread; returns :attr:`url` once bound."""
        if self._thread is not None:
            return self.url
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._thread_loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.close())
                loop.close()

        self._thread = threading.Thread(target=run, name="speakwire-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"server did not start within {timeout} s")
        if failure:
            self._thread = None
            raise failure[0]
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Stop a server started with :meth:`start_in_thread` and wait for its thread."""
        thread, loop = self._thread, self._thread_loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = self._thread_loop = None

    def _style_of(self, request: GenerationRequest) -> tuple[float | None, float | None]:
        """The (speed, volume) a request asks for, validated; None where it leaves them out.

        Raises :class:`ProtocolError` (422) naming the field for a speed outside
        :attr:`speed_policy` or a volume outside [0.5, 2.0].
        """
        speed = None
        try:
            effective = request.effective_speed
            if effective is not None:
                speed = self.speed_policy.apply(effective)
        except InvalidSpeedError as exc:
            name = "generation_config.speed"
            config = request.generation_config
            if config is None or config.speed is None:
                name = "speed" if request.speed is not None else "voice.__experimental_controls.speed"
            raise ProtocolError(f"{name}: {exc}", field=name, status_code=422) from None
        volume = None if request.generation_config is None else request.generation_config.volume
        if volume is not None and not VOLUME_RANGE[0] <= volume <= VOLUME_RANGE[1]:
            raise ProtocolError(
                f"generation_config.volume {volume!r} is outside [{VOLUME_RANGE[0]}, {VOLUME_RANGE[1]}]",
                field="generation_config.volume",
                status_code=422,
            )
        return speed, volume

    # Connection plumbing.

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        verdict = admit(request.path, request.headers.raw_items(), self._api_key)
        if not verdict.admitted:
            response = connection.respond(http.HTTPStatus(verdict.status), verdict.reason + "\n")
            if verdict.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="speakwire"'
            return response
        # A handshake refused after this point (bad Origin, malformed upgrade) never reaches
        # _handle to leave the set: its connection is closed by then.
        self._admitted = {c for c in self._admitted if c.state is not State.CLOSED}
        limit = self.limits.max_connections
        if len(self._admitted) >= limit:
            response = connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"Service Unavailable: this server takes at most {limit} connections at once (max_connections)\n",
            )
            response.headers["Retry-After"] = "1"
            return response
        self._admitted.add(connection)
        return None

    async def _handle(self, websocket: ServerConnection) -> None:
        connection = _Connection(self, websocket)
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)
            self._admitted.discard(websocket)


# Cartesia language codes whose espeak-ng voice has another name.
_ESPEAK_VOICES = {"zh": "cmn"}

# A language code: "en", "pt-BR", "es-419", "zh_Hant", "sr-Latn-RS". ASCII letters spelled out:
# with re.IGNORECASE, [a-z] would also take "\u017f" and the Kelvin sign.
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")
_LANGUAGE_MAX = 35  # BCP 47's recommended longest tag


def _check_language(language: str | None) -> None:
    """Refuse a ``language`` that is not a language code, before it can reach an engine.

    espeak takes a voice name as a path, so a "language" of ``../../dev/zero`` would have it read
    a device forever on the worker every context shares. Raises :class:`ProtocolError` (422,
    field ``language``); ``None`` and ``""`` mean no language and pass.
    """
    if not language:
        return
    if len(language) > _LANGUAGE_MAX or not _LANGUAGE.fullmatch(language):
        raise ProtocolError(
            f"language {language[:_LANGUAGE_MAX + 5]!r} is not a language code like 'en', 'pt-BR' or 'es-419'",
            field="language",
            status_code=422,
        )


def _voice_language(voice: str) -> str:
    """The language of an espeak voice name: "en-us+f3" -> "en"."""
    return voice.split("+")[0].split("-")[0].lower()


@functools.cache
def _warm_up() -> None:
    """Load the stretcher's compiled kernels (~0.1 s) now rather than in a client's first speed change."""
    stretcher = Stretcher(22050, 1.5)
    stretcher.process(np.zeros(4096, np.float32))
    stretcher.flush()


def _error_frame(message: ErrorMessage) -> str:
    return encode(message)


def _error(context_id: str | None, message: str, status: int, title: str | None = None) -> ErrorMessage:
    if title is None:
        try:
            title = http.HTTPStatus(status).phrase
        except ValueError:
            title = "Error"
    return ErrorMessage(status_code=status, title=title, message=message, context_id=context_id)


# What a context's worker handles, strictly in order.


@dataclass(frozen=True, slots=True)
class _Speak:
    unit: Unit


@dataclass(frozen=True, slots=True)
class _Silence:
    seconds: float


@dataclass(frozen=True, slots=True)
class _FlushMark:
    pass


@dataclass(frozen=True, slots=True)
class _End:
    pass


_Item = _Speak | _Silence | _FlushMark | _End


class _EngineFailed(Exception):
    """The engine reported an error for one of a context's jobs."""


class _Stop(Exception):
    """The context's machine refused to emit: it was cancelled, so the worker ends quietly."""


# For naming the context of an oversized frame: the socket already bounds what arrives.
_UNBOUNDED = Limits(max_message_bytes=2**31 - 1)


class _Connection:
    """One client WebSocket: reads requests, routes them to contexts, enforces the limits.

    The protocol's :class:`ContextRegistry` decides what each request means (open, push, flush,
    close, cancel, ignore, 409, 429); this class turns its verdicts into streams and frames.
    """

    def __init__(self, server: TTSServer, websocket: ServerConnection) -> None:
        self.server = server
        self.websocket = websocket
        self.limits = server.limits
        self.protocol_limits = server.limits.protocol_limits()
        self.registry = ContextRegistry("server", self.protocol_limits)
        self.loop = asyncio.get_running_loop()
        self.streams: dict[str, _Stream] = {}

    async def send(self, frame: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.websocket.send(frame)

    async def run(self) -> None:
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.websocket.recv(), self.limits.idle_timeout)
                except TimeoutError:
                    if any(stream.busy for stream in self.streams.values()):
                        continue
                    idle = f"no message for {self.limits.idle_timeout:g} s and nothing to speak; closing"
                    await self.send(_error_frame(_error(None, idle, 408)))
                    await self.websocket.close(1000, "idle timeout")
                    return
                try:
                    await self.handle(message)
                except ConnectionClosed:
                    raise
                except Exception as exc:  # a bug must cost one request, not the connection
                    logger.exception("request failed")
                    await self.send(_error_frame(_error(None, f"internal error: {type(exc).__name__}", 500)))
        except ConnectionClosed:
            return
        finally:
            self.abort_all()

    def abort_all(self) -> None:
        for stream in list(self.streams.values()):
            stream.abort()
        self.streams.clear()

    async def handle(self, message: str | bytes) -> None:
        try:
            request = decode_request(message, self.protocol_limits)
        except ProtocolError as exc:
            # Name the context when the frame has one, so a client waiting on it stops waiting.
            context_id = None if isinstance(message, bytes) else context_id_of(message, _UNBOUNDED)
            await self.reject(context_id, ErrorMessage.from_exception(exc, context_id))
            return
        context_id = request.context_id
        try:
            if isinstance(request, GenerationRequest):
                stream = self.streams.get(context_id)
                # Later pushes' language is ignored, but a bad one is still refused, not passed over.
                _check_language(request.language)
                segments, style = self.parse(request, Style() if stream is None else stream.style)
                # A context's language is fixed by its first request, like its output format.
                engine = await self.server._engine_for(request.language) if stream is None else stream.engine
            received = self.registry.receive_request(request)
            if received.ignored is not None:
                return
            if received.cancelled:
                stream = self.streams.pop(context_id, None)
                if stream is not None:
                    stream.abort()
                return
            assert isinstance(request, GenerationRequest) and received.context is not None
            stream = self.streams.get(context_id)
            if received.opened or stream is None:
                stream = _Stream(self, received.context, request, engine)
                self.streams[context_id] = stream
            stream.accept(request, segments, style, received.flush_id is not None)
        except ProtocolError as exc:
            await self.reject(context_id, ErrorMessage.from_exception(exc, context_id))
        except MarkupError as exc:
            await self.reject(context_id, _error(context_id, f"transcript: {exc}", 400, "Invalid markup"))

    def parse(self, request: GenerationRequest, carried: Style) -> tuple[list[Segment], Style]:
        """Validate a push's controls and markup; returns its segments and the style after it.

        Inline ``<speed>``/``<volume>`` tags carry over to later pushes; a push's own
        ``generation_config`` replaces speed and volume (a key it omits means 1.0, not merged),
        and a bare experimental or label speed replaces the speed only.
        """
        speed, volume = self.server._style_of(request)
        style = carried
        if request.generation_config is not None:
            style = Style(1.0 if speed is None else speed, 1.0 if volume is None else volume, carried.emotion)
        elif speed is not None:
            style = replace(carried, speed=speed)
        segments, after = parse_push(request.transcript, style, ratio_policy=self.server.speed_policy)
        limit = self.limits.max_break_seconds_per_push
        silence = _break_seconds(segments)
        if silence > limit + _BREAK_SLACK:
            raise ProtocolError(
                f"transcript: this message's <break> tags ask for {silence:g} s of silence,"
                f" over the limit of {limit:g} s per message (max_break_seconds_per_push)",
                field="transcript",
                status_code=413,
            )
        return segments, after

    async def reject(self, context_id: str | None, error: ErrorMessage) -> None:
        """Answer a bad request; it ends its context, and is not sent for a cancelled one."""
        machine = None if context_id is None else self.registry.get(context_id)
        if machine is not None:
            if machine.state is ContextState.CANCELLED:
                return  # nothing more is sent for a cancelled context, not even an error
            stream = self.streams.pop(machine.context_id, None)
            if stream is not None:
                stream.abort()
            if machine.live:
                machine.emit_error(error.status_code, error.title, error.message)
        await self.send(_error_frame(error))

    def finished(self, stream: _Stream) -> None:
        if self.streams.get(stream.context_id) is stream:
            del self.streams[stream.context_id]


class _Stream:
    """One context's audio: buffers its text, then speaks unit after unit on its own worker task."""

    def __init__(
        self, connection: _Connection, machine: ContextMachine, first: GenerationRequest, engine: Engine
    ) -> None:
        assert first.output_format is not None
        self.connection = connection
        self.machine = machine
        self.context_id = first.context_id
        self.engine = engine
        self.loop = connection.loop
        self.policy = connection.server.speed_policy
        self.encoding = first.output_format.encoding
        self.sample_rate = first.output_format.sample_rate
        self.add_timestamps = first.add_timestamps
        self.add_phonemes = first.add_phoneme_timestamps
        #: Speed, volume and emotion in force for the next push (see _Connection.parse).
        self.style = Style()
        delay_ms = first.max_buffer_delay_ms
        delay = connection.server.default_max_delay if delay_ms is None else delay_ms / 1000.0
        self.segmenter = Segmenter(max_delay=delay, first_unit_words=connection.server.first_unit_words)
        self.items: asyncio.Queue[_Item] = asyncio.Queue()
        self.chars = 0
        self.break_seconds = 0.0  # <break> silence asked for so far
        self.timer: asyncio.TimerHandle | None = None
        self.samples_out = 0  # at the output rate: the context's clock for timestamps
        self.working = False  # an item is being spoken (the queue alone does not show it)
        self.worker = asyncio.create_task(self._work(), name=f"speakwire-context-{self.context_id}")

    def __repr__(self) -> str:
        return f"<stream {self.context_id!r}>"

    @property
    def busy(self) -> bool:
        """True while the context has text or audio still to deliver."""
        if self.worker.done():
            return False
        return self.working or not self.items.empty() or self.segmenter.pending.strip() != ""

    def accept(self, request: GenerationRequest, segments: list[Segment], style: Style, flush: bool) -> None:
        """Take one push's parsed text and flags (validated and admitted by the caller)."""
        limit = self.connection.limits.max_context_chars
        if self.chars + len(request.transcript) > limit:
            raise ProtocolError(
                f"transcript: this context's input would exceed {limit} characters",
                field="transcript",
                status_code=413,
            )
        silence = _break_seconds(segments)
        limit_s = self.connection.limits.max_break_seconds_per_context
        if self.break_seconds + silence > limit_s + _BREAK_SLACK:
            raise ProtocolError(
                f"transcript: this context's <break> tags would ask for {self.break_seconds + silence:g} s of"
                f" silence, over the limit of {limit_s:g} s per context (max_break_seconds_per_context)",
                field="transcript",
                status_code=413,
            )
        self.chars += len(request.transcript)
        self.break_seconds += silence
        self.style = style
        # Sticky: SDK 4.x and pipecat repeat the flags on every push anyway.
        self.add_timestamps = self.add_timestamps or request.add_timestamps
        self.add_phonemes = self.add_phonemes or request.add_phoneme_timestamps
        now = self.loop.time()
        for index, segment in enumerate(segments):
            if isinstance(segment, Break):
                self._enqueue(self.segmenter.pause(segment.seconds))
            else:
                text = _spelled(segment.text, segment.spell_group) if segment.spell else segment.text
                # One message is one push for the first-unit rule, whatever its markup spans.
                more = index + 1 < len(segments)
                self._enqueue(self.segmenter.push(text, now, (segment.speed, segment.volume), more_follows=more))
        if flush or request.closes_input:
            self._enqueue(self.segmenter.flush())
        if flush:
            self.items.put_nowait(_FlushMark())
        if request.closes_input:
            self.items.put_nowait(_End())
        self._arm_timer(closed=request.closes_input)

    def _enqueue(self, items: list[Unit] | list[Unit | Pause]) -> None:
        for item in items:
            self.items.put_nowait(_Silence(item.seconds) if isinstance(item, Pause) else _Speak(item))

    def _arm_timer(self, closed: bool = False) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        deadline = self.segmenter.deadline
        if deadline is not None and not closed:
            self.timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self._enqueue(self.segmenter.due(self.loop.time()))
        self._arm_timer()

    def abort(self) -> None:
        """Stop at once: drop buffered text, cancel engine jobs, send nothing more."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.worker.cancel()
        self.engine.cancel_owner(self)

    # The worker.

    async def _work(self) -> None:
        try:
            while True:
                self.working = False
                item = await self.items.get()
                self.working = True
                if isinstance(item, _Speak):
                    await self._speak(item.unit)
                elif isinstance(item, _Silence):
                    await self._silence(item.seconds)
                elif isinstance(item, _FlushMark):
                    await self._send(self.machine.emit_flush_done())
                else:
                    self.connection.finished(self)
                    await self._send(self.machine.emit_done())
                    return
        except _Stop:
            return
        except Exception as exc:  # an engine failure or a bug ends this context loudly, not the connection
            if not isinstance(exc, _EngineFailed):
                logger.exception("context %r failed", self.context_id)
            self.engine.cancel_owner(self)
            self.connection.finished(self)
            text = str(exc) if isinstance(exc, _EngineFailed) else f"internal error: {type(exc).__name__}: {exc}"
            with contextlib.suppress(_Stop):
                await self._send(self.machine.emit_error(500, "Internal Server Error", text))

    async def _send(self, message: ServerMessage | None) -> None:
        if message is None:
            # The machine says the context was cancelled: stop here, send nothing more.
            raise _Stop
        frame = _error_frame(message) if isinstance(message, ErrorMessage) else encode(message)
        await self.connection.send(frame)

    async def _send_audio(self, samples: np.ndarray, started: float) -> bool:
        """Send ``samples`` as one chunk (nothing if empty); True if a chunk went out."""
        if not len(samples):
            return False
        self.samples_out += len(samples)
        step = round((time.perf_counter() - started) * 1000.0, 3)
        await self._send(self.machine.emit_chunk(encode_pcm(samples, self.encoding), step))
        # Let other contexts' workers run between chunks: sends rarely block on loopback, so
        # without this one context would stream its whole unit while the others' first chunks wait.
        await asyncio.sleep(0)
        return True

    async def _silence(self, seconds: float) -> None:
        started = time.perf_counter()
        total = round(seconds * self.sample_rate)
        step = round(CHUNK_SECONDS * self.sample_rate)
        for start in range(0, total, step):
            await self._send_audio(np.zeros(min(step, total - start), dtype=np.float32), started)
            started = time.perf_counter()

    async def _speak(self, unit: Unit) -> None:
        """Synthesise one unit as one engine job (one intonation contour) and send its audio.

        A unit in one style streams: its first engine buffer goes out at once (time to first
        audio), later ones in chunks of about CHUNK_SECONDS. A unit whose pieces differ in speed or
        volume (a ``<prosody>`` span, a mid-sentence ``<speed/>``) waits for its job to finish
        (about a millisecond with espeak) so the word timings can place each speed change on the
        sample where its text starts.
        """
        rate = self.engine.sample_rate
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.engine.submit(
            unit.text,
            owner=self,
            on_event=_forward(self.loop, queue),
            phonemes=self.add_phonemes,
            end_pause=unit.ends_at_boundary,
        )
        styles: list[tuple[float, float]] = [piece.style for piece in unit.pieces]  # type: ignore[misc]
        chain = _Chain(rate, self.sample_rate, [speed for speed, _ in styles], self.policy)
        unit_start = self.samples_out
        # With many contexts the loop spends its time per frame (resampler call, base64, JSON,
        # send), not per sample: tiny frames of one context would hold up the first chunks of the
        # others. Bounded chunks also stay far below clients' message size limits (1 MiB).
        pending: list[np.ndarray] = []
        pending_samples = 0
        sent_first = False
        min_samples = round(CHUNK_SECONDS * rate)
        uniform = len(set(styles)) == 1
        speed, volume = styles[0]
        chain.begin_piece(speed)
        words: list[WordTiming] = []
        phonemes: list[PhonemeTiming] = []

        async def send_pending(started: float) -> None:
            nonlocal pending_samples, sent_first
            if pending:
                samples = pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending.clear()
                pending_samples = 0
                # The stretcher holds back its first few ms: the first chunk is the first non-empty one.
                sent_first = await self._send_audio(chain.process(samples), started) or sent_first

        while True:
            event = await queue.get()
            started = time.perf_counter()
            if isinstance(event, AudioEvent):
                pending.append(event.samples)
                pending_samples += len(event.samples)
                if uniform and (not sent_first or pending_samples >= min_samples):
                    if volume != 1.0:
                        pending[:] = [np.concatenate(pending) * np.float32(volume)]
                    await send_pending(started)
            elif isinstance(event, WordsEvent):
                words, phonemes = event.words, event.phonemes
            elif isinstance(event, EndEvent):
                break
            elif isinstance(event, ErrorEvent):
                raise _EngineFailed(f"speech engine failed: {event.error}")
        started = time.perf_counter()
        if uniform:
            if volume != 1.0 and pending:
                pending[:] = [np.concatenate(pending) * np.float32(volume)]
            await send_pending(started)
        else:
            audio = np.concatenate(pending) if pending else np.zeros(0, np.float32)
            pending.clear()
            bounds = _piece_starts(unit, words, rate, len(audio))
            for (speed, volume), begin, stop in zip(styles, bounds, [*bounds[1:], len(audio)], strict=True):
                chain.begin_piece(speed)
                for at in range(begin, stop, min_samples):
                    piece = audio[at : min(at + min_samples, stop)]
                    pending.append(piece if volume == 1.0 else piece * np.float32(volume))
                    await send_pending(started)
                    started = time.perf_counter()
        await self._send_audio(chain.flush(), started)
        offset = unit_start / self.sample_rate

        def seconds(t: float) -> float:
            return round(offset + chain.seconds_at(t * rate), 4)

        if self.add_timestamps and words:
            merged = _attach_punctuation([(w.word, w.start, w.end) for w in words])
            await self._send(
                self.machine.emit_word_timestamps(
                    [w for w, _, _ in merged],
                    [seconds(s) for _, s, _ in merged],
                    [seconds(e) for _, _, e in merged],
                )
            )
        if self.add_phonemes and phonemes:
            await self._send(
                self.machine.emit_phoneme_timestamps(
                    [p.phoneme for p in phonemes],
                    [seconds(p.start) for p in phonemes],
                    [seconds(p.end) for p in phonemes],
                )
            )


# Durations such as 0.1 s do not add up exactly in binary: 300 breaks of 100 ms are 30 s.
_BREAK_SLACK = 1e-6


def _break_seconds(segments: list[Segment]) -> float:
    """The silence a push's ``<break>`` tags ask for, in seconds."""
    return math.fsum(segment.seconds for segment in segments if isinstance(segment, Break))


def _piece_starts(unit: Unit, words: list[WordTiming], rate: int, total: int) -> list[int]:
    """The sample at which each piece of ``unit`` starts in its job's audio.

    A piece starts with the first word that ends after the piece's first character; the engine
    reports one timing per whitespace-separated word, in order. Should the counts disagree, the
    position falls back to the share of characters before the piece.
    """
    text = unit.text
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    starts = [0]
    offset = 0
    for piece in unit.pieces[:-1]:
        offset += len(piece.text)
        index = next((i for i, (_, end) in enumerate(spans) if end > offset), len(spans))
        if len(words) == len(spans):
            at = round(words[index].start * rate) if index < len(words) else total
        else:
            at = round(total * offset / max(len(text), 1))
        starts.append(min(max(at, starts[-1]), total))
    return starts


class _Chain:
    """One unit's audio path: gain is applied by the caller, then stretch and resample.

    Clipping is left to :func:`speakwire.dsp.pcm.encode`, which clips every encoding (gain above 1
    and the resampler's ringing can overshoot).

    A fresh chain per unit keeps each unit's time map simple (its own zero) and costs nothing
    audible: the stretcher is flushed at the unit's end, so its last samples are not lost, and a
    unit cut mid-sentence still ends and starts at a word boundary, where espeak leaves ~20 ms of
    silence (its lead-in plus the 10 ms it puts after a text even without the end pause).
    """

    def __init__(self, in_rate: int, out_rate: int, speeds: list[float], policy: SpeedPolicy) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        # At speed 1 throughout, skip the stretcher: bit-exact and no algorithmic latency.
        self.stretcher = Stretcher(in_rate, speeds[0], policy) if any(s != 1.0 for s in speeds) else None
        self.resampler = StreamResampler(in_rate, out_rate) if out_rate != in_rate else None
        self.in_samples = 0

    def begin_piece(self, speed: float) -> float:
        """Switch to ``speed`` for the next piece; returns the input position it starts at."""
        if self.stretcher is not None:
            self.stretcher.set_speed(speed)
        return float(self.in_samples)

    def process(self, samples: np.ndarray) -> np.ndarray:
        self.in_samples += len(samples)
        out = samples if self.stretcher is None else self.stretcher.process(samples)
        if self.resampler is not None:
            out = self.resampler.process(out)
        return out

    def flush(self) -> np.ndarray:
        out = np.zeros(0, np.float32) if self.stretcher is None else self.stretcher.flush()
        if self.resampler is not None:
            out = np.concatenate([self.resampler.process(out), self.resampler.flush()]) if len(out) else (
                self.resampler.flush()
            )
        return out

    def seconds_at(self, input_position: float) -> float:
        """Output time (seconds from the unit's start) of an input sample position."""
        if self.stretcher is None:
            return input_position / self.in_rate
        return self.stretcher.output_position(input_position) / self.in_rate


def _spelled(text: str, group: int | None) -> str:
    """``<spell>`` text for an engine that reads single characters by name ("AB12" -> "A B 1 2")."""
    chars = [c for c in text if not c.isspace()]
    size = group or 1
    spelled = " ".join("".join(chars[i : i + size]) for i in range(0, len(chars), size))
    # Keep the span's outer spacing so it does not glue onto the words around it.
    lead = text[: len(text) - len(text.lstrip())]
    trail = text[len(text.rstrip()) :]
    return lead + spelled + trail


def _forward(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> Callable[[Any], None]:
    """An engine callback (it runs on the worker thread) that hands events to ``queue`` on ``loop``."""

    def on_event(event: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed under a late event
            loop.call_soon_threadsafe(queue.put_nowait, event)

    return on_event


_PUNCTUATION = frozenset(".,;:!?…-–—\"'”’“‘()[]{}。！？，、；：")


def _attach_punctuation(words: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Fold tokens that are only punctuation into the word before ("there" "," -> "there,")."""
    merged: list[tuple[str, float, float]] = []
    for word, start, end in words:
        if merged and word and all(ch in _PUNCTUATION for ch in word):
            last, last_start, last_end = merged[-1]
            merged[-1] = (last + word, last_start, max(last_end, end))
        elif word.strip():
            merged.append((word, start, end))
    return merged
