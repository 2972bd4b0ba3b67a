"""Typed units (parse/format/encode/with_voice) and the one rule for emotion and speaker names."""

from __future__ import annotations

import numpy as np
import pytest

from sambert_deploy.errors import InvalidInputError
from sambert_deploy.frontend import FrontEnd, FrontEndOptions
from sambert_deploy.symbols import (
    Inventories,
    Unit,
    encode_symbols,
    encode_units,
    format_units,
    parse_units,
    with_voice,
)

LINE = (
    "{n_c$tone2$s_begin$word_begin$emotion_neutral$F7} {i_c$tone2$s_end$word_end$emotion_neutral$F7} "
    "{#1$tone_none$s_none$word_none$emotion_none$F7} {h_c$tone3$s_begin$word_begin$emotion_happy$F7} "
    "{ao_c$tone3$s_end$word_end$emotion_happy$F7} {#4$tone_none$s_none$word_none$emotion_none$F7}"
)


@pytest.fixture(scope="module")
def inv() -> Inventories:
    return Inventories.build(["F7", "M7"])


def test_unit_round_trip_and_breaks() -> None:
    u = Unit.parse("{n_c$tone2$s_begin$word_begin$emotion_neutral$F7}")
    assert u == Unit("n_c", "tone2", "s_begin", "word_begin", "emotion_neutral", "F7")
    assert str(u) == "{n_c$tone2$s_begin$word_begin$emotion_neutral$F7}"
    assert u.break_level is None and not u.is_break
    for level in (1, 2, 3, 4):
        b = Unit.parse(f"{{#{level}$tone_none$s_none$word_none$emotion_none$F7}}")
        assert b.break_level == level and b.is_break
    units = parse_units(LINE)
    assert len(units) == 6 and format_units(units) == LINE
    assert parse_units("7\t" + LINE + " ") == units  # a ttsfrd line: index and trailing space
    assert parse_units("") == [] and parse_units("  \n") == []


@pytest.mark.parametrize("bad", ["{a$b$c$d$e}", "{a$b$c$d$e$f$g}", "plain"])
def test_unit_field_count_error_names_position_and_format(bad: str) -> None:
    with pytest.raises(InvalidInputError, match=r"unit 3 .*expected 6: \{sy\$tone\$syllable_flag"):
        Unit.parse(bad, 3)
    with pytest.raises(InvalidInputError, match="unit 1 "):
        parse_units(LINE.split()[0] + " " + bad)


def test_encode_units_equals_encode_symbols(inv: Inventories) -> None:
    a, b = encode_units(parse_units(LINE), inv), encode_symbols(LINE, inv)
    for x, y in ((a.ling, b.ling), (a.emotion, b.emotion), (a.speaker, b.speaker)):
        np.testing.assert_array_equal(x, y)
    assert a.num_units == 6 and a.ling.dtype == np.int64 and a.ling.shape == (6, 4)
    assert a.ling[0, 0] == inv.index("sy")["@n_c"] and a.emotion[3] == inv.index("emo_category")["emotion_happy"]


def test_encode_errors(inv: Inventories) -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        encode_units([], inv)
    with pytest.raises(InvalidInputError, match="empty"):
        encode_symbols("  ", inv)
    bad = parse_units(LINE)
    bad[2] = Unit("zz_c", "tone1", "s_begin", "word_begin", "emotion_neutral", "F7")
    with pytest.raises(InvalidInputError, match="unit 2 .*sy symbol 'zz_c'"):
        encode_units(bad, inv)
    bad[2] = Unit("a_c", "tone1", "s_begin", "word_begin", "emotion_neutral", "Z9")
    with pytest.raises(InvalidInputError, match=r"speaker symbol 'Z9' .*\(valid: F7, M7\)"):
        encode_units(bad, inv)
    bad[2] = Unit("a_c", "~", "s_begin", "word_begin", "emotion_neutral", "F7")
    with pytest.raises(InvalidInputError, match="tone symbol '~'"):  # specials are not input symbols
        encode_units(bad, inv)


def test_with_voice() -> None:
    units = parse_units(LINE)
    out = with_voice(units, "emotion_sad", "M7")
    assert [u.emotion for u in out] == ["emotion_sad"] * 2 + ["emotion_none"] + ["emotion_sad"] * 2 + ["emotion_none"]
    assert {u.speaker for u in out} == {"M7"}
    assert [(u.sy, u.tone, u.syllable_flag, u.word_segment) for u in out] == [
        (u.sy, u.tone, u.syllable_flag, u.word_segment) for u in units
    ]
    assert with_voice(units, None, None) == units
    assert [u.emotion for u in with_voice(units, None, "M7")] == [u.emotion for u in units]
    assert {u.speaker for u in with_voice(units, "emotion_sad", None)} == {"F7"}


@pytest.mark.parametrize("name", ["happy", "Happy", " HAPPY ", "emotion_happy", "Emotion_Happy"])
def test_resolve_emotion_case_insensitive(inv: Inventories, name: str) -> None:
    assert inv.resolve_emotion(name) == "emotion_happy"


@pytest.mark.parametrize("name", ["ecstatic", "none", "emotion_none", "", "placeholder"])
def test_resolve_emotion_unknown_lists_names_without_prefix(inv: Inventories, name: str) -> None:
    with pytest.raises(InvalidInputError, match=r"unknown emotion .*valid emotions: .*\bhappy\b") as e:
        inv.resolve_emotion(name)
    assert "emotion_happy" not in str(e.value) and "none" not in str(e.value).split("valid emotions:")[1]


def test_resolve_speaker(inv: Inventories) -> None:
    assert inv.resolve_speaker("F7") == "F7"
    assert inv.resolve_speaker(" m7 ") == "M7"
    with pytest.raises(InvalidInputError, match="unknown speaker 'x9'.*valid speakers: F7, M7"):
        inv.resolve_speaker("x9")
    with pytest.raises(InvalidInputError, match="valid speakers"):
        inv.resolve_speaker("_")  # a special is no speaker


def test_markup_and_arguments_share_the_rule() -> None:
    fe = FrontEnd(FrontEndOptions(speaker="f7", speakers=("F7", "zhitian_emo")))
    assert fe.speaker == "F7"
    a = fe.units("好。", emotion=" HAPPY ", speaker="ZHITIAN_EMO")
    b = fe.units("[emotion=Happy]好。", speaker="zhitian_emo")
    assert a == b and a[0][0].emotion == "emotion_happy" and a[0][0].speaker == "zhitian_emo"
    for text, kw in (("好", {"emotion": "nope"}), ("[emotion=nope]好", {})):
        with pytest.raises(InvalidInputError, match="unknown emotion 'nope'.*valid emotions: .*happy"):
            fe.units(text, **kw)  # type: ignore[arg-type]
