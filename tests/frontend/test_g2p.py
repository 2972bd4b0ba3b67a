"""Pinyin, tone sandhi, polyphones, erhua and neutral tone, checked through FrontEnd.pinyin()."""

from __future__ import annotations

import pytest

from sambert_deploy.frontend import FrontEnd
from sambert_deploy.frontend.phones import syllable_phones


@pytest.fixture(scope="module")
def fe() -> FrontEnd:
    return FrontEnd()


def syllables(fe: FrontEnd, text: str) -> str:
    return " ".join(t for s in fe.pinyin(text) for t in s.split() if not t.startswith("#"))


CASES = [
    # tone sandhi
    ("你好", "ni2 hao3"), ("很好", "hen2 hao3"), ("一个", "yi2 ge5"), ("一样", "yi2 yang4"), ("不对", "bu2 dui4"),
    ("不要", "bu2 yao4"), ("展览馆", "zhan2 lan2 guan3"), ("小老虎", "xiao3 lao2 hu3"), ("一百", "yi4 bai3"),
    ("第一", "di4 yi1"), ("统一", "tong3 yi1"), ("十一", "shi2 yi1"), ("看一看", "kan4 yi5 kan4"), ("不好", "bu4 hao3"),
    ("是不是", "shi4 bu2 shi4"), ("看不见", "kan4 bu2 jian4"), ("对不起", "dui4 bu5 qi3"), ("看不起", "kan4 bu5 qi3"),
    # polyphones in context
    ("银行", "yin2 hang2"), ("行走", "xing2 zou3"), ("音乐", "yin1 yue4"), ("快乐", "kuai4 le4"), ("长大", "zhang3 da4"),
    ("长度", "chang2 du4"), ("重要", "zhong4 yao4"), ("重新", "chong2 xin1"), ("我去银行取钱", "wo3 qu4 yin2 hang2 qu3 qian2"),
    ("银行卡", "yin2 hang2 ka3"), ("音乐会", "yin1 yue4 hui4"), ("长得漂亮", "zhang3 de5 piao4 liang5"),
    ("王长生来了", "wang2 chang2 sheng1 lai2 le5"), ("花蛤", "hua1 ge2"), ("癞蛤蟆", "lai4 ha2 ma5"),
    ("矿藏丰富", "kuang4 zang4 feng1 fu4"), ("藏起来", "cang2 qi3 lai2"), ("一滴血", "yi4 di1 xie3"),
    ("血管", "xue4 guan3"), ("鸡血", "ji1 xie3"), ("伤口有血块", "shang1 kou2 you2 xie3 kuai4"),
    # adverbial 地 (jieba fuses it into 轻轻地 or glues it to the verb after 'ad' adjectives)
    ("轻轻地放", "qing1 qing1 de5 fang4"), ("认真地说", "ren4 zhen1 de5 shuo1"), ("努力地学习", "nu3 li4 de5 xue2 xi2"),
    ("这地方", "zhe4 di4 fang1"),
    # erhua
    ("一点儿", "yi4 dianr3"), ("哪儿", "nar3"), ("女儿", "nv3 er2"), ("儿子", "er2 zi5"),
    # neutral tone
    ("桌子", "zhuo1 zi5"), ("我们", "wo3 men5"), ("好的", "hao3 de5"), ("走了", "zou3 le5"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_pinyin(fe: FrontEnd, text: str, expected: str) -> None:
    assert syllables(fe, text) == expected


def test_erhua_phones() -> None:
    assert syllable_phones("dianr") == ("d_c", "ianr_c")
    assert syllable_phones("nar") == ("n_c", "ar_c")
    assert syllable_phones("shir") == ("sh_c", "ihr_c")
    assert syllable_phones("zir") == ("z_c", "iir_c")
    assert syllable_phones("jir") == ("j_c", "ir_c")
    assert syllable_phones("wanr") == ("w_c", "anr_c")


@pytest.mark.parametrize(
    ("py", "phones"),
    [("ba", ("b_c", "a_c")), ("xue", ("xx_c", "ve_c")), ("ju", ("j_c", "v_c")), ("juan", ("j_c", "van_c")),
     ("qun", ("q_c", "vn_c")), ("lv", ("l_c", "v_c")), ("nve", ("n_c", "ve_c")), ("liu", ("l_c", "iou_c")),
     ("gui", ("g_c", "uei_c")), ("dun", ("d_c", "uen_c")), ("zhi", ("zh_c", "ih_c")), ("ri", ("r_c", "ih_c")),
     ("si", ("s_c", "ii_c")), ("ye", ("y_c", "e_c")), ("yu", ("y_c", "v_c")), ("yuan", ("y_c", "van_c")),
     ("you", ("y_c", "ou_c")), ("yong", ("y_c", "ong_c")), ("wu", ("w_c", "u_c")), ("weng", ("w_c", "eng_c")),
     ("a", ("ga", "a_c")), ("ang", ("ga", "ang_c")), ("e", ("ge", "e_c")), ("er", ("ge", "er_c")),
     ("ou", ("go", "ou_c")), ("ng", ("ge", "en_c")), ("shei", ("sh_c", "ei_c")), ("xiong", ("xx_c", "iong_c"))],
)  # fmt: skip
def test_phone_table(py: str, phones: tuple[str, str]) -> None:
    assert syllable_phones(py) == phones


def test_mixed_chinese_english_digits(fe: FrontEnd) -> None:
    out = fe.pinyin("我用iPhone买了3个NBA球衣")
    assert out == ["wo3 yong4 #1 iPhone #1 mai3 le5 #1 san1 ge5 #1 NBA #1 qiu2 yi1 #4"]


def test_monosyllabic_prepositions_and_adverbs_stand_alone(fe: FrontEnd) -> None:
    assert fe.pinyin("大楼被拆除") == ["da4 lou2 #1 bei4 #1 chai1 chu2 #4"]
    assert fe.pinyin("老师在教室上课") == ["lao3 shi1 #1 zai4 #1 jiao4 shi4 #1 shang4 ke4 #4"]
