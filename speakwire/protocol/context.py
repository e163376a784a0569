"""The per-context state machine, shared by both ends, and a connection's registry of contexts.

A context is one turn of speech on a connection, named by its ``context_id``. Its states:

- ``OPEN``: the client may push text (``continue: true``), flush, or close the input.
- ``INPUT_CLOSED``: a push with ``continue`` false arrived; the server finishes generating and
  then sends exactly one ``done``.
- ``DONE``: the server sent ``done`` or an ``error`` frame. Terminal.
- ``CANCELLED``: the client sent ``cancel``. Terminal; anything that still arrives is late.

A :class:`ContextMachine` does no I/O: the caller tells it what it sends and receives, and it
answers what that means. On the **client** (``role="client"``)::

    ctx = registry.open("turn-1")                 # 429 ProtocolError beyond Limits.max_open_contexts
    ctx.send_request(request); send(encode(request))
    cancel = ctx.send_cancel()                    # a CancelRequest to send, or None if already over
    verdict = registry.receive_message(decode_response(text))
    if verdict.action is Action.DELIVER: ...      # DROP: late or unknown (counted); VIOLATION: server bug

On the **server** (``role="server"``)::

    try:
        received = registry.receive_request(decode_request(text, limits))
    except ProtocolError as exc:                  # 400/409/413/422/429: answer, keep the connection
        send(encode(registry.reject(exc, context_id_of(text, limits))))   # ends that context
    ...
    ctx = received.context                        # None, or received.ignored says why nothing is due
    msg = ctx.emit_chunk(audio)                   # None once cancelled: send nothing
    msg = ctx.emit_flush_done()                   # for each received.flush_id, in order
    msg = ctx.emit_done()                         # after the input closed and the last chunk

Server rules: the first request of a context opens it and fixes its output format (later
requests may not reconfigure it, e.g. SDK 2.x's empty close with a dummy embedding voice and
pcm_f32le/44100); flush ids count 1, 2, ... and chunks carry the current one only after the
first flush; a push after the input closed is a 409, except a repeated empty close, which is
ignored; requests for a cancelled context are ignored (they raced the cancel); emitting after
``done`` is a bug (:class:`~speakwire.errors.ContextStateError`) while emitting after a cancel
returns None, because the generator races the cancel.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Literal, TypeAlias

from speakwire.errors import ContextStateError, ProtocolError
from speakwire.protocol.messages import (
    DEFAULT_LIMITS,
    CancelRequest,
    Chunk,
    ClientMessage,
    Done,
    ErrorMessage,
    FlushDone,
    GenerationRequest,
    Limits,
    OutputFormat,
    PhonemeTimestamps,
    ServerMessage,
    WordTimestamps,
)

__all__ = [
    "Action",
    "ContextMachine",
    "ContextRegistry",
    "ContextState",
    "Received",
    "Role",
    "Verdict",
]

Role: TypeAlias = Literal["client", "server"]


class ContextState(Enum):
    """Where a context is in its life."""

    OPEN = "open"
    INPUT_CLOSED = "input_closed"
    DONE = "done"
    CANCELLED = "cancelled"


_LIVE = (ContextState.OPEN, ContextState.INPUT_CLOSED)


class Action(Enum):
    """What a client does with a received server message."""

    DELIVER = "deliver"
    #: Late (after a cancel or after done) or for an unknown context: drop it, it is counted.
    DROP = "drop"
    #: The server broke the protocol; the message is not delivered.
    VIOLATION = "violation"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A client's classification of one server message; ``reason`` says why unless delivered."""

    action: Action
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Received:
    """What one received request means for a server.

    ``ignored`` is None when the request is to be acted on, else the reason nothing is due (a
    cancel for an unknown context, a push racing a cancel, a repeated empty close).
    """

    request: ClientMessage
    context: ContextMachine | None
    opened: bool = False
    #: The id to answer this request's flush with (``emit_flush_done``), if it asked for one.
    flush_id: int | None = None
    closes_input: bool = False
    cancelled: bool = False
    ignored: str | None = None


def _is_empty_close(request: GenerationRequest) -> bool:
    return request.transcript == "" and not request.continue_ and not request.flush


