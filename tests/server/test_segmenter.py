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
    seg = Segmenter(max_delay=None, min_clause_chars=24, first_unit_words=None)
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
    seg = Segmenter(max_delay=None, first_unit_words=None)
    seg.push("Call us at ", 0.0, style=1.0)
    seg.push("0800 5834552", 0.0, style=0.8)
    units = seg.push(". Thanks", 0.0, style=1.0)
    assert units == [Unit((Piece("Call us at ", 1.0), Piece("0800 5834552", 0.8), Piece(".", 1.0)))]
    assert units[0].text == "Call us at 0800 5834552."
    assert seg.flush() == [Unit((Piece("Thanks", 1.0),), ends_at_boundary=False)]


def test_a_pause_releases_pending_text_first() -> None:
    seg = Segmenter(max_delay=None)
    seg.push("Wait for it", 0.0)
    assert texts(seg.pause(1.5)) == ["Wait for it", 1.5]
    assert texts(seg.pause(0.5)) == [0.5]


def test_default_window_is_a_quarter_second() -> None:
    assert DEFAULT_MAX_DELAY == 0.25
    assert Segmenter().max_delay == 0.25


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_delay": -0.1},
        {"min_clause_chars": 0},
        {"max_unit_chars": 1},
        {"first_unit_words": -1},
        {"first_unit_words": 2.5},
        {"first_unit_words": True},
    ],
)
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
    first=st.sampled_from([None, 1, 3]),
)
def test_no_text_is_lost_or_reordered_whatever_the_chunking(
    words: list[tuple[str, str]], cuts: list[int], delay: float | None, first: int | None
) -> None:
    text = " ".join(w + m for w, m in words)
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    seg = Segmenter(max_delay=delay, min_clause_chars=8, max_unit_chars=40, first_unit_words=first)
    out: list[Unit] = []
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        out += seg.push(text[a:b], now=i * 0.03)
        out += seg.due(i * 0.03)
    out += seg.flush()
    assert "".join("".join(u.text.split()) for u in out) == "".join(text.split())
    assert all(u.text and u.text == u.text.strip() for u in out)
    assert seg.pending == ""


# The first-unit rule: a small first chunk, the usual boundaries after it.


def pushes(seg: Segmenter, tokens: list[str], step: float = 0.02) -> list[list[tuple[str, bool]]]:
    """What each push of ``tokens`` (``step`` seconds apart) released: (text, ends_at_boundary) pairs."""
    return [[(u.text, u.ends_at_boundary) for u in seg.push(t, i * step)] for i, t in enumerate(tokens)]


def test_first_unit_is_released_after_three_complete_words_token_by_token() -> None:
    seg = Segmenter()
    tokens = ["The", " weather", " in", " Lisbon", " this", " weekend", " looks", " mostly", " sunny", ".", " There"]
    out = pushes(seg, tokens)
    # " in" may still grow ("inside"): it counts once the next token's space follows it.
    assert out == [
        [], [], [],
        [("The weather in", False)],
        [], [], [], [], [], [],
        [("Lisbon this weekend looks mostly sunny.", True)],
    ]  # fmt: skip
    assert seg.pending == " There"


def test_a_clause_mark_ends_the_first_unit_whatever_its_length() -> None:
    seg = Segmenter()
    out = pushes(seg, ["Sure", ",", " I", " can", " help", " you", " with", " that", " right", " now"])
    # The comma counts once the space after it shows it is no "3,000".
    assert out == [[], [], [("Sure,", True)], [], [], [], [], [], [], []]
    assert seg.pending == " I can help you with that right now"


@pytest.mark.parametrize(
    ("tokens", "first"),
    [
        (["Well", " -", " I"], "Well -"),
        (["Yes", ";", " and"], "Yes;"),
        (["Note", ":", " the"], "Note:"),
        (["你好", "，", "我"], "你好，"),
    ],
)
def test_every_clause_mark_ends_the_first_unit(tokens: list[str], first: str) -> None:
    seg = Segmenter(max_delay=None)
    out = [u for i, t in enumerate(tokens) for u in seg.push(t, i * 0.02)]
    assert out == [Unit((Piece(first),))]


def test_a_push_holding_a_whole_sentence_is_not_split_by_the_first_unit_rule() -> None:
    seg = Segmenter()
    out = seg.push("Well, I think the answer is yes. And then we", 0.0)
    assert out == [Unit((Piece("Well, I think the answer is yes."),), True)]
    # The first unit is out: the rest waits for a boundary or the window.
    assert seg.pending == " And then we"
    assert seg.push(" could go", 0.05) == []


