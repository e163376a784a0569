"""Continued text -> the units the server synthesises (sentences, long clauses, pauses).

Clients push text in arbitrary pieces: whole sentences (pipecat's sentence mode), single LLM tokens
(token mode, often a word fragment), or a whole paragraph. Synthesising each piece as it comes gives
choppy prosody and cuts words in half; waiting for the end of the turn ruins time-to-first-audio.
:class:`Segmenter` sits between the two: it buffers text and releases a :class:`Unit` at a sentence
end, at a clause boundary once enough text has gathered, at a hard length cap, or when the client's
``max_buffer_delay_ms`` has run out.

A context's first unit is released sooner (a chunk schedule, like ElevenLabs'
``chunk_length_schedule``): once audio plays, synthesis runs far ahead of real time and later units
can wait for good boundaries, but until then every token of waiting is time to first audio. So
until the first unit is out, any clause mark ends it, and so do ``first_unit_words`` complete
words when no boundary came (only for text left pending at the end of a push: a push that holds a
whole sentence is cut at its sentence end as always).

Each unit says whether it ends at a natural pause (:attr:`Unit.ends_at_boundary`): a unit cut
mid-sentence must be spoken without a sentence-final pause, or the sentence would stop for 300 ms
where it was cut.

It is pure and sans-I/O: the caller passes the clock (``now``, seconds, any monotonic origin) and asks
:meth:`Segmenter.due` at :attr:`Segmenter.deadline`, so every timing rule is a plain unit test.

Text arrives with an opaque, comparable ``style`` (the server uses its speed and volume); a style
change is not a boundary, so a unit may hold several :class:`Piece` objects.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_DELAY", "FIRST_UNIT_WORDS", "Pause", "Piece", "Segmenter", "Unit"]

#: Buffering window (seconds) when a client does not send ``max_buffer_delay_ms``. pipecat's token
#: mode omits the field and streams a token every 20-60 ms; 0.25 s is long enough for a few tokens
#: to form whole words and short enough to keep the first audio well under half a second even when
#: no punctuation arrives.
DEFAULT_MAX_DELAY = 0.25

#: Complete words that release a context's first unit when no boundary came first. Three words
#: take an LLM streaming 50 tokens/s about 60 ms and give espeak ~0.7 s of audio to play while the
#: rest of the sentence gathers; fewer would leave the first word alone, with odd prosody.
FIRST_UNIT_WORDS = 3

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
# A complete word: whitespace after it shows the next token cannot extend it.
_COMPLETE_WORD = re.compile(r"\S+(?=\s)")


@dataclass(frozen=True, slots=True)
class Piece:
    """A run of text sharing one style."""

    text: str
    style: Hashable = None


@dataclass(frozen=True, slots=True)
class Unit:
    """Text to synthesise as one job; pieces differ in style, never empty, ends stripped.

    ``ends_at_boundary`` is True when the unit ends where speech pauses anyway (a sentence end, a
    clause mark, a line break, or punctuation at a flush) and False when it was cut mid-sentence
    (the first-unit word rule, the buffering window, the length cap): then it is to be spoken
    without an end pause, since its sentence goes on in the next unit.
    """

    pieces: tuple[Piece, ...]
    ends_at_boundary: bool = True

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
    ``first_unit_words`` (``None`` or ``0``: off) turns on the first-unit rule: until the first unit
    is released, text left pending at the end of a push is cut at its first clause mark whatever
    its length, or else after its complete words once there are at least that many. With
    ``max_delay=0`` every push is released whole anyway and the rule does nothing.
    """

    def __init__(
        self,
        *,
        max_delay: float | None = DEFAULT_MAX_DELAY,
        min_clause_chars: int = 24,
        max_unit_chars: int = 300,
        first_unit_words: int | None = FIRST_UNIT_WORDS,
    ) -> None:
        if max_delay is not None and not max_delay >= 0:
            raise ValueError(f"max_delay must be >= 0 seconds or None, got {max_delay!r}")
        if min_clause_chars < 1 or max_unit_chars < 2:
            raise ValueError("min_clause_chars must be >= 1 and max_unit_chars >= 2")
        if first_unit_words is not None and (
            isinstance(first_unit_words, bool) or not isinstance(first_unit_words, int) or first_unit_words < 0
        ):
            raise ValueError(f"first_unit_words must be an int >= 0 or None, got {first_unit_words!r}")
        self.max_delay = max_delay
        self.min_clause_chars = min_clause_chars
        self.max_unit_chars = max_unit_chars
        self.first_unit_words = first_unit_words or None
        self._pieces: list[Piece] = []
        self._text = ""
        self._since: float | None = None
        self._stalled = False
        self._released = False  # a unit has gone out: the first-unit rule no longer applies

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

    def push(self, text: str, now: float, style: Hashable = None, *, more_follows: bool = False) -> list[Unit]:
        """Add ``text`` (arriving at time ``now``) and return the units it completes.

        ``more_follows=True`` says the same message goes on at once in the next call (a markup
        span's next segment, in another style): the first-unit rule then waits for the message's
        last part, so a message holding a whole sentence is not split before its end.
        """
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
            return units
        if not more_follows and not self._released and self.first_unit_words is not None:
            units.extend(self._cut_first_unit(self.first_unit_words))
        if units and self._since is not None:
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
            return self.flush()  # a stalled word without punctuation is cut mid-sentence: see _take
        # Cut at the last space: the last word may be half a token ("Hel" before "lo").
        stripped = self._text.rstrip()
        cut = max(stripped.rfind(" "), stripped.rfind("\n"), stripped.rfind("\t"))
        if cut <= 0 or not stripped[:cut].strip():
            # One word and nothing after it: give the next token one more window, then speak it.
            self._stalled = True
            self._since = now
            return []
        units = self._take(cut, boundary=False)
        if self._since is not None:
            self._since = now
        return units

    def flush(self) -> list[Unit]:
        """Release everything buffered (flush, end of input), still split at boundaries.

        The last unit ends at a boundary if its text ends in punctuation.
        """
        units = self._cut_boundaries()
        if self._text:
            units.extend(self._take(len(self._text)))
        return units

    def _cut_boundaries(self) -> list[Unit]:
        units: list[Unit] = []
        while True:
            found = self._find_cut(self._text)
            if found is None:
                return units
            cut, boundary = found
            units.extend(self._take(cut, boundary=boundary))

    def _cut_first_unit(self, words: int) -> list[Unit]:
        """The first-unit rule on the pending text: any clause mark after a word, else ``words`` complete words."""
        text = self._text
        for match in _CLAUSE_END.finditer(text):
            if text[: match.start()].strip():
                return self._take(match.end(), boundary=True)
        complete = list(_COMPLETE_WORD.finditer(text))
        if len(complete) < words:
            return []
        # Every complete word goes (a big push may hold more than ``words``); the last, possibly
        # half, token stays.
        return self._take(complete[-1].end(), boundary=False)

    def _find_cut(self, text: str) -> tuple[int, bool] | None:
        """Where the first boundary in ``text`` ends, and whether it is a natural pause (not the length cap)."""
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
        if best is not None:
            return best, True
        if len(text) > self.max_unit_chars:
            space = text.rfind(" ", 0, self.max_unit_chars)
            return (space if space > 0 and text[:space].strip() else self.max_unit_chars), False
        return None

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

    def _take(self, cut: int, boundary: bool | None = None) -> list[Unit]:
        """Remove ``text[:cut]`` from the buffer; return it as a unit unless it is blank.

        ``boundary``: whether the cut is a natural pause; ``None`` (a flush) decides by the text:
        punctuation at its end.
        """
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
        if boundary is None:
            boundary = _ENDS_LIKE_BOUNDARY.search(self._text[:cut]) is not None
        self._text = self._text[cut:]
        self._stalled = False
        if not self._text.strip():
            self._since = None
        unit = _strip(taken, boundary)
        if unit is None:
            return []
        self._released = True
        return [unit]


def _strip(pieces: list[Piece], boundary: bool) -> Unit | None:
    while pieces and not pieces[0].text.strip():
        pieces.pop(0)
    while pieces and not pieces[-1].text.strip():
        pieces.pop()
    if not pieces:
        return None
    pieces[0] = Piece(pieces[0].text.lstrip(), pieces[0].style)
    pieces[-1] = Piece(pieces[-1].text.rstrip(), pieces[-1].style)
    return Unit(tuple(pieces), boundary)
