"""``speakwire demo --headless``: the demo's conversation received by an in-process aiortc peer.

What a new user runs on a machine without a browser. The peer connects over 127.0.0.1 through the
same ``POST /offer`` route and ``"control"`` data channel a browser uses, then plays a fixed
script: the greeting; a question whose reply gets its speed changed to 2.0 mid-stream (right after
the LLM has written the first sentence); a long reply cut by a barge-in once a few words have been
heard; a short reply after it. The received audio is written to a WAV at the position of each
frame's RTP timestamp (so the file's timeline is the sender's, gaps included), and the figures
are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from speakwire.errors import PeerConnectionError
from speakwire.plugin.demo.agent import TRACK_RATE, Event
from speakwire.plugin.demo.app import CONTROL_CHANNEL, DemoServer, quiet_pipecat_logs
from speakwire.transport.loopback import loopback_candidates, loopback_configuration
from speakwire.wavfile import write_wav

__all__ = ["FAST_SPEED", "HeadlessReport", "TurnReport", "main_headless", "run_headless"]

#: The speed the second reply switches to mid-stream.
FAST_SPEED: Final = 2.0
# Words heard of the long reply before the barge-in.
_WORDS_BEFORE_BARGE_IN: Final = 4
_STEP_TIMEOUT_S: Final = 20.0


@dataclass
class TurnReport:
    """One reply as received: where its audio lies in the WAV and what was heard of it."""

    turn: int
    start_s: float
    end_s: float | None = None  # None: cut by a barge-in
    words: list[tuple[str, float]] = field(default_factory=list)  # (word, start in the WAV, s)
    indices: list[int] = field(default_factory=list)  # each word's index in the reply's text
    speeds: list[float] = field(default_factory=list)
    cut_s: float | None = None  # for a reply cut by a barge-in: silent from here on
    command_s: float | None = None  # position being sent when the barge-in command arrived


@dataclass
class HeadlessReport:
    """What the headless run measured. Times in the WAV are seconds from its first sample."""

    wav: Path
    duration_s: float
    rms_dbfs: float
    url: str
    ttfa_ms: list[float]
    barge_in_ms: list[float]
    underruns: int
    turns: list[TurnReport]
    speed_change_after_word: int | None
    speed_change_s: float | None  # where the first word at the new speed starts in the WAV
    words_per_s: tuple[float, float] | None  # before and after the mid-reply speed change
    words_split: tuple[int, int] | None  # words heard before and after it

    @property
    def words_heard(self) -> list[str]:
        """Every word heard, in order."""
        return [w for t in self.turns for w, _ in t.words]

    def lines(self) -> list[str]:
        """The printed summary."""
        out = [f"speakwire demo (headless): {len(self.turns)} replies received over WebRTC from {self.url}offer"]
        out.append("time to first audio: " + ", ".join(f"{x:.0f}" for x in self.ttfa_ms)
                   + " ms (first LLM token -> first sample on the wire)")
        if self.words_per_s is not None and self.words_split is not None:
            (before, after), (n_before, n_after) = self.words_per_s, self.words_split
            out.append(f"speed change: 1.0 -> {FAST_SPEED} mid-reply after word {self.speed_change_after_word}, "
                       f"heard from {self.speed_change_s:.3f} s: {n_before} words at {before:.2f} words/s, "
                       f"then {n_after} at {after:.2f} words/s")
        out.append("barge-in latency: " + ", ".join(f"{x:.1f}" for x in self.barge_in_ms)
                   + " ms (command -> fade-out frame on the wire)")
        out.append(f"underruns: {self.underruns}")
        for t in self.turns:
            end = f"cut: silent from {t.cut_s:.3f} s (command at {t.command_s:.3f} s)" if t.cut_s is not None else (
                f"to {t.end_s:.3f} s")
            speeds = "->".join(f"{s:g}" for s in t.speeds)
            out.append(f"turn {t.turn}: audio from {t.start_s:.3f} s {end}, speed {speeds}, {len(t.words)} words heard")
        out.append(f"words heard ({len(self.words_heard)}): {' '.join(self.words_heard)}")
        out.append(f"wrote {self.wav}: {self.duration_s:.2f} s at {TRACK_RATE} Hz, rms {self.rms_dbfs:.1f} dBFS")
        return out


class _Receiver:
    """Reads the remote track, placing each frame at its RTP timestamp (mono, float)."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self._track = track
        self._chunks: list[tuple[int, np.ndarray]] = []
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await self._track.recv()
                if frame.sample_rate != TRACK_RATE:
                    raise PeerConnectionError(f"expected {TRACK_RATE} Hz audio, got {frame.sample_rate} Hz")
                channels = len(frame.layout.channels)
                pcm = frame.to_ndarray().reshape(-1, channels).astype(np.float32).mean(axis=1) / 32768.0
                self._chunks.append((int(frame.pts or 0), pcm))

    @property
    def received_s(self) -> float:
        if not self._chunks:
            return 0.0
        pts, pcm = self._chunks[-1]
        return (pts + len(pcm)) / TRACK_RATE

    def samples(self) -> np.ndarray:
        if not self._chunks:
            return np.zeros(0, np.float32)
        end = max(p + len(c) for p, c in self._chunks)
        out = np.zeros(end, np.float32)
        for pts, pcm in self._chunks:
            out[pts : pts + len(pcm)] = pcm
        return out


