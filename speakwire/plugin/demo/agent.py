"""The demo's scripted agent: one pipecat pipeline per peer, from a simulated LLM to a WebRTC track.

``DemoAgent`` runs ``[head, SpeakwireTTSService, TrackOutputProcessor, tap]``: the head pushes the
simulated LLM's tokens (and speed updates, and barge-ins), the TTS service (embedded local server)
streams them, and the output processor resamples the audio into a paced
:class:`~speakwire.transport.track.RingBufferAudioTrack` that aiortc sends. The tap, after the
track, watches what was written; a 10 ms ticker then follows the track's played position to tell
what was really sent.

Every figure is measured at the track, i.e. when the audio is handed to the WebRTC sender, not
when the TTS produced it:

- **time to first audio**: from the reply's first LLM token to its first sample on the wire;
- **barge-in latency**: from the barge-in command to the frame carrying the fade-out;
- **underruns**: frames padded with silence while a reply was still being played (the ring ran dry
  mid-reply); silence between replies is not an underrun.

Words light up when the track has played up to their start: a word's start (seconds into its
reply's audio, already rescaled for speed by the TTS service) is taken from its ``TTSTextFrame``
PTS relative to the reply's first audio, and mapped onto the track's played-sample count from the
reply's first played mark. Silence padding does not advance that count, so an underrun delays the
words with the audio.

Events are plain dicts (JSON-ready) given to ``on_event``; see :class:`DemoAgent` for their types.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from pipecat.frames.frames import (
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.cartesia.tts import GenerationConfig
from pipecat.workers.runner import WorkerRunner

from speakwire.dsp.speed import DEFAULT_POLICY
from speakwire.plugin.demo.llm import GREETING, SimulatedLLM, pick_reply
from speakwire.plugin.track_output import TrackOutputProcessor
from speakwire.plugin.tts import SpeakwireTTSService
from speakwire.transport.track import RingBufferAudioTrack

__all__ = ["TRACK_RATE", "TTS_RATE", "DemoAgent", "Event", "Figures"]

#: The track's rate: Opus's own, so the encoder does not resample again.
TRACK_RATE: Final = 48000
#: The rate the TTS service produces (the pipeline's output rate); espeak's native 22.05 kHz is
#: resampled by the server.
TTS_RATE: Final = 24000
#: A user message longer than this is cut (the page is the only input; it is not trusted).
MAX_MESSAGE_CHARS: Final = 500

Event = dict[str, Any]
EventSink = Callable[[Event], None]

_TICK_S: Final = 0.01
_MAX_QUEUED_S: Final = 25.0
_WORD_CHARS = re.compile(r"[^\w']+")


def _norm(word: str) -> str:
    return _WORD_CHARS.sub("", word).lower()


@dataclass
class Figures:
    """The live figures of one agent: what the page and the headless run print."""

    ttfa_ms: list[float] = field(default_factory=list)
    barge_in_ms: list[float] = field(default_factory=list)
    underruns: int = 0
    words_heard: list[str] = field(default_factory=list)

    def as_event(self) -> Event:
        """The figures as a ``"figures"`` event."""
        return {
            "type": "figures",
            "ttfa_ms": [round(x, 1) for x in self.ttfa_ms],
            "barge_in_ms": [round(x, 1) for x in self.barge_in_ms],
            "underruns": self.underruns,
            "words_heard": len(self.words_heard),
        }


@dataclass(eq=False)
class _Reply:
    """One reply turn: its text, its timing and how far it has been heard."""

    turn: int
    text: str
    words: list[str]
    started_at: float  # loop time the LLM started
    first_token_at: float | None = None
    context_id: str | None = None
    audio_at_ns: int | None = None  # pipeline clock when its first audio passed the tap
    start_position: int | None = None  # track position of its first played sample
    start_pts: int | None = None
    end_position: float = math.inf  # known once its TTSStoppedFrame passed the tap
    pending_words: list[tuple[float, str]] = field(default_factory=list)  # (seconds in, word), by time
    heard: int = 0  # words lit
    next_index: int = 0  # where the next word is looked for in ``words``
    speeds: list[float] = field(default_factory=list)  # in the order they applied to its text
    streaming: bool = False  # the LLM is still writing it
    done: bool = False


class _Head(FrameProcessor):
    """The pipeline's entry: the agent pushes its frames from here; the worker's pass through."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class _Tap(FrameProcessor):
    """After the track: notes each reply's first audio, word times and end, then drops audio."""

    def __init__(self, agent: DemoAgent) -> None:
        super().__init__(name="demo-tap")
        self._agent = agent

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self._agent._interrupted_at_tap()
        elif isinstance(frame, TTSAudioRawFrame):
            self._agent._audio_written(frame.context_id, self.get_clock().get_time())
            return  # the track plays it; nothing downstream wants it
        elif isinstance(frame, TTSTextFrame):
            self._agent._word_frame(frame.context_id, frame.text, frame.pts)
        elif isinstance(frame, TTSStoppedFrame):
            self._agent._tts_stopped(frame.context_id)
        await self.push_frame(frame, direction)


