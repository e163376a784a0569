"""A three-turn conversation with a default speed and one turn overriding it (speech-sdk's example, seed 002).

The conversation speed (1.1) applies to every turn that does not set its own; the second turn
sets 0.9. Speed is applied here, locally, with speakwire's pitch-preserving WSOLA
:class:`~speakwire.dsp.wsola.Stretcher` on the audio as it streams in, so it works with any
voice and model. The turns are stitched with a short silence into ``conversation_speeds.wav``
(16-bit, 24 kHz); ``conversation_speeds.turns.json`` lists where each turn starts and how long it lasts,
before and after stretching::

    python examples/conversation_speeds.py

With no ``CARTESIA_API_KEY`` it speaks through speakwire's embedded local server (espeak-ng, on
127.0.0.1, no network; it has one voice). With ``CARTESIA_API_KEY`` set, the same code talks to
Cartesia's hosted API and the two voices differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speakwire.dsp import pcm
from speakwire.dsp.speed import SPEECH_SDK_POLICY
from speakwire.dsp.wsola import Stretcher
from speakwire.protocol.messages import Chunk, OutputFormat
from speakwire.server import TTSServer
from speakwire.transport.websocket import TTSConnection
from speakwire.wavfile import write_wav

CARTESIA_URL = "wss://api.cartesia.ai/tts/websocket"
SAMPLE_RATE = 24000
#: Silence between turns; not stretched, so pauses stay the same whatever the speed.
GAP_SECONDS = 0.3
VOICE_A = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
VOICE_B = "a0e99841-438c-4a64-b679-ae501e7d6091"
CONVERSATION_SPEED = 1.1


@dataclass(frozen=True)
class Turn:
    """One line of the conversation; ``speed`` None means the conversation's speed."""

    voice: str
    text: str
    speed: float | None = None


TURNS = (
    Turn(VOICE_A, "Welcome to the show."),
    Turn(VOICE_B, "Glad to be here.", speed=0.9),
    Turn(VOICE_A, "Let's get started."),
)


@contextlib.asynccontextmanager
async def tts_endpoint() -> AsyncIterator[tuple[str, str | None]]:
    """``(url, api_key)``: Cartesia's hosted API if ``CARTESIA_API_KEY`` is set, else an embedded local server."""
    api_key = os.environ.get("CARTESIA_API_KEY")
    if api_key:
        yield CARTESIA_URL, api_key
        return
    async with TTSServer("127.0.0.1", 0) as server:
        yield server.url, None


async def speak_turn(connection: TTSConnection, turn: Turn, speed: float) -> tuple[np.ndarray, int]:
    """One turn's audio at ``speed``, stretched while it streams in, and its length as received."""
    # Validated like speech-sdk does: a finite number in [0.75, 1.5], InvalidSpeedError otherwise.
    stretcher = Stretcher(SAMPLE_RATE, speed, policy=SPEECH_SDK_POLICY)
    # f32 from the server: stretch before quantising to 16 bits.
    ctx = connection.context(voice=turn.voice, output_format=OutputFormat("pcm_f32le", SAMPLE_RATE))
    await ctx.push(turn.text)
    await ctx.no_more_inputs()
    pieces: list[np.ndarray] = []
    async for event in ctx:
        if isinstance(event, Chunk):
            pieces.append(stretcher.process(pcm.decode(event.audio, "pcm_f32le")))
    pieces.append(stretcher.flush())
    return np.concatenate(pieces), stretcher.input_samples


async def speak(out_dir: Path) -> None:
    """Speak every turn, stitch them into one WAV and write the turn list."""
    gap = np.zeros(round(GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
    pieces: list[np.ndarray] = []
    cues: list[dict[str, object]] = []
    position = 0
    async with tts_endpoint() as (url, api_key), TTSConnection(url, api_key=api_key) as connection:
        for index, turn in enumerate(TURNS):
            speed = CONVERSATION_SPEED if turn.speed is None else turn.speed
            audio, received = await speak_turn(connection, turn, speed)
            if index:
                pieces.append(gap)
                position += len(gap)
            cues.append({"text": turn.text, "speed": speed, "start": position / SAMPLE_RATE,
                         "duration": len(audio) / SAMPLE_RATE, "unstretched": received / SAMPLE_RATE})
            pieces.append(audio)
            position += len(audio)
            print(f"turn {index + 1}: speed {speed:<4} {received / SAMPLE_RATE:.3f} s -> "
                  f"{len(audio) / SAMPLE_RATE:.3f} s  {turn.text!r}")

    samples = np.concatenate(pieces)
    write_wav(out_dir / "conversation_speeds.wav", samples, SAMPLE_RATE)
    (out_dir / "conversation_speeds.turns.json").write_text(json.dumps(cues, indent=1) + "\n")
    print(f"Saved conversation_speeds.wav ({len(samples) / SAMPLE_RATE:.2f} s at {SAMPLE_RATE} Hz, "
          f"{GAP_SECONDS} s between turns) and conversation_speeds.turns.json")


def main() -> int:
    """Run the example in the current directory."""
    asyncio.run(speak(Path.cwd()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
