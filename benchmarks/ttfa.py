"""Time to first audio of an LLM reply streamed into pipecat: SpeakwireTTSService against pipecat's
stock CartesiaTTSService, both on the same local server, side by side in one run.

    .venv/bin/python benchmarks/ttfa.py [--reps 3] [--streams 8] [--no-write]

One ``speakwire serve`` subprocess (espeak-ng engine, an API key required) serves every client.
Each service runs the way pipecat runs it: ``Pipeline([tap, tts, tap])`` under a
``PipelineWorker`` on one ``WorkerRunner`` (pipecat 1.14's replacement for PipelineTask and
PipelineRunner, as in ``pipecat.tests.utils.run_test``), audio out at 24 kHz. The taps are
direct-mode processors (no queue hop) that stamp ``time.perf_counter()`` on frames passing them.

The simulated LLM sends ``LLMFullResponseStartFrame``, then the reply as GPT-style sub-word tokens
(leading spaces, punctuation apart, long words split) at 40-60 tokens/s per reply with +-35 % jitter
per token on an absolute schedule (no drift), then ``LLMFullResponseEndFrame``. Four replies of
2-4 sentences, each with its own fixed token schedule, the same for every service.

Services (all ``url=`` the server, ``api_key=`` its key, ``sample_rate=24000``):

- **speakwire 1.0** / **speakwire 1.25**: ``SpeakwireTTSService`` defaults (token streaming,
  local WSOLA speed), with ``speed=1.25`` for the second;
- **pipecat sentence**: ``CartesiaTTSService`` defaults (``TextAggregationMode.SENTENCE``);
- **pipecat token**: ``CartesiaTTSService(text_aggregation_mode=TextAggregationMode.TOKEN)``;
- **speakwire 1.0, 100 ms window** (not a default): ``max_buffer_delay_ms=100``, the server's
  buffering window for token streams cut from its 250 ms default, to show what that knob buys.

Measured:

1. TTFA, one stream at a time: from the first ``LLMTextFrame`` reaching the TTS service to the
   first ``TTSAudioRawFrame`` leaving it; every reply ``--reps`` times per service, interleaved
   turn by turn (service order rotated each round), after one warm-up turn each;
2. CPU, ``--streams`` pipelines of one service speaking at once (the replies in turn, each at its
   own rate), services interleaved round by round: this process's CPU time
   (``time.process_time``, all threads: pipecat, the service, WSOLA, the simulated LLM) and the
   server process's (``/proc/<pid>/stat``), divided by the seconds of audio the round produced,
   i.e. the fraction of a core one real-time stream costs. TTFA under that load is reported too.

Medians and 90th percentiles; ratios of medians to pipecat's sentence mode. Output goes to stdout
and, unless ``--no-write``, to the "TTFA" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.cartesia.tts import CartesiaTTSService
from pipecat.services.tts_service import TextAggregationMode, TTSService
from pipecat.workers.runner import WorkerRunner
from results import write_section

from speakwire.plugin import DEFAULT_VOICE, SpeakwireTTSService

RATE = 24000
KEY = "sk-ttfa-bench-0123456789"
BASELINE = "pipecat sentence"
TURN_TIMEOUT = 15.0

REPLIES = (
    "Sure, I can help with that. Your order shipped yesterday from our warehouse in Denver, and it "
    "should arrive by Thursday afternoon. Would you like me to send the tracking number to your email?",
    "The weather in Lisbon this weekend looks mostly sunny, with highs around twenty-four degrees. "
    "There's a small chance of rain on Sunday evening. I'd pack a light jacket just in case.",
    "I'm sorry to hear your flight was cancelled. I've found two alternatives leaving tomorrow "
    "morning, one at eight fifteen and one at ten forty. Both have seats available in economy. "
    "Which one works better for you?",
    "Great question! Compound interest means you earn interest on the interest you've already "
    "earned, so your savings grow faster over time. For example, a thousand dollars at five percent "
    "becomes about sixteen hundred and thirty after ten years.",
)

# GPT-2's pre-tokenizer pattern (contractions, words and numbers with their leading space,
# punctuation runs); words of more than 8 letters are then cut into sub-words, as BPE does.
_PRETOKEN = re.compile(r"'(?:s|t|re|ve|m|ll|d)| ?[A-Za-z]+| ?\d+| ?[^\sA-Za-z\d]+|\s+")


def tokens_of(text: str) -> list[str]:
    """``text`` as GPT-style tokens: ``" Thursday"``, ``" after"``, ``"noon"``, ``"."``."""
    out: list[str] = []
    for token in _PRETOKEN.findall(text):
        letters = token.lstrip()
        if len(letters) <= 8 or not letters.isalpha():
            out.append(token)
            continue
        lead = token[: len(token) - len(letters)]
        cut = len(letters) // 2 + 1
        out += [lead + letters[:cut], letters[cut:]]
    return out


@dataclass(frozen=True)
class Reply:
    """One reply's tokens and the gap after each (seconds): fixed, so every service gets the same."""

    tokens: list[str]
    gaps: list[float]
    rate: float


