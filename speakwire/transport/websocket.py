"""The multiplexed TTS WebSocket client: one connection, many contexts, typed events.

A thin asyncio layer over the pure protocol: :class:`~speakwire.protocol.context.ContextRegistry`
decides what every received frame means (deliver, drop as late, protocol violation) and every
context's state; this module only moves frames between the socket and per-context queues::

    async with TTSConnection("ws://127.0.0.1:8765/tts/websocket", api_key=key) as conn:
        ctx = conn.context(voice="a0e99841-...", output_format=OutputFormat("pcm_s16le", 24000))
        await ctx.push("Hello ")            # continue: true, sent at once
        await ctx.push("world.")
        await ctx.no_more_inputs()          # transcript "" with continue: false
        async for event in ctx:             # Chunk, WordTimestamps, PhonemeTimestamps, FlushDone
            ...                             # ends at the context's one ``done``

Decisions where the protocol is silent:

- **Events** are the protocol's own dataclasses (:class:`Chunk` with decoded ``audio`` bytes,
  :class:`WordTimestamps`, :class:`PhonemeTimestamps`, :class:`FlushDone`); ``done`` is not an
  event, it ends the iteration. **Errors are exceptions**, raised by the iteration after every
  event received before them: an ``error`` frame as :class:`ServerError` (with the server's
  ``status_code``), a lost connection as :class:`TTSConnectionError`, a server breaking the
  protocol for this context as :class:`ProtocolError`. A frame for a context that cannot be
  decoded (bad base64, say) leaves a gap in its audio: the context fails with
  :class:`ProtocolError` and is cancelled on the server, which frees its ``max_contexts`` slot.
  An exception cannot be ignored by a loop that only looks at ``event.type``, and a voice agent
  must notice a turn that failed.
- **Backpressure, no loss**: each context's queue holds ``queue_size`` events and at most
  ``queue_bytes`` of decoded audio (4 MiB by default: over 80 s of 24 kHz 16-bit audio, while the
  server sends ~200 ms chunks; counting events alone would let 256 large frames pile up). One
  frame is bounded by ``max_message_bytes`` (1 MiB by default, some 5000 times a 200 ms chunk),
  so a context holds at most about ``queue_bytes + max_message_bytes``. When it is full the
  reader waits for the consumer, so frames stay in the socket (websockets stops reading after
  ``max_queue`` frames, then TCP pushes back on the server). Audio of a live context is never
  dropped; the price is that one stalled consumer holds back every context of the connection.
  Iterate every context you open or cancel it; a cancel frees the reader at once. A consumer
  stalled longer than ``ping_timeout`` loses the connection (the pong cannot be read either).
- **Cancel** is final and local first: the context stops delivering before the cancel frame is
  even written; whatever the server had already sent is dropped and counted in :attr:`stats`.
- **Reconnect**: websockets' own reconnecting ``connect`` loop does the work, with
  :class:`ReconnectPolicy`'s bounded, jittered delays. A drop ends the contexts that had sent
  anything on the lost socket with :class:`TTSConnectionError` (their server-side state is gone);
  contexts that had not pushed yet carry over. Reconnection starts at once in the background; if
  it gives up, the next push starts a new round. 401/403 is never retried.
- **Secrets**: the API key is sent as ``X-API-Key`` (or ``?api_key=`` with ``auth="query"``) and
  is scrubbed, raw and percent-encoded (``quote``/``quote_plus``: the request line carries a
  query key encoded), from reprs, error messages and every log record of the
  ``speakwire.transport`` logger, tracebacks included (formatted and scrubbed before the record
  is emitted). That is also the logger websockets writes the handshake to at DEBUG.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import deque
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.client import process_exception as websockets_process_exception
from websockets.exceptions import ConnectionClosed, InvalidStatus

from speakwire.errors import (
    AuthenticationError,
    ContextStateError,
    ProtocolError,
    ServerError,
    TTSConnectionError,
)
from speakwire.protocol.context import Action, ContextMachine, ContextRegistry, ContextState
from speakwire.protocol.messages import (
    DEFAULT_LIMITS,
    Chunk,
    Done,
    ErrorMessage,
    FlushDone,
    GenerationConfig,
    GenerationRequest,
    Limits,
    OutputFormat,
    PhonemeTimestamps,
    Voice,
    WordTimestamps,
    context_id_of,
    decode_response,
    encode,
)
from speakwire.redact import REDACTED, RedactingLogger, scrub, secret_forms

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_QUEUE_BYTES",
    "DEFAULT_VERSION",
    "ConnectionStats",
    "Context",
    "ReconnectPolicy",
    "TTSConnection",
    "TTSEvent",
]

logger = logging.getLogger("speakwire.transport")

#: ``Cartesia-Version`` sent by default (what pipecat 1.14 sends).
DEFAULT_VERSION: Final = "2026-03-01"

#: Largest frame a :class:`TTSConnection` accepts by default. The server sends ~200 ms chunks
#: (under 40 KB of base64 at 48 kHz 16-bit); a larger frame closes the connection (1009).
DEFAULT_MAX_MESSAGE_BYTES: Final = 1024 * 1024
#: Decoded audio one context queues by default before the reader waits for its consumer.
DEFAULT_QUEUE_BYTES: Final = 4 * 1024 * 1024

#: What iterating a :class:`Context` yields.
TTSEvent: TypeAlias = Chunk | WordTimestamps | PhonemeTimestamps | FlushDone

_QUERY_SECRETS: Final = frozenset({"api_key", "access_token"})


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How a :class:`TTSConnection` retries a failed connect: bounded exponential backoff with jitter.

    Attempt ``n`` (0-based) that fails is followed by a delay of
    ``min(max_delay, initial_delay * factor ** n)``, less a random fraction up to ``jitter`` of it
    (so many clients dropped together do not return together). After ``max_attempts`` failed
    attempts in a row the connection gives up with :class:`TTSConnectionError`.
    ``max_attempts=1`` means no retry.
    """

    max_attempts: int = 6
    initial_delay: float = 0.2
    max_delay: float = 5.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"ReconnectPolicy.max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if not 0.0 <= self.initial_delay <= self.max_delay:
            raise ValueError(
                f"ReconnectPolicy delays must satisfy 0 <= initial_delay <= max_delay, "
                f"got {self.initial_delay!r} and {self.max_delay!r}"
            )
        if not self.factor >= 1.0:
            raise ValueError(f"ReconnectPolicy.factor must be >= 1, got {self.factor!r}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"ReconnectPolicy.jitter must be in [0, 1], got {self.jitter!r}")

    def delays(self, rng: random.Random | None = None) -> Generator[float]:
        """The ``max_attempts - 1`` delays between attempts, in seconds; then :class:`_GaveUp`."""
        rng = rng or random.Random()
        for attempt in range(self.max_attempts - 1):
            base = min(self.max_delay, self.initial_delay * self.factor**attempt)
            yield base * (1.0 - self.jitter * rng.random())
        # websockets asks for another delay only after a failure: this one was the last allowed.
        raise _GaveUp


class _GaveUp(Exception):
    """Raised through websockets' reconnect loop when the policy's attempts are used up."""


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    """Counters of one :class:`TTSConnection` (a snapshot; all connections of its life summed).

    ``late``: messages for a context after its cancel or its done, dropped. ``unknown``: messages
    for a context id this client never opened, dropped. ``violations``: messages that broke the
    protocol (not delivered). ``malformed``: frames that could not be decoded. ``connects``:
    successful handshakes. ``backpressure_waits``: times the reader waited for a full queue.
    """

    late: int
    unknown: int
    violations: int
    malformed: int
    connects: int
    backpressure_waits: int

    @property
    def dropped(self) -> int:
        """Every message dropped: late plus unknown."""
        return self.late + self.unknown


def _secrets_of(url: str, api_key: str | None) -> tuple[str, ...]:
    """The API key and any credential a caller wrote into the URL (query key, userinfo), each also
    in the percent-encoded forms a URL carries it in (a key with ``/``, ``+`` or ``=`` is logged
    encoded in the handshake's request line with ``auth="query"``)."""
    parts = urlsplit(url)
    found = [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k in _QUERY_SECRETS and v]
    if parts.password:
        found.append(parts.password)
    if api_key:
        found.append(api_key)
    return secret_forms(found)


def _redact_url(url: str, secrets: tuple[str, ...]) -> str:
    """``url`` with credential query values and any userinfo replaced by ``***``."""
    parts = urlsplit(url)
    query = [(k, REDACTED if k in _QUERY_SECRETS else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rpartition("@")[2]
    return scrub(urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="*"), parts.fragment)), secrets)


