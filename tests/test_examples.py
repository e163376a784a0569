"""The examples as a new user runs them: a real process in an empty directory, no API key.

Each example's output files are checked for audio content (duration, level, silence where there
should be silence) against the same texts spoken at speed 1 by the same embedded server in-process.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from speakwire.dsp import pcm
from speakwire.protocol.messages import Chunk, GenerationConfig, OutputFormat, WordTimestamps
from speakwire.server import TTSServer
from speakwire.transport.websocket import TTSConnection
from speakwire.wavfile import read_wav
from tests.needs import module

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

Words = list[tuple[str, float, float]]


def run_example(name: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<name>`` with no Cartesia key (so it never leaves 127.0.0.1) in ``cwd``."""
    env = {k: v for k, v in os.environ.items() if k != "CARTESIA_API_KEY"}
    result = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result


async def speak(texts: list[str], encoding: str, rate: int, speed: float | None = None) -> tuple[np.ndarray, Words]:
    """``texts`` pushed on one context through a fresh embedded server (at ``speed`` if given,
    stretched by the server): (samples, words)."""
    audio = bytearray()
    words: Words = []
    async with TTSServer("127.0.0.1", 0) as server, TTSConnection(server.url) as connection:
        ctx = connection.context(voice="any", output_format=OutputFormat(encoding, rate),  # type: ignore[arg-type]
                                 add_timestamps=True,
                                 generation_config=None if speed is None else GenerationConfig(speed=speed))
        for text in texts:
            await ctx.push(text)
        await ctx.no_more_inputs()
        async for event in ctx:
            if isinstance(event, Chunk):
                audio += event.audio
            elif isinstance(event, WordTimestamps):
                words.extend(zip(event.words, event.start, event.end, strict=True))
    return pcm.decode(bytes(audio), encoding), words  # type: ignore[arg-type]


def load_words(path: Path) -> Words:
    return [(w["word"], w["start"], w["end"]) for w in json.loads(path.read_text())]


def span(words: Words) -> float:
    """Seconds from the first word's start to the last word's end."""
    return words[-1][2] - words[0][1]


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


async def test_speed_control_speaks_the_second_push_one_and_a_half_times_faster(tmp_path: Path) -> None:
    result = run_example("speed_control.py", tmp_path)
    normal_text, fast_text = "I am speaking at a normal pace. ", "But now I am speaking much faster!"

    raw = (tmp_path / "speed_control.pcm").read_bytes()
    assert len(raw) % 4 == 0
    samples = pcm.decode(raw, "pcm_f32le")
    wav, rate = read_wav(tmp_path / "speed_control.wav")
    assert rate == 44100
    # the WAV is the same audio, quantised to 16 bits
    assert len(wav) == len(samples)
    assert float(np.max(np.abs(wav - np.clip(samples, -1, 1)))) <= 1.0 / 32767
    words = load_words(tmp_path / "speed_control.words.json")
    assert [w for w, _, _ in words] == (normal_text + fast_text).split()

    baseline, base_words = await speak([normal_text, fast_text], "pcm_f32le", 44100)
    assert [w for w, _, _ in base_words] == [w for w, _, _ in words]
    normal, fast = words[:7], words[7:]
    base_normal, base_fast = base_words[:7], base_words[7:]
    # the first push is untouched, the second is 1.5x as fast (WSOLA on the server)
    assert span(normal) == pytest.approx(span(base_normal), abs=0.02)
    assert span(base_fast) / span(fast) == pytest.approx(1.5, abs=0.03)
    assert (len(fast) / span(fast)) / (len(normal) / span(normal)) > 1.15  # words per second, as heard
    # everything from the second push on (its trailing silence too) is 1.5x shorter
    base_duration = len(baseline) / 44100
    expected = base_fast[0][1] + (base_duration - base_fast[0][1]) / 1.5
    assert len(samples) / 44100 == pytest.approx(expected, abs=0.02)
    assert 2.5 < len(samples) / 44100 < 4.0
    # speech at a normal level in both halves, not silence or clipping
    split = round(fast[0][1] * 44100)
    assert 0.03 < rms(samples[:split]) < 0.5
    assert 0.03 < rms(samples[split:]) < 0.5
    assert "ffplay -f f32le -ar 44100" in result.stdout


