"""The segmenter: continued text in, synthesis units out, with the clock passed in."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speakwire.server.segmenter import DEFAULT_MAX_DELAY, Pause, Piece, Segmenter, Unit


def texts(units: list[Unit] | list[Unit | Pause]) -> list[str | float]:
    return [u.text if isinstance(u, Unit) else u.seconds for u in units]


def test_whole_sentences_are_released_once_the_next_character_confirms_them() -> None:
    seg = Segmenter(max_delay=None)
    assert seg.push("Hello there.", 0.0) == []  # "." at the end could still be "3.14"
    assert texts(seg.push(" How are you? I am", 0.1)) == ["Hello there.", "How are you?"]
    assert seg.pending == " I am"
    assert texts(seg.flush()) == ["I am"]
    assert seg.pending == ""


def test_token_stream_is_cut_at_sentence_ends_with_punctuation_attached() -> None:
    seg = Segmenter(max_delay=None)
    out: list[Unit] = []
    for i, token in enumerate(["Sure", "!", " The", " answer", " is", " 42", ".", " Anything", " else", "?"]):
        out += seg.push(token, i * 0.03)
    out += seg.flush()
    assert texts(out) == ["Sure!", "The answer is 42.", "Anything else?"]


@pytest.mark.parametrize(
    "text",
    [
        "Dr. Smith is in.",
        "We met Mrs. Jones today.",
        "Use tools, e.g. a hammer.",
        "The value is 3.14 exactly.",
        "J. R. R. Tolkien wrote it.",
    ],
)
def test_abbreviations_initials_and_decimals_do_not_end_a_sentence(text: str) -> None:
    seg = Segmenter(max_delay=None)
    assert seg.push(text + " Next", 0.0) == [Unit((Piece(text),))]


def test_list_number_at_the_start_of_a_unit_is_not_a_sentence() -> None:
    seg = Segmenter(max_delay=None)
    assert texts(seg.push("1. Preheat the oven.\n2. Mix", 0.0)) == ["1. Preheat the oven."]
    assert texts(seg.flush()) == ["2. Mix"]


def test_year_at_the_end_of_a_sentence_still_ends_it() -> None:
    seg = Segmenter(max_delay=None)
    assert texts(seg.push("I was born in 1990. Then", 0.0)) == ["I was born in 1990."]


def test_clause_boundary_releases_only_a_long_enough_clause() -> None:
    seg = Segmenter(max_delay=None, min_clause_chars=24)
    assert seg.push("Well, ", 0.0) == []  # 5 characters: too short to speak on its own
    out = seg.push("after thinking about it for a while, I agree", 0.1)
    assert texts(out) == ["Well, after thinking about it for a while,"]
    assert seg.pending == " I agree"


def test_semicolon_colon_and_spaced_dash_are_clause_boundaries() -> None:
    seg = Segmenter(max_delay=None, min_clause_chars=10)
    out = seg.push("The first part is long; the second part: also long - and a third", 0.0)
    assert texts(out) == ["The first part is long;", "the second part:", "also long -"]


def test_newline_ends_a_unit_without_punctuation() -> None:
    seg = Segmenter(max_delay=None)
    assert texts(seg.push("A heading\nSome text", 0.0)) == ["A heading"]
    assert texts(seg.push("\n\n", 0.1)) == ["Some text"]
    assert seg.flush() == []


def test_cjk_sentence_marks_need_no_space() -> None:
    seg = Segmenter(max_delay=None)
    assert texts(seg.push("你好。我很好", 0.0)) == ["你好。"]
    assert texts(seg.flush()) == ["我很好"]


def test_ellipsis_and_closing_quotes_stay_with_their_sentence() -> None:
    seg = Segmenter(max_delay=None)
    out = seg.push('He said "stop!" Then... silence. X', 0.0)
    assert texts(out) == ['He said "stop!"', "Then...", "silence."]


def test_overlong_text_without_punctuation_is_cut_at_a_space() -> None:
    seg = Segmenter(max_delay=None, max_unit_chars=20)
    out = seg.push("aaaa bbbb cccc dddd eeee ffff", 0.0)
    assert texts(out) == ["aaaa bbbb cccc dddd"]
    assert seg.pending == " eeee ffff"
    assert all(len(u.text) <= 20 for u in out)


def test_zero_delay_releases_every_push_at_once_split_into_sentences() -> None:
    seg = Segmenter(max_delay=0)
    assert texts(seg.push("One. Two", 0.0)) == ["One.", "Two"]
    assert seg.pending == ""
    assert seg.deadline is None


def test_deadline_runs_from_the_oldest_pending_text() -> None:
    seg = Segmenter(max_delay=0.25)
    assert seg.deadline is None
    seg.push("Hello", 1.0)
    assert seg.deadline == 1.25
    seg.push(" wor", 1.1)
    assert seg.deadline == 1.25
    assert seg.due(1.2) == []
    # The window ran out: complete words go, the possibly half word "wor" stays.
    assert texts(seg.due(1.25)) == ["Hello"]
    assert seg.pending == " wor"
    assert seg.deadline == 1.5


def test_deadline_release_keeps_a_final_punctuated_word() -> None:
    seg = Segmenter(max_delay=0.1)
    seg.push("It is done.", 0.0)
    assert texts(seg.due(0.1)) == ["It is done."]
    assert seg.deadline is None


def test_a_single_stalled_word_gets_one_more_window_then_is_spoken() -> None:
    seg = Segmenter(max_delay=0.2)
    seg.push("Hello", 0.0)
    assert seg.due(0.2) == []
    assert seg.deadline == pytest.approx(0.4)
    assert texts(seg.due(0.4)) == ["Hello"]
    assert seg.deadline is None


def test_whitespace_only_pushes_start_no_window_and_make_no_units() -> None:
    seg = Segmenter(max_delay=0.1)
    assert seg.push("   ", 0.0) == []
    assert seg.deadline is None
    assert seg.flush() == []


def test_styles_are_kept_per_piece_and_a_style_change_is_no_boundary() -> None:
    seg = Segmenter(max_delay=None)
    seg.push("Call us at ", 0.0, style=1.0)
    seg.push("0800 5834552", 0.0, style=0.8)
    units = seg.push(". Thanks", 0.0, style=1.0)
    assert units == [Unit((Piece("Call us at ", 1.0), Piece("0800 5834552", 0.8), Piece(".", 1.0)))]
    assert units[0].text == "Call us at 0800 5834552."
    assert seg.flush() == [Unit((Piece("Thanks", 1.0),))]


def test_a_pause_releases_pending_text_first() -> None:
    seg = Segmenter(max_delay=None)
    seg.push("Wait for it", 0.0)
    assert texts(seg.pause(1.5)) == ["Wait for it", 1.5]
    assert texts(seg.pause(0.5)) == [0.5]


def test_default_window_is_a_quarter_second() -> None:
    assert DEFAULT_MAX_DELAY == 0.25
    assert Segmenter().max_delay == 0.25


@pytest.mark.parametrize("kwargs", [{"max_delay": -0.1}, {"min_clause_chars": 0}, {"max_unit_chars": 1}])
def test_bad_settings_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Segmenter(**kwargs)  # type: ignore[arg-type]


_WORDS = st.sampled_from(["Hello", "world", "3.14", "Dr.", "it's", "ok", "yes", "no", "你好", "e.g."])
_MARKS = st.sampled_from(["", "", "", ".", ",", "!", "?", ";", "\n", "。", " -"])


@settings(max_examples=150, deadline=None)
@given(
    words=st.lists(st.tuples(_WORDS, _MARKS), min_size=1, max_size=40),
    cuts=st.lists(st.integers(0, 400), max_size=12),
    delay=st.sampled_from([None, 0.0, 0.05]),
)
def test_no_text_is_lost_or_reordered_whatever_the_chunking(
    words: list[tuple[str, str]], cuts: list[int], delay: float | None
) -> None:
    text = " ".join(w + m for w, m in words)
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    seg = Segmenter(max_delay=delay, min_clause_chars=8, max_unit_chars=40)
    out: list[Unit] = []
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        out += seg.push(text[a:b], now=i * 0.03)
        out += seg.due(i * 0.03)
    out += seg.flush()
    assert "".join("".join(u.text.split()) for u in out) == "".join(text.split())
    assert all(u.text and u.text == u.text.strip() for u in out)
    assert seg.pending == ""
