"""A phone bot on Twilio Media Streams: 8 kHz mu-law straight from the TTS, speed control, barge-in.

The bot is a FastAPI app: Twilio fetches TwiML from ``POST /`` when the number is called, which
tells it to open a Media Stream to ``/ws``; each call then runs its own pipecat pipeline::

    transport.input() -> DTMFAggregator -> LLM -> SpeakwireTTSService (8 kHz mu-law) -> transport.output()

(a scripted, token-streaming stand-in replaces the LLM here). Pressing a key while the bot
speaks interrupts it: pipecat's ``DTMFAggregator`` interrupts on the first digit, the TTS cancels
its context and the transport sends Twilio's ``clear`` at once, so the caller hears nothing more
of the old reply. With a speech-to-text service and a VAD, the caller's voice does the same.

Run with no arguments for a simulated call on 127.0.0.1: a caller that speaks the Media Streams
protocol (``connected``, ``start``, 20 ms ``media`` frames, ``dtmf``, ``stop``) and plays what it
receives in real time, as Twilio does, hears the greeting, presses 1 and hears the answer. It
writes the bot's audio as the caller heard it (pauses left out) to ``telephony_twilio.wav``
(8 kHz) and the events it received to ``telephony_twilio.events.json``::

    python examples/telephony_twilio.py

For a real phone number::

    python examples/telephony_twilio.py --serve --port 8765
    # expose port 8765 over HTTPS (any tunnel), then set the number's "A call comes in" webhook
    # to POST https://<public host>/

With no ``CARTESIA_API_KEY`` the bot speaks through speakwire's embedded local server (espeak-ng,
on 127.0.0.1); with it set, through Cartesia's hosted API. Needs ``fastapi`` and ``uvicorn``.
Twilio auto hang-up stays off unless ``TWILIO_ACCOUNT_SID`` and ``TWILIO_AUTH_TOKEN`` are set.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from loguru import logger
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.dtmf_aggregator import DTMFAggregator
from pipecat.workers.runner import WorkerRunner
from websockets.asyncio.client import connect

from speakwire.dsp import pcm
from speakwire.errors import ProtocolError
from speakwire.plugin.telephony import (
    PHONE_SAMPLE_RATE,
    TwilioCredentials,
    accept_twilio_call,
    phone_pipeline_params,
    phone_tts,
    twilio_transport,
)
from speakwire.wavfile import write_wav

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scripted_llm import ScriptedLLM

GREETING = (
    "Thank you for calling speakwire. For opening hours, press one. "
    "For anything else, please stay on the line and an agent will be with you shortly."
)
ANSWERS = {"1": "We are open from nine to five, Monday to Friday."}
BOT_SPEED = 1.1
FRAME_SECONDS = 0.02
FRAME_BYTES = round(PHONE_SAMPLE_RATE * FRAME_SECONDS)  # 160 bytes of mu-law


def answer(text: str) -> str | None:
    """The bot's reply to the caller's turn (``DTMF: 1`` for a key press)."""
    digits = text.removeprefix("DTMF: ")
    return ANSWERS.get(digits, "Sorry, I did not get that.")


def create_app() -> FastAPI:
    """The phone bot: TwiML at ``/``, one pipecat pipeline per Media Stream at ``/ws``."""
    app = FastAPI()
    sid, token = os.environ.get("TWILIO_ACCOUNT_SID"), os.environ.get("TWILIO_AUTH_TOKEN")
    credentials = TwilioCredentials(sid, token) if sid and token else None

    @app.post("/")
    async def twiml(request: Request) -> Response:
        stream = f"wss://{request.headers.get('host', request.url.netloc)}/ws"
        xml = f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="{stream}"/></Connect></Response>'
        return Response(content=xml, media_type="application/xml")

    @app.websocket("/ws")
    async def media_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            call = await accept_twilio_call(websocket)
        except ProtocolError as exc:
            # Not a Twilio Media Stream: 1008 (policy violation) tells the peer why.
            await websocket.close(code=1008, reason=str(exc))
            return
        transport = twilio_transport(websocket, call, credentials=credentials)
        pipeline = Pipeline([
            transport.input(),
            DTMFAggregator(timeout=0.8),
            ScriptedLLM(greeting=GREETING, reply=answer),
            phone_tts(speed=BOT_SPEED),
            transport.output(),
        ])
        worker = PipelineWorker(pipeline, params=phone_pipeline_params(), idle_timeout_secs=None)

        @transport.event_handler("on_client_disconnected")
        async def hung_up(_transport: Any, _websocket: Any) -> None:
            await worker.cancel()

        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()

    return app


class SimulatedCaller:
    """Twilio's end of a Media Stream: sends the caller's audio and keys, plays the bot in real time.

    Like Twilio, it queues the media it receives and plays 20 ms of it every 20 ms; ``clear``
    drops whatever is still queued.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.stream_sid = "MZ" + "0" * 31 + "1"
        self.call_sid = "CA" + "0" * 31 + "1"
        self.heard = bytearray()
        self.events: list[dict[str, Any]] = []
        self._queue: deque[int] = deque()
        self._began = 0.0
        self._sequence = 0

    @property
    def heard_seconds(self) -> float:
        return len(self.heard) / PHONE_SAMPLE_RATE

    async def run(self, press_after: float, digit: str, listen_for: float) -> None:
        """Call, press ``digit`` once ``press_after`` seconds are heard, listen, hang up."""
        async with connect(self.url, compression=None) as ws:
            self._began = time.monotonic()
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await self._send(ws, "start", start={
                "streamSid": self.stream_sid, "callSid": self.call_sid, "accountSid": "AC" + "0" * 32,
                "tracks": ["inbound"], "customParameters": {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": PHONE_SAMPLE_RATE, "channels": 1},
            })
            tasks = [asyncio.create_task(self._receive(ws)), asyncio.create_task(self._phone(ws))]
            try:
                while self.heard_seconds < press_after:
                    await asyncio.sleep(FRAME_SECONDS)
                await self._send(ws, "dtmf", dtmf={"track": "inbound_track", "digit": digit})
                self._log("dtmf sent", digit=digit)
                await asyncio.sleep(listen_for)
                await self._send(ws, "stop", stop={"accountSid": "AC" + "0" * 32, "callSid": self.call_sid})
            finally:
                for task in tasks:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*tasks)

    def _log(self, event: str, **details: Any) -> None:
        entry = {"t": round(time.monotonic() - self._began, 3), "event": event, **details}
        self.events.append(entry)

    async def _send(self, ws: Any, event: str, **body: Any) -> None:
        self._sequence += 1
        await ws.send(json.dumps({"event": event, "sequenceNumber": str(self._sequence),
                                  "streamSid": self.stream_sid, **body}))

    async def _receive(self, ws: Any) -> None:
        async for message in ws:
            event = json.loads(message)
            if event["event"] == "media":
                payload = base64.b64decode(event["media"]["payload"])
                self._queue.extend(payload)
                self._log("media", bytes=len(payload))
            elif event["event"] == "clear":
                self._log("clear", heard_seconds=round(self.heard_seconds, 3),
                          dropped_seconds=round(len(self._queue) / PHONE_SAMPLE_RATE, 3))
                self._queue.clear()
            else:
                self._log(event["event"])

    async def _phone(self, ws: Any) -> None:
        """Every 20 ms: play 20 ms of the bot, send 20 ms of the caller's (silent) microphone."""
        silence = base64.b64encode(b"\xff" * FRAME_BYTES).decode()
        began, frame = time.monotonic(), 0
        while True:
            frame += 1
            played = [self._queue.popleft() for _ in range(min(FRAME_BYTES, len(self._queue)))]
            self.heard.extend(played)
            await self._send(ws, "media", media={"track": "inbound", "chunk": str(frame),
                                                 "timestamp": str(frame * 20), "payload": silence})
            await asyncio.sleep(max(0.0, began + frame * FRAME_SECONDS - time.monotonic()))


