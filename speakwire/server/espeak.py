"""espeak-ng, in process, as the local server's offline engine.

The library comes from the ``espeakng-loader`` wheel and is driven through ctypes in
``AUDIO_OUTPUT_SYNCHRONOUS`` mode: ``espeak_Synth`` runs on the calling thread and hands each
~60 ms buffer to our callback as it is produced. (Measured here: first buffer after 0.07 ms and
a whole sentence in 2.3 ms, against 0.27 ms and 20 ms in ``AUDIO_OUTPUT_RETRIEVAL`` mode, whose
own thread adds latency and a second thread to keep away from the library.)

espeak-ng is one global instance and crashes (double free) when two threads call it, so a single
process-wide worker thread owns it. Every :class:`EspeakEngine` is a handle on that worker: jobs
from all engines share one :class:`~speakwire.server.engine.FairQueue`, served round-robin by
owner so concurrent contexts interleave a sentence at a time.
"""

from __future__ import annotations

import bisect
import ctypes
import itertools
import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from speakwire.errors import EngineError
from speakwire.server.engine import (
    DEFAULT_RATE_WPM,
    MAX_RATE_WPM,
    MIN_RATE_WPM,
    AudioEvent,
    ErrorEvent,
    JobWorker,
    PhonemeTiming,
    ProcessWide,
    SynthJob,
    WordTiming,
    WorkerEngine,
)

# The rate limits are espeak-ng's own (espeakRATE); engine.py holds them so that every engine
# checks the same range, and they stay importable from here.
__all__ = [
    "DEFAULT_RATE_WPM",
    "MAX_RATE_WPM",
    "MIN_RATE_WPM",
    "EspeakEngine",
    "PhoneMark",
    "WordMark",
    "align_words",
    "phoneme_timings",
    "sanitize_text",
]

logger = logging.getLogger(__name__)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
# Without it espeak calls exit() when its data folder is missing.
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
# Ends each job with the pause its final punctuation calls for, so a reply synthesised clause by
# clause keeps the pauses it would have had as one text (measured: 150 ms after "there,").
_ENDPAUSE = 0x1000
_RATE = 1
_EE_OK = 0

_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7

# A voice name, optionally with a variant ("en-us", "en-gb-x-rp", "en-us+f3", "en+Mr serious").
# espeak also takes paths relative to its voices folder ("gmw/en"), and opens whatever they
# resolve to: "../../dev/zero" spins forever on the one worker thread every engine shares, and
# other paths tell which files exist. So no "/", "\\" or "." can get in: names only.
_VOICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}(\+[A-Za-z0-9_ -]{1,32})?")


class _Event(ctypes.Structure):
    # espeak_EVENT on x86_64 (40 bytes); ``name`` is the union's char[8] view (phoneme mnemonic).
    _fields_ = (
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("name", ctypes.c_char * 8),
    )


class _Voice(ctypes.Structure):
    # espeak_VOICE, for selecting a voice by language code ("en-gb") when no voice has that name.
    _fields_ = (
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    )


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


# ---------------------------------------------------------------------------------------------
# Pure text and timing helpers (no library calls): unit-tested with exact values.


def sanitize_text(text: str) -> str:
    """Make ``text`` safe to hand to espeak, keeping every printable character.

    Whitespace of any kind becomes a plain space (so words are what ``str.split`` finds), other
    control characters are removed (a NUL would end the C string early), and lone surrogates,
    which cannot be encoded as UTF-8, are removed too. Everything else, emoji and combining
    marks included, espeak handles (fuzzed here with random code points).
    """
    if text.isascii() and text.isprintable():
        return text
    out: list[str] = []
    for ch in text:
        if ch.isspace():
            out.append(" ")
        elif unicodedata.category(ch) not in ("Cc", "Cs"):
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class WordMark:
    """A WORD event: espeak starts speaking the text at 0-based character ``index`` at ``time`` seconds."""

    index: int
    time: float


@dataclass(frozen=True, slots=True)
class PhoneMark:
    """A PHONEME event: ``phoneme`` (IPA; ``""`` for a pause) starts at ``time`` seconds."""

    phoneme: str
    time: float

    @property
    def is_pause(self) -> bool:
        """espeak's pause "phonemes" have no IPA."""
        return not self.phoneme


def _word_weight(word: str) -> int:
    # Punctuation-only words ("-", "...") take no time from their neighbours.
    return sum(1 for ch in word if ch.isalnum())


