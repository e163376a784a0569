"""speakwire.protocol.context: every transition of the context state machine, both roles, and the registry."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speakwire.errors import ContextStateError, ProtocolError
from speakwire.protocol.context import (
    Action,
    ContextMachine,
    ContextRegistry,
    ContextState,
    Received,
    Verdict,
)
from speakwire.protocol.messages import (
    CancelRequest,
    Chunk,
    Done,
    ErrorMessage,
    FlushDone,
    GenerationRequest,
    Limits,
    OutputFormat,
    PhonemeTimestamps,
    Voice,
    WordTimestamps,
    context_id_of,
    decode_request,
    decode_response,
    encode,
)

S16 = OutputFormat("pcm_s16le", 16000)
OPEN, CLOSED, DONE, CANCELLED = (
    ContextState.OPEN,
    ContextState.INPUT_CLOSED,
    ContextState.DONE,
    ContextState.CANCELLED,
)


def push(text: str = "Hello ", cid: str = "c", **kw: object) -> GenerationRequest:
    return GenerationRequest(cid, transcript=text, continue_=True, output_format=S16, **kw)  # type: ignore[arg-type]


def close(cid: str = "c", **kw: object) -> GenerationRequest:
    return GenerationRequest(cid, transcript="", continue_=False, **kw)  # type: ignore[arg-type]


def flush(cid: str = "c") -> GenerationRequest:
    return GenerationRequest(cid, transcript="", continue_=True, flush=True)


# --- client role --------------------------------------------------------------------------------


def client_in(state: ContextState) -> ContextMachine:
    ctx = ContextMachine("c", "client")
    ctx.send_request(push())
    if state is CLOSED:
        ctx.send_request(close())
    elif state is DONE:
        ctx.send_request(close())
        assert ctx.receive_message(Done("c")) == Verdict(Action.DELIVER)
    elif state is CANCELLED:
        assert ctx.send_cancel() == CancelRequest("c")
    assert ctx.state is state
    return ctx


def test_client_starts_open() -> None:
    ctx = ContextMachine("c", "client")
    assert (ctx.state, ctx.live, ctx.flushes, ctx.current_flush_id, ctx.output_format) == (OPEN, True, 0, None, None)
    ctx.send_request(push())
    assert ctx.opening == push() and ctx.output_format == S16
    assert repr(ctx) == "ContextMachine('c', role='client', state=open)"


@pytest.mark.parametrize(
    ("state", "outcome"),
    [(OPEN, OPEN), (CLOSED, ContextStateError), (DONE, ContextStateError), (CANCELLED, ContextStateError)],
)
def test_client_push(state: ContextState, outcome: object) -> None:
    ctx = client_in(state)
    if outcome is ContextStateError:
        with pytest.raises(ContextStateError, match="cannot push to context 'c'"):
            ctx.send_request(push())
        assert ctx.state is state
    else:
        ctx.send_request(push())
        assert ctx.state is outcome


@pytest.mark.parametrize(
    ("state", "outcome"),
    [(OPEN, CLOSED), (CLOSED, ContextStateError), (DONE, ContextStateError), (CANCELLED, ContextStateError)],
)
def test_client_close(state: ContextState, outcome: object) -> None:
    ctx = client_in(state)
    if outcome is ContextStateError:
        with pytest.raises(ContextStateError):
            ctx.send_request(close())
    else:
        ctx.send_request(close())
        assert ctx.state is outcome


def test_client_flush_counts() -> None:
    ctx = client_in(OPEN)
    ctx.send_request(flush())
    ctx.send_request(push("more", flush=True))
    assert (ctx.flushes, ctx.current_flush_id, ctx.state) == (2, 2, OPEN)


@pytest.mark.parametrize(
    ("state", "sends", "after"),
    [(OPEN, True, CANCELLED), (CLOSED, True, CANCELLED), (DONE, False, DONE), (CANCELLED, False, CANCELLED)],
)
def test_client_cancel(state: ContextState, sends: bool, after: ContextState) -> None:
    ctx = client_in(state)
    assert (ctx.send_cancel() == CancelRequest("c")) is sends
    assert ctx.state is after


def test_client_push_for_other_context_is_refused() -> None:
    with pytest.raises(ProtocolError) as info:
        ContextMachine("c", "client").send_request(push(cid="other"))
    assert info.value.field == "context_id"


MESSAGES: dict[str, Callable[[], object]] = {
    "chunk": lambda: Chunk("c", b"\x00\x00"),
    "timestamps": lambda: WordTimestamps("c", ("Hello",), (0.0,), (0.4,)),
    "phonemes": lambda: PhonemeTimestamps("c", ("h",), (0.0,), (0.1,)),
    "done": lambda: Done("c"),
    "error": lambda: ErrorMessage(500, "Internal", "engine failed", "c"),
}

# (state, message) -> (action, state after)
CLIENT_TABLE = {
    (OPEN, "chunk"): (Action.DELIVER, OPEN),
    (OPEN, "timestamps"): (Action.DELIVER, OPEN),
    (OPEN, "phonemes"): (Action.DELIVER, OPEN),
    (OPEN, "done"): (Action.VIOLATION, DONE),
    (OPEN, "error"): (Action.DELIVER, DONE),
    (CLOSED, "chunk"): (Action.DELIVER, CLOSED),
    (CLOSED, "timestamps"): (Action.DELIVER, CLOSED),
    (CLOSED, "phonemes"): (Action.DELIVER, CLOSED),
    (CLOSED, "done"): (Action.DELIVER, DONE),
    (CLOSED, "error"): (Action.DELIVER, DONE),
    **{(DONE, m): (Action.DROP, DONE) for m in MESSAGES},
    **{(CANCELLED, m): (Action.DROP, CANCELLED) for m in MESSAGES},
}


@pytest.mark.parametrize(("state", "kind"), list(CLIENT_TABLE))
def test_client_receive_table(state: ContextState, kind: str) -> None:
    ctx = client_in(state)
    action, after = CLIENT_TABLE[(state, kind)]
    message = MESSAGES[kind]()
    verdict = ctx.receive_message(message)  # type: ignore[arg-type]
    assert (verdict.action, ctx.state) == (action, after)
    assert ctx.late == (1 if action is Action.DROP else 0)
    if kind == "error" and action is Action.DELIVER:
        assert ctx.error == message
    if action is Action.DROP:
        assert verdict.reason == (
            "late: the context was cancelled" if state is CANCELLED else "late: the context is done"
        )


def test_client_done_before_close_says_why() -> None:
    verdict = client_in(OPEN).receive_message(Done("c"))
    assert verdict == Verdict(Action.VIOLATION, "done before the input was closed: the rest of the turn is lost")


def test_client_flush_ids() -> None:
    ctx = client_in(OPEN)
    assert ctx.receive_message(Chunk("c", b"", flush_id=1)).action is Action.VIOLATION  # no flush sent yet
    assert ctx.receive_message(FlushDone("c", 1)).action is Action.VIOLATION
    ctx.send_request(flush())
    ctx.send_request(flush())
    assert ctx.receive_message(Chunk("c", b"", flush_id=1)).action is Action.DELIVER
    assert ctx.receive_message(WordTimestamps("c", (), (), (), flush_id=2)).action is Action.DELIVER
    assert ctx.receive_message(PhonemeTimestamps("c", (), (), (), flush_id=3)).action is Action.VIOLATION
    assert ctx.receive_message(FlushDone("c", 2)).reason == "flush_done 2 but 2 flush(es) sent and 1 expected next"
    assert ctx.receive_message(FlushDone("c", 1)).action is Action.DELIVER
    assert ctx.receive_message(FlushDone("c", 1)).action is Action.VIOLATION  # acknowledged twice
    assert ctx.receive_message(FlushDone("c", 2)).action is Action.DELIVER
    assert ctx.receive_message(FlushDone("c", 3)).action is Action.VIOLATION
    assert ctx.flushes_acked == 2


def test_client_message_for_other_context_is_violation() -> None:
    assert client_in(OPEN).receive_message(Chunk("x", b"")).action is Action.VIOLATION


def test_roles_are_enforced() -> None:
    client = ContextMachine("c", "client")
    server = ContextMachine("c", "server")
    with pytest.raises(ContextStateError, match="server side"):
        client.receive_request(push())
    with pytest.raises(ContextStateError, match="server side"):
        client.emit_chunk(b"")
    with pytest.raises(ContextStateError, match="client side"):
        server.send_request(push())
    with pytest.raises(ContextStateError, match="client side"):
        server.send_cancel()
    with pytest.raises(ContextStateError, match="client side"):
        server.receive_message(Done("c"))
    with pytest.raises(ValueError, match="role"):
        ContextMachine("c", "peer")  # type: ignore[arg-type]


# --- server role --------------------------------------------------------------------------------


def server_in(state: ContextState) -> ContextMachine:
    ctx = ContextMachine("c", "server")
    received = ctx.receive_request(push())
    assert received == Received(push(), ctx, opened=True)
    if state is CLOSED:
        ctx.receive_request(close())
    elif state is DONE:
        ctx.receive_request(close())
        assert ctx.emit_done() == Done("c")
    elif state is CANCELLED:
        assert ctx.receive_request(CancelRequest("c")).cancelled
    assert ctx.state is state
    return ctx


def test_server_opening_requires_output_format() -> None:
    ctx = ContextMachine("c", "server")
    with pytest.raises(ProtocolError) as info:
        ctx.receive_request(GenerationRequest("c", transcript="Hi", continue_=True))
    assert (info.value.status_code, info.value.field) == (400, "output_format")
    assert ctx.opening is None and ctx.state is OPEN


@pytest.mark.parametrize(
    ("state", "outcome"),
    [(OPEN, OPEN), (CLOSED, 409), (DONE, 409), (CANCELLED, "ignored")],
)
def test_server_push(state: ContextState, outcome: object) -> None:
    ctx = server_in(state)
    if outcome == 409:
        with pytest.raises(ProtocolError) as info:
            ctx.receive_request(push("late words"))
        assert (info.value.status_code, info.value.field) == (409, "context_id")
        assert "use a new context_id" in str(info.value)
    elif outcome == "ignored":
        received = ctx.receive_request(push("late words"))
        assert received.ignored == "context 'c' was cancelled"
    else:
        assert ctx.receive_request(push("more")) == Received(push("more"), ctx)
    assert ctx.state is state


@pytest.mark.parametrize(
    ("state", "after", "ignored"),
    [
        (OPEN, CLOSED, None),
        (CLOSED, CLOSED, "context 'c' input is already closed"),
        (DONE, DONE, "context 'c' input is already closed"),
        (CANCELLED, CANCELLED, "context 'c' was cancelled"),
    ],
)
def test_server_empty_close(state: ContextState, after: ContextState, ignored: str | None) -> None:
    ctx = server_in(state)
    received = ctx.receive_request(close())
    assert (received.ignored, ctx.state, received.closes_input) == (ignored, after, ignored is None)


def test_server_sdk2_close_does_not_reconfigure() -> None:
    ctx = server_in(OPEN)
    sdk2_close = decode_request(
        '{"context_id": "c", "model_id": "sonic-2", "transcript": "", "stream": true,'
        ' "voice": {"mode": "embedding", "embedding": [' + ",".join(["1.0"] * 192) + "]},"
        ' "output_format": {"container": "raw", "encoding": "pcm_f32le", "sample_rate": 44100}}'
    )
    received = ctx.receive_request(sdk2_close)
    assert received.ignored is None and received.closes_input and not received.opened
    assert ctx.state is CLOSED
    assert ctx.output_format == S16 and ctx.opening == push()
    # ... and its audio still comes out in the opening format, then exactly one done.
    assert ctx.emit_chunk(b"\x01\x00") == Chunk("c", b"\x01\x00")
    assert ctx.emit_done() == Done("c")


@pytest.mark.parametrize(
    ("state", "cancelled", "after"),
    [(OPEN, True, CANCELLED), (CLOSED, True, CANCELLED), (DONE, False, DONE), (CANCELLED, False, CANCELLED)],
)
def test_server_cancel(state: ContextState, cancelled: bool, after: ContextState) -> None:
    ctx = server_in(state)
    received = ctx.receive_request(CancelRequest("c"))
    assert (received.cancelled, received.ignored is None, ctx.state) == (cancelled, cancelled, after)


def test_server_flush_ids_and_chunk_stamps() -> None:
    ctx = server_in(OPEN)
    assert ctx.emit_chunk(b"a") == Chunk("c", b"a", flush_id=None)  # before the first flush: no flush_id
    assert ctx.receive_request(flush()).flush_id == 1
    assert ctx.emit_chunk(b"b", step_time=3.5) == Chunk("c", b"b", 3.5, flush_id=1)
    assert ctx.receive_request(push("x", flush=True)).flush_id == 2
    assert ctx.emit_word_timestamps(["x"], [0.0], [0.2]) == WordTimestamps("c", ("x",), (0.0,), (0.2,), flush_id=2)
    assert ctx.emit_phoneme_timestamps(["k", "s"], [0.0, 0.1], [0.1, 0.2]) == PhonemeTimestamps(
        "c", ("k", "s"), (0.0, 0.1), (0.1, 0.2), flush_id=2
    )
    assert ctx.emit_flush_done() == FlushDone("c", 1)
    assert ctx.emit_flush_done() == FlushDone("c", 2)
    with pytest.raises(ContextStateError, match="no flush to acknowledge"):
        ctx.emit_flush_done()


def test_server_timestamps_lengths_checked() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        server_in(OPEN).emit_word_timestamps(["a", "b"], [0.0], [0.1])


def test_server_done_rules() -> None:
    ctx = server_in(OPEN)
    with pytest.raises(ContextStateError, match="input is still open"):
        ctx.emit_done()
    ctx.receive_request(GenerationRequest("c", transcript="bye", flush=True))
    with pytest.raises(ContextStateError, match="flush 1 is not acknowledged"):
        ctx.emit_done()
    assert ctx.emit_flush_done() == FlushDone("c", 1)
    assert ctx.emit_done() == Done("c")
    with pytest.raises(ContextStateError, match="it is done"):
        ctx.emit_done()


EMITTERS: dict[str, Callable[[ContextMachine], object]] = {
    "chunk": lambda ctx: ctx.emit_chunk(b"\x00\x00"),
    "timestamps": lambda ctx: ctx.emit_word_timestamps(["a"], [0.0], [0.1]),
    "phonemes": lambda ctx: ctx.emit_phoneme_timestamps(["a"], [0.0], [0.1]),
    "error": lambda ctx: ctx.emit_error(500, "Internal", "boom"),
    "done": lambda ctx: ctx.emit_done(),
    "flush_done": lambda ctx: ctx.emit_flush_done(),
}


@pytest.mark.parametrize("kind", list(EMITTERS))
@pytest.mark.parametrize("state", [OPEN, CLOSED, DONE, CANCELLED])
def test_server_emit_table(state: ContextState, kind: str) -> None:
    ctx = server_in(state)
    if state is OPEN:  # one pending flush, so that flush_done is legal
        ctx.receive_request(GenerationRequest("c", flush=True, continue_=True))
    emit = EMITTERS[kind]
    if state is CANCELLED:
        assert emit(ctx) is None  # the generator raced the cancel: nothing goes out
        assert ctx.state is CANCELLED
    elif state is DONE:
        with pytest.raises(ContextStateError, match="it is done"):
            emit(ctx)
    elif kind == "done" and state is OPEN:
        with pytest.raises(ContextStateError):
            emit(ctx)
    elif kind == "flush_done" and state is CLOSED:
        with pytest.raises(ContextStateError, match="no flush"):
            emit(ctx)
    else:
        message = emit(ctx)
        assert message is not None and message.context_id == "c"  # type: ignore[attr-defined]
        expected_state = DONE if kind in ("error", "done") else state
        assert ctx.state is expected_state


def test_server_error_ends_context() -> None:
    ctx = server_in(CLOSED)
    err = ctx.emit_error(503, "Service Unavailable", "engine busy")
    assert err == ErrorMessage(503, "Service Unavailable", "engine busy", "c") == ctx.error
    assert ctx.state is DONE
    assert ctx.receive_request(CancelRequest("c")).ignored == "context 'c' is already done"


def test_server_request_for_other_context_is_refused() -> None:
    with pytest.raises(ProtocolError):
        server_in(OPEN).receive_request(push(cid="x"))


# --- a whole turn, client and server machines in lockstep ---------------------------------------


def test_client_and_server_agree_over_the_wire() -> None:
    client = ContextRegistry("client")
    server = ContextRegistry("server")
    ctx = client.open("turn-1")
    delivered: list[object] = []

    def c2s(req: GenerationRequest | CancelRequest) -> Received:
        return server.receive_request(decode_request(encode(req)))

    def s2c(msg: object) -> None:
        verdict = client.receive_message(decode_response(encode(msg)))  # type: ignore[arg-type]
        assert verdict.action is not Action.VIOLATION, verdict.reason
        if verdict.action is Action.DELIVER:
            delivered.append(msg)

    for i, word in enumerate(["Hello ", "there, ", "friend."]):
        req = push(word, cid="turn-1", flush=i == 1, voice=Voice(id="v"))
        ctx.send_request(req)
        received = c2s(req)
        assert received.opened is (i == 0)
        sctx = received.context
        assert sctx is not None
        s2c(sctx.emit_chunk(bytes([i, 0])))
        if received.flush_id is not None:
            s2c(sctx.emit_flush_done())
    ctx.send_request(close("turn-1"))
    assert c2s(close("turn-1")).closes_input
    s2c(sctx.emit_word_timestamps(["Hello", "there,", "friend."], [0.0, 0.4, 0.8], [0.3, 0.7, 1.2]))
    s2c(sctx.emit_done())
    assert [type(m).__name__ for m in delivered] == ["Chunk", "Chunk", "FlushDone", "Chunk", "WordTimestamps", "Done"]
    assert [getattr(m, "flush_id", None) for m in delivered] == [None, 1, 1, 1, 1, None]
    assert ctx.state is DONE and sctx.state is DONE
    assert len(client) == 0 and len(server) == 0
    assert (client.late, client.unknown, client.violations) == (0, 0, 0)


def test_barge_in_drops_every_late_message() -> None:
    client = ContextRegistry("client")
    server = ContextRegistry("server")
    ctx = client.open("t")
    ctx.send_request(push(cid="t"))
    sctx = server.receive_request(push(cid="t")).context
    assert sctx is not None
    in_flight = [sctx.emit_chunk(b"\x01\x02"), sctx.emit_chunk(b"\x03\x04")]  # already on the wire
    cancel = ctx.send_cancel()
    assert cancel is not None
    assert server.receive_request(cancel).cancelled
    assert sctx.emit_chunk(b"\x05\x06") is None and sctx.emit_done() is None
    verdicts = [client.receive_message(m) for m in in_flight if m is not None]
    assert [v.action for v in verdicts] == [Action.DROP, Action.DROP]
    assert (client.late, client.dropped, len(client)) == (2, 2, 0)
    # A push racing the cancel is ignored by the server, not an error.
    assert server.receive_request(push("late", cid="t")).ignored == "context 't' was cancelled"
    assert server.ignored == 1


# --- registry ---------------------------------------------------------------------------------------


def test_registry_bounds_open_contexts_with_429() -> None:
    for role in ("client", "server"):
        registry = ContextRegistry(role, Limits(max_open_contexts=2))  # type: ignore[arg-type]
        for cid in ("a", "b"):
            if role == "client":
                registry.open(cid)
            else:
                registry.receive_request(push(cid=cid))
        with pytest.raises(ProtocolError) as info:
            registry.open("c") if role == "client" else registry.receive_request(push(cid="c"))
        assert (info.value.status_code, info.value.field) == (429, "context_id")
        assert "limit 2" in str(info.value)
        assert len(registry) == 2 and "c" not in registry
        # Finishing one frees a slot.
        ctx = registry.get("a")
        assert ctx is not None
        if role == "client":
            ctx.send_cancel()
            registry.open("c")
        else:
            registry.receive_request(CancelRequest("a"))
            registry.receive_request(push(cid="c"))
        assert [c.context_id for c in registry] == ["b", "c"]


def test_client_registry_counts_unknown_and_late() -> None:
    registry = ContextRegistry("client")
    assert registry.receive_message(Chunk("ghost", b"")) == Verdict(Action.DROP, "unknown context 'ghost'")
    ctx = registry.open("a")
    ctx.send_request(close("a"))
    assert registry.receive_message(Done("a")).action is Action.DELIVER
    assert "a" not in registry and registry.get("a") is ctx
    assert registry.receive_message(Chunk("a", b"")).action is Action.DROP  # after done
    assert registry.receive_message(Done("a")).action is Action.DROP
    assert (registry.unknown, registry.late, registry.dropped, registry.violations) == (1, 2, 3, 0)
    other = registry.open("b")
    assert registry.receive_message(Done("b")).action is Action.VIOLATION
    assert registry.violations == 1 and other.state is DONE


def test_client_registry_connection_level_error_is_delivered() -> None:
    registry = ContextRegistry("client")
    assert registry.receive_message(ErrorMessage(400, "Bad Request", "not JSON")) == Verdict(Action.DELIVER)


def test_client_registry_refuses_reused_ids() -> None:
    registry = ContextRegistry("client")
    registry.open("a")
    with pytest.raises(ContextStateError, match="in use or was used recently"):
        registry.open("a")
    registry.get("a").send_cancel()  # type: ignore[union-attr]
    with pytest.raises(ContextStateError):
        registry.open("a")


def test_registry_forgets_beyond_remember() -> None:
    registry = ContextRegistry("client", remember=2)
    for cid in "abc":
        registry.open(cid).send_cancel()
    assert registry.get("a") is None and registry.get("c") is not None
    assert registry.receive_message(Chunk("a", b"")).reason == "unknown context 'a'"
    registry.open("a")  # forgotten ids may be reused


def test_server_registry_cancel_unknown_is_harmless() -> None:
    registry = ContextRegistry("server")
    received = registry.receive_request(CancelRequest("nope"))
    assert received == Received(CancelRequest("nope"), None, ignored="unknown context 'nope'")
    assert registry.ignored == 1 and len(registry) == 0


def test_server_registry_rejected_opening_leaves_no_context() -> None:
    registry = ContextRegistry("server")
    with pytest.raises(ProtocolError):
        registry.receive_request(GenerationRequest("a", transcript="x", continue_=True))
    assert registry.get("a") is None and len(registry) == 0


def test_server_registry_finished_context_rules() -> None:
    registry = ContextRegistry("server")
    ctx = registry.receive_request(push(cid="a")).context
    assert ctx is not None
    registry.receive_request(close("a"))
    ctx.emit_done()
    assert len(registry) == 0
    assert registry.receive_request(close("a")).ignored == "context 'a' input is already closed"
    with pytest.raises(ProtocolError) as info:
        registry.receive_request(push(cid="a"))
    assert info.value.status_code == 409


def test_registry_role_methods() -> None:
    with pytest.raises(ContextStateError):
        ContextRegistry("server").open("a")
    with pytest.raises(ContextStateError):
        ContextRegistry("server").receive_message(Done("a"))
    with pytest.raises(ContextStateError):
        ContextRegistry("client").receive_request(push())
    with pytest.raises(ValueError):
        ContextRegistry("both")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ContextRegistry("client", remember=-1)


def test_protocol_package_is_pure() -> None:
    code = (
        "import sys, speakwire.protocol\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'asyncio', 'websockets', 'aiortc', 'pipecat', 'numpy', 'socket'})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


# --- random interleavings: a client and a server that follow their machines never disagree ---------

OPS = ["push", "flush", "close", "cancel", "to_server", "to_client", "chunk", "flush_done", "done"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(OPS), max_size=40))
def test_random_interleavings_agree(ops: list[str]) -> None:
    client, server = ContextRegistry("client"), ContextRegistry("server")
    ctx = client.open("t")
    c2s: list[str] = []
    s2c: list[str] = []
    delivered: list[object] = []
    cancelled_at: int | None = None
    for op in [*ops, *["to_server"] * 20, "done", *["to_client"] * 60]:
        sctx = server.get("t")
        if op in ("push", "flush", "close") and ctx.state is OPEN:
            # Every push carries the output format, as the official clients do.
            text = "word " if op == "push" else ""
            req = GenerationRequest("t", text, continue_=op != "close", output_format=S16, flush=op == "flush")
            ctx.send_request(req)
            c2s.append(encode(req))
        elif op == "cancel":
            cancel = ctx.send_cancel()
            if cancel is not None:
                c2s.append(encode(cancel))
                cancelled_at = len(delivered)
        elif op == "to_server" and c2s:
            server.receive_request(decode_request(c2s.pop(0)))
        elif op == "to_client" and s2c:
            verdict = client.receive_message(decode_response(s2c.pop(0)))
            assert verdict.action is not Action.VIOLATION, verdict.reason
            if verdict.action is Action.DELIVER:
                assert cancelled_at is None, "audio delivered after the cancel"
                delivered.append(verdict)
        elif sctx is not None and sctx.state in (OPEN, CLOSED):
            msg = None
            if op == "chunk":
                msg = sctx.emit_chunk(b"\x00\x01")
            elif op == "flush_done" and sctx.flushes_acked < sctx.flushes:
                msg = sctx.emit_flush_done()
            elif op == "done" and sctx.state is CLOSED:
                while sctx.flushes_acked < sctx.flushes:
                    s2c.append(encode(sctx.emit_flush_done()))  # type: ignore[arg-type]
                msg = sctx.emit_done()
            if msg is not None:
                s2c.append(encode(msg))
    assert not c2s and not s2c
    assert client.violations == 0
    if cancelled_at is None and ctx.state is not OPEN:
        assert ctx.state is DONE and ctx.flushes_acked == ctx.flushes
    assert len(server) == (1 if ctx.state is OPEN and ctx.opening is not None else 0)


def test_server_reject_ends_the_named_live_context() -> None:
    registry = ContextRegistry("server")
    ctx = registry.receive_request(push(cid="a")).context
    assert ctx is not None
    bad = '{"context_id": "a", "transcript": "x", "generation_config": {"speed": NaN}}'
    with pytest.raises(ProtocolError) as info:
        decode_request(bad)
    frame = registry.reject(info.value, context_id_of(bad))
    assert frame.context_id == "a" and frame.status_code == 422 and frame.title == "Unprocessable Entity"
    assert "generation_config.speed" in frame.message
    assert ctx.state is DONE and ctx.error == frame and len(registry) == 0
    with pytest.raises(ContextStateError):
        ctx.emit_chunk(b"\x00\x00")  # the generator must stop: the client saw done:true


def test_server_reject_unknown_or_connection_level() -> None:
    registry = ContextRegistry("server", Limits(max_open_contexts=1))
    registry.receive_request(push(cid="a"))
    with pytest.raises(ProtocolError) as info:
        registry.receive_request(push(cid="b"))
    assert registry.reject(info.value, "b") == ErrorMessage(429, "Too Many Requests", str(info.value), "b")
    assert registry.get("a").live  # type: ignore[union-attr]
    not_json = ProtocolError("message is not valid JSON")
    assert registry.reject(not_json, context_id_of("{oops")) == ErrorMessage(
        400, "Bad Request", "message is not valid JSON"
    )
    with pytest.raises(ContextStateError):
        ContextRegistry("client").reject(not_json, None)
