"""The command line as a user runs it: real processes, real files, audio checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from speakwire.wavfile import read_wav, write_wav

TEXT = "Hello from speakwire. This sentence is spoken a quarter faster."


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "speakwire", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_say_speaks_through_the_embedded_server_and_stretches(tmp_path: Path) -> None:
    normal = _run("say", TEXT, "normal.wav", cwd=tmp_path)
    fast = _run("say", TEXT, "fast.wav", "--speed", "1.25", "--sample-rate", "16000", cwd=tmp_path)
    assert normal.returncode == 0, normal.stderr
    assert fast.returncode == 0, fast.stderr
    a, rate_a = read_wav(tmp_path / "normal.wav")
    b, rate_b = read_wav(tmp_path / "fast.wav")
    assert (rate_a, rate_b) == (24000, 16000)
    dur_a, dur_b = len(a) / rate_a, len(b) / rate_b
    assert 3.0 < dur_a < 5.0  # ten words of espeak-ng at its default rate
    assert dur_b == pytest.approx(dur_a / 1.25, abs=0.03)
    assert float(np.sqrt(np.mean(b**2))) > 0.03
    # words come back in order, rescaled into the stretched audio
    words = fast.stdout.splitlines()[1].removeprefix("words: ").split()
    assert [w.split("@")[0] for w in words] == TEXT.split()
    starts = [float(w.split("@")[1].rstrip("s")) for w in words]
    assert starts == sorted(starts) and starts[-1] < dur_b


def test_say_refuses_a_bad_speed_with_a_clear_message(tmp_path: Path) -> None:
    result = _run("say", "Hi", "x.wav", "--speed", "3", cwd=tmp_path)
    assert result.returncode == 2
    assert "InvalidSpeedError: speed 3.0 is outside [0.5, 2.0]" in result.stderr
    assert not (tmp_path / "x.wav").exists()


def test_stretch_keeps_pitch_and_sets_length(tmp_path: Path) -> None:
    rate = 16000
    t = np.arange(rate * 2) / rate
    write_wav(tmp_path / "in.wav", 0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32), rate)
    result = _run("stretch", "in.wav", "out.wav", "--speed", "1.5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out, out_rate = read_wav(tmp_path / "out.wav")
    assert out_rate == rate and len(out) == round(len(t) / 1.5)
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    assert np.fft.rfftfreq(len(out), 1 / rate)[np.argmax(spectrum)] == pytest.approx(440, abs=2)
