"""What every speech engine shares: timings, the events a job delivers, the job and how jobs are run.

An engine turns one piece of text (a sentence or clause) into one *job*. The job streams its
audio to a callback as the engine produces it, then the word (and phoneme) timings, then exactly
one terminal event::

    AudioEvent* -> WordsEvent -> EndEvent        (or, on failure, ... -> ErrorEvent)

Engines own a single worker thread (espeak-ng crashes when two threads call it), so callbacks
run on that thread and must return quickly: hand the event to your event loop
(``loop.call_soon_threadsafe``) rather than doing work in it, and never block in it on the
thread that may call :meth:`SynthJob.cancel` (that would deadlock: ``cancel`` waits for a
callback in progress to return, which is what makes "no event after cancel" hold).

:class:`SynthJob` is the handle a caller gets; :class:`FairQueue` (pure) and :class:`JobWorker`
(its thread) run jobs round-robin by owner, so concurrent contexts take turns a sentence at a
time. :class:`WorkerEngine` is the front end engines share on top of a worker (submit, cancel,
synthesize, close); each engine adds its own payload, text cleaning and description.
``submit``, ``cancel``, ``cancel_owner`` and ``close`` may be called from any thread.
Nothing here imports asyncio: the server wraps these thread-side objects itself.
"""

from __future__ import annotations

import itertools
import logging
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, Generic, Literal, Protocol, Self, TypeVar, runtime_checkable

import numpy as np

from speakwire.errors import EngineError, InvalidSpeedError

__all__ = [
    "DEFAULT_RATE_WPM",
    "MAX_RATE_WPM",
    "MIN_RATE_WPM",
    "AudioEvent",
    "EndEvent",
    "Engine",
    "EngineEvent",
    "ErrorEvent",
    "EventCallback",
    "FairQueue",
    "JobState",
    "JobWorker",
    "PhonemeTiming",
    "ProcessWide",
    "SynthJob",
    "SynthResult",
    "WordTiming",
    "WordsEvent",
    "WorkerEngine",
]

logger = logging.getLogger(__name__)

#: The speaking rates ``rate_wpm`` may ask for, and the default, in words per minute: espeak-ng's
#: own limits (espeakRATE), which Piper maps onto its phoneme durations.
MIN_RATE_WPM = 80
MAX_RATE_WPM = 450
DEFAULT_RATE_WPM = 175


@dataclass(frozen=True, slots=True)
class WordTiming:
    """One word of the job's text and when it is spoken, in seconds from the start of the job's audio.

    ``word`` is a whitespace-separated word of the text, punctuation attached (``"there,"``).
    """

    word: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class PhonemeTiming:
    """One phoneme (IPA for espeak) and when it is spoken, in seconds from the start of the job's audio."""

    phoneme: str
    start: float
    end: float


@dataclass(frozen=True, slots=True, eq=False)
class AudioEvent:
    """A buffer of the job's audio: float32 mono in [-1, 1] at the engine's ``sample_rate``."""

    samples: np.ndarray


@dataclass(frozen=True, slots=True)
class WordsEvent:
    """The job's word timings (one per word of the text, in order) and phoneme timings (if asked for)."""

    words: list[WordTiming]
    phonemes: list[PhonemeTiming] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EndEvent:
    """The job is complete; ``total_samples`` is the sum of its AudioEvent lengths."""

    total_samples: int


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """The job failed; no further event follows. ``error`` is an :class:`EngineError` (or subclass)."""

    error: Exception


EngineEvent = AudioEvent | WordsEvent | EndEvent | ErrorEvent
EventCallback = Callable[[EngineEvent], None]
JobState = Literal["pending", "running", "finished", "failed", "cancelled"]

_TERMINAL: frozenset[str] = frozenset({"finished", "failed", "cancelled"})


@dataclass(frozen=True, slots=True, eq=False)
class SynthResult:
    """The whole output of one synthesis, for callers that do not stream (tests, CLI, benchmarks)."""

    audio: np.ndarray
    words: list[WordTiming]
    phonemes: list[PhonemeTiming]
    sample_rate: int

    @property
    def duration(self) -> float:
        """Length of ``audio`` in seconds."""
        return len(self.audio) / self.sample_rate


