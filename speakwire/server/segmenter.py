"""Continued text -> the units the server synthesises (sentences, long clauses, pauses).

Clients push text in arbitrary pieces: whole sentences (pipecat's sentence mode), single LLM tokens
(token mode, often a word fragment), or a whole paragraph. Synthesising each piece as it comes gives
choppy prosody and cuts words in half; waiting for the end of the turn ruins time-to-first-audio.
:class:`Segmenter` sits between the two: it buffers text and releases a :class:`Unit` at a sentence
end, at a clause boundary once enough text has gathered, at a hard length cap, or when the client's
``max_buffer_delay_ms`` has run out.

It is pure and sans-I/O: the caller passes the clock (``now``, seconds, any monotonic origin) and asks
:meth:`Segmenter.due` at :attr:`Segmenter.deadline`, so every timing rule is a plain unit test.

Text arrives with an opaque, comparable ``style`` (the server uses its speed and volume); a style
change is not a boundary, so a unit may hold several :class:`Piece` objects.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_DELAY", "Pause", "Piece", "Segmenter", "Unit"]

#: Buffering window (seconds) when a client does not send ``max_buffer_delay_ms``. pipecat's token
#: mode omits the field and streams a token every 20-60 ms; 0.25 s is long enough for a few tokens
#: to form whole words and short enough to keep the first audio well under half a second even when
#: no punctuation arrives.
DEFAULT_MAX_DELAY = 0.25

# A sentence ends at . ! ? or an ellipsis, optionally followed by closing quotes or brackets, then
# whitespace. The whitespace is required because "3." may continue as "3.14" in the next token.
_SENTENCE_END = re.compile(r"(?:\.{3}|…|[.!?]+)[\"'”’)\]]*(?=\s)")
# Full-width CJK sentence marks need no following space.
_CJK_SENTENCE_END = re.compile(r"[。！？]+[」』”’）]*")
_CLAUSE_END = re.compile(r"[,;:][\"'”’)\]]*(?=\s)|\s[—–-](?=\s)|[，、；：]")
# Pending text that ends in a likely sentence end: when the buffering window runs out there is no
# next character to confirm it, and cutting before the last word would be worse.
_ENDS_LIKE_BOUNDARY = re.compile(r"(?:\.{3}|…|[.!?,;:。！？，、；：]+)[\"'”’)\]」』）]*\s*$")

# Abbreviations after which a period does not end a sentence ("Dr. Smith"). "etc." is left out on
# purpose: it usually does end the sentence it is in.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs e.g i.e no fig inc ltd co mt approx dept est ca cf al".split()
)
_WORD_BEFORE = re.compile(r"([\w.]+)\.$")


@dataclass(frozen=True, slots=True)
class Piece:
    """A run of text sharing one style."""

    text: str
    style: Hashable = None


@dataclass(frozen=True, slots=True)
class Unit:
    """Text to synthesise as one job; pieces differ in style, never empty, ends stripped."""

    pieces: tuple[Piece, ...]

    @property
    def text(self) -> str:
        """The unit's text, styles dropped."""
        return "".join(piece.text for piece in self.pieces)


@dataclass(frozen=True, slots=True)
class Pause:
    """Silence the client asked for with a break (seconds, before any speed change)."""

    seconds: float


