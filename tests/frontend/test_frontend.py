"""FrontEnd: exact line format, inventories, emotion/speaker, markup, lexicon, edge cases."""

from __future__ import annotations

import logging
import random

import pytest

from sambert_deploy.errors import InvalidInputError
from sambert_deploy.frontend import FrontEnd, FrontEndOptions, split_units
from sambert_deploy.symbols import Inventories, Unit, parse_units


@pytest.fixture(scope="module")
def fe() -> FrontEnd:
    return FrontEnd()


def u(sy: str, tone: str, sf: str, ws: str, emo: str = "emotion_neutral", spk: str = "F7") -> str:
    return f"{{{sy}${tone}${sf}${ws}${emo}${spk}}}"


def brk(n: int, spk: str = "F7") -> str:
    return f"{{#{n}$tone_none$s_none$word_none$emotion_none${spk}}}"


def test_exact_line_format(fe: FrontEnd) -> None:
    # 你好，世界。 -> two PWs, #3 at the comma, #4 at the end; a space after every unit, the last one included
    expected = (
        "0\t"
        + " ".join(
            [
                u("n_c", "tone2", "s_begin", "word_begin"), u("i_c", "tone2", "s_end", "word_middle"),
                u("h_c", "tone3", "s_begin", "word_middle"), u("ao_c", "tone3", "s_end", "word_end"), brk(3),
                u("sh_c", "tone4", "s_begin", "word_begin"), u("ih_c", "tone4", "s_end", "word_middle"),
                u("j_c", "tone4", "s_begin", "word_middle"), u("ie_c", "tone4", "s_end", "word_end"), brk(4),
            ]
        )
        + " "
    )  # fmt: skip
    assert fe.to_lines("你好，世界。") == [expected]


def test_single_syllable_word_and_missing_final_punctuation(fe: FrontEnd) -> None:
    assert fe.sentences("好") == [
        " ".join(
            [u("h_c", "tone3", "s_begin", "word_begin"), u("ao_c", "tone3", "s_end", "word_end"), brk(4)]
        )
    ]


def test_sentences_and_indices(fe: FrontEnd) -> None:
    lines = fe.to_lines("今天天气很好。我们去公园吧！你来吗？")
    assert [ln.split("\t")[0] for ln in lines] == ["0", "1", "2"]
    for ln in lines:
        units = ln.split("\t")[1].split(" ")
        assert units[-1] == "" and units[-2] == brk(4)
        assert not any(x.startswith(("{pau", "{sil", "{sp$")) for x in units)


def test_position_rules(fe: FrontEnd) -> None:
    for sent in fe.sentences("我用iPhone给NBA球迷打电话，他们说一点儿也不贵。"):
        units = [x.strip("{}").split("$") for x in sent.split(" ")]
        for k, f in enumerate(units):
            if f[0].startswith("#"):
                assert units[k - 1][3] in ("word_end", "word_both")  # every break follows a word end
            if f[3] in ("word_end", "word_both"):
                assert units[k + 1][0].startswith("#")  # every word end is followed by a break
            if f[1] not in ("tone0", "tone_none"):  # Mandarin: exactly onset s_begin + final s_end
                assert f[2] in ("s_begin", "s_end")


def test_english_flags(fe: FrontEnd) -> None:
    sent = fe.sentences("hello")[0].split(" ")
    fields = [x.strip("{}").split("$")[:4] for x in sent]
    assert fields == [
        ["hh", "tone0", "s_begin", "word_begin"], ["ah", "tone0", "s_end", "word_middle"],
        ["l", "tone0", "s_begin", "word_middle"], ["ow", "tone0", "s_end", "word_end"],
        ["#4", "tone_none", "s_none", "word_none"],
    ]  # fmt: skip
    a = [x.strip("{}").split("$")[:4] for x in fe.sentences("a")[0].split(" ")]
    assert a[0] == ["ah", "tone0", "s_both", "word_both"]  # the article: one phone, s_both + word_both


