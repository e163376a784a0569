"""A phone call end to end: a Twilio Media Streams client, over a real WebSocket on 127.0.0.1, calls
a pipecat bot (FastAPI + uvicorn, pipecat's Twilio serializer, SpeakwireTTSService at 8 kHz mu-law).

The barge-in is triggered the way a caller on a phone line can without speech recognition: a key
press. Twilio sends a ``dtmf`` event, pipecat's serializer makes it an ``InputDTMFFrame`` and
pipecat's ``DTMFAggregator`` interrupts the bot on the first digit (then, after its idle timeout,
hands ``DTMF: 1`` on as the user's turn, which the scripted bot answers).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.needs import module

fastapi = module("fastapi", "pip install 'speakwire[telephony]'")
uvicorn = module("uvicorn", "pip install 'speakwire[telephony]'")

from pipecat.frames.frames import EndFrame, InterruptionFrame  # noqa: E402
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineWorker  # noqa: E402
from pipecat.processors.aggregators.dtmf_aggregator import DTMFAggregator  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.exceptions import ConnectionClosedError  # noqa: E402

from speakwire.dsp import pcm  # noqa: E402
from speakwire.errors import ProtocolError  # noqa: E402
from speakwire.plugin.telephony import (  # noqa: E402
    PHONE_ENCODING,
    PHONE_SAMPLE_RATE,
    TwilioCall,
    TwilioCredentials,
    accept_twilio_call,
    phone_pipeline_params,
    phone_tts,
    twilio_serializer,
    twilio_transport,
)
from speakwire.protocol.messages import Chunk, OutputFormat  # noqa: E402
from speakwire.server import TTSServer  # noqa: E402
from speakwire.server.espeak import EspeakEngine  # noqa: E402
from speakwire.transport.websocket import TTSConnection  # noqa: E402
from tests.plugin.conftest import RecordingProxy  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from scripted_llm import ScriptedLLM  # noqa: E402

GREETING = "Hello, thanks for calling. How can I help you today?"
LONG_GREETING = (
    "Hello, and thank you for calling the speakwire help line. Your call is important to us. "
    "Please listen carefully, as our menu options have changed. For billing, press one. "
    "For technical support, press two. For everything else, stay on the line."
)
REPLY = "You pressed one. Connecting you to billing."
STREAM_SID = "MZ00000000000000000000000000000001"
CALL_SID = "CA00000000000000000000000000000001"
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law


def reply_to(text: str) -> str | None:
    return REPLY if text.startswith("DTMF: 1") else None


@contextlib.asynccontextmanager
async def phone_bot(tts_url: str, greeting: str, **tts_options: Any) -> AsyncIterator[str]:
    """A FastAPI phone bot on 127.0.0.1 (uvicorn, port 0); yields its Media Streams URL."""
    app = fastapi.FastAPI()

    @app.websocket("/ws")
    async def call(websocket: fastapi.WebSocket) -> None:
        await websocket.accept()
        try:
            twilio = await accept_twilio_call(websocket)
        except ProtocolError as exc:
            await websocket.close(code=1008, reason=str(exc))
            return
        transport = twilio_transport(websocket, twilio)
        pipeline = Pipeline([
            transport.input(),
            DTMFAggregator(timeout=0.6),
            ScriptedLLM(greeting=greeting, reply=reply_to, token_delay=0.005),
            phone_tts(url=tts_url, **tts_options),
            transport.output(),
        ])
        worker = PipelineWorker(pipeline, params=phone_pipeline_params(), idle_timeout_secs=None)

        @transport.event_handler("on_client_disconnected")
        async def hang_up(_transport: Any, _websocket: Any) -> None:
            await worker.cancel()

        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


@dataclass
class Caller:
    """Twilio's side of a Media Stream: inbound silence every 20 ms, outbound events recorded."""

    ws: ClientConnection
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    sequence: int = 0

    async def send(self, event: str, **body: Any) -> None:
        self.sequence += 1
        await self.ws.send(json.dumps({"event": event, "sequenceNumber": str(self.sequence),
                                       "streamSid": STREAM_SID, **body}))

    async def start(self) -> None:
        await self.ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await self.send("start", start={
            "accountSid": "AC00000000000000000000000000000001", "streamSid": STREAM_SID, "callSid": CALL_SID,
            "tracks": ["inbound"], "customParameters": {},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        })

    async def talk(self) -> None:
        """The caller's microphone: 20 ms frames of mu-law silence in real time."""
        chunk, began = 0, time.monotonic()
        silence = base64.b64encode(b"\xff" * FRAME_BYTES).decode()
        while True:
            chunk += 1
            await self.send("media", media={"track": "inbound", "chunk": str(chunk),
                                            "timestamp": str(chunk * 20), "payload": silence})
            await asyncio.sleep(max(0.0, began + chunk * 0.02 - time.monotonic()))

    async def listen(self) -> None:
        async for message in self.ws:
            self.events.append((time.monotonic(), json.loads(message)))

    async def wait_for(self, predicate: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; events: {[e['event'] for _, e in self.events]}"
            await asyncio.sleep(0.01)

    async def wait_quiet(self, seconds: float, timeout: float) -> None:
        """Wait until no event has arrived for ``seconds`` (after at least one)."""
        await self.wait_for(lambda: self.events and time.monotonic() - self.events[-1][0] > seconds, timeout)

    def media(self, after: float = 0.0, before: float = float("inf")) -> list[bytes]:
        return [base64.b64decode(e["media"]["payload"]) for t, e in self.events
                if e["event"] == "media" and after <= t < before]

    def first(self, event: str) -> float:
        return next(t for t, e in self.events if e["event"] == event)


@contextlib.asynccontextmanager
async def call(url: str) -> AsyncIterator[Caller]:
    async with connect(url, compression=None) as ws:
        caller = Caller(ws)
        await caller.start()
        tasks = [asyncio.create_task(caller.talk()), asyncio.create_task(caller.listen())]
        try:
            yield caller
            await caller.send("stop", stop={"accountSid": "AC00000000000000000000000000000001", "callSid": CALL_SID})
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks)