class Segmenter:
    """Buffers continued text and releases synthesis units at natural boundaries.

    ``max_delay`` is the buffering window in seconds: ``0`` releases everything at once on every
    push (split into sentences), ``None`` waits for a boundary, a flush or the end of input.
    ``min_clause_chars`` is how long a unit must be before a clause mark (``,`` ``;`` ``:`` or a
    dash) may end it; ``max_unit_chars`` forces a cut at the last space before it.
    """

    def __init__(
        self,
        *,
        max_delay: float | None = DEFAULT_MAX_DELAY,
        min_clause_chars: int = 24,
        max_unit_chars: int = 300,
    ) -> None:
        if max_delay is not None and not max_delay >= 0:
            raise ValueError(f"max_delay must be >= 0 seconds or None, got {max_delay!r}")
        if min_clause_chars < 1 or max_unit_chars < 2:
            raise ValueError("min_clause_chars must be >= 1 and max_unit_chars >= 2")
        self.max_delay = max_delay
        self.min_clause_chars = min_clause_chars
        self.max_unit_chars = max_unit_chars
        self._pieces: list[Piece] = []
        self._text = ""
        self._since: float | None = None
        self._stalled = False

    @property
    def pending(self) -> str:
        """Text buffered and not yet released."""
        return self._text

    @property
    def deadline(self) -> float | None:
        """When :meth:`due` next has something to release by timeout (``None``: never)."""
        if self._since is None or self.max_delay is None or not self._text.strip():
            return None
        return self._since + self.max_delay

    def push(self, text: str, now: float, style: Hashable = None) -> list[Unit]:
        """Add ``text`` (arriving at time ``now``) and return the units it completes."""
        if text:
            if self._pieces and self._pieces[-1].style == style:
                self._pieces[-1] = Piece(self._pieces[-1].text + text, style)
            else:
                self._pieces.append(Piece(text, style))
            self._text += text
            if self._since is None and text.strip():
                self._since = now
        units = self._cut_boundaries()
        if self.max_delay == 0:
            units.extend(self.flush())
        elif units and self._since is not None:
            self._since = now  # what is left starts a new window
        return units

    def pause(self, seconds: float) -> list[Unit | Pause]:
        """Release everything buffered, then a :class:`Pause` of ``seconds``."""
        out: list[Unit | Pause] = list(self.flush())
        out.append(Pause(seconds))
        return out

    def due(self, now: float) -> list[Unit]:
        """Release what the buffering window allows at time ``now``."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return []
        if self._stalled or _ENDS_LIKE_BOUNDARY.search(self._text):
            return self.flush()
        # Cut at the last space: the last word may be half a token ("Hel" before "lo").
        stripped = self._text.rstrip()
        cut = max(stripped.rfind(" "), stripped.rfind("\n"), stripped.rfind("\t"))
        if cut <= 0 or not stripped[:cut].strip():
            # One word and nothing after it: give the next token one more window, then speak it.
            self._stalled = True
            self._since = now
            return []
        units = self._take(cut)
        if self._since is not None:
            self._since = now
        return units

    def flush(self) -> list[Unit]:
        """Release everything buffered (flush, end of input), still split at boundaries."""
        units = self._cut_boundaries()
        if self._text:
            units.extend(self._take(len(self._text)))
        return units

    def _cut_boundaries(self) -> list[Unit]:
        units: list[Unit] = []
        while True:
            cut = self._find_cut(self._text)
            if cut is None:
                return units
            units.extend(self._take(cut))

    def _find_cut(self, text: str) -> int | None:
        first = len(text) - len(text.lstrip())
        newline = text.find("\n", first)
        best: int | None = newline if newline > first else None
        for match in _SENTENCE_END.finditer(text, 0, best if best is not None else len(text)):
            if self._is_sentence_end(text, match.start(), match.end()):
                best = match.end()
                break
        limit = best if best is not None else len(text)
        cjk = _CJK_SENTENCE_END.search(text, 0, limit)
        if cjk is not None and text[: cjk.end()].strip():
            best = limit = cjk.end()
        for match in _CLAUSE_END.finditer(text, 0, limit):
            if len(text[: match.end()].strip()) >= self.min_clause_chars:
                best = match.end()
                break
        if best is None and len(text) > self.max_unit_chars:
            space = text.rfind(" ", 0, self.max_unit_chars)
            best = space if space > 0 and text[:space].strip() else self.max_unit_chars
        return best

    def _is_sentence_end(self, text: str, start: int, end: int) -> bool:
        if not text[:start].strip():
            return False
        if text[start:end].startswith(".") and not text[start:end].startswith("..."):
            word = _WORD_BEFORE.search(text, 0, start + 1)
            if word is not None:
                token = word.group(1).lower()
                if token in _ABBREVIATIONS:
                    return False
                if len(token) == 1 and token.isalpha() and word.group(1).isupper():
                    return False  # an initial: "J. R. R. Tolkien"
                if token.isdigit() and not text[: word.start()].strip():
                    return False  # a list number opening the unit: "1. First"
        return True

    def _take(self, cut: int) -> list[Unit]:
        """Remove ``text[:cut]`` from the buffer; return it as a unit unless it is blank."""
        taken: list[Piece] = []
        remaining = cut
        while remaining > 0 and self._pieces:
            piece = self._pieces[0]
            if len(piece.text) <= remaining:
                taken.append(piece)
                remaining -= len(piece.text)
                self._pieces.pop(0)
            else:
                taken.append(Piece(piece.text[:remaining], piece.style))
                self._pieces[0] = Piece(piece.text[remaining:], piece.style)
                remaining = 0
        self._text = self._text[cut:]
        self._stalled = False
        if not self._text.strip():
            self._since = None
        unit = _strip(taken)
        return [unit] if unit is not None else []


def _strip(pieces: list[Piece]) -> Unit | None:
    while pieces and not pieces[0].text.strip():
        pieces.pop(0)
    while pieces and not pieces[-1].text.strip():
        pieces.pop()
    if not pieces:
        return None
    pieces[0] = Piece(pieces[0].text.lstrip(), pieces[0].style)
    pieces[-1] = Piece(pieces[-1].text.rstrip(), pieces[-1].style)
    return Unit(tuple(pieces))
