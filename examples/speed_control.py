"""Change the speaking speed mid-stream with ``generation_config`` (Cartesia's speed example, seed 000).

One context, two pushes: the first at the normal pace, the second with ``speed`` 1.5, then
``no_more_inputs()``. The audio (raw ``pcm_f32le`` at 44.1 kHz, as in Cartesia's example) is
written to ``speed_control.pcm`` and, for any player, ``speed_control.wav``; the word timestamps to
``speed_control.words.json``. Run from any directory::

    python examples/speed_control.py
    ffplay -f f32le -ar 44100 speed_control.pcm

With no ``CARTESIA_API_KEY`` it speaks through speakwire's embedded local server (espeak-ng, on
127.0.0.1, no network). With ``CARTESIA_API_KEY`` set, the same code talks to Cartesia's hosted API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

from speakwire.dsp import pcm
from speakwire.protocol.messages import Chunk, GenerationConfig, OutputFormat, WordTimestamps
from speakwire.server import TTSServer
from speakwire.transport.websocket import TTSConnection
from speakwire.wavfile import write_wav

CARTESIA_URL = "wss://api.cartesia.ai/tts/websocket"
VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
SAMPLE_RATE = 44100
NORMAL_TEXT = "I am speaking at a normal pace. "
FAST_TEXT = "But now I am speaking much faster!"
FAST_SPEED = 1.5


@contextlib.asynccontextmanager
async def tts_endpoint() -> AsyncIterator[tuple[str, str | None]]:
    """``(url, api_key)``: Cartesia's hosted API if ``CARTESIA_API_KEY`` is set, else an embedded local server."""
    api_key = os.environ.get("CARTESIA_API_KEY")
    if api_key:
        yield CARTESIA_URL, api_key
        return
    async with TTSServer("127.0.0.1", 0) as server:
        yield server.url, None


async def speak(out_dir: Path) -> None:
    """Speak both pushes on one context and write the ``.pcm``, ``.wav`` and ``.words.json`` files."""
    audio = bytearray()
    words: list[tuple[str, float, float]] = []
    async with tts_endpoint() as (url, api_key), TTSConnection(url, api_key=api_key) as connection:
        ctx = connection.context(
            voice=VOICE,
            model_id="sonic-3.5",
            output_format=OutputFormat("pcm_f32le", SAMPLE_RATE),
            add_timestamps=True,
        )
        print("Sending normal speed text...")
        await ctx.push(NORMAL_TEXT)
        print("Sending fast speed text...")
        # A per-push generation_config replaces the context's from this push on.
        await ctx.push(FAST_TEXT, generation_config=GenerationConfig(speed=FAST_SPEED))
        await ctx.no_more_inputs()
        async for event in ctx:
            if isinstance(event, Chunk):
                audio += event.audio
            elif isinstance(event, WordTimestamps):
                words.extend(zip(event.words, event.start, event.end, strict=True))

    pcm_path = out_dir / "speed_control.pcm"
    pcm_path.write_bytes(audio)
    samples = pcm.decode(bytes(audio), "pcm_f32le")
    write_wav(out_dir / "speed_control.wav", samples, SAMPLE_RATE)
    (out_dir / "speed_control.words.json").write_text(
        json.dumps([{"word": w, "start": s, "end": e} for w, s, e in words], indent=1) + "\n"
    )

    normal_words = len(NORMAL_TEXT.split())
    normal, fast = words[:normal_words], words[normal_words:]
    print(f"Saved audio to {pcm_path.name} ({len(samples) / SAMPLE_RATE:.2f} s) and speed_control.wav")
    for label, part in (("normal", normal), (f"speed {FAST_SPEED}", fast)):
        if part:
            span = part[-1][2] - part[0][1]
            print(f"  {label:>9}: {len(part)} words in {span:.2f} s ({len(part) / span:.2f} words/s)")
    print(f"Play with: ffplay -f f32le -ar {SAMPLE_RATE} {pcm_path.name}")


def main() -> int:
    """Run the example in the current directory."""
    asyncio.run(speak(Path.cwd()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