class SynthJob:
    """Handle on one queued synthesis: cancel it, wait for it, read its state.

    The engine creates jobs (``Engine.submit``) and drives them through :meth:`start` and
    :meth:`deliver`; callers only use :meth:`cancel`, :meth:`wait` and the read-only properties.
    """

    def __init__(
        self,
        text: str,
        *,
        owner: Hashable,
        on_event: EventCallback,
        rate_wpm: int | None = None,
        phonemes: bool = False,
        end_pause: bool = True,
        on_cancel: Callable[[SynthJob], None] | None = None,
    ) -> None:
        self._text = text
        self._owner = owner
        self._on_event = on_event
        self._rate_wpm = rate_wpm
        self._phonemes = phonemes
        self._end_pause = end_pause
        self._on_cancel = on_cancel
        # Re-entrant: a callback may cancel its own job from the worker thread.
        self._lock = threading.RLock()
        self._state: JobState = "pending"
        self._settled = threading.Event()

    def __repr__(self) -> str:
        preview = self._text if len(self._text) <= 40 else self._text[:37] + "..."
        return f"<SynthJob owner={self._owner!r} state={self._state} text={preview!r}>"

    @property
    def text(self) -> str:
        """The text as submitted."""
        return self._text

    @property
    def owner(self) -> Hashable:
        """The owner (context) the job was submitted for."""
        return self._owner

    @property
    def rate_wpm(self) -> int | None:
        """Speaking rate asked for, in words per minute (``None``: the engine's default)."""
        return self._rate_wpm

    @property
    def phonemes(self) -> bool:
        """Whether phoneme timings were asked for."""
        return self._phonemes

    @property
    def end_pause(self) -> bool:
        """Whether the audio ends with the engine's end-of-sentence pause.

        False for text cut mid-sentence (more of the sentence follows in the next job): the audio
        then stops where the speech does, so the next job's words follow without a gap.
        """
        return self._end_pause

    @property
    def state(self) -> JobState:
        """``pending``, ``running``, or one of the final states ``finished``, ``failed``, ``cancelled``."""
        return self._state

    @property
    def done(self) -> bool:
        """True once the job is finished, failed or cancelled."""
        return self._state in _TERMINAL

    @property
    def cancelled(self) -> bool:
        """True if :meth:`cancel` stopped the job."""
        return self._state == "cancelled"

    def cancel(self) -> bool:
        """Stop the job: after this returns, its callback is never called again.

        A pending job is dropped from the queue; a running one stops at the engine's next buffer.
        If a callback for this job is running on another thread, waits for it to return.
        Returns False if the job had already ended (nothing to cancel).
        """
        with self._lock:
            if self._state in _TERMINAL:
                return False
            self._state = "cancelled"
            self._settled.set()
        if self._on_cancel is not None:
            self._on_cancel(self)
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is finished, failed or cancelled; False if ``timeout`` ran out first."""
        return self._settled.wait(timeout)

    # Engine side.

    def start(self) -> bool:
        """Mark the job running; False if it was cancelled meanwhile (then do not synthesise it)."""
        with self._lock:
            if self._state != "pending":
                return False
            self._state = "running"
            return True

    def deliver(self, event: EngineEvent) -> bool:
        """Hand ``event`` to the callback, unless the job has ended; False means: stop producing.

        An exception raised by the callback is logged and ends the job: the callback gets an
        :class:`ErrorEvent` (a consumer that missed an event must not go on with a silent gap)
        and the engine carries on with other jobs.
        """
        with self._lock:
            if self._state in _TERMINAL:
                return False
            terminal = isinstance(event, EndEvent | ErrorEvent)
            try:
                self._on_event(event)
            except Exception as exc:
                logger.exception("on_event raised on %s for %r", type(event).__name__, self)
                if self._state not in _TERMINAL and not terminal:
                    error = EngineError(
                        f"on_event raised {type(exc).__name__} on {type(event).__name__}: {exc}; job aborted"
                    )
                    error.__cause__ = exc
                    try:
                        self._on_event(ErrorEvent(error))
                    except Exception:
                        logger.exception("on_event raised on the ErrorEvent for %r", self)
                self._settle("failed")
                return False
            if terminal:
                self._settle("failed" if isinstance(event, ErrorEvent) else "finished")
                return False
            # The callback may have cancelled its own job.
            return self._state not in _TERMINAL

    def finish(self, words: list[WordTiming], phonemes: list[PhonemeTiming], total_samples: int) -> None:
        """Deliver the job's timings, then its :class:`EndEvent` (unless the job ended meanwhile)."""
        if self.deliver(WordsEvent(words, phonemes)):
            self.deliver(EndEvent(total_samples))

    def _settle(self, state: JobState) -> None:
        if self._state not in _TERMINAL:
            self._state = state
        self._settled.set()