async def test_prosody_phone_number_slows_only_the_number(tmp_path: Path) -> None:
    run_example("prosody_phone_number.py", tmp_path)
    before, number, after = "Our callback number is ", "0 8 0 0, 5 8 3, 4 5 5 2.", " We look forward to your call."

    samples, rate = read_wav(tmp_path / "prosody_phone_number.wav")
    assert rate == 24000
    words = load_words(tmp_path / "prosody_phone_number.words.json")
    assert [w for w, _, _ in words] == (before + number + after).split()
    head, digits, tail = words[:4], words[4:15], words[15:]
    rest_rate = (len(head) + len(tail)) / (span(head) + span(tail))
    assert len(digits) / span(digits) < 0.8 * rest_rate

    medium = f'{before}<prosody rate="medium">{number}</prosody>{after}'
    baseline, base_words = await speak([medium], "pcm_s16le", 24000)
    base_head, base_digits, base_tail = base_words[:4], base_words[4:15], base_words[15:]
    # the span is 0.8x (1.25 times as long), the words around it keep their timing exactly
    assert span(digits) / span(base_digits) == pytest.approx(1.25, abs=0.02)
    assert [t for _, s, e in head for t in (s, e)] == pytest.approx(
        [t for _, s, e in base_head for t in (s, e)], abs=0.02)
    assert span(tail) == pytest.approx(span(base_tail), abs=0.02)
    # the span's audio runs up to the next word (its sentence-final pause is inside it)
    base_span_audio = base_tail[0][1] - base_digits[0][1]
    assert len(samples) / rate == pytest.approx(len(baseline) / rate + 0.25 * base_span_audio, abs=0.02)
    number_audio = samples[round(digits[0][1] * rate):round(digits[-1][2] * rate)]
    assert 0.03 < rms(number_audio) < 0.5


async def test_conversation_speeds_default_and_per_turn_override(tmp_path: Path) -> None:
    result = run_example("conversation_speeds.py", tmp_path)
    texts = ["Welcome to the show.", "Glad to be here.", "Let's get started."]

    samples, rate = read_wav(tmp_path / "conversation_speeds.wav")
    assert rate == 24000
    turns = json.loads((tmp_path / "conversation_speeds.turns.json").read_text())
    assert [(t["text"], t["speed"]) for t in turns] == [(texts[0], 1.1), (texts[1], 0.9), (texts[2], 1.1)]

    # what the server sent is the speech of the text at speed 1 (espeak's length varies by a few ms)
    base = [len((await speak([text], "pcm_f32le", 24000))[0]) / 24000 for text in texts]
    for turn, plain in zip(turns, base, strict=True):
        assert turn["unstretched"] == pytest.approx(plain, abs=0.02)
        # WSOLA gives exactly round(n / speed) samples
        assert round(turn["duration"] * rate) == round(round(turn["unstretched"] * rate) / turn["speed"])
    # the overriding turn is stretched 1.1/0.9 = 1.22 times as much as its neighbours
    stretch = [t["duration"] / t["unstretched"] for t in turns]
    assert stretch[1] / stretch[0] == pytest.approx(1.1 / 0.9, abs=0.001)
    assert stretch[2] / stretch[0] == pytest.approx(1.0, abs=0.001)

    # one WAV: turn, 0.3 s of digital silence, turn, silence, turn
    gap = round(0.3 * rate)
    bounds = [(round(t["start"] * rate), round((t["start"] + t["duration"]) * rate)) for t in turns]
    assert bounds[0][0] == 0 and bounds[-1][1] == len(samples)
    for (_, end), (start, _) in itertools.pairwise(bounds):
        assert start - end == gap
        assert not samples[end:start].any()
    for start, end in bounds:
        assert 0.03 < rms(samples[start:end]) < 0.5
    for line, turn in zip(result.stdout.splitlines(), turns, strict=False):
        assert f"{turn['duration']:.3f} s" in line