def _size(event: TTSEvent) -> int:
    # Only audio is large; timestamps and flush markers are bounded by the frame limit anyway.
    return len(event.audio) if isinstance(event, Chunk) else 0


class _Inbox:
    """One context's bounded event queue: one producer (the reader), one consumer (the iteration).

    Unlike :class:`asyncio.Queue`, it can end with an exception delivered after the queued events
    (no space needed, so a full queue cannot block a failure) and can be discarded, which drops
    what is queued and wakes a blocked producer and consumer at once (cancel).
    """

    def __init__(self, maxsize: int, max_bytes: int) -> None:
        self._items: deque[TTSEvent] = deque()
        self._maxsize = maxsize
        self._max_bytes = max_bytes
        #: Decoded audio bytes queued; one event is always admitted, however large.
        self.queued_bytes = 0
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.ended = False
        self.discarded = False
        self._error: BaseException | None = None

    @property
    def full(self) -> bool:
        return len(self._items) >= self._maxsize or (self.queued_bytes >= self._max_bytes and bool(self._items))

    async def put(self, item: TTSEvent) -> bool:
        """Queue ``item``, waiting for space; False if the inbox ended or was discarded meanwhile."""
        while self.full and not self.ended:
            self._writable.clear()
            await self._writable.wait()
        if self.ended:
            return False
        self._items.append(item)
        self.queued_bytes += _size(item)
        self._readable.set()
        return True

    def end(self, error: BaseException | None = None) -> None:
        """No more items: the consumer gets what is queued, then ``error`` or the end."""
        if not self.ended:
            self.ended = True
            self._error = error
            self._readable.set()
            self._writable.set()

    def discard(self) -> None:
        """Drop everything queued and end now."""
        self.discarded = self.ended = True
        self._items.clear()
        self.queued_bytes = 0
        self._readable.set()
        self._writable.set()

    async def get(self) -> TTSEvent:
        """The next item; raises the end error, or :class:`StopAsyncIteration` at the end."""
        while not self._items:
            if self.ended:
                error, self._error = self._error, None
                if error is not None:
                    raise error
                raise StopAsyncIteration
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        self.queued_bytes -= _size(item)
        self._writable.set()
        return item