def decode(payloads: list[bytes]) -> np.ndarray:
    return pcm.decode(b"".join(payloads), "pcm_mulaw").astype(np.float64)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples)))) if len(samples) else 0.0


async def spoken_seconds(url: str, text: str) -> float:
    """How long the server speaks ``text`` at 8 kHz mu-law: what a whole turn must last on the phone."""
    async with TTSConnection(url) as connection:
        ctx = connection.context(voice="any", output_format=OutputFormat(PHONE_ENCODING, PHONE_SAMPLE_RATE))
        await ctx.push(text)
        await ctx.no_more_inputs()
        total = sum([len(event.audio) async for event in ctx if isinstance(event, Chunk)])
    return total / PHONE_SAMPLE_RATE


@pytest.fixture
async def tts_url(tts_engine: EspeakEngine) -> AsyncIterator[str]:
    async with TTSServer("127.0.0.1", 0, engine=tts_engine) as server:
        yield server.url


async def test_a_call_hears_the_whole_greeting_as_8khz_mulaw_in_20ms_frames(tts_url: str) -> None:
    expected = await spoken_seconds(tts_url, GREETING)
    async with (
        RecordingProxy(tts_url) as proxy,
        phone_bot(proxy.url, GREETING, speed=1.25) as url,
        call(url) as caller,
    ):
        await caller.wait_for(lambda: caller.media(), timeout=10)
        await caller.wait_quiet(1.0, timeout=30)

    # the server was asked for the phone's own format, and for the speed
    pushes = [m for m in proxy.sent if "transcript" in m]
    assert pushes and all(
        m["output_format"] == {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000} for m in pushes
    )
    assert {m["generation_config"]["speed"] for m in pushes if m["transcript"]} == {1.25}

    assert {e["streamSid"] for _, e in caller.events} == {STREAM_SID}
    assert [e["event"] for _, e in caller.events if e["event"] != "media"] == []
    payloads = caller.media()
    # pipecat's 20 ms output chunks: 160 mu-law bytes each (the last may be shorter)
    assert all(len(p) == FRAME_BYTES for p in payloads[:-1]) and 0 < len(payloads[-1]) <= FRAME_BYTES
    audio = decode(payloads)
    heard = len(audio) / PHONE_SAMPLE_RATE
    assert 2.0 < heard < 6.0  # eleven words of espeak-ng
    assert heard == pytest.approx(expected / 1.25, abs=0.06)
    assert 0.03 < rms(audio) < 0.5