class ContextMachine:
    """The state of one context, as seen by one end of the connection (see the module docs)."""

    def __init__(self, context_id: str, role: Role) -> None:
        if role not in ("client", "server"):
            raise ValueError(f"role must be 'client' or 'server', got {role!r}")
        self.context_id = context_id
        self.role: Role = role
        self.state = ContextState.OPEN
        #: The request that opened the context; it fixes the output format, voice and model.
        self.opening: GenerationRequest | None = None
        #: Flush requests on this context so far (sent by the client / received by the server).
        self.flushes = 0
        #: ``flush_done`` messages so far (received by the client / emitted by the server).
        self.flushes_acked = 0
        #: The error frame that ended the context, if one did.
        self.error: ErrorMessage | None = None
        #: Client: server messages dropped because they came after the cancel or the done.
        self.late = 0

    def __repr__(self) -> str:
        return f"ContextMachine({self.context_id!r}, role={self.role!r}, state={self.state.value})"

    @property
    def live(self) -> bool:
        """True until the context is done or cancelled."""
        return self.state in _LIVE

    @property
    def output_format(self) -> OutputFormat | None:
        """The output format fixed by the opening request."""
        return None if self.opening is None else self.opening.output_format

    @property
    def current_flush_id(self) -> int | None:
        """The flush id chunks carry now: None before the first flush, then the flush count."""
        return self.flushes or None

    def _require_role(self, role: Role, operation: str) -> None:
        if self.role != role:
            raise ContextStateError(f"{operation} is for the {role} side; this machine is the {self.role}'s")

    def _check_id(self, context_id: str | None) -> None:
        if context_id != self.context_id:
            raise ProtocolError(
                f"message for context {context_id!r} given to context {self.context_id!r}", field="context_id"
            )

    # --- client side ----------------------------------------------------------------------------

    def send_request(self, request: GenerationRequest) -> None:
        """Record a push the client is about to send; raises :class:`ContextStateError` unless open."""
        self._require_role("client", "send_request")
        self._check_id(request.context_id)
        if self.state is not ContextState.OPEN:
            why = {
                ContextState.INPUT_CLOSED: "its input was closed (a push had continue false)",
                ContextState.DONE: "it is done",
                ContextState.CANCELLED: "it was cancelled",
            }[self.state]
            raise ContextStateError(f"cannot push to context {self.context_id!r}: {why}")
        if self.opening is None:
            self.opening = request
        if request.flush:
            self.flushes += 1
        if not request.continue_:
            self.state = ContextState.INPUT_CLOSED

    def send_cancel(self) -> CancelRequest | None:
        """Cancel the context: returns the request to send, or None if it is already over."""
        self._require_role("client", "send_cancel")
        if not self.live:
            return None
        self.state = ContextState.CANCELLED
        return CancelRequest(self.context_id)

    def receive_message(self, message: ServerMessage) -> Verdict:
        """Classify a server message for this context: deliver it, drop it as late, or a violation."""
        self._require_role("client", "receive_message")
        if message.context_id != self.context_id:
            return Verdict(
                Action.VIOLATION, f"message for context {message.context_id!r} routed to {self.context_id!r}"
            )
        if self.state is ContextState.CANCELLED:
            self.late += 1
            return Verdict(Action.DROP, "late: the context was cancelled")
        if self.state is ContextState.DONE:
            self.late += 1
            return Verdict(Action.DROP, "late: the context is done")
        if isinstance(message, ErrorMessage):
            self.state = ContextState.DONE
            self.error = message
            return Verdict(Action.DELIVER)
        if isinstance(message, Done):
            was_open = self.state is ContextState.OPEN
            self.state = ContextState.DONE
            if was_open:
                return Verdict(Action.VIOLATION, "done before the input was closed: the rest of the turn is lost")
            return Verdict(Action.DELIVER)
        if isinstance(message, FlushDone):
            expected = self.flushes_acked + 1
            if message.flush_id != expected or message.flush_id > self.flushes:
                return Verdict(
                    Action.VIOLATION,
                    f"flush_done {message.flush_id} but {self.flushes} flush(es) sent and {expected} expected next",
                )
            self.flushes_acked = expected
            return Verdict(Action.DELIVER)
        if message.flush_id is not None and message.flush_id > self.flushes:
            return Verdict(
                Action.VIOLATION,
                f"{message.type} carries flush_id {message.flush_id} but {self.flushes} flush(es) sent",
            )
        return Verdict(Action.DELIVER)

    # --- server side ----------------------------------------------------------------------------

    def receive_request(self, request: ClientMessage) -> Received:
        """Accept a client request, or raise :class:`ProtocolError` with the status to answer.

        Raises 400 (field ``output_format``) when the opening request has no output format and
        409 (field ``context_id``) for a push after the input closed or after done.
        """
        self._require_role("server", "receive_request")
        self._check_id(request.context_id)
        if isinstance(request, CancelRequest):
            if not self.live:
                return Received(request, self, ignored=f"context {self.context_id!r} is already {self.state.value}")
            self.state = ContextState.CANCELLED
            return Received(request, self, cancelled=True)
        if self.state is ContextState.CANCELLED:
            return Received(request, self, ignored=f"context {self.context_id!r} was cancelled")
        if self.state is not ContextState.OPEN:
            if _is_empty_close(request):
                return Received(request, self, ignored=f"context {self.context_id!r} input is already closed")
            why = "is done" if self.state is ContextState.DONE else "input was closed (a push had continue false)"
            raise ProtocolError(
                f"context {self.context_id!r} {why}; it accepts no more text: use a new context_id",
                field="context_id",
                status_code=409,
            )
        opened = self.opening is None
        if opened:
            if request.output_format is None:
                raise ProtocolError(
                    f"output_format is required on the first request of context {self.context_id!r}",
                    field="output_format",
                )
            self.opening = request
        flush_id = None
        if request.flush:
            self.flushes += 1
            flush_id = self.flushes
        if not request.continue_:
            self.state = ContextState.INPUT_CLOSED
        return Received(request, self, opened=opened, flush_id=flush_id, closes_input=not request.continue_)

    def _may_emit(self, what: str) -> bool:
        self._require_role("server", f"emit_{what}")
        if self.state is ContextState.CANCELLED:
            return False
        if self.state is ContextState.DONE:
            raise ContextStateError(f"cannot emit {what} on context {self.context_id!r}: it is done")
        return True

    def emit_chunk(self, audio: bytes, step_time: float = 0.0) -> Chunk | None:
        """The chunk to send, stamped with the current flush id; None if the context was cancelled."""
        if not self._may_emit("chunk"):
            return None
        return Chunk(self.context_id, bytes(audio), step_time=step_time, flush_id=self.current_flush_id)

    def emit_word_timestamps(
        self, words: Sequence[str], start: Sequence[float], end: Sequence[float]
    ) -> WordTimestamps | None:
        """Word timestamps to send (seconds from the context's start); None if cancelled."""
        if not self._may_emit("word_timestamps"):
            return None
        _check_lengths(words, start, end)
        return WordTimestamps(self.context_id, tuple(words), tuple(start), tuple(end), flush_id=self.current_flush_id)

    def emit_phoneme_timestamps(
        self, phonemes: Sequence[str], start: Sequence[float], end: Sequence[float]
    ) -> PhonemeTimestamps | None:
        """Phoneme timestamps to send (seconds from the context's start); None if cancelled."""
        if not self._may_emit("phoneme_timestamps"):
            return None
        _check_lengths(phonemes, start, end)
        return PhonemeTimestamps(
            self.context_id, tuple(phonemes), tuple(start), tuple(end), flush_id=self.current_flush_id
        )

    def emit_flush_done(self) -> FlushDone | None:
        """Acknowledge the oldest unacknowledged flush; None if cancelled."""
        if not self._may_emit("flush_done"):
            return None
        if self.flushes_acked >= self.flushes:
            raise ContextStateError(
                f"no flush to acknowledge on context {self.context_id!r} ({self.flushes} received, all acknowledged)"
            )
        self.flushes_acked += 1
        return FlushDone(self.context_id, self.flushes_acked)

    def emit_done(self) -> Done | None:
        """The context's one ``done``: only after the input closed and every flush was acknowledged."""
        if not self._may_emit("done"):
            return None
        if self.state is ContextState.OPEN:
            raise ContextStateError(
                f"cannot emit done on context {self.context_id!r}: its input is still open "
                "(a done now would make clients drop the rest of the turn)"
            )
        if self.flushes_acked < self.flushes:
            raise ContextStateError(
                f"cannot emit done on context {self.context_id!r}: flush {self.flushes_acked + 1} "
                "is not acknowledged yet"
            )
        self.state = ContextState.DONE
        return Done(self.context_id)

    def emit_error(self, status_code: int, title: str, message: str) -> ErrorMessage | None:
        """An error frame that ends the context; None if cancelled."""
        if not self._may_emit("error"):
            return None
        self.state = ContextState.DONE
        self.error = ErrorMessage(status_code=status_code, title=title, message=message, context_id=self.context_id)
        return self.error


