"""Frames speakwire's TTS service understands beyond pipecat's own."""

from __future__ import annotations

from dataclasses import dataclass

from pipecat.frames.frames import DataFrame

__all__ = ["TurnSpeedFrame"]


@dataclass
class TurnSpeedFrame(DataFrame):
    """Speak one turn at ``speed``, overriding the service-wide speed for that turn only.

    Sent while a turn is in progress (after ``LLMFullResponseStartFrame`` or between its tokens),
    it applies to that turn from its next text on; sent between turns, it applies to the next
    turn (or ``TTSSpeakFrame``). When that turn ends the service-wide speed applies again.
    ``speed=None`` cancels a pending override. An invalid speed becomes an upstream
    ``ErrorFrame`` and changes nothing.
    """

    speed: float | None = None