async def test_a_key_press_clears_twilio_at_once_and_no_old_audio_follows(tts_url: str) -> None:
    whole = await spoken_seconds(tts_url, LONG_GREETING)
    reply = await spoken_seconds(tts_url, REPLY)
    async with phone_bot(tts_url, LONG_GREETING) as url, call(url) as caller:
        # about a second into the greeting, the caller presses 1
        await caller.wait_for(lambda: len(caller.media()) * 0.02 >= 1.0, timeout=10)
        await caller.send("dtmf", dtmf={"track": "inbound_track", "digit": "1"})
        pressed = time.monotonic()
        await caller.wait_for(lambda: any(e["event"] == "clear" for _, e in caller.events), timeout=2)
        cleared = caller.first("clear")
        # then the bot answers the key press (after the DTMF aggregator's 0.6 s idle timeout)
        await caller.wait_for(lambda: caller.media(after=cleared), timeout=10)
        await caller.wait_quiet(1.0, timeout=30)

    assert cleared - pressed < 0.25
    assert [e["event"] for _, e in caller.events if e["event"] != "media"] == ["clear"]
    assert {e["streamSid"] for _, e in caller.events} == {STREAM_SID}
    before = decode(caller.media(before=cleared))
    after_payloads = caller.media(after=cleared)
    # nothing of the greeting after the clear: the next media is the reply, after the aggregator's pause
    first_after = next(t for t, e in caller.events if e["event"] == "media" and t >= cleared)
    assert first_after - pressed > 0.5
    assert 1.0 <= len(before) / PHONE_SAMPLE_RATE < whole / 2
    after = decode(after_payloads)
    assert len(after) / PHONE_SAMPLE_RATE == pytest.approx(reply, abs=0.06)
    assert 0.03 < rms(after) < 0.5


async def test_the_serializer_needs_no_twilio_credentials_and_clears_with_the_stream_sid() -> None:
    serializer = twilio_serializer(TwilioCall(STREAM_SID, CALL_SID))
    # pipecat's default auto hang-up would refuse to start without credentials, and call Twilio's REST API
    assert await serializer.serialize(EndFrame()) is None
    assert await serializer.serialize(InterruptionFrame()) == json.dumps({"event": "clear", "streamSid": STREAM_SID})
    credentials = TwilioCredentials("AC00000000000000000000000000000001", "secret-token")
    assert "secret-token" not in repr(credentials)
    twilio_serializer(TwilioCall(STREAM_SID, CALL_SID), credentials)  # accepted: hang-up configured


def test_phone_tts_leaves_speed_to_the_server_unless_told_local() -> None:
    native = phone_tts(url="ws://127.0.0.1:9/tts/websocket", speed=1.1)
    local = phone_tts(url="ws://127.0.0.1:9/tts/websocket", speed_mode="local")
    assert (native.speed_mode, native.speed) == ("native", 1.1)
    assert (local.speed_mode, local.speed) == ("local", 1.0)


@pytest.mark.parametrize(("start", "reason"), [
    ({"callSid": CALL_SID}, "expected a Twilio Media Stream, the peer speaks 'unknown'"),
    ({"callSid": CALL_SID, "streamSid": ""}, "Twilio's start event has no streamSid"),
])
async def test_a_peer_that_is_not_a_twilio_stream_is_refused_with_the_reason(
    tts_url: str, start: dict[str, str], reason: str
) -> None:
    async with phone_bot(tts_url, GREETING) as url, connect(url) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(json.dumps({"event": "start", "start": start}))
        with pytest.raises(ConnectionClosedError) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, reason)