def _check_lengths(labels: Sequence[str], start: Sequence[float], end: Sequence[float]) -> None:
    if not len(labels) == len(start) == len(end):
        raise ValueError(f"timestamps differ in length: {len(labels)} labels, {len(start)} start, {len(end)} end")


class ContextRegistry:
    """The contexts of one connection, for either role.

    Holds at most ``limits.max_open_contexts`` live contexts (more is a 429
    :class:`ProtocolError`) and remembers the last ``remember`` finished ones, so that a late
    message is told apart from one for a context that never existed. Client counters:
    ``late`` (dropped after cancel or done), ``unknown`` (dropped, no such context) and
    ``violations``; server counter: ``ignored`` requests.
    """

    def __init__(self, role: Role, limits: Limits = DEFAULT_LIMITS, *, remember: int = 1024) -> None:
        if role not in ("client", "server"):
            raise ValueError(f"role must be 'client' or 'server', got {role!r}")
        if remember < 0:
            raise ValueError(f"remember must be >= 0, got {remember}")
        self.role: Role = role
        self.limits = limits
        self._remember = remember
        self._live: dict[str, ContextMachine] = {}
        self._finished: OrderedDict[str, ContextMachine] = OrderedDict()
        self.late = 0
        self.unknown = 0
        self.violations = 0
        self.ignored = 0

    def _sweep(self) -> None:
        for context_id in [cid for cid, ctx in self._live.items() if not ctx.live]:
            self._retire(self._live.pop(context_id))

    def _retire(self, ctx: ContextMachine) -> None:
        self._finished[ctx.context_id] = ctx
        self._finished.move_to_end(ctx.context_id)
        while len(self._finished) > self._remember:
            self._finished.popitem(last=False)

    def __len__(self) -> int:
        """The number of live (open or input-closed) contexts."""
        self._sweep()
        return len(self._live)

    def __contains__(self, context_id: object) -> bool:
        self._sweep()
        return context_id in self._live

    def __iter__(self) -> Iterator[ContextMachine]:
        """The live contexts, oldest first."""
        self._sweep()
        return iter(list(self._live.values()))

    @property
    def dropped(self) -> int:
        """Client: every server message dropped, late or for an unknown context."""
        return self.late + self.unknown

    def get(self, context_id: str) -> ContextMachine | None:
        """The live or recently finished context with this id, or None."""
        self._sweep()
        return self._live.get(context_id) or self._finished.get(context_id)

    def _admit(self, context_id: str) -> ContextMachine:
        self._sweep()
        if len(self._live) >= self.limits.max_open_contexts:
            raise ProtocolError(
                f"too many open contexts on this connection (limit {self.limits.max_open_contexts}); "
                "finish or cancel one first",
                field="context_id",
                status_code=429,
            )
        return ContextMachine(context_id, self.role)

    # --- client side ----------------------------------------------------------------------------

    def open(self, context_id: str) -> ContextMachine:
        """Client: start a context. A 429 :class:`ProtocolError` at the limit; an id still
        live or remembered raises :class:`ContextStateError` (its late messages would mix in)."""
        if self.role != "client":
            raise ContextStateError("open() is for the client side; a server opens contexts on their first request")
        if self.get(context_id) is not None:
            raise ContextStateError(f"context id {context_id!r} is in use or was used recently; pick a new one")
        ctx = self._admit(context_id)
        self._live[context_id] = ctx
        return ctx

    def receive_message(self, message: ServerMessage) -> Verdict:
        """Client: route a server message to its context and classify it (counting drops)."""
        if self.role != "client":
            raise ContextStateError("receive_message() is for the client side")
        if message.context_id is None:
            # Only an error frame can lack a context id: it concerns the whole connection.
            return Verdict(Action.DELIVER)
        ctx = self.get(message.context_id)
        if ctx is None:
            self.unknown += 1
            return Verdict(Action.DROP, f"unknown context {message.context_id!r}")
        verdict = ctx.receive_message(message)
        if verdict.action is Action.DROP:
            self.late += 1
        elif verdict.action is Action.VIOLATION:
            self.violations += 1
        self._sweep()
        return verdict

    # --- server side ----------------------------------------------------------------------------

    def reject(self, exc: ProtocolError, context_id: str | None) -> ErrorMessage:
        """Server: the error frame answering a rejected request (``context_id`` from
        :func:`~speakwire.protocol.messages.context_id_of`, None if unknown).

        An error frame ends its context for every client (``done: true``), so a live context
        it names is ended here too: nothing more is emitted for it, and its generation stops.
        """
        if self.role != "server":
            raise ContextStateError("reject() is for the server side")
        frame = ErrorMessage.from_exception(exc, context_id)
        ctx = None if context_id is None else self.get(context_id)
        if ctx is not None and ctx.live:
            ended = ctx.emit_error(frame.status_code, frame.title, frame.message)
            self._sweep()
            if ended is not None:
                return ended
        return frame

    def receive_request(self, request: ClientMessage) -> Received:
        """Server: route a request, opening its context if new; see :meth:`ContextMachine.receive_request`.

        A cancel for an unknown context is ignored; a new context beyond the limit is a 429.
        """
        if self.role != "server":
            raise ContextStateError("receive_request() is for the server side")
        ctx = self.get(request.context_id)
        if ctx is None:
            if isinstance(request, CancelRequest):
                self.ignored += 1
                return Received(request, None, ignored=f"unknown context {request.context_id!r}")
            ctx = self._admit(request.context_id)
            received = ctx.receive_request(request)
            self._live[ctx.context_id] = ctx
            return received
        received = ctx.receive_request(request)
        if received.ignored is not None:
            self.ignored += 1
        self._sweep()
        return received
