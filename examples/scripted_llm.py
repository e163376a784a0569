"""A stand-in for an LLM in the pipecat examples: scripted replies, streamed token by token.

It emits what a pipecat LLM service emits for each reply (``LLMFullResponseStartFrame``, one
``LLMTextFrame`` per token, ``LLMFullResponseEndFrame``), with a short delay between tokens, so
the TTS sees the same token stream as from a real model. A greeting starts when the caller
connects; each ``TranscriptionFrame`` (the user's words, or ``DTMF: 1`` from pipecat's
``DTMFAggregator``) gets the next reply. An interruption stops the reply being streamed; an
``EndFrame`` waits for it to finish.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from pipecat.frames.frames import (
    ClientConnectedFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

# Words with their leading space, punctuation on its own: roughly how LLM tokenizers split English.
_TOKEN = re.compile(r"\s*[\w'-]+|\s*[^\w\s]+")


def tokens(text: str) -> list[str]:
    """``text`` split as an LLM would stream it: ``["Hello", ",", " my", " friend", "."]``."""
    return _TOKEN.findall(text)


class ScriptedLLM(FrameProcessor):
    """Streams ``greeting`` when a client connects and ``reply(user_text)`` for each transcription."""

    def __init__(
        self,
        *,
        greeting: str | None = None,
        reply: Callable[[str], str | None] | None = None,
        token_delay: float = 0.02,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._greeting = greeting
        self._reply = reply
        self._token_delay = token_delay
        self._streaming: asyncio.Task[None] | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Start a reply on connect and on each transcription; stop streaming on an interruption."""
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            await self._stop()
            await self.push_frame(frame, direction)
        elif isinstance(frame, ClientConnectedFrame):
            await self.push_frame(frame, direction)
            if self._greeting:
                await self.say(self._greeting)
        elif isinstance(frame, EndFrame):
            # Like a real LLM service, finish the reply being streamed before the pipeline ends.
            if self._streaming is not None:
                await self._streaming
            await self.push_frame(frame, direction)
        elif isinstance(frame, TranscriptionFrame) and self._reply is not None:
            # The user's turn ends here: like a context aggregator, it is not passed to the TTS.
            answer = self._reply(frame.text)
            if answer:
                await self.say(answer)
        else:
            await self.push_frame(frame, direction)

    async def say(self, text: str) -> None:
        """Stream ``text`` as the next LLM reply (replacing one still streaming)."""
        await self._stop()
        self._streaming = self.create_task(self._stream(text), name="scripted-llm-reply")

    async def _stream(self, text: str) -> None:
        await self.push_frame(LLMFullResponseStartFrame())
        for token in tokens(text):
            await self.push_frame(LLMTextFrame(token))
            await asyncio.sleep(self._token_delay)
        await self.push_frame(LLMFullResponseEndFrame())

    async def _stop(self) -> None:
        if self._streaming is not None:
            await self.cancel_task(self._streaming)
            self._streaming = None

    async def cleanup(self) -> None:
        """Stop a reply still streaming when the pipeline ends."""
        await super().cleanup()
        await self._stop()