def test_latin_and_chinese_separated_by_break(fe: FrontEnd) -> None:
    assert fe.pinyin("用AI写代码") == ["yong4 #1 AI #1 xie3 dai4 ma3 #4"]


def news_text(n_chars: int = 5000, seed: int = 0) -> str:
    """Synthetic news-style text mixing numbers, dates, English, units and punctuation (written for this test)."""
    rng = random.Random(seed)
    templates = [
        "{y}年{m}月{d}日，国家统计局发布数据显示，一季度GDP同比增长{p}%，CPI上涨{q}%。",
        "记者从市交通委获悉，地铁{n}号线将于{h}:{mi}开通，全长{k}km，设站{s}座。",
        "据新华社报道，当地气温最高达到{t}℃，最低为-{t2}℃，请市民注意防暑降温！",
        "该公司发布的iPhone新品售价为${price}，比上一代贵了{n}美元，苹果CEO表示很满意。",
        "报名热线：400-800-{tel}，咨询电话13912345678，第{n}届展览会在上海举行。",
        "研究人员在Nature杂志上发表论文称，实验组{a}/{b}的样本出现了明显变化，约{p}%的受访者表示支持。",
        "小明说：“我们一起去银行取点儿钱吧，顺便买一点儿水果。”妈妈笑着答应了。",
        "比赛以{a}:{b}结束，主队球员张伟在第{n}分钟打进一球，现场{k}万名球迷欢呼雀跃😀。",
        "这批货物重{k}kg，运费约{price}元，预计3-5个工作日送达，数量有限，先到先得~",
        "会议指出，要坚持以人民为中心的发展思想，不断增强人民群众的获得感、幸福感、安全感。",
    ]  # fmt: skip
    out: list[str] = []
    total = 0
    while total < n_chars:
        t = rng.choice(templates).format(
            y=rng.randint(1990, 2030), m=rng.randint(1, 12), d=rng.randint(1, 28), p=round(rng.uniform(0, 20), 1),
            q=round(rng.uniform(0, 5), 1), n=rng.randint(1, 99), h=rng.randint(6, 22), mi=rng.choice(["00", "05", "30"]),
            k=rng.randint(2, 500), s=rng.randint(5, 40), t=rng.randint(20, 42), t2=rng.randint(1, 15),
            price=rng.randint(99, 9999), tel=rng.randint(1000, 9999), a=rng.randint(1, 9), b=rng.randint(10, 99),
        )  # fmt: skip
        out.append(t)
        total += len(t)
    return "".join(out)


def test_news_text_units_in_inventories(fe: FrontEnd) -> None:
    inv = Inventories.build(["F7"])
    sy = {s[1:] for s in inv.sy if s.startswith("@")}
    text = news_text()
    assert len(text) >= 5000
    sents = fe.sentences(text)
    assert len(sents) > 50
    for sent in sents:
        for unit in sent.split(" "):
            assert unit.startswith("{") and unit.endswith("}"), unit
            f = unit[1:-1].split("$")
            assert len(f) == 6, unit
            assert f[0] in sy, unit
            assert f[1] in inv.tone and f[2] in inv.syllable_flag and f[3] in inv.word_segment, unit
            assert f[4] in inv.emo_category and f[5] == "F7", unit


@pytest.mark.parametrize("text", ["", "   ", "，。！？", "……", "😀🎉👍", "\n\n", "《》“”"])
def test_nothing_speakable_gives_empty(fe: FrontEnd, text: str) -> None:
    assert fe.sentences(text) == []
    assert fe.to_lines(text) == []


