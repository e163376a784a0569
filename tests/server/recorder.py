"""An engine ``on_event`` callback for tests: keeps every event with the time it arrived."""

from __future__ import annotations

import threading
import time

import numpy as np

from speakwire.server.engine import AudioEvent, EndEvent, EngineEvent, ErrorEvent


class Recorder:
    """An on_event callback that keeps every event, with the time it arrived."""

    def __init__(self) -> None:
        self.events: list[EngineEvent] = []
        self.times: list[float] = []
        self.done = threading.Event()

    def __call__(self, event: EngineEvent) -> None:
        self.events.append(event)
        self.times.append(time.perf_counter())
        if isinstance(event, EndEvent | ErrorEvent):
            self.done.set()

    @property
    def audio(self) -> np.ndarray:
        chunks = [e.samples for e in self.events if isinstance(e, AudioEvent)]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]