def test_a_long_push_without_a_boundary_releases_all_its_complete_words() -> None:
    seg = Segmenter()
    assert seg.push("this has no punctuation at all", 0.0) == [Unit((Piece("this has no punctuation at"),), False)]
    assert seg.pending == " all"
    assert seg.deadline == 0.25


def test_a_comma_inside_a_number_is_no_clause_mark() -> None:
    seg = Segmenter(max_delay=None)
    assert seg.push("It costs 3,000", 0.0) == []
    assert texts(seg.push(" dollars", 0.02)) == ["It costs 3,000"]


def test_first_unit_with_fewer_words_still_goes_when_the_window_runs_out() -> None:
    seg = Segmenter(max_delay=0.25)
    assert seg.push("Hello", 0.0) == []
    assert seg.push(" wor", 0.1) == []
    assert seg.due(0.25) == [Unit((Piece("Hello"),), False)]
    # The rule is spent: three more complete words do not cut the second unit.
    assert seg.push("ld and the others", 0.3) == []
    assert seg.deadline == 0.5
    assert seg.due(0.5) == [Unit((Piece("world and the"),), False)]


def test_flush_releases_a_short_first_unit_and_marks_its_end_by_punctuation() -> None:
    seg = Segmenter()
    seg.push("Two words", 0.0)
    assert seg.flush() == [Unit((Piece("Two words"),), False)]
    seg = Segmenter()
    seg.push("Ok then.", 0.0)
    assert seg.flush() == [Unit((Piece("Ok then."),), True)]


def test_cjk_without_spaces_has_no_complete_words_and_waits_for_a_mark_or_the_window() -> None:
    seg = Segmenter(max_delay=0.25)
    assert seg.push("我们今天", 0.0) == []
    assert seg.push("去公园玩", 0.1) == []
    assert seg.due(0.25) == []  # no space to cut at: one more window
    assert seg.due(0.5) == [Unit((Piece("我们今天去公园玩"),), False)]


def test_zero_delay_releases_the_push_whole_without_the_first_unit_rule() -> None:
    seg = Segmenter(max_delay=0)
    assert seg.push("The weather in Lisbon", 0.0) == [Unit((Piece("The weather in Lisbon"),), False)]


@pytest.mark.parametrize("off", [None, 0])
def test_first_unit_rule_can_be_turned_off(off: int | None) -> None:
    seg = Segmenter(max_delay=None, first_unit_words=off)
    assert seg.first_unit_words is None
    assert pushes(seg, ["Sure", ",", " the", " weather", " in", " Lisbon"]) == [[]] * 6
    assert texts(seg.flush()) == ["Sure, the weather in Lisbon"]


def test_first_unit_word_count_is_configurable() -> None:
    seg = Segmenter(max_delay=None, first_unit_words=1)
    assert pushes(seg, ["Hello", " there", " my"]) == [[], [("Hello", False)], []]
    seg = Segmenter(max_delay=None, first_unit_words=5)
    assert pushes(seg, ["a", " b", " c", " d", " e", " f"]) == [[], [], [], [], [], [("a b c d e", False)]]


def test_only_the_length_cap_and_the_window_cut_mid_sentence() -> None:
    seg = Segmenter(max_delay=None, max_unit_chars=20, first_unit_words=None)
    out = seg.push("aaaa bbbb cccc dddd eeee ffff", 0.0) + seg.push(". Next", 0.1)
    assert [(u.text, u.ends_at_boundary) for u in out] == [("aaaa bbbb cccc dddd", False), ("eeee ffff.", True)]
    seg = Segmenter(max_delay=None, min_clause_chars=5, first_unit_words=None)
    out = seg.push("A heading\nfirst clause, then", 0.0)
    assert [(u.text, u.ends_at_boundary) for u in out] == [("A heading", True), ("first clause,", True)]


def test_a_message_split_by_markup_is_one_push_for_the_first_unit_rule() -> None:
    seg = Segmenter()
    # '<prosody rate="slow">' around the number: three parts of one message, pushed at once.
    assert seg.push("Our callback number is ", 0.0, style=1.0, more_follows=True) == []
    assert seg.push("0800 583", 0.0, style=0.8, more_follows=True) == []
    units = seg.push(". Thanks", 0.0, style=1.0)
    assert units == [Unit((Piece("Our callback number is ", 1.0), Piece("0800 583", 0.8), Piece(".", 1.0)))]
    # Had the message ended after its first part, the rule would have cut there.
    seg = Segmenter()
    assert texts(seg.push("Our callback number is ", 0.0, style=1.0)) == ["Our callback number is"]