class DemoAgent:
    """A scripted voice agent speaking into a :class:`RingBufferAudioTrack` through pipecat.

    ``on_event`` receives JSON-ready dicts, by ``"type"``:

    - ``"speed"`` ``{speed}``: the speed now in effect for text streamed from now on;
    - ``"reply_start"`` ``{turn, text, words}``: a reply begins (``words``: the text split on spaces);
    - ``"llm_text"`` ``{turn, token}``: the simulated LLM produced a token;
    - ``"first_audio"`` ``{turn, ttfa_ms, pts}``: the reply's first sample went out (``pts`` in
      track samples at :data:`TRACK_RATE`);
    - ``"word"`` ``{turn, index, word, pts}``: a word started playing (``index`` into ``words``,
      ``-1`` if it matched none);
    - ``"turn_end"`` ``{turn, audio_s, words_heard, speeds, end_pts}``: the reply played out;
    - ``"barge_in"`` ``{turn, latency_ms, clear_to_wire_ms, silent_pts, command_pts, words_heard}``:
      a reply was cut; the track is silent from ``silent_pts`` on (until the next reply), and
      ``command_pts`` is the position being sent when the command arrived;
    - ``"figures"``: see :class:`Figures`;
    - ``"error"`` ``{message}``: a command was refused or the TTS reported an error.

    Use :meth:`start` (the track must already be attached to a peer or be read), then
    :meth:`greet`, :meth:`say`, :meth:`set_speed`, :meth:`barge_in`; :meth:`close` at the end.
    """

    def __init__(
        self,
        on_event: EventSink,
        *,
        llm: SimulatedLLM | None = None,
        speed: float = 1.0,
        track: RingBufferAudioTrack | None = None,
    ) -> None:
        self._emit = on_event
        self._llm = llm or SimulatedLLM()
        self.track: Final = track or RingBufferAudioTrack(TRACK_RATE, channels=2, capacity_s=30.0)
        self.figures: Final = Figures()
        self._tts = SpeakwireTTSService(sample_rate=TTS_RATE, speed=DEFAULT_POLICY.apply(speed))
        self._head = _Head(name="demo-head")
        # Word frames follow their audio through the output processor, which holds frames back
        # while more than max_queued_s is queued: a bound below a long sentence's length would
        # deliver its words only as its audio drains, seconds late. A reply fits in the ring.
        self._output = TrackOutputProcessor(self.track, forward_audio=True, max_queued_s=_MAX_QUEUED_S)
        self._tap = _Tap(self)
        self._worker = PipelineWorker(
            Pipeline([self._head, self._tts, self._output, self._tap]),
            params=PipelineParams(audio_out_sample_rate=TTS_RATE),
            cancel_on_idle_timeout=False,
            idle_timeout_secs=None,
            enable_rtvi=False,
            enable_turn_tracking=False,
            check_dangling_tasks=False,
        )
        self._runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
        self._run_task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._llm_task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._replies: list[_Reply] = []  # not yet played out, oldest first
        self._turns = 0
        self._dead: set[str] = set()
        self._last_word_pts = 0
        self._underrun_mark = 0
        # A barge-in between its command and its fade frame: (cut reply, replies it kills,
        # command loop time); then (cut reply, command time, clear loop time, frames sent at clear).
        self._barge_cmd: tuple[_Reply, list[_Reply], float] | None = None
        self._barge: tuple[_Reply, float, float, int] | None = None
        self._barge_cmd_pts = 0
        self._closed = False

        @self._worker.event_handler("on_pipeline_started")
        async def _on_started(_worker: PipelineWorker, _frame: Frame) -> None:
            self._started.set()

        @self._worker.event_handler("on_pipeline_error")
        async def _on_error(_worker: PipelineWorker, frame: Frame) -> None:
            self._emit({"type": "error", "message": str(getattr(frame, "error", frame))})

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def speed(self) -> float:
        """The TTS service's speed, applied to text streamed from now on."""
        return self._tts.speed

    @property
    def speaking(self) -> bool:
        """True while a reply is being streamed or played."""
        return bool(self._replies)

    async def start(self, timeout: float = 10.0) -> None:
        """Start the pipeline (and with it the embedded TTS server)."""
        await self._runner.add_workers(self._worker)
        self._run_task = asyncio.create_task(self._runner.run(), name="demo-pipeline")
        async with asyncio.timeout(timeout):
            await self._started.wait()
        self._ticker = asyncio.create_task(self._tick_loop(), name="demo-ticker")
        self._emit({"type": "speed", "speed": self.speed})

    async def close(self) -> None:
        """Stop the reply in progress, the pipeline and the embedded server (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for task in (self._llm_task, self._ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._run_task is not None:
            await self._worker.cancel(reason="demo peer closed")
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(5):
                    await self._run_task
        self.track.stop()

    # -- commands -------------------------------------------------------------------------------

    async def greet(self) -> int:
        """Speak the greeting; returns its turn number."""
        return await self.say(GREETING)

    async def answer(self, message: str) -> int:
        """Reply to the user's ``message`` (a scripted reply); returns the turn number.

        A reply in progress is interrupted first: the user talking over the agent is a barge-in.
        """
        message = message[:MAX_MESSAGE_CHARS]
        return await self.say(pick_reply(message))

    async def say(self, text: str) -> int:
        """Stream ``text`` through the simulated LLM, interrupting any reply in progress."""
        if self.speaking:
            await self.barge_in()
        self._turns += 1
        loop = asyncio.get_running_loop()
        reply = _Reply(self._turns, text, text.split(), loop.time(), speeds=[self.speed])
        self._replies.append(reply)
        self._emit({"type": "reply_start", "turn": reply.turn, "text": text, "words": reply.words})
        self._llm_task = asyncio.create_task(self._stream(reply), name=f"demo-llm-{reply.turn}")
        return reply.turn

    async def set_speed(self, speed: object) -> float:
        """Change the speed from the next streamed text on (raises ``InvalidSpeedError``)."""
        value = DEFAULT_POLICY.apply(speed)
        delta = SpeakwireTTSService.Settings(generation_config=GenerationConfig(speed=value))
        await self._head.push_frame(TTSUpdateSettingsFrame(delta=delta))
        # The service validates and applies it as it processes the frame, in order with the tokens.
        for _ in range(100):
            if self._tts.speed == value:
                break
            await asyncio.sleep(0.002)
        for reply in self._replies:
            # Only text still to be written is spoken at the new speed.
            if reply.streaming and reply.speeds[-1] != value:
                reply.speeds.append(value)
        self._emit({"type": "speed", "speed": self._tts.speed})
        return self._tts.speed

    async def barge_in(self) -> bool:
        """Cut the reply in progress (LLM and audio); returns False if nothing was playing."""
        loop = asyncio.get_running_loop()
        reply = self._replies[-1] if self._replies else None
        if reply is None:
            return False
        self._barge_cmd = (reply, list(self._replies), loop.time())
        self._barge_cmd_pts = self.track.stats.samples_sent
        if self._llm_task is not None:
            self._llm_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._llm_task
            self._llm_task = None
        await self._head.broadcast_interruption()
        return True

    # -- the simulated LLM ----------------------------------------------------------------------

    async def _stream(self, reply: _Reply) -> None:
        reply.streaming = True
        try:
            await self._head.push_frame(LLMFullResponseStartFrame())
            async for token in self._llm.stream(reply.text):
                if reply.first_token_at is None:
                    reply.first_token_at = asyncio.get_running_loop().time()
                await self._head.push_frame(LLMTextFrame(token))
                self._emit({"type": "llm_text", "turn": reply.turn, "token": token})
            await self._head.push_frame(LLMFullResponseEndFrame())
        finally:
            reply.streaming = False

    # -- the tap's callbacks (pipeline tasks) ---------------------------------------------------

    def _reply_for(self, context_id: str | None) -> _Reply | None:
        if context_id is None or context_id in self._dead:
            return None
        for reply in self._replies:
            if reply.context_id == context_id:
                return reply
        # A new context belongs to the oldest reply whose LLM has started. Audio of a cut reply
        # still in flight when the interruption overtook it (system frames jump the queues) cannot
        # be claimed by the next reply: its first token comes only after the simulated LLM's delay.
        for reply in self._replies:
            if reply.context_id is None and reply.first_token_at is not None:
                reply.context_id = context_id
                return reply
        self._dead.add(context_id)
        return None

    def _audio_written(self, context_id: str | None, now_ns: int) -> None:
        reply = self._reply_for(context_id)
        if reply is not None and reply.audio_at_ns is None:
            # pipecat times a context's words from its first audio, or from the previous
            # context's last word if that is later (words of a reply produced faster than real
            # time, then cut, lie in the future): the same rule recovers each word's offset.
            reply.audio_at_ns = max(now_ns, self._last_word_pts)

    def _word_frame(self, context_id: str | None, word: str, pts: int | None) -> None:
        if pts is not None:
            self._last_word_pts = max(self._last_word_pts, pts)
        reply = self._reply_for(context_id)
        if reply is None or reply.done:
            return
        base = reply.audio_at_ns if reply.audio_at_ns is not None else pts
        seconds = max(0.0, ((pts or 0) - (base or 0)) / 1e9)
        # Word frames usually come in order, but not always (a first word was once seen after its
        # sentence): keep them sorted, so they light in the order they are heard.
        bisect.insort(reply.pending_words, (seconds, word), key=lambda item: item[0])

    def _tts_stopped(self, context_id: str | None) -> None:
        reply = self._reply_for(context_id)
        if reply is not None:
            # Everything of this reply has been written: it ends where the queue ends now.
            reply.end_position = self.track.played_samples + self.track.queued_samples

    def _interrupted_at_tap(self) -> None:
        if self._barge_cmd is None:
            return
        reply, killed, commanded = self._barge_cmd
        self._barge_cmd = None
        # The output processor cleared the track just before passing this frame on: the fade goes
        # out in the next frame sent.
        self._barge = (reply, commanded, asyncio.get_running_loop().time(), self.track.stats.frames_sent)
        # pipecat forgets the cut words' times too: the next reply's words are timed from its audio.
        self._last_word_pts = 0
        for r in killed:
            if r.context_id is not None:
                self._dead.add(r.context_id)
            r.done = True
        self._replies = [r for r in self._replies if r not in killed]

    # -- following the track --------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            self._tick()
            await asyncio.sleep(_TICK_S)

    def _tick(self) -> None:
        track = self.track
        stats = track.stats
        played = track.played_samples
        for mark in track.pop_played_marks():
            reply = self._reply_for(mark.mark if isinstance(mark.mark, str) else None)
            if reply is None or reply.start_position is not None:
                continue
            reply.start_position, reply.start_pts = mark.position, mark.pts
            origin = reply.first_token_at if reply.first_token_at is not None else reply.started_at
            ttfa = (mark.sent_at - origin) * 1000
            self.figures.ttfa_ms.append(ttfa)
            self._emit({"type": "first_audio", "turn": reply.turn, "ttfa_ms": round(ttfa, 1), "pts": mark.pts})
            self._emit(self.figures.as_event())
        speaking = any(r.start_position is not None and played < r.end_position for r in self._replies)
        if speaking:
            self.figures.underruns += stats.underrun_frames - self._underrun_mark
        self._underrun_mark = stats.underrun_frames
        for reply in list(self._replies):
            if reply.start_position is None:
                continue
            self._light_words(reply, played)
            if played >= reply.end_position and not reply.pending_words:
                self._finish(reply)
        if self._barge is not None and stats.frames_sent > self._barge[3] and stats.last_clear_latency_s is not None:
            self._report_barge()

    def _light_words(self, reply: _Reply, played: int) -> None:
        assert reply.start_position is not None
        while reply.pending_words:
            seconds, word = reply.pending_words[0]
            position = reply.start_position + round(seconds * TRACK_RATE)
            if position > played:
                break
            reply.pending_words.pop(0)
            index = self._match(reply, word)
            reply.heard += 1
            self.figures.words_heard.append(word)
            assert reply.start_pts is not None
            self._emit({"type": "word", "turn": reply.turn, "index": index, "word": word,
                        "pts": reply.start_pts + (position - reply.start_position)})

    @staticmethod
    def _match(reply: _Reply, word: str) -> int:
        key = _norm(word)
        for i in range(reply.next_index, min(len(reply.words), reply.next_index + 6)):
            if _norm(reply.words[i]) == key or (key and key in _norm(reply.words[i])):
                reply.next_index = i + 1
                return i
        return -1

    def _finish(self, reply: _Reply) -> None:
        reply.done = True
        self._replies.remove(reply)
        assert reply.start_position is not None and reply.start_pts is not None
        audio = reply.end_position - reply.start_position
        self._emit({
            "type": "turn_end",
            "turn": reply.turn,
            "audio_s": round(audio / TRACK_RATE, 3),
            "words_heard": reply.heard,
            "speeds": reply.speeds,
            "end_pts": reply.start_pts + int(audio),
        })
        self._emit(self.figures.as_event())

    def _report_barge(self) -> None:
        assert self._barge is not None
        reply, commanded, cleared, frames_at_clear = self._barge
        self._barge = None
        wire = self.track.stats.last_clear_latency_s or 0.0
        # Command -> clear (through the pipeline), then clear -> the fade frame handed to aiortc.
        latency = (cleared - commanded + wire) * 1000
        self.figures.barge_in_ms.append(latency)
        self._emit({
            "type": "barge_in",
            "turn": reply.turn,
            "latency_ms": round(latency, 1),
            "clear_to_wire_ms": round(wire * 1000, 1),
            # The fade is in the last frame sent when the cut reached the tap or in the next one:
            # from the end of that next frame's fade on, the track is silent for sure.
            "silent_pts": frames_at_clear * self.track.frame_samples + self.track.fade_samples,
            "command_pts": self._barge_cmd_pts,
            "words_heard": reply.heard,
        })
        self._emit(self.figures.as_event())