T = TypeVar("T")


class FairQueue(Generic[T]):
    """Round-robin over owners, first-in first-out within an owner. Not thread-safe: lock around it.

    :meth:`pop` takes the head item of the owner that has waited longest for a turn, then sends
    that owner to the back of the line; so with owners A (3 items) and B (2 items) queued at once,
    items come out A1 B1 A2 B2 A3. A new owner joins at the back.
    """

    def __init__(self) -> None:
        self._lines: OrderedDict[Hashable, deque[T]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[T]:
        for line in self._lines.values():
            yield from line

    def owners(self) -> list[Hashable]:
        """Owners with queued items, in the order they will be served."""
        return list(self._lines)

    def put(self, owner: Hashable, item: T, *, front: bool = False) -> None:
        """Queue ``item`` at the back of ``owner``'s line.

        ``front=True`` serves a new owner's line before every other (for work that costs nothing,
        such as an empty job); an owner that already has a line keeps its place, so its items
        still come out in order.
        """
        line = self._lines.get(owner)
        if line is None:
            line = self._lines[owner] = deque()
            if front:
                self._lines.move_to_end(owner, last=False)
        line.append(item)
        self._count += 1

    def pop(self) -> T:
        """Remove and return the next item; IndexError if the queue is empty."""
        if not self._lines:
            raise IndexError("pop from an empty FairQueue")
        owner, line = next(iter(self._lines.items()))
        item = line.popleft()
        self._count -= 1
        if line:
            self._lines.move_to_end(owner)
        else:
            del self._lines[owner]
        return item

    def remove(self, owner: Hashable, item: T) -> bool:
        """Remove ``item`` (compared by identity) from ``owner``'s line; False if it is not there."""
        line = self._lines.get(owner)
        if line is None:
            return False
        for index, queued in enumerate(line):
            if queued is item:
                del line[index]
                self._count -= 1
                if not line:
                    del self._lines[owner]
                return True
        return False

    def pop_owner(self, owner: Hashable) -> list[T]:
        """Remove and return all of ``owner``'s items, in order."""
        line = self._lines.pop(owner, None)
        if line is None:
            return []
        self._count -= len(line)
        return list(line)

    def pop_where(self, predicate: Callable[[Hashable], bool]) -> list[T]:
        """Remove and return the items of every owner for which ``predicate(owner)`` is true."""
        removed: list[T] = []
        for owner in [o for o in self._lines if predicate(o)]:
            removed.extend(self.pop_owner(owner))
        return removed


@dataclass(eq=False, slots=True)
class _Task:
    job: SynthJob
    key: Hashable
    payload: object


class JobWorker:
    """The one thread that runs an engine's jobs, fairly, from a :class:`FairQueue`.

    ``run(job, payload)`` synthesises one job on the worker thread, streaming through
    ``job.deliver``; an exception it raises becomes the job's :class:`ErrorEvent`. Engines
    :meth:`attach` while open; the thread starts on demand and exits once every engine has
    detached and the queue is empty, and a later :meth:`attach` starts a fresh one. A thread
    only exits between jobs, so two never run ``run`` at once.
    """

    def __init__(self, name: str, run: Callable[[SynthJob, object], None]) -> None:
        self._name = name
        self._run_job = run
        self._cond = threading.Condition()
        self._queue: FairQueue[_Task] = FairQueue()
        self._thread: threading.Thread | None = None
        self._users = 0
        self._current: _Task | None = None

    def attach(self) -> None:
        """Register a user (an open engine); starts the thread if none is running."""
        with self._cond:
            self._users += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()

    def detach(self) -> None:
        """Unregister a user; the thread exits when none is left and the queue is empty."""
        with self._cond:
            self._users -= 1
            self._cond.notify_all()

    def on_worker(self) -> bool:
        """True when called from the worker thread (i.e. from inside a callback)."""
        return threading.current_thread() is self._thread

    def submit(
        self,
        text: str,
        *,
        owner: Hashable,
        key: Hashable,
        on_event: EventCallback,
        rate_wpm: int | None = None,
        phonemes: bool = False,
        end_pause: bool = True,
        payload: object = None,
        front: bool = False,
    ) -> SynthJob:
        """Create a job and queue it under ``key`` (the fairness unit); see :meth:`FairQueue.put`."""
        task: _Task | None = None

        def dequeue(_: SynthJob) -> None:
            if task is not None:
                with self._cond:
                    self._queue.remove(task.key, task)

        job = SynthJob(
            text,
            owner=owner,
            on_event=on_event,
            rate_wpm=rate_wpm,
            phonemes=phonemes,
            end_pause=end_pause,
            on_cancel=dequeue,
        )
        task = _Task(job, key, payload)
        with self._cond:
            self._queue.put(key, task, front=front)
            self._cond.notify_all()
        return job

    def cancel_where(self, predicate: Callable[[Hashable], bool]) -> int:
        """Cancel the queued and running jobs whose key satisfies ``predicate``; returns how many."""
        with self._cond:
            tasks = self._queue.pop_where(predicate)
            current = self._current
            if current is not None and predicate(current.key):
                tasks.append(current)
        # Outside our lock: cancel() may wait for a callback in progress.
        return sum(1 for task in tasks if task.job.cancel())

    def collect(self, submit: Callable[[EventCallback], SynthJob], sample_rate: int) -> SynthResult:
        """Run ``submit(on_event)`` and wait for the job; returns its audio and timings (blocking).

        Raises the job's error if it fails, and :class:`EngineError` if it is cancelled or if
        called from the worker thread (which would wait for itself).
        """
        if self.on_worker():
            raise EngineError("synthesize() called from the engine's worker thread (inside on_event)")
        chunks: list[np.ndarray] = []
        outcome: list[EngineEvent] = []

        def on_event(event: EngineEvent) -> None:
            if isinstance(event, AudioEvent):
                chunks.append(event.samples)
            else:
                outcome.append(event)

        job = submit(on_event)
        job.wait()
        for event in outcome:
            if isinstance(event, ErrorEvent):
                raise event.error
        if job.cancelled:
            raise EngineError("synthesis was cancelled (engine closed?)")
        words = next((e for e in outcome if isinstance(e, WordsEvent)), WordsEvent([], []))
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        return SynthResult(audio, words.words, words.phonemes, sample_rate)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and self._users > 0:
                    self._cond.wait()
                if not self._queue:
                    self._thread = None
                    return
                task = self._queue.pop()
                self._current = task
            try:
                if task.job.start():
                    self._run_job(task.job, task.payload)
            except Exception as exc:  # an engine bug must not kill the worker
                logger.exception("%s failed on %r", self._name, task.job)
                error = EngineError(f"{self._name} failed: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                task.job.deliver(ErrorEvent(error))
            finally:
                with self._cond:
                    self._current = None


class ProcessWide(Generic[T]):
    """The one instance of ``factory()`` in this process, made on the first :meth:`get`.

    For what engines share process-wide (a library, its worker thread, loaded models): threads
    racing to the first ``get`` wait for a single ``factory`` call, so ``factory`` runs before any
    caller can use its result. If ``factory`` raises, the next ``get`` tries again.
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._instance: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        """The instance, made now if this is the first call (or every earlier one failed)."""
        with self._lock:
            if self._instance is None:
                self._instance = self._factory()
            return self._instance


def _check_rate(rate_wpm: object) -> int | None:
    if rate_wpm is None:
        return None
    if isinstance(rate_wpm, bool) or not isinstance(rate_wpm, int):
        raise InvalidSpeedError(f"rate_wpm must be an int, got {type(rate_wpm).__name__} {rate_wpm!r}")
    if not MIN_RATE_WPM <= rate_wpm <= MAX_RATE_WPM:
        raise InvalidSpeedError(f"rate_wpm {rate_wpm} is outside [{MIN_RATE_WPM}, {MAX_RATE_WPM}]")
    return rate_wpm


class WorkerEngine(ABC):
    """An :class:`Engine` whose jobs run on a shared :class:`JobWorker`: the part every such engine has.

    A subclass sets :attr:`name`, provides ``sample_rate`` and ``voice`` and, if its worker needs
    the text cleaned before it can tell that nothing is left to say, :meth:`_clean_text`; its
    ``__init__`` calls this one last, with the worker and the payload every job of this engine
    hands to the worker's ``run``. Engines are cheap handles on a worker: jobs of all engines on
    one worker share its queue, keyed by ``(engine id, owner)``, so owners take turns across them.
    """

    name: ClassVar[str]
    # One counter for every engine class: an id names one engine whatever worker it feeds.
    _ids: ClassVar[Iterator[int]] = itertools.count(1)

    def __init__(self, worker: JobWorker, payload: object) -> None:
        self._worker = worker
        self._payload = payload
        self._id = next(WorkerEngine._ids)
        self._closed = False
        worker.attach()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} voice={self.voice!r} {state}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    @abstractmethod
    def sample_rate(self) -> int:
        """Sample rate of every AudioEvent, in Hz."""

    @property
    @abstractmethod
    def voice(self) -> str:
        """The voice this engine speaks with."""

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    @staticmethod
    def _clean_text(text: str) -> str:
        """``text`` as the worker will synthesise it (an engine that rewrites text overrides this)."""
        return text

    def submit(
        self,
        text: str,
        *,
        owner: Hashable,
        on_event: EventCallback,
        rate_wpm: int | None = None,
        phonemes: bool = False,
        end_pause: bool = True,
    ) -> SynthJob:
        """Queue ``text`` (one sentence or clause) for ``owner``; returns the job at once.

        ``on_event`` is called on the worker thread with AudioEvents as the engine produces them,
        then one WordsEvent, then one EndEvent (or one ErrorEvent instead). Jobs of one owner
        run in submission order; owners take turns a job at a time. ``rate_wpm``
        (:data:`MIN_RATE_WPM`-:data:`MAX_RATE_WPM`, default :data:`DEFAULT_RATE_WPM`) sets the
        speaking rate for this job only; :class:`InvalidSpeedError` outside that range.
        ``end_pause=False`` leaves out the pause an engine puts after the end of a text (for a
        piece cut mid-sentence, whose sentence goes on in the next job).
        """
        if self._closed:
            raise EngineError(f"the {self.name} engine is closed")
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        rate = _check_rate(rate_wpm)
        # An empty job costs nothing: it need not wait for other owners' turns.
        return self._worker.submit(
            text,
            owner=owner,
            key=(self._id, owner),
            on_event=on_event,
            rate_wpm=rate,
            phonemes=bool(phonemes),
            end_pause=bool(end_pause),
            payload=self._payload,
            front=not self._clean_text(text).strip(),
        )

    def cancel_owner(self, owner: Hashable) -> int:
        """Cancel every queued or running job of ``owner``; returns how many were cancelled."""
        key = (self._id, owner)
        return self._worker.cancel_where(lambda k: k == key)

    def synthesize(
        self, text: str, *, rate_wpm: int | None = None, phonemes: bool = False, end_pause: bool = True
    ) -> SynthResult:
        """Synthesise ``text`` through the worker and return all of it (blocking).

        Raises the job's error (an :class:`EngineError`) if it fails. Must not be called from an
        ``on_event`` callback (the worker would wait for itself).
        """

        def submit(on_event: EventCallback) -> SynthJob:
            owner = ("synthesize", object())
            return self.submit(
                text, owner=owner, on_event=on_event, rate_wpm=rate_wpm, phonemes=phonemes, end_pause=end_pause
            )

        return self._worker.collect(submit, self.sample_rate)

    def close(self) -> None:
        """Cancel this engine's queued and running jobs and refuse new ones. Idempotent."""
        if self._closed:
            return
        self._closed = True
        engine_id = self._id
        self._worker.cancel_where(lambda k: isinstance(k, tuple) and len(k) == 2 and k[0] == engine_id)
        self._worker.detach()


@runtime_checkable
class Engine(Protocol):
    """A speech engine the local server can drive: one worker, fair across owners, cancellable."""

    @property
    def sample_rate(self) -> int:
        """Sample rate of every AudioEvent, in Hz."""
        ...

    @property
    def name(self) -> str:
        """Short engine name (``"espeak"``, ``"piper"``)."""
        ...

    def submit(
        self,
        text: str,
        *,
        owner: Hashable,
        on_event: EventCallback,
        rate_wpm: int | None = None,
        phonemes: bool = False,
        end_pause: bool = True,
    ) -> SynthJob:
        """Queue one job for ``owner``; events go to ``on_event`` on the engine's worker thread.

        ``end_pause=False``: no pause after the text's end (it was cut mid-sentence).
        """
        ...

    def cancel_owner(self, owner: Hashable) -> int:
        """Cancel every queued or running job of ``owner``; returns how many were cancelled."""
        ...

    def synthesize(
        self, text: str, *, rate_wpm: int | None = None, phonemes: bool = False, end_pause: bool = True
    ) -> SynthResult:
        """Synthesise ``text`` through the worker and return everything at once (blocking)."""
        ...

    def close(self) -> None:
        """Cancel this engine's jobs and refuse new ones."""
        ...
