"""A pipecat voice agent: a token-streaming LLM, SpeakwireTTSService, and the user barging in.

    ScriptedLLM -> SpeakwireTTSService(speed=1.2) -> Speaker

The LLM (a scripted stand-in, so this runs offline) streams its answer token by token, and the
TTS pushes each token to the server at once on the turn's one context. The ``Speaker`` stands
in for an output transport: it plays the audio in real time and records what was heard. After
1.5 s of the first answer the user interrupts (an ``InterruptionFrame``, as pipecat's turn
taking sends when the user starts speaking) and asks something else: the TTS cancels the
context, no late audio is played, and only the words whose audio was played are reported
(``TTSTextFrame``), so the LLM's context would hold what the user actually heard. The speed
(1.2) is applied locally with WSOLA, pitch preserved, whatever the voice or model.

Writes ``pipecat_agent.wav`` (24 kHz: both answers as heard) and ``pipecat_agent.turns.json``::

    python examples/pipecat_agent.py

With no ``CARTESIA_API_KEY`` the TTS runs against speakwire's embedded local server (espeak-ng,
on 127.0.0.1, no network); with it set, against Cartesia's hosted API.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InterruptionFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.time import time_now_iso8601
from pipecat.workers.runner import WorkerRunner

from speakwire.plugin import SpeakwireTTSService
from speakwire.wavfile import write_wav

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scripted_llm import ScriptedLLM

SAMPLE_RATE = 24000
SPEED = 1.2
INTERRUPT_AFTER = 1.5
QUESTIONS = ["Tell me about speakwire.", "Sorry, what time is it?"]
ANSWERS = {
    QUESTIONS[0]: (
        "Speakwire turns the token stream of a language model into speech while the model is still "
        "writing. It changes the speaking rate without changing the pitch, and it stops at once "
        "when you interrupt it, so the conversation feels natural."
    ),
    QUESTIONS[1]: "It is half past ten.",
}


class Speaker(FrameProcessor):
    """Stands in for an output transport: plays TTS audio in real time and records what was heard.

    Like pipecat's output transports, it queues audio and plays it on its own clock, and releases
    each word (``TTSTextFrame``) when playback reaches the word's presentation time (``pts``). An
    interruption drops the queued audio and every word not yet reached.
    """

    def __init__(self, sample_rate: int) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.audio: dict[str, bytearray] = {}
        self.words: dict[str, list[str]] = {}
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._pending: list[tuple[int, str, str]] = []  # (pts, context, word) not yet reached
        self._player: asyncio.Task[None] | None = None

    def seconds(self, context_id: str) -> float:
        """Seconds of audio played for one turn."""
        return len(self.audio.get(context_id, b"")) / 2 / self.sample_rate

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Queue audio for playback, hold words until played, drop both on an interruption."""
        await super().process_frame(frame, direction)
        if self._player is None:
            self._player = self.create_task(self._play(), name="speaker")
        if isinstance(frame, InterruptionFrame):
            self._release_words()
            self._pending.clear()
            while not self._queue.empty():
                self._queue.get_nowait()
        elif isinstance(frame, TTSAudioRawFrame) and frame.context_id:
            # 20 ms pieces, as a transport writes them: an interruption stops within 20 ms.
            step = frame.sample_rate // 50 * 2
            for i in range(0, len(frame.audio), step):
                self._queue.put_nowait((frame.context_id, frame.audio[i:i + step]))
        elif isinstance(frame, TTSTextFrame) and frame.context_id and frame.pts:
            self._pending.append((frame.pts, frame.context_id, frame.text))
        elif isinstance(frame, EndFrame):
            while not self._queue.empty():
                await asyncio.sleep(0.01)
            self._release_words(everything=True)
            await self.cancel_task(self._player)
        await self.push_frame(frame, direction)

    async def _play(self) -> None:
        while True:
            context_id, piece = await self._queue.get()
            await asyncio.sleep(len(piece) / 2 / self.sample_rate)
            self.audio.setdefault(context_id, bytearray()).extend(piece)
            self._release_words()

    def _release_words(self, everything: bool = False) -> None:
        now = self.get_clock().get_time()
        for pts, context_id, word in sorted(self._pending):
            if everything or pts <= now:
                self.words.setdefault(context_id, []).append(word)
        self._pending = [] if everything else [p for p in self._pending if p[0] > now]


def user_says(text: str) -> TranscriptionFrame:
    """The user's turn as a speech-to-text service would deliver it."""
    return TranscriptionFrame(text, "user", time_now_iso8601())


async def converse(out_dir: Path) -> None:
    """Ask, interrupt the answer after 1.5 s, ask again; print and write what was heard."""
    llm = ScriptedLLM(reply=ANSWERS.get)
    tts = SpeakwireTTSService(speed=SPEED)
    speaker = Speaker(SAMPLE_RATE)
    worker = PipelineWorker(
        Pipeline([llm, tts, speaker]),
        params=PipelineParams(audio_out_sample_rate=SAMPLE_RATE),
        idle_timeout_secs=None,
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())

    print(f"user: {QUESTIONS[0]}")
    await worker.queue_frame(user_says(QUESTIONS[0]))
    while not speaker.audio or speaker.seconds(next(iter(speaker.audio))) < INTERRUPT_AFTER:
        await asyncio.sleep(0.01)
    print(f"user interrupts after {INTERRUPT_AFTER} s: {QUESTIONS[1]}")
    await worker.queue_frames([InterruptionFrame(), user_says(QUESTIONS[1])])
    await worker.stop_when_done()
    await running

    turns = []
    pieces = []
    for (context_id, audio), question in zip(speaker.audio.items(), QUESTIONS, strict=True):
        answer = ANSWERS[question]
        spoken = speaker.words.get(context_id, [])
        turns.append({"question": question, "answer": answer, "spoken_words": spoken,
                      "audio_seconds": speaker.seconds(context_id)})
        pieces.append(np.frombuffer(bytes(audio), "<i2").astype(np.float32) / 32768.0)
        print(f"bot ({speaker.seconds(context_id):.2f} s, {len(spoken)} of {len(answer.split())} words heard): "
              f"{' '.join(spoken)}")
    write_wav(out_dir / "pipecat_agent.wav", np.concatenate(pieces), SAMPLE_RATE)
    (out_dir / "pipecat_agent.turns.json").write_text(json.dumps(turns, indent=1) + "\n")
    print(f"Saved pipecat_agent.wav and pipecat_agent.turns.json (speed {SPEED}, "
          f"{'embedded espeak-ng server' if tts.embedded else tts.url})")


def main() -> int:
    """Run the example in the current directory."""
    # pipecat logs every frame at DEBUG; this example prints its own summary.
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    asyncio.run(converse(Path.cwd()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