def align_words(text: str, marks: Sequence[WordMark], phones: Sequence[PhoneMark], duration: float) -> list[WordTiming]:
    """Give every whitespace-separated word of ``text`` one timing, from espeak's WORD events.

    espeak skips some words ("of the" gets one event), gives numbers one event per spoken word
    ("$123.45" gets six), and sometimes points an event at the space next to a word. So: each
    mark goes to the word containing its character (a mark on a space goes to the next word,
    unless that word has a mark of its own: then to the previous one); a word's start is its
    first mark; a word with no mark shares the span of the marked word before it, split by letter
    count. A span ends at the pause espeak inserts before the next word (from the pause
    phonemes), so "there," ends where its sound does, not after the comma's silence.

    Timings are in order, non-overlapping, and inside ``[0, duration]``.
    """
    spans = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", text)]
    if not spans:
        return []
    starts = [s for s, _, _ in spans]
    inside: dict[int, list[float]] = {}
    between: list[tuple[int, int, float]] = []
    for mark in marks:
        k = bisect.bisect_right(starts, mark.index) - 1
        if k >= 0 and mark.index < spans[k][1]:
            inside.setdefault(k, []).append(mark.time)
        else:
            between.append((k, k + 1, mark.time))
    first: dict[int, float] = {k: min(times) for k, times in inside.items()}
    for prev, nxt, time in between:
        k = nxt if nxt < len(spans) and (nxt not in inside or prev < 0) else prev
        first[k] = min(time, first.get(k, time))

    # Anchors must rise with the word index; a mark that goes back in time is ignored.
    anchors: list[tuple[int, float]] = []
    for k in sorted(first):
        time = min(max(first[k], 0.0), duration)
        if anchors and time < anchors[-1][1]:
            continue
        anchors.append((k, time))
    if not anchors or anchors[0][0] != 0:
        anchors.insert(0, (0, 0.0))

    phone_times = [p.time for p in phones]
    timings: list[WordTiming] = []
    for n, (k, start) in enumerate(anchors):
        next_k, limit = anchors[n + 1] if n + 1 < len(anchors) else (len(spans), duration)
        end = _sound_end(phones, phone_times, start, limit)
        group = [spans[i][2] for i in range(k, next_k)]
        weights = [_word_weight(w) for w in group]
        total = sum(weights)
        if total == 0:
            weights, total = [1] * len(group), len(group)
        bounds = [start]
        for acc in itertools.accumulate(weights[:-1]):
            bounds.append(min(max(start + (end - start) * acc / total, bounds[-1]), end))
        bounds.append(end)
        timings.extend(WordTiming(word, bounds[i], bounds[i + 1]) for i, word in enumerate(group))
    return timings


def _sound_end(phones: Sequence[PhoneMark], times: Sequence[float], start: float, limit: float) -> float:
    """Where the sound of a span [start, limit) ends: before the run of pauses that closes it."""
    i = bisect.bisect_left(times, limit) - 1
    end = limit
    while i >= 0 and times[i] >= start and phones[i].is_pause:
        end = times[i]
        i -= 1
    return end


def phoneme_timings(phones: Sequence[PhoneMark], duration: float) -> list[PhonemeTiming]:
    """Phoneme timings from PHONEME events: each lasts until the next event; pauses are left out."""
    out: list[PhonemeTiming] = []
    for i, mark in enumerate(phones):
        if mark.is_pause:
            continue
        end = phones[i + 1].time if i + 1 < len(phones) else duration
        out.append(PhonemeTiming(mark.phoneme, mark.time, max(end, mark.time)))
    return out


# ---------------------------------------------------------------------------------------------
# The process-wide owner of the library.


