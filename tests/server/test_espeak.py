"""The espeak-ng engine: real library, real worker thread; assertions on the audio and the timings."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speakwire.errors import EngineError, InvalidSpeedError
from speakwire.server.engine import (
    AudioEvent,
    EndEvent,
    Engine,
    EngineEvent,
    ErrorEvent,
    FairQueue,
    SynthJob,
    WordsEvent,
    WordTiming,
)
from speakwire.server.espeak import (
    EspeakEngine,
    PhoneMark,
    WordMark,
    align_words,
    phoneme_timings,
    sanitize_text,
)
from tests.server.recorder import Recorder

TEN_WORDS = "The quick brown fox jumps over the lazy dog today."
SENTENCES = [
    "Good morning, this is the first sentence.",
    "Here comes the second one, a little longer than the first.",
    "The third sentence is short.",
    "Number four talks about the weather in the mountains.",
    "And this is the fifth and final sentence.",
]


@pytest.fixture(scope="module")
def engine() -> Iterator[EspeakEngine]:
    with EspeakEngine() as eng:
        yield eng


class Blocker:
    """Holds the worker inside a callback so that jobs can be queued "at once"."""

    def __init__(self, engine: EspeakEngine) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

        def hold(event: EngineEvent) -> None:
            if isinstance(event, AudioEvent) and not self.started.is_set():
                self.started.set()
                self.release.wait(10)

        self.job = engine.submit("Hold on a moment.", owner="blocker", on_event=hold)
        assert self.started.wait(10)

    def __enter__(self) -> Blocker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        assert self.job.wait(10)


def band_fraction(audio: np.ndarray, rate: int, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / rate)
    return float(spectrum[(freqs >= lo) & (freqs <= hi)].sum() / spectrum.sum())


def assert_timings_valid(words: list[WordTiming], text: str, duration: float) -> None:
    assert [w.word for w in words] == text.split()
    previous_end = 0.0
    for w in words:
        assert previous_end <= w.start <= w.end <= duration + 1e-9, (w, previous_end, duration)
        previous_end = w.end


# --- pure helpers -----------------------------------------------------------------------------


def test_sanitize_text_keeps_printable_and_normalises_space() -> None:
    assert sanitize_text("Hello, world.") == "Hello, world."
    assert sanitize_text("a\x00b\tc\u2028d\ud800e\x7f\x9ff") == "ab c def"
    assert sanitize_text("Zürich\u00a0café 😀 nai\u0308ve") == "Zürich café 😀 nai\u0308ve"


def test_align_marks_shared_words_and_pauses_exactly() -> None:
    text = "Hello there, think of the weather."
    marks = [WordMark(0, 0.0), WordMark(6, 0.3), WordMark(13, 0.9), WordMark(19, 1.2), WordMark(26, 1.5)]
    # "there," ends at the comma's pause (0.7), the last word at the final pause (2.0).
    phones = [PhoneMark("h", 0.01), PhoneMark("ð", 0.3), PhoneMark("", 0.7), PhoneMark("", 0.85)]
    phones += [PhoneMark("θ", 0.9), PhoneMark("v", 1.2), PhoneMark("w", 1.5), PhoneMark("", 2.0)]
    words = align_words(text, marks, phones, 2.3)
    # "of the" had one event: its 0.3 s are split by letter count, 2:3.
    assert words == [
        WordTiming("Hello", 0.0, 0.3),
        WordTiming("there,", 0.3, 0.7),
        WordTiming("think", 0.9, 1.2),
        WordTiming("of", 1.2, pytest.approx(1.32)),
        WordTiming("the", pytest.approx(1.32), 1.5),
        WordTiming("weather.", 1.5, 2.0),
    ]


def test_align_merges_number_marks_and_resolves_marks_on_spaces() -> None:
    # "$123.45" got marks at $, 1 and three on "2"; the emoji's second mark sits on the space after
    # it (the next word has its own mark), and "now" is marked on the space before it.
    text = "x 😀 $123.45 St. now"
    marks = [WordMark(0, 0.0), WordMark(2, 0.2), WordMark(3, 0.5), WordMark(4, 0.8)]
    marks += [WordMark(5, 1.0), WordMark(6, 1.3), WordMark(6, 1.6), WordMark(6, 1.9)]
    marks += [WordMark(12, 2.2), WordMark(15, 2.5)]
    words = align_words(text, marks, [], 3.0)
    assert words == [
        WordTiming("x", 0.0, 0.2),
        WordTiming("😀", 0.2, 0.8),
        WordTiming("$123.45", 0.8, 2.2),
        WordTiming("St.", 2.2, 2.5),
        WordTiming("now", 2.5, 3.0),
    ]


def test_align_without_marks_and_with_punctuation_only_words() -> None:
    assert align_words("", [], [], 1.0) == []
    # No marks at all: the words share the sound, by letters; "-" takes no time.
    words = align_words("ab - cd", [], [PhoneMark("a", 0.0), PhoneMark("", 0.8)], 1.0)
    assert words == [WordTiming("ab", 0.0, 0.4), WordTiming("-", 0.4, 0.4), WordTiming("cd", 0.4, 0.8)]
    # A mark that goes back in time is ignored rather than producing an overlap.
    words = align_words("a b c", [WordMark(0, 0.5), WordMark(2, 0.2), WordMark(4, 0.7)], [], 1.0)
    assert words == [WordTiming("a", 0.5, 0.6), WordTiming("b", 0.6, 0.7), WordTiming("c", 0.7, 1.0)]


@settings(max_examples=200, deadline=None)
@given(
    text=st.lists(st.text(alphabet="ab.,$1é😀-", min_size=1, max_size=6), min_size=1, max_size=8).map(" ".join),
    raw_marks=st.lists(st.tuples(st.integers(-2, 60), st.floats(-1.0, 5.0)), max_size=12),
    raw_phones=st.lists(st.tuples(st.sampled_from(["", "a", "ˈoʊ"]), st.floats(0.0, 5.0)), max_size=12),
    duration=st.floats(0.0, 5.0),
)
def test_align_invariants_hold_for_any_marks(
    text: str, raw_marks: list[tuple[int, float]], raw_phones: list[tuple[str, float]], duration: float
) -> None:
    marks = [WordMark(i, t) for i, t in raw_marks]
    phones = sorted((PhoneMark(p, min(t, duration)) for p, t in raw_phones), key=lambda p: p.time)
    assert_timings_valid(align_words(text, marks, phones, duration), text, duration)


def test_phoneme_timings_skip_pauses() -> None:
    phones = [PhoneMark("h", 0.0), PhoneMark("ə", 0.1), PhoneMark("", 0.3), PhoneMark("l", 0.5)]
    assert [(p.phoneme, p.start, p.end) for p in phoneme_timings(phones, 0.9)] == [
        ("h", 0.0, 0.1),
        ("ə", 0.1, 0.3),
        ("l", 0.5, 0.9),
    ]


def test_fair_queue_round_robin_fifo_and_removal() -> None:
    q: FairQueue[str] = FairQueue()
    for item in ("A1", "A2", "A3"):
        q.put("A", item)
    q.put("B", "B1")
    q.put("B", "B2")
    assert q.pop() == "A1"
    q.put("C", "C1")  # joins at the back
    assert [q.pop() for _ in range(3)] == ["B1", "A2", "C1"]
    assert q.remove("B", "B2") and not q.remove("B", "B2")
    assert len(q) == 1 and q.owners() == ["A"]
    q.put("Z", "Z1", front=True)  # a new owner's free item goes first ...
    q.put("A", "A4", front=True)  # ... but an owner with a line keeps its order
    assert q.owners() == ["Z", "A"] and list(q) == ["Z1", "A3", "A4"]
    assert q.pop() == "Z1" and q.pop_owner("A") == ["A3", "A4"]
    with pytest.raises(IndexError):
        q.pop()


def test_job_delivery_stops_after_cancel_and_survives_a_raising_callback(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    job = SynthJob("x", owner=1, on_event=rec)
    assert job.start() and job.deliver(AudioEvent(np.zeros(3, np.float32)))
    assert job.cancel() and not job.cancel()
    assert not job.deliver(EndEvent(3)) and rec.kinds() == ["AudioEvent"] and job.state == "cancelled"

    seen: list[EngineEvent] = []

    def boom(event: EngineEvent) -> None:
        seen.append(event)
        if isinstance(event, AudioEvent):
            raise KeyError("consumer bug")

    job = SynthJob("x", owner=1, on_event=boom)
    job.start()
    with caplog.at_level(logging.ERROR, logger="speakwire.server.engine"):
        assert not job.deliver(AudioEvent(np.zeros(3, np.float32)))
    assert "on_event raised on AudioEvent" in caplog.text
    assert isinstance(seen[1], ErrorEvent) and isinstance(seen[1].error, EngineError)
    assert isinstance(seen[1].error.__cause__, KeyError)
    assert job.state == "failed" and job.wait(0) and not job.deliver(EndEvent(3)) and len(seen) == 2


# --- the real engine --------------------------------------------------------------------------


def test_engine_satisfies_the_protocol(engine: EspeakEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.name == "espeak" and engine.sample_rate == 22050 and engine.version.startswith("1.52")


def test_sentence_audio_is_speech_of_plausible_length_and_level(engine: EspeakEngine) -> None:
    result = engine.synthesize(TEN_WORDS)
    audio = result.audio
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 2.5 <= result.duration <= 4.0
    assert 0.05 < float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) < 0.5
    assert float(np.abs(audio).max()) <= 1.0
    # Speech-like: nearly all energy in the voice band, little below it, centroid where vowels are.
    assert band_fraction(audio, result.sample_rate, 100, 4000) > 0.9
    assert band_fraction(audio, result.sample_rate, 0, 80) < 0.05


def test_word_timings_one_per_word_in_order_with_punctuation(engine: EspeakEngine) -> None:
    text = "Hello there, how are you doing today? I think of the weather."
    result = engine.synthesize(text)
    assert_timings_valid(result.words, text, result.duration)
    assert [w.word for w in result.words][1] == "there,"
    # Every word except the merged "of" is audible for a while; the first starts at once.
    assert result.words[0].start == 0.0
    assert all(w.end - w.start > 0.05 for w in result.words)
    # "there," ends at its sound, before the comma pause (> 100 ms of silence follows it).
    there, how = result.words[1], result.words[2]
    gap = result.audio[int(there.end * 22050) + 50 : int(how.start * 22050) - 50]
    assert how.start - there.end > 0.1 and float(np.abs(gap).max()) < 0.01
    # The last word ends where the sound does; what follows is the end pause.
    tail = result.audio[int(result.words[-1].end * 22050) + 50 :]
    assert len(tail) > 0.2 * 22050 and float(np.abs(tail).max()) < 0.01


def test_non_ascii_text_maps_words_by_character(engine: EspeakEngine) -> None:
    for text in (
        "Zürich café naïve",
        "Ça va très bien à Zürich, naïve Zoë.",
        "Nai\u0308ve cafe\u0301 e\u0301te\u0301 ok",
    ):
        result = engine.synthesize(text)
        assert_timings_valid(result.words, text, result.duration)
        # A byte-offset mapping would put two events on one word and none on another.
        assert all(w.end - w.start > 0.08 for w in result.words), result.words


def test_word_mapping_counts_characters_not_bytes(engine: EspeakEngine) -> None:
    # espeak reads soft hyphens (2 UTF-8 bytes each) as nothing, so these two texts sound the same
    # while their byte offsets drift apart by 6 per word: the word starts must still agree.
    plain = "one two three four five six seven eight"
    hyphenated = " ".join(w[0] + "\u00ad" * 3 + w[1:] for w in plain.split())
    a, b = engine.synthesize(plain), engine.synthesize(hyphenated)
    assert [w.word for w in b.words] == hyphenated.split()
    assert abs(a.duration - b.duration) < 0.03
    for x, y in zip(a.words, b.words, strict=True):
        assert abs(x.start - y.start) < 0.03 and abs(x.end - y.end) < 0.03, (x, y)


def test_events_stream_before_the_job_ends(engine: EspeakEngine) -> None:
    text = " ".join(SENTENCES * 6)
    rec = Recorder()
    t0 = time.perf_counter()
    engine.submit(text, owner="stream", on_event=rec)
    assert rec.done.wait(10)
    kinds = rec.kinds()
    n_audio = kinds.count("AudioEvent")
    assert kinds == ["AudioEvent"] * n_audio + ["WordsEvent", "EndEvent"]
    end = rec.events[-1]
    assert isinstance(end, EndEvent) and end.total_samples == len(rec.audio)
    # ~60 ms buffers, handed over one by one.
    assert n_audio >= end.total_samples / 22050 / 0.07
    assert len(rec.events[0].samples) <= 2 * 1324  # type: ignore[union-attr]
    first, last = rec.times[0] - t0, rec.times[-1] - t0
    assert first < 0.2 * last, (first, last)


def test_empty_and_whitespace_text_end_at_once(engine: EspeakEngine) -> None:
    for text in ("", "   ", "\t\n", "\x00\x01"):
        rec = Recorder()
        engine.submit(text, owner="empty", on_event=rec)
        assert rec.done.wait(5)
        assert rec.events == [WordsEvent([], []), EndEvent(0)]


def test_odd_unicode_and_nul_bytes_do_not_crash(engine: EspeakEngine) -> None:
    text = "Hello\x00world \ud800 lone, RTL שלום, emoji 👍🏽, e\u0301\u0301\u0301 \ufffe \U0010ffff \x1b[0m <b> & end"
    result = engine.synthesize(text)
    clean = sanitize_text(text)
    assert [w.word for w in result.words] == clean.split() and result.words[0].word == "Helloworld"
    assert result.duration > 2.0
    assert_timings_valid(result.words, clean, result.duration)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60))
def test_any_text_gives_valid_timings(engine: EspeakEngine, text: str) -> None:
    result = engine.synthesize(text)
    assert_timings_valid(result.words, sanitize_text(text), result.duration)


def test_long_text_does_not_crash(engine: EspeakEngine) -> None:
    text = " ".join(SENTENCES * 25)  # ~1000 words
    result = engine.synthesize(text)
    assert len(result.words) == len(text.split())
    assert 200 < result.duration < 600


def test_phoneme_timings_in_ipa(engine: EspeakEngine) -> None:
    result = engine.synthesize("Hello world.", phonemes=True)
    names = [p.phoneme for p in result.phonemes]
    assert names[:4] == ["h", "ə", "l", "ˈoʊ"]
    assert all(a.end <= b.start + 1e-9 for a, b in zip(result.phonemes, result.phonemes[1:], strict=False))
    assert result.phonemes[-1].end <= result.duration
    assert engine.synthesize("Hello world.").phonemes == []


def test_rate_wpm_is_per_job(engine: EspeakEngine) -> None:
    normal = engine.synthesize(TEN_WORDS).duration
    fast = engine.synthesize(TEN_WORDS, rate_wpm=350).duration
    again = engine.synthesize(TEN_WORDS).duration
    assert 0.4 < fast / normal < 0.7
    assert abs(again - normal) < 0.03  # the global rate was put back
    for bad in (79, 451, 1.5, True, "fast"):
        with pytest.raises(InvalidSpeedError):
            engine.submit("x", owner="bad", on_event=Recorder(), rate_wpm=bad)  # type: ignore[arg-type]


def test_cancel_running_job_no_event_after_return(engine: EspeakEngine) -> None:
    reference = engine.synthesize(TEN_WORDS)
    first_audio = threading.Event()
    returned = threading.Event()
    late: list[EngineEvent] = []
    count = [0]

    def on_event(event: EngineEvent) -> None:
        count[0] += 1
        if returned.is_set():
            late.append(event)
        if isinstance(event, AudioEvent):
            first_audio.set()
            time.sleep(0.001)  # keep the race with cancel() open

    job = engine.submit(" ".join(SENTENCES * 10), owner="victim", on_event=on_event)
    assert first_audio.wait(5)
    assert job.cancel()
    returned.set()
    after = engine.synthesize(TEN_WORDS)  # another owner, next in line
    assert late == [] and job.state == "cancelled" and not job.cancel()
    assert count[0] < 400  # stopped long before its ~1500 buffers
    assert abs(after.duration - reference.duration) < 0.03
    assert_timings_valid(after.words, TEN_WORDS, after.duration)


def test_cancel_from_inside_the_callback(engine: EspeakEngine) -> None:
    rec = Recorder()
    holder: list[SynthJob] = []

    def on_event(event: EngineEvent) -> None:
        rec(event)
        holder[0].cancel()

    holder.append(engine.submit(TEN_WORDS, owner="self-cancel", on_event=on_event))
    assert holder[0].wait(5)
    time.sleep(0.05)
    assert rec.kinds() == ["AudioEvent"] and holder[0].cancelled
    assert engine.synthesize("Still working.").duration > 0.5


def test_cancel_pending_and_cancel_owner(engine: EspeakEngine) -> None:
    pending, other = Recorder(), Recorder()
    with Blocker(engine):
        job = engine.submit(TEN_WORDS, owner="p", on_event=pending)
        owned = [engine.submit(s, owner="q", on_event=pending) for s in SENTENCES[:3]]
        survivor = engine.submit(TEN_WORDS, owner="r", on_event=other)
        assert job.cancel()
        assert engine.cancel_owner("q") == 3 and engine.cancel_owner("q") == 0
    assert survivor.wait(5) and other.kinds()[-1] == "EndEvent"
    assert pending.events == [] and all(j.cancelled for j in owned)


def test_owners_are_served_round_robin(engine: EspeakEngine) -> None:
    order: list[tuple[str, int]] = []
    jobs = []
    owners = [f"ctx{i}" for i in range(5)]
    with Blocker(engine):
        for owner in owners:
            for n, sentence in enumerate(SENTENCES):

                def on_event(event: EngineEvent, tag: tuple[str, int] = (owner, n)) -> None:
                    if isinstance(event, AudioEvent) and (not order or order[-1] != tag):
                        order.append(tag)

                jobs.append(engine.submit(sentence, owner=owner, on_event=on_event))
    assert all(job.wait(10) for job in jobs)
    assert order == [(owner, n) for n in range(5) for owner in owners]
    # The brief's requirement, spelled out: every owner heard before any third job starts.
    first_third = order.index(next(tag for tag in order if tag[1] == 2))
    assert {tag[0] for tag in order[:first_third] if tag[1] == 0} == set(owners)


def test_empty_job_does_not_wait_for_other_owners(engine: EspeakEngine) -> None:
    finished: list[str] = []

    def note(name: str) -> Callable[[EngineEvent], None]:
        return lambda event: finished.append(name) if isinstance(event, EndEvent) else None

    with Blocker(engine):
        busy = [engine.submit(s, owner=f"busy{i}", on_event=note(f"busy{i}")) for i, s in enumerate(SENTENCES)]
        flush = engine.submit("  ", owner="flusher", on_event=note("flush"))
        # An owner with a job queued keeps its order: its empty job comes after that job.
        engine.submit(TEN_WORDS, owner="busy0", on_event=note("busy0-second"))
        after = engine.submit("", owner="busy0", on_event=note("busy0-empty"))
    assert flush.wait(5) and after.wait(5) and all(job.wait(5) for job in busy)
    assert finished[0] == "flush"
    assert finished.index("busy0-second") < finished.index("busy0-empty")


def test_raising_callback_does_not_kill_the_worker(engine: EspeakEngine, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[EngineEvent] = []

    def on_event(event: EngineEvent) -> None:
        seen.append(event)
        if isinstance(event, AudioEvent):
            raise RuntimeError("consumer blew up")

    with caplog.at_level(logging.ERROR):
        job = engine.submit(TEN_WORDS, owner="bad", on_event=on_event)
        assert job.wait(5)
    assert [type(e).__name__ for e in seen] == ["AudioEvent", "ErrorEvent"]
    assert "consumer blew up" in str(seen[1].error)  # type: ignore[union-attr]
    assert "on_event raised" in caplog.text
    result = engine.synthesize(TEN_WORDS)
    assert 2.5 <= result.duration <= 4.0


def test_synthesize_inside_a_callback_is_an_error_not_a_deadlock(engine: EspeakEngine) -> None:
    seen: list[EngineEvent] = []

    def on_event(event: EngineEvent) -> None:
        seen.append(event)
        if isinstance(event, AudioEvent):
            engine.synthesize("nested")

    assert engine.submit("Hi.", owner="nested", on_event=on_event).wait(5)
    assert isinstance(seen[-1], ErrorEvent) and "worker thread" in str(seen[-1].error.__cause__)


def test_bad_voice_and_closed_engine() -> None:
    with pytest.raises(EngineError, match="no voice 'xx-nope'"):
        EspeakEngine("xx-nope")
    with pytest.raises(EngineError, match="invalid espeak voice"):
        EspeakEngine("en\x00us")
    eng = EspeakEngine("en-gb")
    assert eng.synthesize("Good evening.").duration > 0.5
    eng.close()
    eng.close()
    with pytest.raises(EngineError, match="closed"):
        eng.submit("x", owner=1, on_event=Recorder())


@pytest.mark.parametrize(
    "voice",
    ["../../../../../../../../../../dev/zero", "/dev/zero", "gmw/en", "en\\us", "..", "en.us", "en-us+../../x",
     "x" * 65],
)
def test_a_voice_name_that_is_a_path_is_refused_before_espeak_opens_it(voice: str) -> None:
    # espeak opens a voice name as a file under its data folder: /dev/zero spun forever on the
    # worker every engine shares, and other paths told which files exist.
    outcome: list[BaseException | EspeakEngine] = []

    def make() -> None:
        try:
            outcome.append(EspeakEngine(voice))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=make, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "the espeak worker hung on the voice"
    assert isinstance(outcome[0], EngineError) and "invalid espeak voice" in str(outcome[0]), outcome


@pytest.mark.parametrize(
    ("voice", "text"), [("en-us+f3", "Hello."), ("en-gb-x-rp", "Good evening."), ("cmn", "ni hao")]
)
def test_voice_names_with_variants_and_regions_still_work(voice: str, text: str) -> None:
    with EspeakEngine(voice) as eng:
        assert eng.synthesize(text).duration > 0.3


def test_engine_restarts_in_one_process() -> None:
    # In a fresh interpreter: the worker stops with the last engine and a new one starts it again.
    code = (
        "import threading, time\n"
        "from speakwire.server.espeak import EspeakEngine\n"
        "base = threading.active_count()\n"
        "for _ in range(3):\n"
        "    with EspeakEngine() as e:\n"
        "        r = e.synthesize('Once more, please.')\n"
        "        assert 0.8 < r.duration < 2.5 and len(r.words) == 3, r\n"
        "    deadline = time.monotonic() + 5\n"
        "    while threading.active_count() > base and time.monotonic() < deadline:\n"
        "        time.sleep(0.01)\n"
        "    assert threading.active_count() == base, threading.enumerate()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_closing_an_engine_cancels_only_its_own_jobs(engine: EspeakEngine) -> None:
    other = EspeakEngine()
    mine, theirs = Recorder(), Recorder()
    with Blocker(engine):
        doomed = [other.submit(s, owner="shared-id", on_event=theirs) for s in SENTENCES[:2]]
        kept = engine.submit(SENTENCES[0], owner="shared-id", on_event=mine)
        other.close()
    assert kept.wait(5) and mine.kinds()[-1] == "EndEvent"
    assert all(job.cancelled for job in doomed) and theirs.events == []


def test_worker_survives_an_engine_bug_and_keeps_order() -> None:
    from speakwire.server.engine import JobWorker

    ran: list[str] = []

    def run(job: SynthJob, payload: object) -> None:
        if job.text == "bug":
            raise ZeroDivisionError("engine bug")
        ran.append(job.text)
        job.deliver(WordsEvent([], []))
        job.deliver(EndEvent(0))

    worker = JobWorker("test-worker", run)
    worker.attach()
    try:
        rec = Recorder()
        jobs = [worker.submit(t, owner="o", key="o", on_event=rec) for t in ("a", "bug", "b")]
        assert all(job.wait(5) for job in jobs)
        assert ran == ["a", "b"] and [j.state for j in jobs] == ["finished", "failed", "finished"]
        errors = [e for e in rec.events if isinstance(e, ErrorEvent)]
        assert len(errors) == 1 and isinstance(errors[0].error.__cause__, ZeroDivisionError)
    finally:
        worker.detach()


def test_many_threads_submitting_and_cancelling(engine: EspeakEngine) -> None:
    violations: list[str] = []
    cancelled_ids: set[int] = set()
    lock = threading.Lock()
    all_jobs: list[SynthJob] = []

    def client(n: int) -> None:
        for i, sentence in enumerate(SENTENCES):
            box: list[SynthJob] = []

            def on_event(event: EngineEvent, box: list[SynthJob] = box) -> None:
                with lock:
                    if box and id(box[0]) in cancelled_ids:
                        violations.append(f"event after cancel: {event!r}")

            job = engine.submit(sentence, owner=f"client{n}", on_event=on_event)
            box.append(job)
            with lock:
                all_jobs.append(job)
            if (n + i) % 3 == 0:
                if job.cancel():
                    with lock:
                        cancelled_ids.add(id(job))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert all(job.wait(10) for job in all_jobs)
    assert violations == []
    states = [job.state for job in all_jobs]
    assert states.count("cancelled") == len(cancelled_ids) > 0
    assert states.count("finished") == len(all_jobs) - len(cancelled_ids)


def trailing_silence(audio: np.ndarray, rate: int, level: float = 0.01) -> float:
    """Seconds after the last sample louder than ``level`` (-40 dBFS)."""
    loud = np.flatnonzero(np.abs(audio) > level)
    return (len(audio) - 1 - int(loud[-1])) / rate


def test_without_the_end_pause_a_cut_sentence_stops_where_its_speech_does(engine: EspeakEngine) -> None:
    cut = engine.synthesize("The weather in", end_pause=False)
    whole = engine.synthesize("The weather in")
    # With espeakENDPAUSE the text's end gets a sentence pause (measured 0.30 s); without, 10 ms.
    assert trailing_silence(whole.audio, 22050) > 0.25
    assert trailing_silence(cut.audio, 22050) < 0.05
    # Same speech, only the pause is gone.
    assert whole.duration - cut.duration == pytest.approx(0.29, abs=0.03)
    assert [w.word for w in cut.words] == ["The", "weather", "in"]
    assert cut.words[-1].end <= cut.duration
    assert rms_of(cut.audio) > 0.05


def test_end_pause_is_per_job(engine: EspeakEngine) -> None:
    # espeak's option is global: a job without the pause must not leak into the next one.
    engine.synthesize("Sure", end_pause=False)
    assert trailing_silence(engine.synthesize("Sure,").audio, 22050) == pytest.approx(0.15, abs=0.03)
    assert trailing_silence(engine.synthesize("Sure,", end_pause=False).audio, 22050) < 0.05


def rms_of(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
