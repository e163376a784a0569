"""Inline markup in transcripts: KugelAudio's ``<prosody rate>`` spans and Cartesia's inline tags.

Recognised tags (names are lowercase, attribute values quoted with ``"`` or ``'``):

- ``<prosody rate="slow|medium|fast|0.9|90%">...</prosody>``: the span's text is spoken at
  ``rate`` (slow 0.8, medium 1.0, fast 1.2, a number or a percentage, then passed through a
  :class:`~speakwire.dsp.speed.SpeedPolicy`: KugelAudio's [0.8, 1.2] clamp by default),
  overriding the speed outside. ``rate`` is the only attribute; spans do not nest.
- ``<speed ratio="x"/>``, ``<volume ratio="x"/>``, ``<emotion value="x"/>``: set the speed
  (under ``ratio_policy``, Cartesia's [0.6, 1.5] by default), volume ([0.5, 2.0]) or emotion
  from there on.
- ``<break time="500ms|1.5s"/>``: a pause (at most :data:`MAX_BREAK_SECONDS`).
- ``<spell>...</spell>`` or ``<spell group="2">``: spell the text out.

A ``<`` that does not start one of these stays text (``"x < 3"``, ``"<b>"``), but a tag named
like ours yet malformed, or an unknown tag with quoted attributes (``<emphasis level="x">``),
raises :class:`~speakwire.errors.MarkupError` whose ``position`` is the 0-based offset of the
fault. :func:`parse` turns a text into :data:`Segment` values (:class:`Text` with the style that
applies, :class:`Break`); :func:`plain_text` drops the markup, whitespace preserved.

Streaming. A client gets text token by token and a tag may be split across tokens::

    stream = MarkupStream()
    for token in llm_tokens:
        for piece in stream.feed(token):          # plain text at once; tags never split;
            send(piece.text, flush=piece.span)    # a <prosody>/<spell> span only once closed
    stream.end()                                  # MarkupError if a span or tag is left open

A server parses each streamed push with :func:`parse_push`, which requires spans to open and
close within the push and carries the speed, volume and emotion set by inline tags over to the
next push.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Final, Literal, TypeAlias

from speakwire.dsp.speed import CARTESIA_POLICY, KUGELAUDIO_LABELS, KUGELAUDIO_POLICY, SpeedPolicy
from speakwire.errors import ContextStateError, InvalidSpeedError, MarkupError

__all__ = [
    "MAX_BREAK_SECONDS",
    "MAX_TAG_CHARS",
    "TAG_NAMES",
    "VOLUME_RANGE",
    "Break",
    "MarkupStream",
    "Piece",
    "Segment",
    "Style",
    "Text",
    "parse",
    "parse_push",
    "plain_text",
    "strip_markup",
]

#: The tags this module understands.
TAG_NAMES: Final = frozenset({"prosody", "speed", "volume", "emotion", "break", "spell"})
#: A ``<`` followed by this many characters without ending a tag is not a tag (or is an error,
#: for our names): it bounds what a stream holds back.
MAX_TAG_CHARS: Final = 256
#: The longest ``<break>`` accepted, in seconds: longer is a MarkupError, not minutes of silence.
MAX_BREAK_SECONDS: Final = 10.0
#: Accepted ``<volume ratio>`` values (Cartesia's generation_config.volume range).
VOLUME_RANGE: Final = (0.5, 2.0)

_SPANS: Final = frozenset({"prosody", "spell"})
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)\Z")
_BREAK_TIME = re.compile(r"(\d+(?:\.\d+)?)(ms|s)\Z")
_SPACE = " \t\r\n"
# Stripping markup must not fail on a speed the engine would refuse: only non-numbers do.
_ANY_SPEED: Final = SpeedPolicy(1e-9, 1e9, "clamp", "any")


@dataclass(frozen=True, slots=True)
class Style:
    """The speed, volume and emotion in force outside ``<prosody>`` spans."""

    speed: float = 1.0
    volume: float = 1.0
    emotion: str | None = None


@dataclass(frozen=True, slots=True)
class Text:
    """Text to speak, with what applies to it (``speed`` is the prosody rate inside a span)."""

    text: str
    speed: float = 1.0
    volume: float = 1.0
    emotion: str | None = None
    spell: bool = False
    spell_group: int | None = None


@dataclass(frozen=True, slots=True)
class Break:
    """A pause of ``seconds``."""

    seconds: float


Segment: TypeAlias = Text | Break


@dataclass(frozen=True, slots=True)
class Piece:
    """A part of a stream to pass on, markup included, never splitting a tag.

    ``span`` is true for a whole ``<prosody>`` or ``<spell>`` span (send it as one message);
    ``rate`` is then the span's prosody rate, or None for a spell-only span.
    """

    text: str
    span: bool = False
    rate: float | None = None


# --- lexing -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Attr:
    name: str
    value: str
    position: int  # of the name
    value_position: int


@dataclass(frozen=True, slots=True)
class _Tag:
    name: str
    kind: Literal["open", "close", "self"]
    attrs: tuple[_Attr, ...]
    position: int
    raw: str


@dataclass(frozen=True, slots=True)
class _Run:
    text: str
    position: int


_Token: TypeAlias = _Run | _Tag


def _is_name_start(c: str) -> bool:
    return c.isascii() and (c.isalpha() or c == "_")


def _is_name_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c in "_-")


@dataclass(slots=True)
class _Scan:
    outcome: Literal["tag", "no", "prefix", "too_long"]
    end: int = 0  # tag: index after '>'; no: index of the offending character
    name: str = ""
    name_complete: bool = False
    closing: bool = False
    self_closing: bool = False
    attrs: list[tuple[str, str, int, int]] | None = None
    state: str = ""


def _scan(buf: str, start: int) -> _Scan:
    """Run the tag automaton over ``buf[start:]`` (``buf[start] == '<'``), at most MAX_TAG_CHARS."""
    limit = min(len(buf), start + MAX_TAG_CHARS)
    scan = _Scan("prefix", attrs=[])
    assert scan.attrs is not None
    state = "lt"
    name_start = attr_start = value_start = 0
    attr_name = ""
    quote = ""
    i = start + 1
    while i < limit:
        c = buf[i]
        if state == "lt":
            if c == "/":
                scan.closing = True
                state = "slash"
            elif c.isascii() and c.isalpha():
                name_start, state = i, "name"
            else:
                return _Scan("no", i)
        elif state == "slash":
            if c.isascii() and c.isalpha():
                name_start, state = i, "name"
            else:
                return _Scan("no", i, closing=True)
        elif state == "name":
            if _is_name_char(c):
                pass
            else:
                scan.name, scan.name_complete = buf[name_start:i], True
                if c in _SPACE:
                    state = "space"
                elif c == "/" and not scan.closing:
                    state = "self"
                elif c == ">":
                    scan.outcome, scan.end = "tag", i + 1
                    return scan
                else:
                    # "<speed." is not tag syntax at all: text, even for our names.
                    scan.name_complete = False
                    scan.outcome, scan.end = "no", i
                    return scan
        elif state == "space":
            if c in _SPACE:
                pass
            elif _is_name_start(c) and not scan.closing:
                attr_start, state = i, "attr"
            elif c == "/" and not scan.closing:
                state = "self"
            elif c == ">":
                scan.outcome, scan.end = "tag", i + 1
                return scan
            else:
                scan.outcome, scan.end, scan.state = "no", i, state
                return scan
        elif state == "attr":
            if _is_name_char(c):
                pass
            elif c in _SPACE or c == "=":
                attr_name = buf[attr_start:i]
                state = "eq" if c == "=" else "attr_space"
            else:
                scan.outcome, scan.end, scan.state = "no", i, state
                return scan
        elif state == "attr_space":
            if c == "=":
                state = "eq"
            elif c not in _SPACE:
                scan.outcome, scan.end, scan.state = "no", i, state
                return scan
        elif state == "eq":
            if c in "\"'":
                quote, value_start, state = c, i + 1, "value"
            elif c not in _SPACE:
                scan.outcome, scan.end, scan.state = "no", i, state
                return scan
        elif state == "value":
            if c == quote:
                scan.attrs.append((attr_name, buf[value_start:i], attr_start, value_start))
                state = "after_value"
            elif c in "<>":
                scan.outcome, scan.end, scan.state = "no", i, state
                return scan
        elif state == "after_value":
            if c in _SPACE:
                state = "space"
            elif c == "/":
                state = "self"
            elif c == ">":
                scan.outcome, scan.end = "tag", i + 1
                return scan
            else:
                scan.outcome, scan.end, scan.state = "no", i, state
                return scan
        else:  # "self": after "/" in an opening tag
            if c == ">":
                scan.self_closing = True
                scan.outcome, scan.end = "tag", i + 1
                return scan
            scan.outcome, scan.end, scan.state = "no", i, state
            return scan
        i += 1
    if state == "name" and limit - name_start > 0:
        scan.name = buf[name_start:limit]
    scan.outcome = "too_long" if limit - start >= MAX_TAG_CHARS else "prefix"
    return scan


class _Lexer:
    """Splits text into runs and our tags, incrementally; holds back only a possible tag start."""

    def __init__(self) -> None:
        self._buf = ""
        self._offset = 0  # absolute position of self._buf[0]

    def pass_plain(self, text: str) -> bool:
        """Consume ``text`` without tokenizing it if it is one plain run (nothing held, no ``<``).

        Returns False, consuming nothing, otherwise. This is the per-token fast path of a
        client stream: ``feed`` would yield exactly ``_Run(text)`` for such text.
        """
        if self._buf or "<" in text:
            return False
        self._offset += len(text)
        return True

    def feed(self, text: str, final: bool) -> Iterator[_Token]:
        """Yield the tokens ``text`` completes; exhaust it. Errors surface in token order, so
        that a fault is reported at the same place whatever the feed boundaries."""
        buf = self._buf + text
        base = self._offset
        run_start = 0
        i = 0
        held = len(buf)
        while True:
            j = buf.find("<", i)
            if j < 0:
                break
            scan = _scan(buf, j)
            ours = scan.name in TAG_NAMES and scan.name_complete
            if scan.outcome == "prefix" and not final:
                held = j
                break
            if scan.outcome == "tag":
                assert scan.attrs is not None
                if scan.name in TAG_NAMES or scan.attrs:
                    if run_start < j:
                        yield _Run(buf[run_start:j], base + run_start)
                    yield self._tag(buf, j, scan, base)
                    i = run_start = scan.end
                    continue
            elif ours:
                if run_start < j:
                    yield _Run(buf[run_start:j], base + run_start)
                if scan.outcome == "no":
                    hint = " (attribute values must be quoted)" if scan.state == "eq" else ""
                    raise MarkupError(
                        f"malformed <{scan.name}> tag: unexpected {buf[scan.end]!r}{hint}", base + scan.end
                    )
                raise MarkupError(f"unterminated <{'/' if scan.closing else ''}{scan.name}> tag", base + j)
            i = j + 1  # a literal '<'
        if run_start < held:
            yield _Run(buf[run_start:held], base + run_start)
        self._buf = buf[held:]
        self._offset = base + held

    @staticmethod
    def _tag(buf: str, start: int, scan: _Scan, base: int) -> _Tag:
        assert scan.attrs is not None
        if scan.name not in TAG_NAMES:
            raise MarkupError(f"unknown tag <{scan.name}>; supported: {', '.join(sorted(TAG_NAMES))}", base + start)
        kind: Literal["open", "close", "self"] = "close" if scan.closing else "self" if scan.self_closing else "open"
        attrs = tuple(_Attr(n, v, base + p, base + vp) for n, v, p, vp in scan.attrs)
        return _Tag(scan.name, kind, attrs, base + start, buf[start : scan.end])


# --- interpretation ---------------------------------------------------------------------------


def _attrs(tag: _Tag, allowed: frozenset[str], required: frozenset[str]) -> dict[str, _Attr]:
    found: dict[str, _Attr] = {}
    for attr in tag.attrs:
        if attr.name not in allowed:
            only = ", ".join(sorted(allowed)) or "no attributes"
            raise MarkupError(f"unsupported attribute {attr.name!r} on <{tag.name}> (allowed: {only})", attr.position)
        if attr.name in found:
            raise MarkupError(f"duplicate attribute {attr.name!r} on <{tag.name}>", attr.position)
        found[attr.name] = attr
    for name in sorted(required - found.keys()):
        raise MarkupError(f'<{tag.name}> needs a {name}="..." attribute', tag.position)
    return found


def _prosody_rate(attr: _Attr, policy: SpeedPolicy) -> float:
    value = attr.value.strip().lower()
    percent = value.endswith("%")
    number = value[:-1].strip() if percent else value
    if value in KUGELAUDIO_LABELS:
        # Labels go through the policy too: a caller's narrower range binds them as well.
        factor = KUGELAUDIO_LABELS[value]
    elif _NUMBER.match(number):
        factor = float(number) / 100.0 if percent else float(number)
    else:
        raise MarkupError(
            f"unknown prosody rate {attr.value!r}; use slow, medium, fast, a number or a percentage",
            attr.value_position,
        )
    try:
        return policy.apply(factor)
    except InvalidSpeedError as exc:
        raise MarkupError(f"prosody rate {attr.value!r}: {exc}", attr.value_position) from None


def _ratio(attr: _Attr, what: str) -> float:
    value = attr.value.strip()
    if not _NUMBER.match(value):
        raise MarkupError(f"<{what}> ratio {attr.value!r} is not a number", attr.value_position)
    return float(value)


class _Interpreter:
    """Applies tokens in order: validates nesting and attributes, tracks style, builds segments."""

    def __init__(self, style: Style, policy: SpeedPolicy, ratio_policy: SpeedPolicy, *, collect: bool = True) -> None:
        # A stream only validates and tracks style; building segments there would cost a
        # string copy per token, quadratic over a long turn.
        self.collect = collect
        self.style = style
        self.policy = policy
        self.ratio_policy = ratio_policy
        self.prosody: tuple[float, _Tag] | None = None
        self.spell: tuple[int | None, _Tag] | None = None
        self.segments: list[Segment] = []

    @property
    def depth(self) -> int:
        return (self.prosody is not None) + (self.spell is not None)

    def _add_text(self, text: str) -> None:
        if not text or not self.collect:
            return
        segment = Text(
            text,
            speed=self.style.speed if self.prosody is None else self.prosody[0],
            volume=self.style.volume,
            emotion=self.style.emotion,
            spell=self.spell is not None,
            spell_group=None if self.spell is None else self.spell[0],
        )
        last = self.segments[-1] if self.segments else None
        if isinstance(last, Text) and replace(last, text="") == replace(segment, text=""):
            self.segments[-1] = replace(last, text=last.text + text)
        else:
            self.segments.append(segment)

    def apply(self, token: _Token) -> None:
        if isinstance(token, _Run):
            self._add_text(token.text)
            return
        tag = token
        if tag.name in _SPANS:
            self._span_tag(tag)
            return
        if tag.kind != "self":
            example = {
                "speed": '<speed ratio="1.2"/>',
                "volume": '<volume ratio="1.5"/>',
                "emotion": '<emotion value="excited"/>',
                "break": '<break time="500ms"/>',
            }[tag.name]
            raise MarkupError(f"<{tag.name}> is self-closing: write {example}", tag.position)
        if tag.name == "break":
            attr = _attrs(tag, frozenset({"time"}), frozenset({"time"}))["time"]
            match = _BREAK_TIME.match(attr.value.strip())
            if match is None:
                raise MarkupError(
                    f"break time {attr.value!r} is not a duration like 500ms or 1.5s", attr.value_position
                )
            seconds = float(match[1]) / (1000.0 if match[2] == "ms" else 1.0)
            if seconds > MAX_BREAK_SECONDS:
                raise MarkupError(
                    f"break time {attr.value!r} is longer than {MAX_BREAK_SECONDS:g}s", attr.value_position
                )
            if self.collect:
                self.segments.append(Break(seconds))
        elif tag.name == "speed":
            attr = _attrs(tag, frozenset({"ratio"}), frozenset({"ratio"}))["ratio"]
            try:
                speed = self.ratio_policy.apply(_ratio(attr, "speed"))
            except InvalidSpeedError as exc:
                raise MarkupError(f"<speed> ratio {attr.value!r}: {exc}", attr.value_position) from None
            self.style = replace(self.style, speed=speed)
        elif tag.name == "volume":
            attr = _attrs(tag, frozenset({"ratio"}), frozenset({"ratio"}))["ratio"]
            volume = _ratio(attr, "volume")
            if not VOLUME_RANGE[0] <= volume <= VOLUME_RANGE[1]:
                raise MarkupError(
                    f"<volume> ratio {attr.value!r} is outside [{VOLUME_RANGE[0]}, {VOLUME_RANGE[1]}]",
                    attr.value_position,
                )
            self.style = replace(self.style, volume=volume)
        else:  # emotion
            attr = _attrs(tag, frozenset({"value"}), frozenset({"value"}))["value"]
            emotion = attr.value.strip()
            if not emotion:
                raise MarkupError("<emotion> value is empty", attr.value_position)
            self.style = replace(self.style, emotion=emotion)

    def _span_tag(self, tag: _Tag) -> None:
        if tag.kind == "self":
            raise MarkupError(
                f"<{tag.name}/> cannot be self-closing: wrap text in <{tag.name}>...</{tag.name}>", tag.position
            )
        if tag.kind == "close":
            current = self.prosody if tag.name == "prosody" else self.spell
            if current is None:
                raise MarkupError(f"stray </{tag.name}> without an open <{tag.name}>", tag.position)
            other = self.spell if tag.name == "prosody" else self.prosody
            if other is not None and other[1].position > current[1].position:
                raise MarkupError(f"</{tag.name}> closes before the <{other[1].name}> opened inside it", tag.position)
            if tag.name == "prosody":
                self.prosody = None
            else:
                self.spell = None
            return
        if tag.name == "prosody":
            if self.prosody is not None:
                raise MarkupError(
                    f"nested <prosody>: the span opened at character {self.prosody[1].position} is still open",
                    tag.position,
                )
            rate = _prosody_rate(_attrs(tag, frozenset({"rate"}), frozenset({"rate"}))["rate"], self.policy)
            self.prosody = (rate, tag)
        else:
            if self.spell is not None:
                raise MarkupError(
                    f"nested <spell>: the span opened at character {self.spell[1].position} is still open",
                    tag.position,
                )
            group_attr = _attrs(tag, frozenset({"group"}), frozenset()).get("group")
            group = None
            if group_attr is not None:
                value = group_attr.value.strip()
                if not value.isascii() or not value.isdigit() or int(value) < 1:
                    raise MarkupError(
                        f"<spell> group {group_attr.value!r} is not a positive integer", group_attr.value_position
                    )
                group = int(value)
            self.spell = (group, tag)

    def finish(self, push: bool) -> None:
        for span in sorted(filter(None, (self.prosody, self.spell)), key=lambda s: s[1].position):
            name = span[1].name
            if push:
                raise MarkupError(
                    f"unclosed <{name}>: a span must open and close within one streamed message", span[1].position
                )
            raise MarkupError(f"unclosed <{name}>: no </{name}> follows", span[1].position)


def _run(
    text: str, style: Style, policy: SpeedPolicy, ratio_policy: SpeedPolicy, push: bool
) -> tuple[list[Segment], Style]:
    interpreter = _Interpreter(style, policy, ratio_policy)
    for token in _Lexer().feed(text, final=True):
        interpreter.apply(token)
    interpreter.finish(push)
    return interpreter.segments, interpreter.style


def parse(
    text: str,
    *,
    style: Style = Style(),
    policy: SpeedPolicy = KUGELAUDIO_POLICY,
    ratio_policy: SpeedPolicy = CARTESIA_POLICY,
) -> list[Segment]:
    """Parse ``text`` into segments; raises :class:`MarkupError` for malformed markup.

    ``style`` is what applies before any inline tag (its speed is the request's global
    speed); ``policy`` governs numeric ``<prosody rate>`` values and ``ratio_policy``
    ``<speed ratio>``. Adjacent text with the same attributes is merged.
    """
    return _run(text, style, policy, ratio_policy, push=False)[0]


def parse_push(
    transcript: str,
    style: Style = Style(),
    *,
    policy: SpeedPolicy = KUGELAUDIO_POLICY,
    ratio_policy: SpeedPolicy = CARTESIA_POLICY,
) -> tuple[list[Segment], Style]:
    """Server side: parse one streamed push, whose spans must open and close within it.

    Returns the segments and the style in force at its end, to pass to the next push.
    """
    return _run(transcript, style, policy, ratio_policy, push=True)


def plain_text(segments: Iterable[Segment]) -> str:
    """The text of ``segments`` with all markup removed, whitespace preserved."""
    return "".join(s.text for s in segments if isinstance(s, Text))


def strip_markup(text: str, *, policy: SpeedPolicy = KUGELAUDIO_POLICY) -> str:
    """``text`` without its markup (validated as by :func:`parse`), e.g. to match timestamp words."""
    return plain_text(parse(text, policy=policy, ratio_policy=_ANY_SPEED))


class MarkupStream:
    """Incremental splitter for a client: text in token by token, :class:`Piece` values out.

    Plain text passes through at once (only a possible tag start is held back, at most
    :data:`MAX_TAG_CHARS` characters); inline tags come out whole; a ``<prosody>`` or
    ``<spell>`` span comes out whole, as one ``span`` piece, once it closes. The pieces'
    texts concatenate to the input. Whatever the token boundaries, the pieces are the same
    once adjacent non-span pieces are joined, and a MarkupError has the same position
    (counted from the start of the stream). After a MarkupError the stream raises it again.
    """

    def __init__(
        self,
        *,
        style: Style = Style(),
        policy: SpeedPolicy = KUGELAUDIO_POLICY,
        ratio_policy: SpeedPolicy = CARTESIA_POLICY,
    ) -> None:
        self._lexer = _Lexer()
        self._interpreter = _Interpreter(style, policy, ratio_policy, collect=False)
        self._span: list[str] = []
        self._span_rate: float | None = None
        self._error: MarkupError | None = None
        self._ended = False

    @property
    def style(self) -> Style:
        """The style in force outside spans after what was fed so far."""
        return self._interpreter.style

    def feed(self, token: str) -> list[Piece]:
        """Take the next token; return the pieces that are now complete."""
        return self._step(token, final=False)

    def end(self) -> list[Piece]:
        """Finish the stream: release held text; MarkupError if a tag or span is left open."""
        pieces = self._step("", final=True)
        self._ended = True
        return pieces

    def _step(self, text: str, final: bool) -> list[Piece]:
        if self._error is not None:
            raise self._error
        if self._ended:
            raise ContextStateError("MarkupStream.end() was already called")
        if not final and not self._span and self._lexer.pass_plain(text):
            # Outside spans, plain text is a piece of its own; the slow path yields the same.
            return [Piece(text)] if text else []
        try:
            return self._pieces(self._lexer.feed(text, final), final)
        except MarkupError as exc:
            self._error = exc
            raise

    def _pieces(self, tokens: Iterable[_Token], final: bool) -> list[Piece]:
        interpreter = self._interpreter
        pieces: list[Piece] = []
        loose: list[str] = []
        for token in tokens:
            interpreter.apply(token)
            raw = token.text if isinstance(token, _Run) else token.raw
            if not self._span and interpreter.depth == 0:
                loose.append(raw)
                continue
            if loose:
                pieces.append(Piece("".join(loose)))
                loose = []
            if interpreter.prosody is not None:
                self._span_rate = interpreter.prosody[0]
            self._span.append(raw)
            if interpreter.depth == 0:
                pieces.append(Piece("".join(self._span), span=True, rate=self._span_rate))
                self._span = []
                self._span_rate = None
        if loose:
            pieces.append(Piece("".join(loose)))
        if final:
            interpreter.finish(push=False)
        return pieces