def make_replies(seed: int = 7) -> list[Reply]:
    rng = random.Random(seed)
    replies = []
    for text in REPLIES:
        tokens = tokens_of(text)
        rate = rng.uniform(40.0, 60.0)
        gaps = [rng.uniform(0.65, 1.35) / rate for _ in tokens]
        replies.append(Reply(tokens, gaps, rate))
    return replies


# Pipelines ----------------------------------------------------------------------------------


class _Tap(FrameProcessor):
    """Passes every frame on at once (direct mode: no queue of its own) after showing it to ``seen``."""

    def __init__(self, seen: Callable[[Frame, FrameDirection], None]) -> None:
        super().__init__(enable_direct_mode=True)
        self._seen = seen

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        self._seen(frame, direction)
        await self.push_frame(frame, direction)


@dataclass(eq=False)
class Stream:
    """One pipeline (tap -> TTS -> tap) and what its current turn has produced."""

    name: str
    tts: TTSService
    worker: PipelineWorker = field(init=False)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    first_token: float | None = None
    first_audio: float | None = None
    audio_bytes: int = 0
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        pipeline = Pipeline([_Tap(self._before), self.tts, _Tap(self._after)])
        self.worker = PipelineWorker(
            pipeline,
            params=PipelineParams(audio_out_sample_rate=RATE),
            cancel_on_idle_timeout=False,
            idle_timeout_secs=None,
            enable_rtvi=False,
        )

        @self.worker.event_handler("on_pipeline_started")
        async def _started(worker: PipelineWorker, frame: Frame) -> None:
            self.started.set()

    def reset(self) -> None:
        self.first_token = self.first_audio = None
        self.audio_bytes = 0
        self.stopped.clear()

    def _before(self, frame: Frame, direction: FrameDirection) -> None:
        if direction is FrameDirection.DOWNSTREAM:
            if isinstance(frame, LLMTextFrame) and self.first_token is None:
                self.first_token = time.perf_counter()
        elif isinstance(frame, ErrorFrame):
            self.errors.append(frame.error)

    def _after(self, frame: Frame, direction: FrameDirection) -> None:
        if direction is not FrameDirection.DOWNSTREAM:
            return
        if isinstance(frame, TTSAudioRawFrame):
            if self.first_audio is None:
                self.first_audio = time.perf_counter()
            self.audio_bytes += len(frame.audio)
        elif isinstance(frame, TTSStoppedFrame) and self.first_audio is not None:
            self.stopped.set()

    @property
    def ttfa(self) -> float:
        if self.first_token is None or self.first_audio is None:
            raise RuntimeError(f"{self.name}: no audio in the turn (errors: {self.errors})")
        return self.first_audio - self.first_token

    async def speak(self, reply: Reply) -> None:
        """Stream ``reply`` as an LLM would, then wait until its audio has all left the service."""
        self.reset()
        loop = asyncio.get_running_loop()
        await self.worker.queue_frame(LLMFullResponseStartFrame())
        due = loop.time()
        for token, gap in zip(reply.tokens, reply.gaps, strict=True):
            await self.worker.queue_frame(LLMTextFrame(token))
            due += gap
            await asyncio.sleep(max(0.0, due - loop.time()))
        await self.worker.queue_frame(LLMFullResponseEndFrame())
        try:
            await asyncio.wait_for(self.stopped.wait(), TURN_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(f"{self.name}: turn did not finish (errors: {self.errors})") from None
        if self.errors:
            raise RuntimeError(f"{self.name}: {self.errors}")


def make_service(name: str, url: str) -> TTSService:
    if name.startswith("speakwire"):
        return SpeakwireTTSService(api_key=KEY, url=url, sample_rate=RATE, **SPEAKWIRE[name])
    mode = TextAggregationMode.TOKEN if name == "pipecat token" else None  # None: pipecat's default
    return CartesiaTTSService(
        api_key=KEY,
        url=url,
        sample_rate=RATE,
        settings=CartesiaTTSService.Settings(voice=DEFAULT_VOICE),
        text_aggregation_mode=mode,
    )


OURS = "speakwire 1.0"
WINDOW = "speakwire 1.0, 100 ms window"
SPEAKWIRE: dict[str, dict[str, float]] = {
    OURS: {},
    "speakwire 1.25": {"speed": 1.25},
    # Not a default: the server's buffering window shortened from 250 ms, to show what it buys.
    WINDOW: {"max_buffer_delay_ms": 100},
}
SERVICES = (*SPEAKWIRE, BASELINE, "pipecat token")


# Measuring ----------------------------------------------------------------------------------


def _server_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Figures:
    ttfa: dict[str, list[float]] = field(default_factory=lambda: {n: [] for n in SERVICES})
    by_reply: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    load_ttfa: dict[str, list[float]] = field(default_factory=lambda: {n: [] for n in SERVICES})
    client_cpu: dict[str, list[float]] = field(default_factory=lambda: {n: [] for n in SERVICES})
    server_cpu: dict[str, list[float]] = field(default_factory=lambda: {n: [] for n in SERVICES})
    audio: dict[str, list[float]] = field(default_factory=lambda: {n: [] for n in SERVICES})


async def measure(url: str, server_pid: int, reps: int, n_streams: int) -> Figures:
    replies = make_replies()
    streams = {name: [Stream(name, make_service(name, url)) for _ in range(n_streams)] for name in SERVICES}
    every = [s for group in streams.values() for s in group]
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(*(s.worker for s in every))
    running = asyncio.create_task(runner.run())
    figures = Figures()
    try:
        await asyncio.wait_for(asyncio.gather(*(s.started.wait() for s in every)), 30)
        # Warm-up: connections, imports on first use, numba JIT of the WSOLA kernel, espeak.
        await asyncio.gather(*(s.speak(replies[k % len(replies)]) for k, s in enumerate(every)))

        order = list(SERVICES)
        for rep in range(reps):
            for k, reply in enumerate(replies):
                shift = (rep * len(replies) + k) % len(order)
                for name in order[shift:] + order[:shift]:
                    stream = streams[name][0]
                    await stream.speak(reply)
                    figures.ttfa[name].append(stream.ttfa)
                    figures.by_reply.setdefault((name, k), []).append(stream.ttfa)
                    await asyncio.sleep(0.05)

        for rep in range(reps):
            shift = rep % len(order)
            for name in order[shift:] + order[:shift]:
                group = streams[name]
                cpu0, server0 = time.process_time(), _server_cpu(server_pid)
                await asyncio.gather(*(s.speak(replies[k % len(replies)]) for k, s in enumerate(group)))
                cpu, server = time.process_time() - cpu0, _server_cpu(server_pid) - server0
                audio = sum(s.audio_bytes for s in group) / 2 / RATE
                figures.client_cpu[name].append(cpu / audio)
                figures.server_cpu[name].append(server / audio)
                figures.audio[name].append(audio)
                figures.load_ttfa[name] += [s.ttfa for s in group]
                await asyncio.sleep(0.1)
    finally:
        for s in every:
            await s.worker.queue_frame(EndFrame())
        try:
            await asyncio.wait_for(running, 20)
        except TimeoutError:
            await runner.cancel()
    return figures


# Reporting ----------------------------------------------------------------------------------


def _ms(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values) * 1000.0
    return float(np.median(arr)), float(np.percentile(arr, 90))


def table(figures: Figures, reps: int, n_streams: int, command: str) -> str:
    replies = make_replies()
    rates = ", ".join(f"{r.rate:.0f}" for r in replies)
    counts = ", ".join(str(len(r.tokens)) for r in replies)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    base, base_load = _ms(figures.ttfa[BASELINE])[0], _ms(figures.load_ttfa[BASELINE])[0]
    lines = [
        f"Command: `{command}` ({stamp}; one `speakwire serve` subprocess, espeak-ng, API key; every "
        "service runs in a pipecat 1.14 Pipeline under PipelineWorker + WorkerRunner, 24 kHz out; "
        f"{len(replies)} replies of {counts} GPT-style tokens at {rates} tokens/s with +-35 % jitter "
        "per token). TTFA = first LLMTextFrame into the TTS service -> first TTSAudioRawFrame out of it "
        "(direct-mode taps, perf_counter).",
        "",
        f"| service | TTFA, 1 stream: median / p90 (ms) | vs {BASELINE} | TTFA, {n_streams} streams at once: "
        f"median / p90 (ms) | vs {BASELINE} | audio per load round (s) | client CPU per s of audio (ms) "
        "| server CPU per s of audio (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in SERVICES:
        (m, p), (lm, lp) = _ms(figures.ttfa[name]), _ms(figures.load_ttfa[name])
        client = float(np.median(figures.client_cpu[name])) * 1000
        server = float(np.median(figures.server_cpu[name])) * 1000
        bold = "**" if name == OURS else ""
        lines.append(
            f"| {name} | {m:.0f} / {p:.0f} | {bold}{m / base:.2f}x{bold} | {lm:.0f} / {lp:.0f} "
            f"| {lm / base_load:.2f}x | {np.median(figures.audio[name]):.1f} | {client:.1f} | {server:.1f} |"
        )
    lines += [
        "",
        "Per reply, 1 stream (median TTFA in ms). The first sentence's last token arrives at the time "
        "shown after the first token (pipecat's sentence mode also waits for the token after it):",
        "",
        "| reply | first sentence: tokens, last one at (ms) | " + " | ".join(SERVICES) + " |",
        "|---|---:|" + "---:|" * len(SERVICES),
    ]
    for k, reply in enumerate(replies):
        end = next(i for i, t in enumerate(reply.tokens) if t.rstrip()[-1:] in ".!?")
        at = sum(reply.gaps[:end]) * 1000
        cells = " | ".join(f"{_ms(figures.by_reply[(name, k)])[0]:.0f}" for name in SERVICES)
        lines.append(f"| {''.join(reply.tokens[:4]).strip()}... | {end + 1}, {at:.0f} | {cells} |")
    ours = _ms(figures.ttfa[OURS])[0]
    tok = _ms(figures.ttfa["pipecat token"])[0]
    window = _ms(figures.ttfa[WINDOW])[0]

    def cpu(name: str) -> float:
        return float(np.median(figures.client_cpu[name]))

    lines += [
        "",
        f"1 stream: {len(figures.ttfa[BASELINE])} turns per service ({reps} rounds of the {len(replies)} "
        f"replies, interleaved turn by turn, after a warm-up turn). Load: {n_streams} pipelines per service "
        f"speaking at once, {reps} rounds, services interleaved round by round. CPU figures are medians over "
        "rounds of CPU seconds / audio seconds, i.e. the share of a core one real-time stream costs "
        "(client: this whole process, pipecat included; server: the speakwire serve process).",
        "",
        f"Goal: speakwire's TTFA at most 0.5x pipecat's default sentence mode: median {ours:.0f} ms vs "
        f"{base:.0f} ms = **{ours / base:.2f}x**; vs pipecat's own token mode: {ours / tok:.2f}x.",
        "",
        "Why (server at this commit): until a context's first unit is out, the server releases it at any "
        "clause mark or once 3 words are complete (followed by the next token's whitespace); later units "
        "wait for a sentence end, a clause mark after 24 characters or the 250 ms window, and units cut "
        "mid-sentence are synthesised without espeak's 0.3 s end pause. So first audio comes a few ms "
        "after the token that completes the third word or confirms the first comma (\" Lisbon\", the 4th "
        "token; \" hear\", the 5th; \" I\" after \"Sure,\"); a first sentence shorter than that (\"Great "
        "question!\") goes when the token after it confirms its end, as in pipecat's sentence mode. "
        "pipecat's token mode talks to the same server, so it gets the same first unit. The 100 ms window "
        f"row: TTFA {window / base:.2f}x, and the turn's audio runs "
        f"{np.median(figures.audio[WINDOW]) / np.median(figures.audio[OURS]):.2f}x as long as the "
        "default's (more cuts; mid-sentence ones no longer add a pause). WSOLA at 1.25 moves the median TTFA "
        f"by {_ms(figures.ttfa['speakwire 1.25'])[0] - ours:+.0f} ms. Client CPU per s of audio vs "
        f"{BASELINE}: " + ", ".join(f"{name} {cpu(name) / cpu(BASELINE):.2f}x" for name in SERVICES[:2]) + ".",
    ]
    return "\n".join(lines)


def _start_server() -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "SPEAKWIRE_API_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "speakwire", "serve", "--port", "0"], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "ws://" not in line:
        proc.kill()
        raise RuntimeError(f"speakwire serve did not start: {line!r}")
    return proc, line[line.index("ws://") :].split()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="rounds of every reply per service (default 3)")
    parser.add_argument("--streams", type=int, default=8, help="pipelines at once in the CPU rounds (default 8)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    logger.remove()  # pipecat logs every frame at DEBUG: that would be most of the CPU measured
    logger.add(sys.stderr, level="ERROR")
    proc, url = _start_server()
    try:
        figures = asyncio.run(measure(url, proc.pid, args.reps, args.streams))
    finally:
        proc.terminate()
        proc.wait(5)
    command = "benchmarks/ttfa.py" + "".join(
        f" --{k} {v}" for k, v in (("reps", args.reps), ("streams", args.streams)) if v != parser.get_default(k)
    )
    body = table(figures, args.reps, args.streams, f".venv/bin/python {command}")
    print(body)
    if not args.no_write:
        write_section("TTFA", body)


if __name__ == "__main__":
    main()