def plain(words: list[str]) -> list[str]:
    return [w.strip(".,!?;:").lower() for w in words]


async def test_pipecat_agent_reports_only_the_words_played_before_the_barge_in(tmp_path: Path) -> None:
    result = run_example("pipecat_agent.py", tmp_path)
    turns = json.loads((tmp_path / "pipecat_agent.turns.json").read_text())
    assert [t["question"] for t in turns] == ["Tell me about speakwire.", "Sorry, what time is it?"]
    first, second = turns

    # the first answer was cut 1.5 s in (played in 20 ms pieces, polled every 10 ms; slack for a busy machine)
    assert 1.5 <= first["audio_seconds"] < 1.8
    answer = plain(first["answer"].split())
    spoken = plain(first["spoken_words"])
    assert 0 < len(spoken) < len(answer) and spoken == answer[: len(spoken)]
    # exactly the words whose audio was played: compare with where each word starts at speed 1.2
    _, timed = await speak([first["answer"]], "pcm_f32le", 24000, speed=1.2)
    cut = first["audio_seconds"]
    assert len(spoken) >= sum(1 for _, start, _ in timed if start < cut - 0.1)
    assert len(spoken) <= sum(1 for _, start, _ in timed if start < cut + 0.05)

    # the second answer is heard whole, 1.2 times as fast as the server speaks it (local WSOLA)
    assert plain(second["spoken_words"]) == plain(second["answer"].split())
    base, _ = await speak([second["answer"]], "pcm_f32le", 24000)
    assert second["audio_seconds"] == pytest.approx(len(base) / 24000 / 1.2, abs=0.05)

    samples, rate = read_wav(tmp_path / "pipecat_agent.wav")
    assert rate == 24000
    split = round(first["audio_seconds"] * rate)
    assert len(samples) == split + round(second["audio_seconds"] * rate)
    assert 0.03 < rms(samples[:split]) < 0.5 and 0.03 < rms(samples[split:]) < 0.5
    assert f"{len(first['spoken_words'])} of" in result.stdout


async def test_telephony_twilio_simulated_call_is_cleared_on_the_key_press(tmp_path: Path) -> None:
    module("fastapi", "pip install 'speakwire[telephony]'")
    module("uvicorn", "pip install 'speakwire[telephony]'")
    run_example("telephony_twilio.py", tmp_path)
    events = json.loads((tmp_path / "telephony_twilio.events.json").read_text())
    pressed = next(e["t"] for e in events if e["event"] == "dtmf sent")
    clears = [e for e in events if e["event"] == "clear"]
    assert len(clears) == 1
    clear = clears[0]
    assert 0 <= clear["t"] - pressed < 0.25
    assert 1.5 <= clear["heard_seconds"] < 1.8
    # every media frame is 20 ms of mu-law; none arrives between the clear and the answer
    assert {e["bytes"] for e in events if e["event"] == "media"} <= set(range(1, 161))
    resumed = next(e["t"] for e in events if e["event"] == "media" and e["t"] > clear["t"])
    assert resumed - pressed > 0.5  # the DTMF aggregator's 0.8 s pause before the user's turn ends

    samples, rate = read_wav(tmp_path / "telephony_twilio.wav")
    assert rate == 8000
    # The reference streams the same tokens the example's LLM does: the server's first unit of a
    # token stream is cut early (time to first audio), which espeak speaks a little longer.
    sys.path.insert(0, str(EXAMPLES))
    try:
        from scripted_llm import tokens
    finally:
        sys.path.remove(str(EXAMPLES))
    reply, _ = await speak(tokens("We are open from nine to five, Monday to Friday."), "pcm_mulaw", 8000, speed=1.1)
    split = round(clear["heard_seconds"] * rate)
    assert len(samples) / rate == pytest.approx(clear["heard_seconds"] + len(reply) / rate, abs=0.06)
    assert 0.03 < rms(samples[:split]) < 0.5 and 0.03 < rms(samples[split:]) < 0.5
