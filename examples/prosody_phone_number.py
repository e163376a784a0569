"""Read a phone number slowly with a ``<prosody rate="slow">`` span (KugelAudio's callback number, seed 003).

Only the text inside the span is slowed (``slow`` is 0.8x, 20 % slower); the rest of the sentence
keeps the normal speed. Digits are spaced and grouped, which the seed recommends for numbers:
``0800 5834552`` written as one token would be read as "five million eight hundred ...".
Writes ``prosody_phone_number.wav`` (16-bit, 24 kHz) and ``prosody_phone_number.words.json``::

    python examples/prosody_phone_number.py

With no ``CARTESIA_API_KEY`` it speaks through speakwire's embedded local server (espeak-ng, on
127.0.0.1, no network), which implements ``<prosody rate>``. With ``CARTESIA_API_KEY`` set it
talks to Cartesia's hosted API, which documents inline ``<speed ratio/>`` tags rather than
``<prosody>`` spans, so the same slowing is sent as a pair of those.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

from speakwire.dsp import pcm
from speakwire.protocol.messages import Chunk, OutputFormat, WordTimestamps
from speakwire.server import TTSServer
from speakwire.transport.websocket import TTSConnection
from speakwire.wavfile import write_wav

CARTESIA_URL = "wss://api.cartesia.ai/tts/websocket"
VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
SAMPLE_RATE = 24000
BEFORE = "Our callback number is "
NUMBER = "0 8 0 0, 5 8 3, 4 5 5 2."
AFTER = " We look forward to your call."
TEXT = f'{BEFORE}<prosody rate="slow">{NUMBER}</prosody>{AFTER}'
HOSTED_TEXT = f'{BEFORE}<speed ratio="0.8"/>{NUMBER}<speed ratio="1.0"/>{AFTER}'


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
    """Speak :data:`TEXT` and write the WAV and the word timestamps."""
    audio = bytearray()
    words: list[tuple[str, float, float]] = []
    async with tts_endpoint() as (url, api_key), TTSConnection(url, api_key=api_key) as connection:
        ctx = connection.context(
            voice=VOICE, output_format=OutputFormat("pcm_s16le", SAMPLE_RATE), add_timestamps=True
        )
        # A span must open and close within one pushed message.
        await ctx.push(TEXT if api_key is None else HOSTED_TEXT)
        await ctx.no_more_inputs()
        async for event in ctx:
            if isinstance(event, Chunk):
                audio += event.audio
            elif isinstance(event, WordTimestamps):
                words.extend(zip(event.words, event.start, event.end, strict=True))

    samples = pcm.decode(bytes(audio), "pcm_s16le")
    write_wav(out_dir / "prosody_phone_number.wav", samples, SAMPLE_RATE)
    (out_dir / "prosody_phone_number.words.json").write_text(
        json.dumps([{"word": w, "start": s, "end": e} for w, s, e in words], indent=1) + "\n"
    )

    print(f"Said: {TEXT}")
    print(f"Saved prosody_phone_number.wav ({len(samples) / SAMPLE_RATE:.2f} s at {SAMPLE_RATE} Hz)")
    first, count = len(BEFORE.split()), len(NUMBER.split())
    parts = {"before": words[:first], "number (slow)": words[first:first + count], "after": words[first + count:]}
    for label, part in parts.items():
        if part:
            span = part[-1][2] - part[0][1]
            print(f"  {label:>13}: {' '.join(w for w, _, _ in part)!r} in {span:.2f} s")


def main() -> int:
    """Run the example in the current directory."""
    asyncio.run(speak(Path.cwd()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