class Context:
    """One turn of speech on a :class:`TTSConnection`; create it with :meth:`TTSConnection.context`.

    Push text as it comes (:meth:`push`, ``continue: true``), end the input with
    :meth:`no_more_inputs`, and iterate the events until the context's ``done``. Iteration raises
    :class:`ServerError` for an ``error`` frame and :class:`TTSConnectionError` when the
    connection was lost, after every event received before. :meth:`cancel` ends it at once.
    """

    def __init__(
        self,
        connection: TTSConnection,
        machine: ContextMachine,
        *,
        model_id: str,
        voice: Voice | str,
        output_format: OutputFormat,
        language: str | None,
        add_timestamps: bool,
        add_phoneme_timestamps: bool,
        max_buffer_delay_ms: int | None,
        generation_config: GenerationConfig | None,
        queue_size: int,
        queue_bytes: int,
    ) -> None:
        self._connection = connection
        self._machine = machine
        self.model_id = model_id
        self.voice = voice
        self.output_format = output_format
        self.language = language
        self.add_timestamps = add_timestamps
        self.add_phoneme_timestamps = add_phoneme_timestamps
        self.max_buffer_delay_ms = max_buffer_delay_ms
        self.generation_config = generation_config
        self._inbox = _Inbox(queue_size, queue_bytes)
        #: The socket generation this context first sent on; None until its first push.
        self._generation: int | None = None
        self._lost: TTSConnectionError | None = None

    @property
    def context_id(self) -> str:
        """The wire ``context_id``."""
        return self._machine.context_id

    @property
    def state(self) -> ContextState:
        """Where the context is: open, input closed, done, or cancelled (also after a lost connection)."""
        return self._machine.state

    def __repr__(self) -> str:
        return f"<Context {self.context_id!r} {self.state.value}>"

    def _request(
        self, transcript: str, *, continue_: bool, flush: bool = False, config: GenerationConfig | None = None
    ) -> GenerationRequest:
        # Every push carries the full configuration, as the official clients do: the server uses
        # the first one, and a push that races a reconnect still makes sense on its own.
        return GenerationRequest(
            context_id=self.context_id,
            transcript=transcript,
            continue_=continue_,
            model_id=self.model_id,
            voice=self.voice,
            language=self.language,
            output_format=self.output_format,
            add_timestamps=self.add_timestamps,
            add_phoneme_timestamps=self.add_phoneme_timestamps,
            max_buffer_delay_ms=self.max_buffer_delay_ms,
            generation_config=config if config is not None else self.generation_config,
            flush=flush,
        )

    async def push(self, text: str, *, generation_config: GenerationConfig | None = None, flush: bool = False) -> None:
        """Send ``text`` with ``continue: true``; more text may follow.

        ``generation_config`` replaces the context's default for this push (not merged);
        ``flush`` asks the server to speak what it has buffered now (answered by a
        :class:`FlushDone` event). Raises :class:`ContextStateError` after :meth:`no_more_inputs`
        or :meth:`cancel`, :class:`TTSConnectionError` if the connection is lost or cannot be made.
        """
        await self._connection._send(self, self._request(text, continue_=True, flush=flush, config=generation_config))

    async def flush(self) -> None:
        """Ask the server to generate everything pushed so far now (an empty push with ``flush: true``)."""
        await self._connection._send(self, self._request("", continue_=True, flush=True))

    async def no_more_inputs(self) -> None:
        """End the input (``transcript: ""``, ``continue: false``): the server finishes and sends ``done``."""
        await self._connection._send(self, self._request("", continue_=False))

    async def cancel(self) -> None:
        """Stop this context now: iteration ends at once and none of its events is delivered again.

        Sends exactly ``{"context_id": ..., "cancel": true}`` if the server knows the context;
        anything it had already sent is dropped and counted in :attr:`TTSConnection.stats`.
        Idempotent; a no-op on a finished context apart from ending its iteration.
        """
        await self._connection._cancel(self)

    def __aiter__(self) -> AsyncIterator[TTSEvent]:
        return self

    async def __anext__(self) -> TTSEvent:
        return await self._inbox.get()


