"""split_units on lines without usable breaks, and the incremental front end (SentenceReader).

The reader's contract: any cut of the input into pieces gives exactly the units of the whole text.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sambert_deploy.errors import InvalidInputError
from sambert_deploy.frontend import FrontEnd, FrontEndOptions, SentenceReader, split_units
from sambert_deploy.frontend.reader import HARD_LIMIT, SOFT_LIMIT
from sambert_deploy.symbols import Unit
from tests.conftest import DEV_PAIRS, need_path

HANDMADE = [
    "今天很好。[emotion=happy]我们去玩吧！[/emotion]明天见。",
    "他说：“我们走吧。”她问：“去哪儿？！”……没人回答。",
    "[emotion=sad]可惜下雨了，[emotion = happy ]算了？[/ emotion]好吧!!\n\n第二行。\r\n第三行",
    "我用iPhone给NBA球迷打电话，he said 'hello world!' 然后挂了。",
    "2024年5月1日，GDP同比增长5.3%，电话13912345678，价格$1,200，时间8:30。比分3:2!",
    "1,000,000个人 和 138 1234 5678 以及 5 km 的路。",
    "没有句末标点的一段话，一直说下去，说到最后",
    "（括号里的话。）《书名号》「引号」『双引号』？！",
    "“Quoted.”\"Straight.\" 'single?' end",
    "[emotion=happy]",
    "。。。！！？？",
    "",
]


def phone(sy: str, sf: str, ws: str) -> Unit:
    return Unit(sy, "tone1", sf, ws, "emotion_neutral", "F7")


def brk(level: int) -> Unit:
    return Unit(f"#{level}", "tone_none", "s_none", "word_none", "emotion_none", "F7")


def word(n_syllables: int) -> list[Unit]:
    """A prosodic word of n two-phone syllables with the KAN-TTS word flags."""
    out = []
    for k in range(n_syllables):
        out.append(phone("b_c", "s_begin", "word_begin" if k == 0 else "word_middle"))
        out.append(phone("a_c", "s_end", "word_end" if k == n_syllables - 1 else "word_middle"))
    return out


def same_but_levels(pieces: list[list[Unit]], units: list[Unit]) -> bool:
    flat = [u for p in pieces for u in p]
    norm = lambda us: [replace(u, sy="#") if u.is_break else u for u in us]  # noqa: E731
    return norm(flat) == norm(units)


# --- split_units --------------------------------------------------------------------------------------------


def test_split_units_without_breaks_cuts_at_word_boundaries() -> None:
    # Raised IndexError before (nxt[0] of an empty list): no break unit at all.
    units = word(2) + word(3) + word(2)  # 4 + 6 + 4 units, no break
    pieces = split_units(units, 5)
    assert all(len(p) <= 5 for p in pieces) and same_but_levels(pieces, units)
    assert [len(p) for p in pieces] == [4, 4, 2, 4]  # word, then a 6-unit word cut at syllables, then word
    assert pieces[1][0].word_segment == "word_begin" and pieces[2][0].syllable_flag == "s_begin"


def test_split_units_only_final_break() -> None:
    # Before: the first break was the last unit, so the whole line stayed one piece, longer than the limit.
    units = word(3) + word(3) + [brk(4)]
    pieces = split_units(units, 8)
    assert [len(p) for p in pieces] == [6, 7] and pieces[-1][-1] == brk(4)


def test_split_units_odd_limit_cuts_inside_syllable() -> None:
    units = word(4)
    pieces = split_units(units, 3)  # syllables are 2 units: 3 is no syllable boundary
    assert [len(p) for p in pieces] == [2, 2, 2, 2]
    pieces = split_units([phone("x", "s_middle", "word_middle")] * 7, 3)
    assert [len(p) for p in pieces] == [3, 3, 1]


def test_split_units_break_cut_and_invalid_limit() -> None:
    units = word(2) + [brk(1)] + word(2) + [brk(3)] + word(2) + [brk(4)]
    pieces = split_units(units, 12)
    assert [len(p) for p in pieces] == [10, 5] and pieces[0][-1] == brk(4)
    assert split_units(units, 100) == [units]
    with pytest.raises(InvalidInputError, match="max_units"):
        split_units(units, 0)


@st.composite
def unit_lines(draw: st.DrawFn) -> list[Unit]:
    units: list[Unit] = []
    for _ in range(draw(st.integers(0, 12))):
        units += word(draw(st.integers(1, 4)))
        level = draw(st.sampled_from([0, 0, 1, 1, 2, 3]))
        if level:
            units.append(brk(level))
    if units and draw(st.booleans()):
        units.append(brk(4))
    return units


@given(units=unit_lines(), max_units=st.integers(1, 20))
@settings(max_examples=300, deadline=None)
def test_split_units_property(units: list[Unit], max_units: int) -> None:
    pieces = split_units(units, max_units)
    assert all(1 <= len(p) <= max_units for p in pieces)
    assert same_but_levels(pieces, units)
    if len(units) <= max_units:
        assert pieces == ([units] if units else [])


# --- SentenceReader -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fe() -> FrontEnd:
    return FrontEnd()


def stream(fe: FrontEnd, pieces: list[str], **kw: str) -> list[list[Unit]]:
    """Feed the pieces, reading after every feed as a streaming caller does; then finish and drain."""
    rd = fe.reader(**kw)
    out: list[list[Unit]] = []
    for p in pieces:
        rd.feed(p)
        while (s := rd.next_sentence()) is not None:
            out.append(s)
    assert not rd.done
    rd.finish()
    while (s := rd.next_sentence()) is not None:
        out.append(s)
    assert rd.done and rd.pending_chars == 0 and rd.next_sentence() is None
    return out


def cut_patterns(text: str, rng: random.Random) -> list[list[str]]:
    """One character at a time, fixed sizes, and random cuts."""
    pats = [list(text), [text[i : i + 3] for i in range(0, len(text), 3)]]
    for _ in range(2):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8)))) if len(text) > 1 else []
        b = [0, *cuts, len(text)]
        pats.append([text[i:j] for i, j in zip(b, b[1:], strict=False)])
    return pats


def dev_texts() -> list[str]:
    pairs = need_path(DEV_PAIRS, "the development set (it lives outside the repo; never copied into it)")
    return [json.loads(line)["text"] for line in pairs.read_text("utf-8").splitlines() if line.strip()]


def test_reader_equals_units_on_dev_set(fe: FrontEnd) -> None:
    rng = random.Random(0)
    texts = dev_texts()
    for text in texts:
        whole = fe.units(text)
        assert whole, text
        for pieces in cut_patterns(text, rng):
            assert stream(fe, pieces) == whole, (text, pieces)
    joined = "".join(texts[:60])  # many sentences in one text: the emotion/sentence state crosses blocks
    whole = fe.units(joined)
    assert len(whole) >= 50  # a few dev texts have no final punctuation and run into the next one
    for pieces in cut_patterns(joined, rng):
        assert stream(fe, pieces) == whole


@pytest.mark.parametrize("text", HANDMADE)
def test_reader_equals_units_handmade(fe: FrontEnd, text: str) -> None:
    whole = fe.units(text)
    for pieces in cut_patterns(text, random.Random(len(text))):
        assert stream(fe, pieces) == whole, pieces
        assert stream(fe, pieces, emotion="sad") == fe.units(text, emotion="sad")


@given(data=st.data())
@settings(max_examples=40, deadline=None)
def test_reader_any_cut_property(fe: FrontEnd, data: st.DataObject) -> None:
    text = "".join(data.draw(st.lists(st.sampled_from(HANDMADE[:9]), min_size=1, max_size=4)))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=12)))
    b = [0, *cuts, len(text)]
    assert stream(fe, [text[i:j] for i, j in zip(b, b[1:], strict=False)]) == fe.units(text)


def test_markup_cut_between_feeds(fe: FrontEnd) -> None:
    got = stream(fe, ["好。[emo", "tion=hap", "py]走吧。[/emo", "tion]再见。"])
    assert [s[0].emotion for s in got] == ["emotion_neutral", "emotion_happy", "emotion_neutral"]
    assert got == fe.units("好。[emotion=happy]走吧。[/emotion]再见。")


def test_closing_quote_stays_with_its_sentence(fe: FrontEnd) -> None:
    rd = fe.reader()
    rd.feed("他说：“走吧。")
    assert rd.next_sentence() is None  # the closer may still come
    rd.feed("”")
    assert rd.next_sentence() is None
    rd.feed("好")
    first = rd.next_sentence()
    assert first is not None and first == fe.units("他说：“走吧。”")[0]
    assert rd.pending_chars == 1 and not rd.done


def test_max_units_applies_to_reader_output() -> None:
    fe = FrontEnd(FrontEndOptions(max_units_per_sentence=12))
    text = "今天上午我们在公园里散步，看到很多小朋友在放风筝。大家都非常开心"
    whole = fe.units(text)
    assert len(whole) > 2 and all(len(s) <= 12 for s in whole)
    assert stream(fe, list(text)) == whole


def test_pending_chars_and_done(fe: FrontEnd) -> None:
    rd = fe.reader()
    assert rd.pending_chars == 0 and not rd.done
    rd.feed("你好。再")
    assert rd.pending_chars == 4
    s = rd.next_sentence()
    assert s is not None and s[-1].break_level == 4
    assert rd.pending_chars == 1 and rd.next_sentence() is None and not rd.done
    rd.feed("见")
    assert rd.pending_chars == 2
    rd.finish()
    assert not rd.done
    assert rd.next_sentence() == fe.units("再见")[0]
    assert rd.pending_chars == 0 and rd.next_sentence() is None and rd.done
    with pytest.raises(InvalidInputError, match="after finish"):
        rd.feed("更多")


def test_reader_errors_and_empty(fe: FrontEnd) -> None:
    rd = fe.reader()
    rd.feed("好。[emotion=nope]你好。")
    rd.finish()
    assert rd.next_sentence() is not None  # the error comes with the block that holds the marker
    with pytest.raises(InvalidInputError, match="unknown emotion 'nope'"):
        rd.next_sentence()
    with pytest.raises(InvalidInputError, match="valid emotions"):
        fe.reader(emotion="nope")  # checked before any text
    rd = fe.reader()
    rd.finish()
    assert rd.next_sentence() is None and rd.done
    assert isinstance(rd, SentenceReader)


def _blocks(fe: FrontEnd, pieces: list[str]) -> list[str]:
    """The blocks the reader cuts, without running the analysis (a per-instance stand-in)."""
    blocks: list[str] = []
    recorder = type("Recorder", (), {"block_units": lambda self, b, *a: blocks.append(b) or []})()
    rd = SentenceReader(recorder, fe.emotion, fe.speaker)
    for p in pieces:
        rd.feed(p)
        rd.next_sentence()
    rd.finish()
    while rd.next_sentence() is not None:
        pass
    assert rd.done
    return blocks


def test_megabyte_without_sentence_ends_is_cut_into_bounded_blocks(fe: FrontEnd) -> None:
    rng = random.Random(1)
    han = "我们今天在这里讨论一个没有句号的非常长的段落"
    parts = []
    while sum(map(len, parts)) < 1_000_000:
        parts.append("".join(rng.choice(han) for _ in range(rng.randint(5, 3000))))
        parts.append(rng.choice(["，", "、", " ", "", "hello", "12345"]))
    text = "".join(parts)
    t = time.perf_counter()
    blocks = _blocks(fe, [text])
    elapsed = time.perf_counter() - t
    assert "".join(blocks) == text
    assert max(map(len, blocks)) <= HARD_LIMIT
    assert len(blocks) >= len(text) // HARD_LIMIT
    assert elapsed < 5.0, elapsed  # linear: a re-slice per block would take minutes
    # where there is a soft break in the first SOFT_LIMIT characters, the block ends there
    for b in blocks[:-1]:
        if any(c in "，、 " for c in b[:SOFT_LIMIT]):
            assert len(b) <= SOFT_LIMIT and b[-1] in "，、 "


def test_long_blocks_are_cut_the_same_in_pieces(fe: FrontEnd) -> None:
    rng = random.Random(2)
    text = "".join(rng.choice("我们的abc 123，") for _ in range(9000)) + "“好。”" + "字" * 4500 + "ab" * 600
    whole = _blocks(fe, [text])
    assert max(map(len, whole)) <= HARD_LIMIT and "".join(whole) == text
    for size in (1, 7, 1999, 2001):
        assert _blocks(fe, [text[i : i + size] for i in range(0, len(text), size)]) == whole
    # a forced cut is not placed inside a Latin word
    for a, b in zip(whole, whole[1:], strict=False):
        assert not (a[-1].isascii() and a[-1].isalpha() and b[0].isascii() and b[0].isalpha()) or len(a) == HARD_LIMIT


def test_feed_from_one_thread_read_from_another(fe: FrontEnd) -> None:
    text = "".join(HANDMADE[:9]) * 3
    rd = fe.reader()
    rng = random.Random(3)

    def produce() -> None:
        i = 0
        while i < len(text):
            n = rng.randint(1, 9)
            rd.feed(text[i : i + n])
            i += n
            time.sleep(0.0005)
        rd.finish()

    th = threading.Thread(target=produce)
    th.start()
    got: list[list[Unit]] = []
    deadline = time.monotonic() + 60
    while not rd.done and time.monotonic() < deadline:
        s = rd.next_sentence()
        if s is None:
            time.sleep(0.001)
        else:
            got.append(s)
    th.join()
    assert rd.done and got == fe.units(text)
