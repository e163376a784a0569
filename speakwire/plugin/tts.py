"""``SpeakwireTTSService``: pipecat's Cartesia TTS, streamed token by token, with local speed control.

A drop-in beside pipecat 1.14's ``CartesiaTTSService``: the same constructor vocabulary
(``api_key``, ``url``, ``sample_rate``, ``encoding``, ``settings=...Settings(voice, model,
language, generation_config)``, ``text_aggregation_mode``), so switching is one line::

    tts = SpeakwireTTSService(settings=SpeakwireTTSService.Settings(voice="..."), speed=1.1)

Where it talks to:

- no ``api_key`` (argument or ``CARTESIA_API_KEY``) and no ``url``: the embedded default, a
  :class:`~speakwire.server.TTSServer` started in-process on 127.0.0.1 (port 0) when the
  pipeline starts and closed with it;
- an ``api_key`` and no ``url``: Cartesia's hosted API (:data:`CARTESIA_URL`);
- a ``url``: that server, verbatim (with the key, if any, as ``X-API-Key``).

Decisions where pipecat or the issue is silent:

- **Token streaming by default** (``TextAggregationMode.TOKEN``): each LLM token is pushed at
  once with ``continue: true`` on the turn's one context, whitespace as the LLM wrote it; the turn
  ends with ``transcript: "", continue: false``. ``SENTENCE`` remains available.
- **Speed** (``speed_mode="local"``, the default) is applied here with WSOLA to the audio as it
  comes back, for any model; the server is asked for ``pcm_f32le`` (stretching before
  quantisation) and the result converted to the pipeline's s16. A change takes effect at the
  next pushed text: an empty flush is pushed first and the stretcher switches speed when that
  flush's ``flush_done`` arrives, i.e. exactly where the audio of the earlier text ends. A
  ``<prosody rate>`` span is delimited the same way and stretched at its rate (the rate replaces
  the speed for the span, as in KugelAudio's docs). ``speed_mode="native"`` instead forwards
  ``generation_config.speed`` with every push and leaves markup to the server.
- **Speed sources**, latest wins: ``speed=`` (or ``settings.generation_config.speed``) for the
  whole service; ``TTSUpdateSettingsFrame(delta=Settings(generation_config=...(speed=x)))`` from
  the next pushed text on (service-wide); :class:`~speakwire.plugin.frames.TurnSpeedFrame` for
  one turn. All are validated by ``speed_policy`` (speakwire's [0.5, 2.0] by default).
- **Words**: only words whose audio was emitted become ``TTSTextFrame``; when a turn fails or
  text is dropped (bad markup), the words the server never spoke are not reported either
  (pipecat would otherwise "force-complete" them into the LLM context).
- **Errors** (connection, server ``error`` frame, a malformed frame from the server, malformed
  markup, invalid speed) become an upstream ``ErrorFrame`` naming the problem, the turn in
  question ends with one ``TTSStoppedFrame`` (sent by whichever of the turn's end of input and
  its receive task comes second), and the next turn starts clean; a lost connection is
  re-opened by the transport on the next push. Categories keep pipecat from writing the
  service off for a bad speed or tag (``APPLICATION``), a dropped socket (``CONNECTIVITY``) or
  a server failure (``SERVER``); rejected credentials are ``AUTHENTICATION`` (permanent, as
  pipecat intends).
- **Voice, model or language changed mid-turn** (``TTSUpdateSettingsFrame``), as pipecat's
  ``CartesiaTTSService`` does: the turn's context is finalised (``continue: false``, so the text
  already pushed is still spoken and its words reported as heard) and the rest of the turn goes
  on a new context with the new settings; each context is its own pipecat audio context, so
  the turn has one ``TTSStartedFrame``/``TTSStoppedFrame`` pair per context, as pipecat's has.
  The rest of the turn keeps the turn's speed (a ``TurnSpeedFrame`` override included) and any
  text the markup parser still holds (a ``<prosody>`` span open across the switch is spoken,
  whole, on the new context, though pipecat's word sequencer, which filed that text under the
  old context, may then leave some of its words unreported); speed switches scheduled on the
  old context stay with its audio.
  Barge-in cancels every context of the turn still generating.
- Text outside any reply (a bare ``TextFrame``) is spoken as an utterance of its own and its
  context closed at once, instead of staying open until pipecat's 3 s audio timeout.
- A malformed tag is reported once per turn and dropped; the text around it is still spoken (a
  ``<prosody>`` span left open at the end of the turn is not spoken: it never closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from loguru import logger
from pipecat.frames.frames import (
    AggregatedTextProgressFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.cartesia.tts import CartesiaTTSSettings, GenerationConfig, language_to_cartesia_language
from pipecat.services.tts_service import TextAggregationMode, TTSService
from pipecat.transcriptions.language import Language
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.types import is_given

from speakwire.dsp.speed import DEFAULT_POLICY, SpeedPolicy
from speakwire.errors import (
    AuthenticationError,
    ContextStateError,
    InvalidSpeedError,
    MarkupError,
    ProtocolError,
    ServerError,
    SpeakwireError,
    TTSConnectionError,
    UnsupportedEncodingError,
    UnsupportedSampleRateError,
)
from speakwire.plugin.frames import TurnSpeedFrame
from speakwire.plugin.turn_audio import TurnAudio
from speakwire.protocol.markup import MarkupStream, Piece
from speakwire.protocol.messages import ENCODINGS, SAMPLE_RATES, OutputFormat
from speakwire.protocol.messages import GenerationConfig as WireGenerationConfig
from speakwire.transport.websocket import DEFAULT_VERSION, Context, ReconnectPolicy, TTSConnection

if TYPE_CHECKING:
    from speakwire.server import TTSServer

__all__ = ["CARTESIA_URL", "DEFAULT_VOICE", "SpeakwireTTSService"]

#: Cartesia's hosted TTS WebSocket, used when an API key is given without a URL.
CARTESIA_URL: Final = "wss://api.cartesia.ai/tts/websocket"
#: The voice used when the settings name none (the embedded engine ignores it; Cartesia needs one).
DEFAULT_VOICE: Final = "a0e99841-438c-4a64-b679-ae501e7d6091"

_PROSODY_TAG = re.compile(r"</?prosody\b[^>]*>")


@dataclass(eq=False)
class _Carry:
    """What the rest of a turn takes to the new context opened by a mid-turn settings change."""

    speed: float
    override: bool
    markup: MarkupStream
    held: int
    speed_sent: bool


@dataclass(eq=False)
class _Turn:
    """One context's sending and receiving state."""

    ctx: Context
    audio: TurnAudio
    markup: MarkupStream
    speed: float  # outside spans
    override: bool  # a TurnSpeedFrame set ``speed``; service-wide changes leave it alone
    applied: float = 1.0  # the speed the stretcher will be at after everything pushed so far
    flushes: int = 0
    pushed: bool = False
    closed: bool = False  # the input ended (flush_audio)
    finished: bool = False  # the receive task is past its last event
    stopped: bool = False  # the audio context was ended
    failed: bool = False
    interrupted: bool = False
    markup_errors: int = 0
    held: int = 0  # characters fed to ``markup`` and not yet released by it
    speed_sent: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class SpeakwireTTSService(TTSService):
    """Cartesia-protocol TTS for pipecat 1.14: token streaming, local speed control, clean barge-in.

    Args:
        api_key: Cartesia API key (default: env ``CARTESIA_API_KEY``). Never logged or shown.
        url: WebSocket URL; see the module docstring for what is used when it is omitted.
        sample_rate: The pipeline's output rate (default: the pipeline's ``audio_out_sample_rate``).
        encoding: Wire encoding in ``native`` speed mode (``local`` always asks for ``pcm_f32le``);
            audio always reaches the pipeline as s16le.
        container: Only ``"raw"``.
        max_buffer_delay_ms: Forwarded to the server (default: ``0`` in sentence mode, omitted
            in token mode, as pipecat's Cartesia service does).
        settings: ``SpeakwireTTSService.Settings`` (pipecat's ``CartesiaTTSSettings``).
        text_aggregation_mode: ``TOKEN`` (default) or ``SENTENCE``.
        speed: Service-wide speed; overrides ``settings.generation_config.speed``.
        speed_mode: ``"local"`` (WSOLA here) or ``"native"`` (forwarded to the server).
        speed_policy: Range and out-of-range behaviour for every speed.
        server_sample_rate: Rate asked of the server when it should differ from ``sample_rate``
            (one of 8000, 16000, 22050, 24000, 44100, 48000); resampled here.
        version: ``Cartesia-Version`` header.
        reconnect: Connection retry policy (default: 3 attempts, 0.2-2 s apart).
        **kwargs: Passed to pipecat's ``TTSService``.

    Raises:
        InvalidSpeedError: ``speed`` (or the settings' speed) is invalid under ``speed_policy``.
        UnsupportedEncodingError: ``encoding`` is not one of the four wire encodings.
        UnsupportedSampleRateError: ``server_sample_rate`` is not one of the six wire rates.
    """

    Settings = CartesiaTTSSettings
    _settings: CartesiaTTSSettings

    def __init__(
        self,
        *,
        api_key: str | None = None,
        url: str | None = None,
        sample_rate: int | None = None,
        encoding: str = "pcm_s16le",
        container: str = "raw",
        max_buffer_delay_ms: int | None = None,
        settings: CartesiaTTSSettings | None = None,
        text_aggregation_mode: TextAggregationMode | None = TextAggregationMode.TOKEN,
        speed: float | None = None,
        speed_mode: Literal["local", "native"] = "local",
        speed_policy: SpeedPolicy = DEFAULT_POLICY,
        server_sample_rate: int | None = None,
        version: str = DEFAULT_VERSION,
        reconnect: ReconnectPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        if encoding not in ENCODINGS:
            raise UnsupportedEncodingError(f"encoding {encoding!r} is not one of {', '.join(ENCODINGS)}")
        if container != "raw":
            raise UnsupportedEncodingError(f"container {container!r} is not supported; only 'raw'")
        if server_sample_rate is not None and server_sample_rate not in SAMPLE_RATES:
            raise UnsupportedSampleRateError(
                f"server_sample_rate {server_sample_rate!r} is not one of {', '.join(map(str, SAMPLE_RATES))}"
            )
        if speed_mode not in ("local", "native"):
            raise ValueError(f"speed_mode must be 'local' or 'native', got {speed_mode!r}")
        defaults = CartesiaTTSSettings(
            model="sonic-3",
            voice=DEFAULT_VOICE,
            language=Language.EN,
            generation_config=None,
            pronunciation_dict_id=None,
        )
        if settings is not None:
            defaults.apply_update(settings)
        config = defaults.generation_config if is_given(defaults.generation_config) else None
        if speed is None and config is not None and config.speed is not None:
            speed = config.speed
        self._speed_policy = speed_policy
        self._speed = speed_policy.apply(1.0 if speed is None else speed)
        mode = text_aggregation_mode or TextAggregationMode.TOKEN
        super().__init__(
            text_aggregation_mode=mode,
            push_text_frames=False,
            pause_frame_processing=False,
            push_start_frame=True,
            sample_rate=sample_rate,
            settings=defaults,
            **kwargs,
        )
        self._api_key = api_key or os.environ.get("CARTESIA_API_KEY") or None
        self._url = url
        self._embedded = url is None and self._api_key is None
        self._encoding = encoding
        self._speed_mode = speed_mode
        self._server_sample_rate = server_sample_rate
        self._version = version
        self._reconnect = reconnect or ReconnectPolicy(max_attempts=3, initial_delay=0.2, max_delay=2.0)
        if max_buffer_delay_ms is None and mode is TextAggregationMode.SENTENCE:
            max_buffer_delay_ms = 0
        self._max_buffer_delay_ms = max_buffer_delay_ms
        self._connection: TTSConnection | None = None
        self._server: TTSServer | None = None
        self._turns: dict[str, _Turn] = {}
        # Contexts whose registered text must not be force-completed into TTSTextFrames.
        self._lossy: set[str] = set()
        # Failed contexts whose input has not ended: their text is ignored, and their audio
        # context is ended with the input (ending it earlier would make pipecat open a new one
        # for the next token).
        self._dead: set[str] = set()
        self._pending_turn_speed: float | None = None
        # Turn contexts opened by a voice/model/language change, not yet given any text.
        self._carried: dict[str, _Carry] = {}

    # --- public -------------------------------------------------------------------------------

    @property
    def speed(self) -> float:
        """The service-wide speed."""
        return self._speed

    @property
    def speed_mode(self) -> Literal["local", "native"]:
        """Where speed is applied: ``"local"`` (WSOLA here) or ``"native"`` (by the server)."""
        return self._speed_mode

    @property
    def url(self) -> str | None:
        """The endpoint in use (the embedded server's once started); credentials are never part of it."""
        if self._server is not None:
            return self._server.url
        if self._connection is not None:
            return self._connection.url
        return None if self._embedded else (self._url or CARTESIA_URL)

    @property
    def embedded(self) -> bool:
        """True when the service runs its own local server."""
        return self._embedded

    def can_generate_metrics(self) -> bool:
        """TTFB and usage metrics are supported."""
        return True

    def language_to_service_language(self, language: Language) -> str | None:
        """Cartesia's language codes."""
        return language_to_cartesia_language(language)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, frame: StartFrame) -> None:
        """Start the embedded server if needed and open the connection."""
        await super().start(frame)
        url = self._url
        if self._embedded:
            from speakwire.server import TTSServer  # only the embedded default needs the server

            self._server = TTSServer("127.0.0.1", 0)
            try:
                await self._server.start()
            except (OSError, SpeakwireError) as exc:
                self._server = None
                await self._report(f"cannot start the embedded TTS server: {exc}", ErrorCategory.SERVER, exc)
                return
            url = self._server.url
        elif url is None:
            url = CARTESIA_URL
        self._connection = TTSConnection(
            url, api_key=self._api_key, version=self._version, reconnect=self._reconnect
        )
        try:
            await self._connection.connect()
            await self._call_event_handler("on_connected")
        except TTSConnectionError as exc:
            # Not fatal: the transport retries on the next push.
            await self._report_exception(exc)
            await self._call_event_handler("on_connection_error", str(exc))

    async def stop(self, frame: EndFrame) -> None:
        """Let queued audio play out, then close the connection (and the embedded server)."""
        await super().stop(frame)
        await self._shutdown()

    async def cancel(self, frame: CancelFrame) -> None:
        """Stop at once: cancel every open context, close the connection."""
        await super().cancel(frame)
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._carried.clear()
        for turn in list(self._turns.values()):
            await self._abort(turn)
        self._turns.clear()
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()
            await self._call_event_handler("on_disconnected")
        server, self._server = self._server, None
        if server is not None:
            await server.close()

    # --- frames -------------------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Handle :class:`TurnSpeedFrame`; everything else as pipecat's ``TTSService`` does."""
        if isinstance(frame, TurnSpeedFrame):
            await self._set_turn_speed(frame.speed)
            return
        await super().process_frame(frame, direction)

    async def _set_turn_speed(self, speed: float | None) -> None:
        if speed is None:
            self._pending_turn_speed = None
            return
        try:
            value = self._speed_policy.apply(speed)
        except InvalidSpeedError as exc:
            await self._report(f"invalid turn speed: {exc}", ErrorCategory.APPLICATION, exc)
            return
        turn = self._turns.get(self._turn_context_id or "")
        carry = self._carried.get(self._turn_context_id or "")
        if turn is not None and not turn.closed:
            turn.speed, turn.override = value, True
        elif carry is not None:
            carry.speed, carry.override = value, True
        else:
            self._pending_turn_speed = value

    async def _update_settings(self, delta: CartesiaTTSSettings) -> dict[str, Any]:
        """Apply a settings delta; a ``generation_config.speed`` is validated first and applied
        from the next pushed text on (an invalid one is reported and left out). A voice, model or
        language change in a turn moves the rest of the turn to a new context."""
        new_speed: float | None = None
        config = getattr(delta, "generation_config", None)
        if is_given(config) and isinstance(config, GenerationConfig) and config.speed is not None:
            try:
                new_speed = self._speed_policy.apply(config.speed)
            except InvalidSpeedError as exc:
                await self._report(f"invalid speed in settings update: {exc}", ErrorCategory.APPLICATION, exc)
                delta.generation_config = config.model_copy(update={"speed": self._speed})
        changed = await super()._update_settings(delta)
        if new_speed is not None:
            self._speed = new_speed
            for turn in self._turns.values():
                if not turn.override and not turn.closed:
                    turn.speed = new_speed
            for carry in self._carried.values():
                if not carry.override:
                    carry.speed = new_speed
        if changed.keys() & {"voice", "model", "language"} and self._turn_context_id:
            await self._switch_turn_context(self._turn_context_id)
        return changed

    async def _switch_turn_context(self, context_id: str) -> None:
        """Finalise the turn's context ``context_id``; the rest of the turn gets a new one."""
        # As pipecat does: the sentence pending in the sequencer is closed on the old context,
        # so the words already pushed there are matched to its audio.
        await self._push_sequencer_frames(await self._aggregated_frame_sequencer.finalize(context_id), context_id)
        turn = self._turns.get(context_id)
        carry = self._carried.pop(context_id, None)
        if turn is not None and not turn.closed:
            if turn.failed:
                carry = _Carry(turn.speed, turn.override, MarkupStream(), 0, turn.speed_sent)
            else:  # held text goes on with the rest of the turn
                carry = _Carry(turn.speed, turn.override, turn.markup, turn.held, turn.speed_sent)
            turn.markup = MarkupStream()
            if turn.held and not turn.failed:
                # pipecat registered the held text on this context: it must not be reported as
                # heard here (the sequencer cannot move it; its words on the new context may
                # go unreported, never falsely reported).
                self._lossy.add(context_id)
        await self.flush_audio(context_id)
        self._turn_context_id = None
        self._turn_context_id = self.create_context_id()
        if carry is not None:
            self._carried[self._turn_context_id] = carry

    async def on_turn_context_completed(self) -> None:
        """End the turn; a context switched to but never given text ends with it."""
        carry = self._carried.pop(self._turn_context_id or "", None)
        if carry is not None:
            # Only held markup can be left: an unclosed span is reported as in any turn.
            try:
                carry.markup.end()
            except MarkupError as exc:
                await self._report(f"malformed markup in TTS text: {exc}", ErrorCategory.APPLICATION, exc)
        await super().on_turn_context_completed()

    async def _handle_interruption(self, frame: InterruptionFrame, direction: FrameDirection) -> None:
        await super()._handle_interruption(frame, direction)
        # The turn is over (unless pipecat kept it, uninterruptible): so are its pending contexts.
        self._carried = {k: v for k, v in self._carried.items() if k == self._turn_context_id}

    # --- sending ------------------------------------------------------------------------------

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Push ``text`` on the turn's context (opening it on the first call); audio comes back
        through the turn's receive task."""
        if context_id in self._dead:
            yield None  # the turn already failed: its remaining text is not spoken
            return
        turn = self._turns.get(context_id)
        if turn is None:
            turn = await self._open_turn(context_id)
        if turn is not None and not turn.failed and not turn.closed:
            try:
                pieces = turn.markup.feed(text)
            except MarkupError as exc:
                turn.held = 0
                await self._markup_failed(turn, exc)
            else:
                turn.held += len(text) - sum(len(piece.text) for piece in pieces)
                await self._push_pieces(turn, pieces)
            if context_id != self._turn_context_id:
                # Text outside any reply (e.g. stray tokens after an interruption) gets a context
                # of its own that pipecat never closes: close it now, or it would stay open until
                # pipecat's 3 s audio timeout, holding back every later turn's audio. Its text is
                # a whole utterance: let pipecat's sequencer match its words now.
                await self._push_sequencer_frames(
                    await self._aggregated_frame_sequencer.finalize(context_id), context_id
                )
                await self.flush_audio(context_id)
        yield None

    async def flush_audio(self, context_id: str | None = None) -> None:
        """End the turn's input: release held markup, then ``continue: false``."""
        context_id = context_id or self._turn_context_id or ""
        if context_id in self._dead:
            self._dead.discard(context_id)
            await self._close_audio_context(context_id)
            return
        turn = self._turns.get(context_id)
        if turn is None or turn.closed:
            return
        if turn.failed:
            await self._end_input(turn)
            return
        try:
            pieces = turn.markup.end()
        except MarkupError as exc:
            await self._markup_failed(turn, exc)
            pieces = []
        await self._push_pieces(turn, pieces)
        # The awaits above may have let the receive task see the turn fail and finish.
        await self._end_input(turn)
        if turn.failed:
            return
        try:
            await turn.ctx.no_more_inputs()
        except (TTSConnectionError, ContextStateError, ProtocolError) as exc:
            await self._fail(turn, exc)

    async def _end_input(self, turn: _Turn) -> None:
        """Mark ``turn``'s input ended; its audio context is ended by whichever of this and the
        receive task comes second (no await between setting one flag and reading the other)."""
        turn.closed = True
        if turn.finished:
            self._dead.discard(turn.ctx.context_id)
            await self._stop_turn(turn)

    async def _open_turn(self, context_id: str) -> _Turn | None:
        speed = self._speed
        override = self._pending_turn_speed is not None
        carry = self._carried.pop(context_id, None)
        if carry is not None:
            speed, override = carry.speed, carry.override
        elif self._pending_turn_speed is not None:
            speed, self._pending_turn_speed = self._pending_turn_speed, None
        if self._connection is None:
            self._lossy.add(context_id)
            await self._report(
                f"TTS context {context_id!r} not started: no connection (the service is not running)",
                ErrorCategory.CONNECTIVITY,
            )
            self._dead.add(context_id)
            return None
        local = self._speed_mode == "local"
        wire_rate = self._server_sample_rate or self.sample_rate
        encoding = "pcm_f32le" if local else self._encoding
        try:
            audio = TurnAudio(encoding, wire_rate, self.sample_rate, speed=speed if local else None,
                              policy=self._speed_policy)
            ctx = self._connection.context(
                context_id,
                voice=str(self._settings.voice or DEFAULT_VOICE),
                model_id=str(self._settings.model),
                output_format=OutputFormat(encoding, wire_rate),  # type: ignore[arg-type]
                language=str(self._settings.language) if self._settings.language else None,
                add_timestamps=True,
                max_buffer_delay_ms=self._max_buffer_delay_ms,
            )
        except (SpeakwireError, ValueError) as exc:
            self._lossy.add(context_id)
            self._dead.add(context_id)
            await self._report_exception(exc)
            return None
        turn = _Turn(ctx=ctx, audio=audio, markup=MarkupStream(), speed=speed, override=override, applied=speed)
        if carry is not None:
            turn.markup, turn.held, turn.speed_sent = carry.markup, carry.held, carry.speed_sent
        self._turns[context_id] = turn
        turn.task = self.create_task(self._receive(turn), name=f"speakwire-turn-{context_id}")
        return turn

    def _wire_config(self, turn: _Turn) -> WireGenerationConfig | None:
        """The ``generation_config`` sent with a push: volume and emotion from the settings, plus
        the speed in native mode (local mode stretches here, so the server must not)."""
        config = self._settings.generation_config if is_given(self._settings.generation_config) else None
        volume = config.volume if config is not None else None
        emotion = config.emotion if config is not None else None
        speed = None
        # Once a speed went out, every push carries one: a push without it keeps the last.
        if self._speed_mode == "native" and (turn.speed != 1.0 or turn.override or turn.speed_sent):
            speed = turn.speed
            turn.speed_sent = True
        if speed is None and volume is None and emotion is None:
            return None
        return WireGenerationConfig(speed=speed, volume=volume, emotion=emotion)

    async def _push_pieces(self, turn: _Turn, pieces: list[Piece]) -> None:
        try:
            for piece in pieces:
                if turn.failed:
                    return
                await self._push_piece(turn, piece)
        except (TTSConnectionError, ContextStateError, ProtocolError, InvalidSpeedError) as exc:
            await self._fail(turn, exc)

    async def _push_piece(self, turn: _Turn, piece: Piece) -> None:
        if not piece.text:
            return
        if self._speed_mode == "local" and piece.span and piece.rate is not None:
            await self._switch_speed(turn, piece.rate)
            # The flush on the span's own push marks where its audio ends.
            await turn.ctx.push(_PROSODY_TAG.sub("", piece.text), generation_config=self._wire_config(turn),
                                flush=True)
            turn.pushed = True
            turn.flushes += 1
            turn.audio.schedule(turn.flushes, turn.speed)
            turn.applied = turn.speed
            return
        if self._speed_mode == "local" and turn.applied != turn.speed:
            await self._switch_speed(turn, turn.speed)
        await turn.ctx.push(piece.text, generation_config=self._wire_config(turn))
        turn.pushed = True
        await self.start_tts_usage_metrics(piece.text)

    async def _switch_speed(self, turn: _Turn, speed: float) -> None:
        """Make ``speed`` apply to the audio of the text pushed from now on."""
        if not turn.pushed:
            turn.applied = turn.audio.set_speed(speed)
            return
        await turn.ctx.flush()
        turn.flushes += 1
        turn.audio.schedule(turn.flushes, speed)
        turn.applied = speed

    # --- receiving ----------------------------------------------------------------------------

    async def _receive(self, turn: _Turn) -> None:
        context_id = turn.ctx.context_id
        error: Exception | None = None
        try:
            async for event in turn.ctx:
                if event.type == "chunk":
                    await self._emit_audio(context_id, turn.audio.audio(event.audio))
                    await self._emit_words(context_id, turn.audio.words((), ()))  # words now heard
                elif event.type == "timestamps":
                    await self._emit_words(context_id, turn.audio.words(event.words, event.start))
                elif event.type == "flush_done":
                    turn.audio.flush_done(event.flush_id)
        except (ServerError, TTSConnectionError, ProtocolError) as exc:
            error = exc
        except SpeakwireError as exc:  # e.g. audio the server sent that cannot be decoded
            error = exc
            await turn.ctx.cancel()
        if turn.interrupted:
            return
        self._turns.pop(context_id, None)
        if error is not None or turn.failed:
            if error is not None and not turn.failed:
                turn.failed = True
                await self._report_exception(error)
            self._lossy.add(context_id)
            turn.audio.discard_words()
            turn.finished = True
            if not turn.closed:
                # Its input is still open: later text is ignored, and flush_audio (this turn's
                # or the one under way) ends the audio context.
                self._dead.add(context_id)
                return
        else:
            pcm, words = turn.audio.finish()
            await self._emit_audio(context_id, pcm)
            await self._emit_words(context_id, words)
            turn.finished = True
        await self._stop_turn(turn)

    async def _stop_turn(self, turn: _Turn) -> None:
        """End ``turn``'s audio context, once."""
        if turn.stopped:
            return
        turn.stopped = True
        await self.stop_ttfb_metrics()
        await self._close_audio_context(turn.ctx.context_id)

    async def _emit_audio(self, context_id: str, pcm: bytes) -> None:
        if pcm:
            frame = TTSAudioRawFrame(audio=pcm, sample_rate=self.sample_rate, num_channels=1, context_id=context_id)
            await self.append_to_audio_context(context_id, frame)

    async def _emit_words(self, context_id: str, words: list[tuple[str, float]]) -> None:
        if words:
            await self.add_word_timestamps(words, context_id)

    async def _close_audio_context(self, context_id: str) -> None:
        if self.audio_context_available(context_id):
            await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
            await self.remove_audio_context(context_id)

    # --- failures and barge-in ----------------------------------------------------------------

    async def _markup_failed(self, turn: _Turn, exc: MarkupError) -> None:
        # The bad tag (and any text held back with it) is dropped; the rest of the turn goes on
        # with a fresh parser, so one bad tag costs that tag, not the reply. Faults that follow
        # from the first (the stray close of a span whose open tag was bad) are not reported again.
        self._lossy.add(turn.ctx.context_id)
        turn.markup = MarkupStream()
        turn.markup_errors += 1
        if turn.markup_errors > 1:
            logger.debug(f"{self}: further markup fault in the same turn: {exc}")
            return
        await self._report(f"malformed markup in TTS text: {exc}", ErrorCategory.APPLICATION, exc)

    async def _fail(self, turn: _Turn, exc: Exception) -> None:
        """End ``turn`` after a send failure: report, cancel, and let its receive task close it."""
        if turn.failed:
            return
        turn.failed = True
        self._lossy.add(turn.ctx.context_id)
        await self._report_exception(exc)
        await turn.ctx.cancel()

    async def _abort(self, turn: _Turn) -> None:
        turn.interrupted = True
        turn.audio.discard_words()
        await turn.ctx.cancel()
        task, turn.task = turn.task, None
        if task is not None and task is not asyncio.current_task():
            await self.cancel_task(task)

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        """Barge-in: send ``cancel``, drop every late chunk, reset the stretcher, emit nothing more."""
        await self.stop_all_metrics()
        turn = self._turns.pop(context_id, None)
        if turn is not None:
            await self._abort(turn)
        self._lossy.discard(context_id)
        self._dead.discard(context_id)
        await super().on_audio_context_interrupted(context_id)

    async def on_audio_context_completed(self, context_id: str) -> None:
        """Forget the context once its audio has played."""
        self._lossy.discard(context_id)
        await super().on_audio_context_completed(context_id)

    async def _apply_force_complete(self, context_id: str) -> None:
        if context_id not in self._lossy:
            await super()._apply_force_complete(context_id)
            return
        # Text the server never spoke must not reach the LLM context as spoken: keep only
        # the frames that are not word reports (e.g. skipped text now unblocked).
        frames = self._aggregated_frame_sequencer.force_complete(
            context_id, self._word_timestamp_tracker.last_pts
        )
        await self._push_word_frames(
            [f for f in frames if not isinstance(f, (TTSTextFrame, AggregatedTextProgressFrame))]
        )

    async def _record_context_audio_outcome(self, context_id: str, received_audio: bool) -> None:
        # A context that failed was reported with its cause; counting it as "silent" as well
        # would report it twice and, after three in a row (e.g. a server restart spanning three
        # turns), make pipecat write the service off for good.
        if context_id in self._lossy and not received_audio:
            return
        await super()._record_context_audio_outcome(context_id, received_audio)

    async def _report_exception(self, exc: Exception) -> None:
        if isinstance(exc, AuthenticationError):
            category = ErrorCategory.AUTHENTICATION
        elif isinstance(exc, TTSConnectionError):
            category = ErrorCategory.CONNECTIVITY
        elif isinstance(exc, ServerError) and exc.status_code >= 500:
            category = ErrorCategory.SERVER
        elif isinstance(exc, ServerError) and exc.status_code in (401, 403):
            category = ErrorCategory.AUTHENTICATION
        elif isinstance(exc, ServerError):
            category = ErrorCategory.APPLICATION
        else:
            category = ErrorCategory.APPLICATION if isinstance(exc, ValueError) else ErrorCategory.SERVER
        prefix = "TTS server error" if isinstance(exc, ServerError) else "TTS error"
        await self._report(f"{prefix}: {exc}", category, exc)

    async def _report(self, message: str, category: ErrorCategory, exc: Exception | None = None) -> None:
        if self._api_key:
            message = message.replace(self._api_key, "***")
        logger.warning(f"{self}: {message}")
        with contextlib.suppress(Exception):
            await self.stop_all_metrics()
        await self.push_error(error_msg=message, exception=exc, category=category)
