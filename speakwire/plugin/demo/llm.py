"""A simulated LLM: scripted replies cut into realistic tokens and streamed at an LLM's pace.

The demo has no model, but the TTS must see what a real one sends: sub-word pieces with their
leading space (``" stream"``, ``"ing"``), punctuation as its own token, a first-token delay, then
30-60 tokens a second with jitter. Tokens are cut like a BPE vocabulary would for English: short
words whole, longer ones in 3-6 character pieces. A seeded random source makes a run repeatable.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

__all__ = ["GREETING", "SimulatedLLM", "pick_reply", "tokenize"]

#: What the agent says as soon as a peer connects, so any WebRTC client hears speech at once.
GREETING: Final = "Hi, I'm the speakwire demo agent. Type a message and I'll answer."

# Replies chosen by a keyword in the user's message; the last is the fallback.
_REPLIES: Final[tuple[tuple[tuple[str, ...], str], ...]] = (
    (("speed", "fast", "slow"),
     "Speed is applied locally, with a time stretch that keeps the pitch. "
     "The words still to come will follow the slider."),
    (("barge", "interrupt", "stop"),
     "When you barge in, the context is cancelled on the server, the queued audio is cleared "
     "with a five millisecond fade, and nothing of this reply is played after that. "
     "Try it now, in the middle of this long and rather rambling sentence about audio."),
    (("hello", "hi", "hey"),
     "Hello again! I'm listening."),
    ((),
     "Here is a scripted answer, streamed token by token as a language model would. "
     "The speech engine is espeak, running in a local server, so no network is needed. "
     "Each word lights up on the page as you hear it."),
)

_PIECE = re.compile(r"\s*[A-Za-z]+|\s*\d+|\s*[^\sA-Za-z\d]|\s+")


def tokenize(text: str) -> list[str]:
    """``text`` cut into LLM-like tokens; ``"".join(tokenize(text)) == text``."""
    tokens: list[str] = []
    for match in _PIECE.finditer(text):
        piece = match.group()
        core = piece.lstrip()
        if len(core) <= 6 or not core.isalpha():
            tokens.append(piece)
            continue
        # Long words become several tokens, the first one carrying the leading space.
        lead = piece[: len(piece) - len(core)]
        cuts = [core[i : i + 4] for i in range(0, len(core), 4)]
        if len(cuts[-1]) < 2:
            cuts[-2:] = [cuts[-2] + cuts[-1]]
        tokens.append(lead + cuts[0])
        tokens.extend(cuts[1:])
    return tokens


def pick_reply(message: str) -> str:
    """The scripted reply to ``message``, chosen by keyword (keys of 4+ letters match as prefixes:
    "faster", "interrupting")."""
    words = set(re.findall(r"[a-z]+", message.lower()))
    for keys, reply in _REPLIES:
        if not keys or any(w == k or (len(k) >= 4 and w.startswith(k)) for w in words for k in keys):
            return reply
    return _REPLIES[-1][1]


@dataclass
class SimulatedLLM:
    """Streams text as tokens: ``first_token_s`` before the first, then ``tokens_per_s`` (+-30 % jitter).

    ``seed`` makes the jitter repeatable.
    """

    tokens_per_s: float = 45.0
    first_token_s: float = 0.15
    seed: int | None = 0

    def __post_init__(self) -> None:
        if not 0 < self.tokens_per_s <= 1000:
            raise ValueError(f"tokens_per_s must be in (0, 1000], got {self.tokens_per_s!r}")
        if not 0 <= self.first_token_s <= 10:
            raise ValueError(f"first_token_s must be in [0, 10], got {self.first_token_s!r}")
        self._random = random.Random(self.seed)

    async def stream(self, text: str) -> AsyncIterator[str]:
        """Yield the tokens of ``text`` at the simulated pace."""
        await asyncio.sleep(self.first_token_s)
        mean = 1.0 / self.tokens_per_s
        for i, token in enumerate(tokenize(text)):
            if i:
                await asyncio.sleep(mean * self._random.uniform(0.7, 1.3))
            yield token
