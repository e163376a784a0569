"""``speakwire demo --headless`` as a user runs it: a real process, a real WAV, the printed figures.

The run serves the demo, connects an aiortc peer over 127.0.0.1 through ``POST /offer`` and the
``"control"`` data channel, and writes what it received. The printed timeline (sender positions,
in seconds of the WAV) is checked against the audio itself.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from speakwire.wavfile import read_wav

RATE = 48000
WINDOW = 0.005  # s, for levels


@dataclass
class Run:
    out: str
    samples: np.ndarray

    def line(self, prefix: str) -> str:
        found = [line for line in self.out.splitlines() if line.startswith(prefix)]
        assert len(found) == 1, f"{prefix!r} in:\n{self.out}"
        return found[0]

    def turn(self, n: int) -> str:
        return self.line(f"turn {n}:")

    def dbfs(self, start: float, end: float) -> float:
        x = self.samples[int(start * RATE) : int(end * RATE)].astype(np.float64)
        return 10 * np.log10(np.mean(np.square(x)) + 1e-20)

    def window_levels(self, start: float, end: float) -> np.ndarray:
        """Levels (dBFS) of consecutive 5 ms windows in [start, end)."""
        w = int(WINDOW * RATE)
        x = self.samples[int(start * RATE) : int(end * RATE)].astype(np.float64)
        n = len(x) // w
        return 10 * np.log10(np.mean(np.square(x[: n * w].reshape(n, w)), axis=1) + 1e-20)

    def onset(self, near: float) -> float:
        """Where speech starts (first 5 ms window above -50 dBFS) from 50 ms before ``near``."""
        levels = self.window_levels(near - 0.05, near + 0.3)
        loud = np.flatnonzero(levels > -50)
        assert loud.size, f"no speech near {near} s"
        return near - 0.05 + loud[0] * WINDOW

    def active_s(self, start: float, end: float) -> float:
        """Seconds of speech (5 ms windows above -40 dBFS) in [start, end)."""
        return float(np.sum(self.window_levels(start, end) > -40) * WINDOW)


def _floats(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", text)]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    cwd: Path = tmp_path_factory.mktemp("demo")
    done = subprocess.run([sys.executable, "-m", "speakwire", "demo", "--headless", "--out", "demo.wav"],
                          cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-4000:]
    samples, rate = read_wav(cwd / "demo.wav")
    assert rate == RATE and samples.ndim == 1
    return Run(done.stdout, samples)


def test_the_wav_has_the_four_replies_as_speech(run: Run) -> None:
    duration = len(run.samples) / RATE
    assert 9.0 < duration < 30.0
    assert run.line("wrote demo.wav:").startswith(f"wrote demo.wav: {duration:.2f} s at 48000 Hz")
    for n in (1, 2, 4):
        start, end = _floats(run.turn(n).split(":", 1)[1])[:2]
        assert end - start > 0.8
        assert run.dbfs(start, end) > -32, f"turn {n} is too quiet"
    # Between replies the received audio is digital silence: nothing plays but the agent.
    end_1 = _floats(run.turn(1).split(":", 1)[1])[1]
    start_2 = _floats(run.turn(2).split(":", 1)[1])[0]
    assert run.dbfs(end_1 + 0.05, start_2) < -70


def test_the_timeline_printed_matches_the_audio(run: Run) -> None:
    # Each reply starts where the sender says, give or take the codec's delay (the WAV is laid
    # out on the received RTP timestamps, which start at the sender's first frame).
    for n in (1, 2, 3, 4):
        start = _floats(run.turn(n).split(":", 1)[1])[0]
        assert 0.0 <= run.onset(start) - start <= 0.04, (n, start, run.onset(start))


def test_the_mid_reply_speed_change_shows_in_the_audio(run: Run) -> None:
    line = run.line("speed change:")
    assert line.startswith("speed change: 1.0 -> 2.0 mid-reply after word 12")
    switch, n_before, rate_before, n_after, rate_after = _floats(line.split("heard from", 1)[1])
    start, end = _floats(run.turn(2).split(":", 1)[1])[:2]
    assert "speed 1->2" in run.turn(2)
    assert start < switch < end
    assert 1.6 < rate_after / rate_before < 2.6
    # In the audio itself: speech time per word halves after the change.
    per_word_before = run.active_s(start, switch) / n_before
    per_word_after = run.active_s(switch, end + 0.04) / n_after
    assert 0.35 < per_word_after / per_word_before < 0.65, (per_word_before, per_word_after)


def test_barge_in_silences_the_reply_within_60_ms_and_nothing_of_it_plays_after(run: Run) -> None:
    line = run.turn(3)
    silent_from, command = _floats(line.split("silent from", 1)[1])[:2]
    next_start = _floats(run.turn(4).split(":", 1)[1])[0]
    assert 0 <= silent_from - command <= 0.060
    assert run.dbfs(command - 0.5, command) > -40, "the reply was not playing when it was cut"
    # From 60 ms after the command until the next reply: silence in every 5 ms window (a
    # 40 ms allowance for the codec delay measured above).
    levels = run.window_levels(command + 0.060 + 0.040, next_start)
    assert levels.size > 10 and levels.max() < -60, levels.max()
    assert run.onset(next_start) - next_start <= 0.04
    latency = _floats(run.line("barge-in latency:"))[0]
    assert 0 < latency < 60


def test_figures_are_printed_and_plausible(run: Run) -> None:
    ttfa = _floats(run.line("time to first audio:").split("(")[0])
    assert len(ttfa) == 4 and all(20 < t < 1500 for t in ttfa), ttfa
    assert 0 <= int(_floats(run.line("underruns:"))[0]) <= 3
    heard = run.line("words heard")
    count = int(_floats(heard)[0])
    words = heard.split(": ", 1)[1].split()
    assert count == len(words) and words[:3] == ["Hi,", "I'm", "the"] and words[-1] == "listening."
    # The cut reply's words stop where it was cut: fewer than in its text, none after.
    cut_words = int(_floats(run.turn(3).split("speed", 1)[1])[1])
    assert 3 <= cut_words <= 8
    assert words[count - 4 - cut_words : count - 4] == "When you barge in, the context is cancelled".split()[:cut_words]
    assert float(_floats(run.line("done in"))[0]) < 45