class _Runtime:
    """The library, its one worker thread, and the queue every EspeakEngine feeds."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise EngineError("espeak-ng needs the espeakng-loader package (pip install espeakng-loader)") from exc
        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
        except OSError as exc:
            raise EngineError(f"cannot load libespeak-ng: {exc}") from exc
        lib.espeak_Initialize.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = (_SynthCallback,)
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = (ctypes.c_char_p,)
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByProperties.argtypes = (ctypes.POINTER(_Voice),)
        lib.espeak_SetVoiceByProperties.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = (
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        )
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Info.argtypes = (ctypes.c_void_p,)
        lib.espeak_Info.restype = ctypes.c_char_p
        # No worker exists yet (we are inside _RUNTIME.get()'s lock, before any engine), so this call
        # cannot race another thread in the library.
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS,
            0,
            espeakng_loader.get_data_path().encode(),
            _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA | _INITIALIZE_DONT_EXIT,
        )
        if rate <= 0:
            raise EngineError(f"espeak_Initialize failed (returned {rate})")
        self.lib = lib
        self.sample_rate = int(rate)
        self.version = (lib.espeak_Info(None) or b"?").decode("ascii", "replace")
        # Kept for the life of the process: espeak holds the pointer.
        self._callback = _SynthCallback(self._on_synth)
        lib.espeak_SetSynthCallback(self._callback)

        self.worker = JobWorker("speakwire-espeak", self._run_job)
        self._voice: str | None = None
        # State of the espeak_Synth call in progress (worker thread only).
        self._job: SynthJob | None = None
        self._samples = 0
        self._marks: list[WordMark] = []
        self._phones: list[PhoneMark] = []
        self._stopped = False
        self._callback_error: BaseException | None = None

    # Worker thread.

    def _run_job(self, job: SynthJob, voice: object) -> None:
        assert isinstance(voice, str)
        if self._voice != voice:
            self._voice = None
            rc = self._select_voice(voice)
            if rc != _EE_OK:
                job.deliver(ErrorEvent(EngineError(f"espeak-ng has no voice {voice!r} (error {rc})")))
                return
            self._voice = voice
        text = sanitize_text(job.text)
        if not text.strip():
            job.finish([], [], 0)
            return
        # espeakRATE is global and sticky: set it for every job, default included.
        self.lib.espeak_SetParameter(_RATE, job.rate_wpm or DEFAULT_RATE_WPM, 0)
        data = text.encode("utf-8") + b"\0"
        self._job = job
        self._samples = 0
        self._marks = []
        self._phones = []
        self._stopped = False
        self._callback_error = None
        try:
            # Without espeakENDPAUSE the text's end gets 10 ms of silence instead of a sentence pause
            # (~300 ms): the job is then a piece of a sentence that goes on in the next job.
            flags = _CHARS_UTF8 | (_ENDPAUSE if job.end_pause else 0)
            rc = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, flags, None, None)
        finally:
            self._job = None
        if self._stopped:
            return  # cancelled, or the callback failed and the job already got its ErrorEvent
        if self._callback_error is not None:
            error = EngineError(f"espeak callback failed: {self._callback_error!r}")
            error.__cause__ = self._callback_error
            job.deliver(ErrorEvent(error))
            return
        if rc != _EE_OK:
            job.deliver(ErrorEvent(EngineError(f"espeak_Synth failed (error {rc}) on {len(text)} characters")))
            return
        duration = self._samples / self.sample_rate
        words = align_words(text, self._marks, self._phones, duration)
        phonemes = phoneme_timings(self._phones, duration) if job.phonemes else []
        job.finish(words, phonemes, self._samples)

    def _select_voice(self, voice: str) -> int:
        # Voice names ("en-us", "en", "de", "en-us+f3") first; then language codes ("en-gb",
        # "pt-br", "zh"), which espeak only matches by properties.
        rc = int(self.lib.espeak_SetVoiceByName(voice.encode("ascii")))
        if rc != _EE_OK and "+" not in voice:
            spec = _Voice(None, voice.lower().encode("ascii"), None, 0, 0, 0, 0, 0, None)
            rc = int(self.lib.espeak_SetVoiceByProperties(ctypes.byref(spec)))
        return rc

    def _on_synth(self, wav: ctypes._Pointer[ctypes.c_short], count: int, events: ctypes._Pointer[_Event]) -> int:
        # Called by espeak_Synth on the worker thread. Must not raise: ctypes would print and
        # return 0, and espeak would go on synthesising a job nobody can stop.
        try:
            job = self._job
            if job is None or self._stopped:
                return 1
            rate = self.sample_rate
            if events:
                i = 0
                while events[i].type != _EVENT_LIST_TERMINATED:
                    event = events[i]
                    if event.type == _EVENT_WORD:
                        self._marks.append(WordMark(event.text_position - 1, event.sample / rate))
                    elif event.type == _EVENT_PHONEME:
                        name = event.name.decode("utf-8", "ignore")
                        self._phones.append(PhoneMark(name, event.sample / rate))
                    i += 1
            if count > 0 and wav:
                pcm = np.ctypeslib.as_array(wav, shape=(count,))
                samples = pcm.astype(np.float32) * np.float32(1.0 / 32768.0)
                self._samples += count
                if not job.deliver(AudioEvent(samples)):
                    self._stopped = True
                    return 1
            return 0
        except BaseException as exc:
            self._callback_error = exc
            return 1


_RUNTIME = ProcessWide(_Runtime)


# ---------------------------------------------------------------------------------------------


class EspeakEngine(WorkerEngine):
    """espeak-ng as a streaming, cancellable, fair engine (see :class:`speakwire.server.engine.Engine`).

    ``voice`` is an espeak-ng voice name (``"en-us"``, ``"en"``, ``"de"``, ``"en-us+f3"``, ...) or a
    language code (``"en-gb"``, ``"pt-br"``); an unknown one raises :class:`EngineError` here, and
    so does a path (anything with ``/``, ``\\`` or ``.``: espeak would open the file it names).
    Engines are cheap handles on one process-wide worker; close them (or use ``with``) when done.
    Jobs stream AudioEvents as espeak produces them (~60 ms each); ``rate_wpm`` (80-450, default
    175) sets espeak's own speaking rate for a job.
    """

    name = "espeak"

    def __init__(self, voice: str = "en-us") -> None:
        if not isinstance(voice, str) or not _VOICE_NAME.fullmatch(voice):
            raise EngineError(f"invalid espeak voice name {voice!r}")
        self._voice = voice
        self._runtime = _RUNTIME.get()
        super().__init__(self._runtime.worker, payload=voice)
        try:
            # An empty job makes the worker select the voice: an unknown one fails here, not later.
            self.synthesize("")
        except BaseException:
            self.close()
            raise

    @property
    def sample_rate(self) -> int:
        """22050 Hz: what espeak_Initialize reports."""
        return self._runtime.sample_rate

    @property
    def voice(self) -> str:
        """The espeak-ng voice this engine speaks with."""
        return self._voice

    @property
    def version(self) -> str:
        """The espeak-ng library version (``"1.52.0"``)."""
        return self._runtime.version

    @staticmethod
    def _clean_text(text: str) -> str:
        return sanitize_text(text)