class _Client:
    """The headless peer: the offer, the control channel and the events it receives."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(loopback_configuration())
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        self.receiver: _Receiver | None = None
        self.channel = self.pc.createDataChannel(CONTROL_CHANNEL)
        self.channel.on("message", self._on_message)
        self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self.receiver is None:
            self.receiver = _Receiver(track)

    def _on_message(self, message: str | bytes) -> None:
        self.events.append(json.loads(message))
        self._changed.set()

    async def connect(self, offer_url: str) -> None:
        with loopback_candidates():
            await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        async with aiohttp.ClientSession() as http, http.post(offer_url, json=body) as response:
            answer = await response.json()
            if response.status != 200:
                raise PeerConnectionError(f"the demo refused the offer: HTTP {response.status}: {answer}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))

    def send(self, command: dict[str, Any]) -> None:
        self.channel.send(json.dumps(command))

    async def wait_for(self, kind: str, timeout: float = _STEP_TIMEOUT_S, **match: Any) -> Event:
        """The first event of ``kind`` (received at any time) whose fields equal ``match``."""
        seen = 0
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events[seen:]:
                    if event.get("type") == kind and all(event.get(k) == v for k, v in match.items()):
                        return event
                seen = len(self.events)
                self._changed.clear()
                await self._changed.wait()

    async def wait_until(self, predicate: Any, timeout: float = _STEP_TIMEOUT_S) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def of(self, kind: str, **match: Any) -> list[Event]:
        return [e for e in self.events if e.get("type") == kind and all(e.get(k) == v for k, v in match.items())]


async def _conversation(client: _Client) -> None:
    greeting = (await client.wait_for("reply_start"))["turn"]
    await client.wait_for("turn_end", turn=greeting)

    client.send({"type": "say", "text": "How does the speed control work?"})
    fast = (await client.wait_for("reply_start", turn=greeting + 1))["turn"]
    # Mid-stream: as soon as the LLM has written the first sentence, while the rest is still coming.
    await client.wait_until(lambda: any(e["token"].strip() == "." for e in client.of("llm_text", turn=fast)))
    client.send({"type": "speed", "speed": FAST_SPEED})
    await client.wait_for("turn_end", turn=fast)
    speeds = len(client.of("speed"))
    client.send({"type": "speed", "speed": 1.0})
    await client.wait_until(lambda: len(client.of("speed")) > speeds)

    client.send({"type": "say", "text": "Can I interrupt you?"})
    cut = (await client.wait_for("reply_start", turn=fast + 1))["turn"]
    await client.wait_until(lambda: len(client.of("word", turn=cut)) >= _WORDS_BEFORE_BARGE_IN)
    client.send({"type": "barge_in"})
    await client.wait_for("barge_in", turn=cut)

    client.send({"type": "say", "text": "Hello again"})
    last = (await client.wait_for("reply_start", turn=cut + 1))["turn"]
    await client.wait_for("turn_end", turn=last)
    await asyncio.sleep(0.3)  # the tail's jitter-buffer delay


def _turns(events: list[Event]) -> list[TurnReport]:
    def at(pts: int) -> float:
        # The received timeline starts at the sender's first frame (pts 0), as the WAV does.
        return pts / TRACK_RATE

    turns: dict[int, TurnReport] = {}
    for event in events:
        kind, turn = event.get("type"), event.get("turn")
        if kind == "first_audio":
            turns[turn] = TurnReport(turn, at(event["pts"]))
        elif kind == "word" and turn in turns:
            turns[turn].words.append((event["word"], at(event["pts"])))
            turns[turn].indices.append(int(event["index"]))
        elif kind == "turn_end" and turn in turns:
            turns[turn].end_s = at(event["end_pts"])
            turns[turn].speeds = list(event["speeds"])
        elif kind == "barge_in" and turn in turns:
            turns[turn].cut_s = at(event["silent_pts"])
            turns[turn].command_s = at(event["command_pts"])
            turns[turn].speeds = [1.0]
    for report in turns.values():
        # In the order they were heard (a late word frame is lit late, but at its own position).
        order = sorted(range(len(report.words)), key=lambda i: report.words[i][1])
        report.words = [report.words[i] for i in order]
        report.indices = [report.indices[i] for i in order]
    return [turns[k] for k in sorted(turns)]


def _split_rate(turn: TurnReport, switch_after: int) -> tuple[int, float, float] | None:
    """(words before, words/s before, words/s after) the word at index ``switch_after`` of the reply."""
    split = next((i for i, index in enumerate(turn.indices) if index >= switch_after), None)
    if turn.end_s is None or split is None or not 1 < split < len(turn.words) - 1:
        return None
    starts = [start for _, start in turn.words]
    return split, split / (starts[split] - starts[0]), (len(starts) - split) / (turn.end_s - starts[split])


async def run_headless(
    out: str | Path, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 50.0
) -> HeadlessReport:
    """Run the demo server and the scripted conversation through an aiortc peer; write ``out``.

    Raises :class:`~speakwire.errors.PeerConnectionError` if the peer cannot connect and
    ``TimeoutError`` if the conversation does not finish within ``timeout`` seconds.
    """
    out = Path(out)
    async with DemoServer(host, port) as server:
        client = _Client()
        try:
            async with asyncio.timeout(timeout):
                await client.connect(f"{server.url}offer")
                await _conversation(client)
        finally:
            await client.pc.close()
            if client.receiver is not None:
                client.receiver.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await client.receiver.task
    if client.receiver is None:
        raise PeerConnectionError("no audio track was received")
    samples = client.receiver.samples()
    write_wav(out, samples, TRACK_RATE)
    turns = _turns(client.events)
    fast = next((t for t in turns if len(t.speeds) > 1), None)
    figures = client.of("figures")[-1] if client.of("figures") else {}
    switch_after = switch_s = rate = split = None
    if fast is not None:
        tokens = "".join(e["token"] for e in client.of("llm_text", turn=fast.turn))
        switch_after = len(tokens.split(".")[0].split())
        measured = _split_rate(fast, switch_after)
        if measured is not None:
            n, before, after = measured
            rate, split, switch_s = (before, after), (n, len(fast.words) - n), fast.words[n][1]
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    return HeadlessReport(
        wav=out,
        duration_s=samples.size / TRACK_RATE,
        rms_dbfs=20 * math.log10(rms) if rms > 0 else -math.inf,
        url=server.url,
        ttfa_ms=list(figures.get("ttfa_ms", [])),
        barge_in_ms=list(figures.get("barge_in_ms", [])),
        underruns=int(figures.get("underruns", 0)),
        turns=turns,
        speed_change_after_word=switch_after,
        speed_change_s=switch_s,
        words_per_s=rate,
        words_split=split,
    )


def main_headless(out: str, host: str, port: int) -> int:
    """Run :func:`run_headless` and print its summary; the ``speakwire demo --headless`` entry."""
    quiet_pipecat_logs()
    started = time.perf_counter()
    try:
        report = asyncio.run(run_headless(out, host=host, port=port))
    except OSError as exc:
        print(f"speakwire demo --headless: cannot serve on {host}:{port}: {exc}", file=sys.stderr)
        return 2
    except TimeoutError:
        print("speakwire demo --headless: the conversation did not finish in time", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line)
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0