def test_dropped_characters_are_named(fe: FrontEnd, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sambert_deploy.frontend"):
        out = fe.sentences("你好😀世界")
    assert len(out) == 1
    assert any("😀" in r.getMessage() for r in caplog.records)


def test_large_text(fe: FrontEnd) -> None:
    text = news_text(100_000, seed=1)
    assert len(text.encode("utf-8")) > 100_000
    assert len(fe.sentences(text)) > 500


def test_emotion_and_speaker_arguments() -> None:
    fe = FrontEnd(FrontEndOptions(emotion="happy", speaker="zhitian_emo", speakers=("F7", "zhitian_emo")))
    s = fe.sentences("好。")[0]
    assert (
        "$emotion_happy$zhitian_emo}" in s and "{#4$tone_none$s_none$word_none$emotion_none$zhitian_emo}" in s
    )
    s2 = fe.sentences("好。", emotion="emotion_sad", speaker="F7")[0]
    assert "$emotion_sad$F7}" in s2


def test_invalid_emotion_lists_valid_names(fe: FrontEnd) -> None:
    with pytest.raises(InvalidInputError, match="valid emotions: .*happy"):
        fe.sentences("你好", emotion="ecstatic")
    with pytest.raises(InvalidInputError):
        FrontEnd(FrontEndOptions(emotion="nope"))
    with pytest.raises(InvalidInputError, match="valid emotions"):
        fe.sentences("[emotion=nope]你好")


def test_invalid_speaker(fe: FrontEnd) -> None:
    with pytest.raises(InvalidInputError, match="valid speakers: F7"):
        FrontEnd(FrontEndOptions(speaker="xx", speakers=("F7",)))
    with pytest.raises(InvalidInputError):
        fe.sentences("你好", speaker="a b")
    with pytest.raises(InvalidInputError):
        fe.sentences(None)  # type: ignore[arg-type]


def test_inline_emotion_markup(fe: FrontEnd) -> None:
    sents = fe.sentences("今天很好。[emotion=happy]我们去玩吧。[emotion=sad]可惜下雨了，[/emotion]算了。")
    emos = [[x.split("$")[4] for x in s.split(" ") if not x.startswith("{#")] for s in sents]
    assert set(emos[0]) == {"emotion_neutral"}
    assert set(emos[1]) == {"emotion_happy"}
    assert emos[2][:2] == ["emotion_sad", "emotion_sad"] and emos[2][-1] == "emotion_neutral"


def test_user_lexicon(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lex = tmp_path / "lex.txt"
    lex.write_text("# word pinyin\n重庆 chong2 qing4\n一点儿 yi4 dianr3\n阿里 a1 li3\n", encoding="utf-8")
    fe = FrontEnd(FrontEndOptions(lexicon_path=lex))
    assert fe.pinyin("我在阿里工作") == ["wo3 zai4 #1 a1 li3 #1 gong1 zuo4 #4"]
    bad = tmp_path / "bad.txt"
    bad.write_text("重庆 chong2\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="bad.txt:1"):
        FrontEnd(FrontEndOptions(lexicon_path=bad))
    with pytest.raises(InvalidInputError, match="cannot read"):
        FrontEnd(FrontEndOptions(lexicon_path=tmp_path / "missing.txt"))


def test_max_units_splits_at_commas() -> None:
    text = "今天上午我们在公园里散步，看到很多小朋友在放风筝，大家都非常开心，后来我们一起去吃了午饭。"
    full = FrontEnd().sentences(text)
    assert len(full) == 1
    fe = FrontEnd(FrontEndOptions(max_units_per_sentence=40))
    parts = fe.sentences(text)
    assert len(parts) > 1
    assert " ".join(parts).replace("{#4", "{#3").count("{#3") == full[0].replace("{#4", "{#3").count("{#3")
    for p in parts:
        assert len(p.split(" ")) <= 40 and p.endswith(brk(4))


def test_split_units_prefers_level3() -> None:
    a = [Unit.parse("{a_c$tone1$s_begin$word_begin$emotion_neutral$F7}")] * 3
    units = a + parse_units(brk(1)) + a + parse_units(brk(3)) + a + parse_units(brk(4))
    pieces = split_units(units, 9)
    assert [len(p) for p in pieces] == [8, 4] and str(pieces[0][-1]) == brk(4)


def test_lines_from_inputs_uses_line_numbers(fe: FrontEnd) -> None:
    lines = list(fe.lines_from_inputs(["你好。", "", "再见。谢谢。"]))
    assert [ln.split("\t")[0] for ln in lines] == ["1", "3", "3"]