class TTSConnection:
    """One TTS WebSocket carrying many :class:`Context` objects.

    ``auth="header"`` sends ``X-API-Key`` and ``Cartesia-Version`` headers (Cartesia's hosted API
    and speakwire's server); ``auth="query"`` appends ``api_key`` and ``cartesia_version`` to
    the URL instead. ``max_contexts`` bounds the contexts alive at once (a 429
    :class:`ProtocolError` beyond it), ``queue_size`` and ``queue_bytes`` each context's event
    queue (events, and bytes of decoded audio), ``max_message_bytes`` one received frame (a larger
    one closes the connection with 1009). ``ping_interval``/``ping_timeout`` are websockets'
    keepalive (``None`` disables it); ``open_timeout`` bounds a handshake and ``close_timeout``
    the wait for a peer to finish closing (also after a keepalive timeout).
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        version: str = DEFAULT_VERSION,
        auth: Literal["header", "query"] = "header",
        max_contexts: int = DEFAULT_LIMITS.max_open_contexts,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        open_timeout: float = 10.0,
        close_timeout: float = 10.0,
        reconnect: ReconnectPolicy | None = None,
        queue_size: int = 256,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if auth not in ("header", "query"):
            raise ValueError(f"auth must be 'header' or 'query', got {auth!r}")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be an int >= 1, got {queue_size!r}")
        for name, value in (("queue_bytes", queue_bytes), ("max_message_bytes", max_message_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        scheme = urlsplit(url).scheme
        if scheme not in ("ws", "wss"):
            raise ValueError(f"url must start with ws:// or wss://, got scheme {scheme!r}")
        self._api_key = api_key or None
        self._secrets = _secrets_of(url, self._api_key)
        #: The endpoint with every credential replaced by ``***`` (safe to log).
        self.url = _redact_url(url, self._secrets)
        self._raw_url = url
        self.version = version
        self.auth = auth
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.reconnect = reconnect or ReconnectPolicy()
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self.max_message_bytes = max_message_bytes
        self._frame_limits = Limits(max_message_bytes=max_message_bytes)
        self._registry = ContextRegistry("client", Limits(max_open_contexts=max_contexts))
        self._contexts: dict[str, Context] = {}
        self._log = RedactingLogger(logger, self._secrets, tracebacks=True)
        self._ws: ClientConnection | None = None
        self._generation = 0
        self._runner: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[ClientConnection] | None = None
        self._last_failure: BaseException | None = None
        self._closed = False
        self._malformed = 0
        self._connects = 0
        self._backpressure_waits = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._ws is not None else "disconnected")
        key = "api key set" if self._api_key else "no api key"
        return f"<TTSConnection {self.url} {state} ({key}, {len(self._registry)} live contexts)>"

    # --- public API ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a socket is open."""
        return self._ws is not None

    @property
    def latency(self) -> float:
        """Round-trip time of the last keepalive ping, in seconds (0 before the first pong)."""
        return 0.0 if self._ws is None else self._ws.latency

    @property
    def stats(self) -> ConnectionStats:
        """Drop and connection counters so far."""
        return ConnectionStats(
            late=self._registry.late,
            unknown=self._registry.unknown,
            violations=self._registry.violations,
            malformed=self._malformed,
            connects=self._connects,
            backpressure_waits=self._backpressure_waits,
        )

    async def connect(self) -> None:
        """Open the socket now (retrying per :attr:`reconnect`), or raise.

        Raises :class:`AuthenticationError` on HTTP 401/403 (never retried) and
        :class:`TTSConnectionError` naming the URL (without credentials) when it gives up.
        """
        await self._ensure_connected()

    async def close(self) -> None:
        """Close the socket; live contexts end with :class:`TTSConnectionError`. Idempotent."""
        self._closed = True
        # Ending the contexts first also frees a reader waiting on a full queue, so the close
        # handshake can be read instead of timing out.
        self._fail_contexts(None, TTSConnectionError(f"the connection to {self.url} was closed by the client"))
        runner, self._runner = self._runner, None
        ws = self._ws
        if ws is not None:
            await ws.close()
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    async def __aenter__(self) -> TTSConnection:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def context(
        self,
        context_id: str | None = None,
        *,
        voice: Voice | str,
        model_id: str = "sonic-3",
        output_format: OutputFormat | None = None,
        language: str | None = None,
        add_timestamps: bool = False,
        add_phoneme_timestamps: bool = False,
        max_buffer_delay_ms: int | None = None,
        generation_config: GenerationConfig | None = None,
    ) -> Context:
        """A new context (a uuid4 id unless given). Nothing is sent until its first push.

        ``output_format`` defaults to ``pcm_s16le`` at 24 kHz. It is not validated here: a
        format the server refuses comes back as :class:`ServerError` with its status code.
        Raises :class:`ContextStateError` for an id in use or used recently, a 429
        :class:`ProtocolError` beyond ``max_contexts``.
        """
        if self._closed:
            raise ContextStateError(f"the connection to {self.url} is closed; open a new TTSConnection")
        machine = self._registry.open(context_id if context_id is not None else str(uuid.uuid4()))
        ctx = Context(
            self,
            machine,
            model_id=model_id,
            voice=voice,
            output_format=output_format or OutputFormat("pcm_s16le", 24000),
            language=language,
            add_timestamps=add_timestamps,
            add_phoneme_timestamps=add_phoneme_timestamps,
            max_buffer_delay_ms=max_buffer_delay_ms,
            generation_config=generation_config,
            queue_size=self.queue_size,
            queue_bytes=self.queue_bytes,
        )
        self._contexts[machine.context_id] = ctx
        return ctx

    async def speak(self, text: str, **context_options: Any) -> AsyncIterator[TTSEvent]:
        """One-shot synthesis of ``text``: the events of a fresh context (options as :meth:`context`).

        Leaving the loop early cancels the context.
        """
        ctx = self.context(**context_options)
        try:
            await self._send(ctx, ctx._request(text, continue_=False))
            async for event in ctx:
                yield event
        finally:
            if ctx.state in (ContextState.OPEN, ContextState.INPUT_CLOSED):
                await ctx.cancel()

    # --- sending ------------------------------------------------------------------------------

    async def _send(self, ctx: Context, request: GenerationRequest) -> None:
        if ctx._lost is not None:
            raise TTSConnectionError(str(ctx._lost))
        if ctx.state is ContextState.OPEN:
            ws = await self._ensure_connected()
        else:
            ws = self._ws  # unused: send_request raises for every other state
        # The machine records the push before the await so that a cancel racing the write sees it.
        ctx._machine.send_request(request)
        assert ws is not None
        if ctx._generation is None:
            ctx._generation = self._generation
        try:
            await ws.send(encode(request))
        except ConnectionClosed:
            raise TTSConnectionError(
                f"the connection to {self.url} was lost while sending to context {ctx.context_id!r}"
            ) from None

    async def _cancel(self, ctx: Context) -> None:
        cancel = ctx._machine.send_cancel()
        ctx._inbox.discard()
        self._contexts.pop(ctx.context_id, None)
        ws = self._ws
        # A context that never sent, or sent on a socket since lost, is unknown to the server.
        if cancel is None or ws is None or ctx._generation != self._generation:
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(encode(cancel))

    # --- connecting ---------------------------------------------------------------------------

    def _connect_args(self) -> tuple[str, dict[str, str]]:
        headers: dict[str, str] = {}
        url = self._raw_url
        if self.auth == "header":
            headers["Cartesia-Version"] = self.version
            if self._api_key:
                headers["X-API-Key"] = self._api_key
        else:
            parts = urlsplit(url)
            query = parse_qsl(parts.query, keep_blank_values=True)
            query.append(("cartesia_version", self.version))
            if self._api_key:
                query.append(("api_key", self._api_key))
            url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))
        return url, headers

    async def _ensure_connected(self) -> ClientConnection:
        if self._closed:
            raise TTSConnectionError(f"the connection to {self.url} is closed; open a new TTSConnection")
        if self._ws is not None:
            return self._ws
        if self._runner is None or self._runner.done():
            self._start_runner()
        assert self._ready is not None
        return await asyncio.shield(self._ready)

    def _start_runner(self) -> None:
        self._ready = asyncio.get_running_loop().create_future()
        # Waiters retrieve the failure; this only keeps asyncio from logging it when nobody waits.
        self._ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._runner = asyncio.create_task(self._run(), name=f"speakwire-tts {self.url}")

    def _process_exception(self, exc: Exception) -> Exception | None:
        """websockets' retry decision, with auth failures turned into ours and the cause recorded."""
        self._last_failure = exc
        if isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403):
            status = exc.response.status_code
            return AuthenticationError(f"{self.url} refused the credentials (HTTP {status}); check the API key")
        decision = websockets_process_exception(exc)
        if decision is None:
            return None
        return TTSConnectionError(f"cannot connect to {self.url}: {self._describe(exc)}")

    def _describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, InvalidStatus):
            text = f"HTTP {exc.response.status_code}"
        return scrub(text, self._secrets)

    async def _run(self) -> None:
        try:
            await self._connect_and_read()
        except _GaveUp:
            cause = self._describe(self._last_failure) if self._last_failure else "unknown error"
            self._give_up(
                TTSConnectionError(
                    f"cannot connect to {self.url}: gave up after {self.reconnect.max_attempts} attempts ({cause})"
                )
            )
        except (TTSConnectionError, ProtocolError) as exc:
            self._give_up(exc)
        except Exception as exc:  # anything else websockets raises is fatal for this round
            self._give_up(TTSConnectionError(f"cannot connect to {self.url}: {self._describe(exc)}"))
        finally:
            # Whatever ended this round (close, cancellation), nobody may wait on it forever.
            self._give_up(TTSConnectionError(f"the connection to {self.url} is closed"), quiet=True)

    async def _connect_and_read(self) -> None:
        url, headers = self._connect_args()
        connector = connect(
            url,
            additional_headers=headers,
            # Loopback and Cartesia alike are reached directly; an env proxy would only leak the key.
            proxy=None,
            # Base64 PCM barely compresses; deflate only adds latency.
            compression=None,
            open_timeout=self.open_timeout,
            close_timeout=self.close_timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            max_size=self.max_message_bytes,
            process_exception=self._process_exception,
            reconnect_delays=self.reconnect.delays,
            logger=self._log,
        )
        async with contextlib.aclosing(connector.__aiter__()) as sockets:
            async for ws in sockets:
                self._attach(ws)
                reason = await self._read(ws)
                self._detach(reason)
                if self._closed:
                    break

    def _attach(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._generation += 1
        self._connects += 1
        self._log.debug("connected to %s (connection %d)", self.url, self._generation)
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(ws)

    def _detach(self, reason: str) -> None:
        self._ws = None
        lost = self._generation
        self._fail_contexts(lost, TTSConnectionError(f"the connection to {self.url} was lost ({reason})"))
        if not self._closed:
            self._log.info("connection to %s lost (%s); reconnecting", self.url, reason)
            self._ready = asyncio.get_running_loop().create_future()
            self._ready.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _give_up(self, exc: Exception, *, quiet: bool = False) -> None:
        # websockets chains the original error, whose text may hold the URL with a query key.
        exc.__cause__ = exc.__context__ = None
        exc.__suppress_context__ = True
        self._ws = None
        if self._ready is not None and not self._ready.done():
            if not quiet:
                self._log.warning("%s", exc)
            self._ready.set_exception(exc)

    def _fail_contexts(self, generation: int | None, error: TTSConnectionError) -> None:
        """End the live contexts that sent on socket ``generation`` (all if None) with ``error``."""
        for ctx in list(self._contexts.values()):
            if generation is not None and ctx._generation != generation:
                continue
            if ctx._machine.live:
                # Marking it cancelled makes anything still addressed to it count as late.
                ctx._machine.send_cancel()
            ctx._lost = TTSConnectionError(f"context {ctx.context_id!r}: {error}")
            ctx._inbox.end(ctx._lost)
            del self._contexts[ctx.context_id]

    # --- receiving ----------------------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> str:
        """Dispatch frames until the socket closes; returns why it closed."""
        try:
            async for frame in ws:
                await self._dispatch(ws, frame)
        except ConnectionClosed:
            pass
        except Exception as exc:
            # A bug here must not leave contexts hanging: close and let them fail.
            self._log.exception("TTS reader failed; closing the connection")
            await ws.close(1011, "client error")
            return f"client error: {type(exc).__name__}"
        if self._closed:
            return "closed by the client"
        # e.g. "received 1001 (going away)" or "sent 1011 (internal error) keepalive ping timeout; ..."
        return str(ws.protocol.close_exc)

    async def _dispatch(self, ws: ClientConnection, frame: str | bytes) -> None:
        try:
            message = decode_response(frame)
        except ProtocolError as exc:
            self._malformed += 1
            self._log.warning("dropped a malformed frame from %s: %s", self.url, exc)
            # The frame passed the socket's size limit, so read its id under the same limit: a
            # smaller one would miss the id of a large bad chunk and leave a silent gap.
            context_id = context_id_of(frame, self._frame_limits)
            ctx = self._contexts.get(context_id) if context_id else None
            if ctx is not None:
                # Part of the turn is lost: fail it loudly, and cancel it so that the server
                # stops generating and the context stops counting against max_contexts.
                error = ProtocolError(
                    f"context {ctx.context_id!r}: malformed frame: {exc}",
                    field=exc.field,
                    status_code=exc.status_code,
                    context_id=ctx.context_id,
                )
                await self._abandon(ws, ctx, error)
            return
        verdict = self._registry.receive_message(message)
        if message.context_id is None:
            # A connection-level error frame: nothing to route it to (our requests name contexts).
            self._log.warning("%s sent a connection-level error: %s", self.url, getattr(message, "error", message))
            return
        ctx = self._contexts.get(message.context_id)
        if verdict.action is Action.DROP or ctx is None:
            return
        if verdict.action is Action.VIOLATION:
            self._log.warning("protocol violation on context %r: %s", message.context_id, verdict.reason)
            if not ctx._machine.live:
                self._end(ctx, ProtocolError(f"context {ctx.context_id!r}: {verdict.reason}"))
            return
        if isinstance(message, Done):
            self._end(ctx, None)
        elif isinstance(message, ErrorMessage):
            self._end(
                ctx,
                ServerError(
                    f"context {ctx.context_id!r}: {message.error}",
                    status_code=message.status_code,
                    context_id=message.context_id,
                ),
            )
        elif not ctx._inbox.full:
            await ctx._inbox.put(message)
        else:
            self._backpressure_waits += 1
            # While waiting for the consumer, still notice the socket dying (e.g. the keepalive
            # timing out because nothing is read): every other context must then end, not hang.
            put = asyncio.ensure_future(ctx._inbox.put(message))
            closed = asyncio.ensure_future(ws.wait_closed())
            try:
                await asyncio.wait({put, closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                put.cancel()
                closed.cancel()

    def _end(self, ctx: Context, error: Exception | None) -> None:
        ctx._inbox.end(error)
        self._contexts.pop(ctx.context_id, None)

    async def _abandon(self, ws: ClientConnection, ctx: Context, error: Exception) -> None:
        """End ``ctx`` with ``error`` after its queued events, retire it and cancel it on the server."""
        cancel = ctx._machine.send_cancel()
        self._end(ctx, error)
        if cancel is not None and ctx._generation == self._generation:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(encode(cancel))