async def simulated_call(out_dir: Path) -> None:
    """Serve the bot on 127.0.0.1, call it, press 1 during the greeting, write what was heard."""
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=0, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        caller = SimulatedCaller(f"ws://127.0.0.1:{port}/ws")
        print(f"Calling the bot at ws://127.0.0.1:{port}/ws ...")
        await caller.run(press_after=1.5, digit="1", listen_for=4.0)
    finally:
        server.should_exit = True
        await serving

    samples = pcm.decode(bytes(caller.heard), "pcm_mulaw")
    write_wav(out_dir / "telephony_twilio.wav", samples, PHONE_SAMPLE_RATE)
    (out_dir / "telephony_twilio.events.json").write_text(json.dumps(caller.events, indent=1) + "\n")
    media = [e for e in caller.events if e["event"] == "media"]
    pressed = next(e["t"] for e in caller.events if e["event"] == "dtmf sent")
    clears = [e for e in caller.events if e["event"] == "clear"]
    print(f"Received {len(media)} media frames ({sum(e['bytes'] for e in media) / PHONE_SAMPLE_RATE:.2f} s "
          f"of 8 kHz mu-law); pressed 1 at {pressed:.2f} s")
    for clear in clears:
        print(f"  clear at {clear['t']:.3f} s ({(clear['t'] - pressed) * 1000:.0f} ms after the key press), "
              f"{clear['dropped_seconds']:.2f} s of queued greeting dropped")
    print(f"Heard {caller.heard_seconds:.2f} s in all -> telephony_twilio.wav, events -> telephony_twilio.events.json")


def main(argv: list[str] | None = None) -> int:
    """Run a simulated call (default) or serve the bot for Twilio (``--serve``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="serve the bot for real Twilio calls")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind with --serve (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port with --serve (default 8765)")
    args = parser.parse_args(argv)
    # pipecat logs every frame at DEBUG; the simulated call prints its own summary.
    logger.remove()
    logger.add(sys.stderr, level="INFO" if args.serve else "WARNING")
    if args.serve:
        print(f"Phone bot on http://{args.host}:{args.port}/ (TwiML) and ws://{args.host}:{args.port}/ws")
        uvicorn.run(create_app(), host=args.host, port=args.port)
        return 0
    asyncio.run(simulated_call(Path.cwd()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
