"""Chinese word segmentation and pinyin: jieba (lazily, quietly), pypinyin, polyphones, neutral tone, erhua.

Tone sandhi lives in :mod:`.sandhi` because its scope depends on the prosodic words.
Pinyin strings here are toneless base + tone digit (``'hao3'``, ``'dianr3'``, ``'de5'``).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from .dicts import PinyinTables, pinyin_tables

logger = logging.getLogger(__name__)

HAN_RE = re.compile(r"[\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
HAN_RUN_RE = re.compile(r"[\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]+")

_lock = threading.Lock()
_posseg: Any = None


def _tokenizer() -> Any:
    """jieba's POS tokenizer, built on first use.

    jieba ships its dictionary in the wheel, so nothing is downloaded. A private Tokenizer keeps user words
    out of the global jieba state. Its word tables are the packed ones of :mod:`.dicts` (same answers as
    jieba's dicts, ~110 MiB less resident memory).
    """
    global _posseg
    if _posseg is None:
        with _lock:
            if _posseg is None:
                import jieba

                from .dicts import pos_tokenizer

                jieba.setLogLevel(logging.WARNING)
                _posseg = pos_tokenizer()
    return _posseg


def segment(text: str) -> list[tuple[str, str]]:
    """Split a run of Han characters into (word, part-of-speech) pairs (jieba tag set).

    One repair: after an adverbially used adjective (jieba ``ad``: 坚决, 认真, 努力) a following word that
    starts with 地 is the structural particle + a verb that jieba glued together (地试, 地学); it is cut
    into 地 (``uv``) and the rest, re-segmented.
    """
    tok = _tokenizer()
    out = [(p.word, p.flag) for p in tok.cut(text, HMM=True)]
    k = 1
    while k < len(out):
        w, _ = out[k]
        if len(w) > 1 and w[0] == "地" and out[k - 1][1] == "ad":
            rest = [(p.word, p.flag) for p in tok.cut(w[1:], HMM=True)]
            out[k : k + 1] = [("地", "uv"), *rest]
        k += 1
    return out


@dataclass
class Word:
    """A lexical word with its syllables (pinyin base+tone), before prosodic grouping."""

    text: str
    pos: str
    syllables: list[str] = field(default_factory=list)
    emotion: str = "emotion_neutral"
    latin: bool = False
    locked: bool = False  # readings from the user lexicon: no sandhi or neutral-tone rules
    phones: list[list[str]] | None = None  # English: ARPAbet syllables
    from_number: bool = False


# --- pypinyin -------------------------------------------------------------------------------------------

def _single(ch: str) -> str:
    if ch in _CHAR_DEFAULT:
        return _CHAR_DEFAULT[ch]
    return pinyin_tables().char(ch)


def _phrases() -> PinyinTables:
    """pypinyin's phrase table (``in``; readings through :func:`_phrase_reading`), packed (:mod:`.dicts`)."""
    return pinyin_tables()


def word_freq(s: str) -> int:
    """jieba's dictionary count of ``s`` (0 if unknown): which part of a 3-syllable word is the tighter unit."""
    return int(_tokenizer().tokenizer.FREQ.get(s, 0) or 0)


def is_phrase(s: str) -> bool:
    """Whether pypinyin's phrase table knows ``s`` (used for word structure in sandhi)."""
    return s in _phrases()


def _phrase_reading(w: str) -> list[str]:
    return pinyin_tables().phrase(w)


def _raw_pinyin(word: str) -> list[str]:
    return _raw_pinyin_sources(word)[0]


def _raw_pinyin_sources(word: str) -> tuple[list[str], list[str]]:
    """Reading of a jieba word: the phrase table if it has the word, else the split of the word into known
    phrases that has the fewest pieces (ties: the most frequent pieces by jieba's counts), characters
    outside phrases by their default reading. pypinyin's own fallback (forward maximum matching) reads
    银行卡 as 银|行卡 (xing2); the fewest-pieces split gives 银行|卡.
    """
    if len(word) == 1:
        return [_single(word)], ["default"]
    if word in _phrases():
        return _phrase_reading(word), ["phrase"] * len(word)
    import math

    freq = _tokenizer().tokenizer.FREQ
    n = len(word)
    # best[i] = (pieces, -logfreq, split) for word[i:]
    best: list[tuple[int, float, list[str]]] = [(0, 0.0, [])] * (n + 1)
    for i in range(n - 1, -1, -1):
        cand: tuple[int, float, list[str]] | None = None
        for j in range(i + 1, min(n, i + 8) + 1):
            piece = word[i:j]
            if j - i > 1 and piece not in _phrases():
                continue
            rest = best[j]
            c = (rest[0] + 1, rest[1] - math.log(freq.get(piece, 0) + 1), [piece, *rest[2]])
            if cand is None or c[:2] < cand[:2]:
                cand = c
        assert cand is not None
        best[i] = cand
    out: list[str] = []
    srcs: list[str] = []
    for piece in best[0][2]:
        out.extend(_phrase_reading(piece) if len(piece) > 1 else [_single(piece)])
        srcs.extend(["phrase" if len(piece) > 1 else "default"] * len(piece))
    return out, srcs


# Phrase-table readings corrected for modern usage: 咱 is zan2 (咱家 za2 is archaic); 朴 outside a
# leading surname is pu3 (纯朴, 朴素); 卡 'stuck' in 卡住/卡在 is qia3. Word-level fixes: substring ->
# readings (None keeps the syllable), applied wherever the substring occurs in a jieba word.
_WORD_FIX: dict[str, tuple[str | None, ...]] = {
    "卡住": ("qia3", None),
    "卡在": ("qia3", None),
    # 藏 zang4 'store, deposit' in resource nouns (Xiandai Hanyu Cidian: 宝藏, 矿藏); cang2 is the verb
    "油藏": (None, "zang4"),
    "气藏": (None, "zang4"),
    "矿藏": (None, "zang4"),
    "宝藏": (None, "zang4"),
    # 血 xie3 in colloquial words for the substance itself (XHC: 血 xiě '用于口语', 血块子, 鸡血);
    # the learned compounds (血液, 血管, 血压, 鲜血, 贫血) keep xue4 from the phrase table
    "血丝": ("xie3", None),
    "血块": ("xie3", None),
    "血印": ("xie3", None),
    "血泡": ("xie3", None),
    "血道子": ("xie3", None, None),
    "鸡血": (None, "xie3"),
    "猪血": (None, "xie3"),
    "鸭血": (None, "xie3"),
}


def _fix_phrase(word: str, pys: list[str]) -> list[str]:
    for k, c in enumerate(word):
        if c == "咱" and pys[k].startswith("za") and pys[k] != "zan2":
            pys[k] = "zan2"
        elif c == "朴" and k > 0 and pys[k] == "piao2":
            pys[k] = "pu3"
        elif c == "蛤" and word[k + 1 : k + 2] != "蟆" and pys[k] == "ha2":
            pys[k] = "ge2"  # 蛤 ha2 only in 蛤蟆 'toad'; the clams (文蛤, 花蛤, 毛蛤, 蛤蜊) are ge2
    for w, fix in _WORD_FIX.items():
        i = word.find(w)
        if i >= 0:
            for k, r in enumerate(fix):
                if r:
                    pys[i + k] = r
    return pys


# Defaults for characters read alone or inside words the phrase table lacks, where pypinyin's first
# reading is a surname or literary reading (朴 piao2, 什 shen2 without 么, 咱 za2).
_CHAR_DEFAULT = {
    "朴": "pu3",
    "什": "shi2",
    "咱": "zan2",
    "剥": "bo1",
    "蛤": "ge2",
    "伽": "jia1",
    "厦": "sha4",
}


# Single-character words whose pypinyin default reading is the rarer one in running text (血 standing
# alone as a word is the colloquial xie3: 流了点儿血, 一滴血; XHC '多单用').
_SINGLE_DEFAULT = {
    "长": "chang2", "得": "de5", "地": "di4", "着": "zhe5", "了": "le5", "还": "hai2", "只": "zhi3",
    "哪": "na3", "那": "na4", "么": "me5", "咱": "zan2", "便": "bian4", "给": "gei3", "都": "dou1",
    "和": "he2", "吗": "ma5", "呢": "ne5", "吧": "ba5", "啊": "a5", "呀": "ya5", "的": "de5", "嘛": "ma5",
    "过": "guo4", "没": "mei2", "为": "wei4", "曾": "ceng2", "似": "si4", "薄": "bao2", "露": "lu4",
    "削": "xiao1", "血": "xie3", "壳": "ke2", "塞": "sai1", "尽": "jin4", "传": "chuan2",
    "率": "lv4", "个": "ge5", "觉": "jue2", "更": "geng4", "转": "zhuan3", "看": "kan4", "说": "shuo1", "大": "da4",
    "将": "jiang1", "正": "zheng4", "应": "ying1", "处": "chu4", "分": "fen1", "当": "dang1", "几": "ji3",
    "种": "zhong3", "干": "gan4", "发": "fa1", "兴": "xing1", "数": "shu4", "少": "shao3", "差": "cha4",
    "重": "zhong4", "量": "liang4", "称": "cheng1", "调": "diao4",
}  # fmt: skip

# (char, POS prefix) -> reading, for single-character words whose reading follows their part of speech.
_BY_POS = {
    ("地", "uv"): "de5", ("得", "ud"): "de5", ("长", "v"): "zhang3", ("只", "q"): "zhi1", ("种", "v"): "zhong4",
    ("数", "v"): "shu3", ("重", "d"): "chong2", ("重", "a"): "zhong4", ("为", "v"): "wei2", ("处", "v"): "chu3",
    ("差", "v"): "cha4", ("差", "a"): "cha4", ("少", "v"): "shao3", ("分", "n"): "fen1", ("好", "v"): "hao4",
    ("干", "a"): "gan1", ("发", "n"): "fa4", ("当", "p"): "dang1", ("将", "d"): "jiang1", ("将", "p"): "jiang1",
    ("藏", "v"): "cang2", ("着", "v"): "zhao2", ("强", "a"): "qiang2", ("空", "a"): "kong1", ("难", "a"): "nan2",
    ("倒", "v"): "dao3", ("倒", "d"): "dao4", ("调", "v"): "tiao2", ("降", "v"): "jiang4", ("教", "v"): "jiao1",
    ("好", "a"): "hao3", ("和", "c"): "he2", ("和", "p"): "he2", ("还", "d"): "hai2", ("还", "v"): "huan2",
}  # fmt: skip

_MEASURE_AFTER_NUMERAL = {
    "个": "ge5",
    "只": "zhi1",
    "种": "zhong3",
    "行": "hang2",
    "处": "chu4",
    "重": "chong2",
    "把": "ba3",
}
# 不 is neutral only in V不C words lexicalized as single words (dictionary headwords with an idiomatic
# sense); productive potential complements (看不见, 受不了) and A不A questions (是不是) keep 不 with its
# own sandhi (bu2 before a fourth tone, else bu4), as the human labels and ttsfrd's surface tones do.
_BU_NEUTRAL = set("对不起 看不起 了不起 差不多 怪不得 舍不得 巴不得 恨不得 犯不着 用不着".split())
_NUMERAL_CHARS = set("零〇一二两三四五六七八九十百千万亿几多半")

# Words whose last syllable is neutral in standard speech but which pypinyin's phrase table gives a full
# tone. Written from general knowledge of Putonghua (not from any evaluation data).
_NEUTRAL_LAST = set(
    """
    东西 朋友 事情 豆腐 衣服 意思 消息 休息 先生 明白 喜欢 认识 告诉 关系 麻烦 客气 漂亮 舒服 暖和
    热闹 清楚 打听 收拾 商量 规矩 打扮 玻璃 萝卜 窗户 眼睛 耳朵 队伍 丈夫 媳妇 女婿 姑娘 伙计 本事
    便宜 聪明 糊涂 马虎 那么 这么 什么 怎么 多么 妈妈 爸爸 哥哥 姐姐 弟弟 妹妹 奶奶 爷爷 叔叔 姑姑 舅舅 婶婶
    伯伯 公公 婆婆 爹爹 姥姥 宝宝 娃娃 星星 谢谢 算盘 篱笆 琵琶 葡萄 胳膊 风筝 畜生 牲口 簸箕 窟窿 馄饨 泥鳅
    行李 包袱 招呼 吩咐 嘱咐 折腾 琢磨 哆嗦 啰嗦 耽误 委屈 欺负 凑合 巴结 苗条 利索 结实 踏实 老实
    别扭 扭捏 生意 主意 工夫 功夫 师傅 木头 石头 骨头 舌头 枕头 馒头 念头 苗头 甜头 苦头 跟头 拳头 额头
    指头 眉头 码头 罐头 斧头 锄头 眉毛 父亲 母亲 亲戚 街坊 太太 少爷 老爷 唠叨 嘀咕 提防 张罗 比方
    柴火 灯笼 喇叭 喉咙 尾巴 嘴巴 哑巴 结巴 泥巴 下巴 庄稼 名堂 动静 道理 笑话 故事 应酬 扫帚 笤帚
    刺猬 狐狸 骆驼 蛤蟆 蚂蚱 蘑菇 核桃 芝麻 云彩 点心 记得 觉得 晓得 认得 我们 你们 他们 她们 它们 咱们 人们
    """.split()
)
# Deliberately short: the human labels (and ttsfrd) keep full tones on many words that dictionaries mark
# as optionally neutral (知道, 时候, 地方, 早上, directional complements 上去/起来).
_NEUTRAL_PARTICLES = {"的": "de5", "了": "le5", "着": "zhe5", "吗": "ma5", "呢": "ne5", "吧": "ba5", "啊": "a5",
                      "呀": "ya5", "嘛": "ma5", "啦": "la5", "哇": "wa5", "哦": "o5", "么": "me5", "呗": "bei5",
                      "们": "men5", "喽": "lou5", "耶": "ye5"}  # fmt: skip

# Words ending in 儿 where 儿 is a full syllable (a noun morpheme), never merged as erhua.
_ER_FULL_SUFFIXES = (
    "女儿", "婴儿", "幼儿", "孤儿", "胎儿", "健儿", "宠儿", "患儿", "男儿", "少儿", "育儿", "弃儿", "孩儿",
    "儿儿", "混血儿", "新生儿", "产儿", "妻儿", "乳儿", "病儿", "骄儿", "犬儿", "孕儿", "宁馨儿", "低能儿",
    "弄潮儿", "幸运儿", "残疾儿", "留守儿", "托儿", "为儿", "生儿",
)  # fmt: skip


_SURNAMES = set(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔"
    "钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)


def is_han(ch: str) -> bool:
    return bool(HAN_RE.match(ch))


def word_pinyin(word: str, pos: str, prev: Word | None, nxt: tuple[str, str] | None) -> list[str]:
    """Pinyin (base + tone digit, '' for no reading) of one jieba word, with polyphones resolved by rules."""
    return word_pinyin_sources(word, pos, prev, nxt)[0]


def word_pinyin_sources(
    word: str, pos: str, prev: Word | None, nxt: tuple[str, str] | None
) -> tuple[list[str], list[str]]:
    """:func:`word_pinyin` and, per syllable, what decided it: ``'phrase'`` (a word of the phrase table, or
    a piece of one), ``'rule'`` (an explicit rule: part of speech, a measure word after a numeral, a
    corrected word, a particle) or ``'default'`` (a character's default reading: nothing in its context
    decided it). :func:`run_words` lets the context model replace the ``'default'`` ones.
    """
    if len(word) == 1:
        pys = _fix_phrase(word, _raw_pinyin(word))
        out = _single_word(word, pos, prev, nxt, pys)
        if out is not None:
            return out, ["rule"]
        return [_SINGLE_DEFAULT.get(word, pys[0])], ["default"]
    raw, srcs = _raw_pinyin_sources(word)
    pys = _multi_word(word, pos, _fix_phrase(word, list(raw)))
    return pys, ["rule" if a != b else s for a, b, s in zip(raw, pys, srcs, strict=True)]


def _single_word(
    c: str, pos: str, prev: Word | None, nxt: tuple[str, str] | None, pys: list[str]
) -> list[str] | None:
    """The reading of a one-character word fixed by an explicit rule, or None (its default applies)."""
    if (
        c == "得"
        and nxt is not None
        and nxt[1].startswith("v")
        and prev is not None
        and prev.pos[:1] in ("r", "d")
    ):
        return ["dei3"]  # 我得走, 都得躲: modal 'must' before a verb
    if c in _NEUTRAL_PARTICLES and (pos.startswith(("u", "y", "e")) or c in "的吗呢吧啊呀嘛啦们么哦耶"):
        return [_NEUTRAL_PARTICLES[c]]
    if prev is not None and prev.text and prev.text[-1] in _NUMERAL_CHARS and c in _MEASURE_AFTER_NUMERAL:
        return [_MEASURE_AFTER_NUMERAL[c]]
    for n in (2, 1):
        key = (c, pos[:n])
        if key in _BY_POS:
            return [_BY_POS[key]]
    if c == "长" and nxt is not None and nxt[0] == "得":
        return ["zhang3"]  # 长得 (长得很快, 长得漂亮): 'grow', with a complement of degree
    if c == "得":
        return ["de5" if prev is not None and prev.pos[:1] in ("v", "a") else "de2"]
    if c == "为" and pos.startswith("p") and prev is not None and prev.pos[:1] in ("n", "v"):
        return ["wei2"]  # 'X 为 Y' (价格为, 表现为) is the copula wei2; 为了/为你 stay wei4
    return None


def _multi_word(word: str, pos: str, pys: list[str]) -> list[str]:
    if pos.startswith("nr") and 2 <= len(word) <= 3 and word[0] in _SURNAMES:
        # in a given name 长 is chang2 (长春, 长生, 长江 as names); zhang3 'elder' is not a name character
        pys = [
            ("chang2" if c == "长" and k > 0 else p) for k, (c, p) in enumerate(zip(word, pys, strict=False))
        ]
    if len(word) >= 3 and word[-1] == "地" and (pos.startswith("z") or word[0] == word[1]):
        pys[-1] = "de5"  # adverbial 地 fused by jieba into a descriptive word (轻轻地, 默默地, 慢慢悠悠地)
    if len(word) == 2 and word[0] == word[1] and pos.startswith("v") and not _single(word[0]).endswith("3"):
        # verb reduplication AA (查查, 看看) is neutral; third-tone verbs (想想) keep 3 and take sandhi
        return [_single(word[0]), _single(word[0])[:-1] + "5"]
    if word in _BU_NEUTRAL:
        pys[1] = "bu5"
    if "个" in word[1:] and word[word.index("个", 1) - 1] in _NUMERAL_CHARS | set("这那哪每各整半上下"):
        k = word.index("个", 1)
        pys[k] = "ge5"  # classifier 个 is unstressed (一个, 这个, 上个月)
    if word in _NEUTRAL_LAST and pys and pys[-1]:
        pys[-1] = pys[-1][:-1] + "5"
    elif len(word) >= 2 and word[-1] == "们":
        pys[-1] = "men5"
    elif len(word) >= 3 and word[-2:] in _NEUTRAL_LAST and pys[-1]:
        # compounds ending in a neutral-tone word (小朋友, 老东西...) keep its neutral tone
        pys[-1] = pys[-1][:-1] + "5"
    return pys


def merge_erhua(word: str, pys: list[str], pos: str = "") -> tuple[list[str], list[str]]:
    """Merge a word-final 儿 into the preceding syllable (一点儿 -> dianr3) as the KAN-TTS converter does.

    Returns the syllables and, per syllable, the characters it covers.
    """
    from .phones import can_take_erhua, split_tone

    chars = list(word)
    if len(word) < 2 or word[-1] != "儿" or word.endswith(_ER_FULL_SUFFIXES) or not pys[-2]:
        return pys, chars
    if pos.startswith("nr") and len(word) == 3 and word[0] in _SURNAMES:  # names (丁可儿): 儿 is a syllable
        return pys, chars
    base, tone = split_tone(pys[-2])
    if not can_take_erhua(base):
        return pys, chars
    return pys[:-2] + [f"{base}r{tone}"], chars[:-2] + [chars[-2] + chars[-1]]


def erhua_syllable(py: str) -> str:
    """'dian3' -> 'dianr3'."""
    from .phones import split_tone

    base, tone = split_tone(py)
    return f"{base}r{tone}"


def can_merge_er(prev: Word) -> bool:
    """Whether a stand-alone 儿 token after ``prev`` is an erhua suffix of it."""
    from .phones import can_take_erhua, split_tone

    if prev.latin or prev.locked or not prev.syllables or not prev.syllables[-1]:
        return False
    if len(prev.text) == 1 and prev.pos[:1] in ("p", "c", "v", "r", "m"):
        return False  # 为儿, 生儿: 儿 'son' after a function word or verb
    if (prev.text + "儿").endswith(_ER_FULL_SUFFIXES):
        return False
    return can_take_erhua(split_tone(prev.syllables[-1])[0])


# --- the context model at the polyphones --------------------------------------------------------------------


@dataclass(frozen=True)
class PolyphonePolicy:
    """Which syllables the context model (:mod:`.polyphone`) decides.

    sources: the kinds of syllable (see :func:`word_pinyin_sources`) whose polyphones the model reads;
        empty: rules only.
    min_prob: the model's reading replaces the rules' only when its probability is at least this.
    phrase_prob: also replace phrase-table readings when the model is at least this sure (None: never).
    curated_defaults: characters with a hand-chosen running-text default (``_SINGLE_DEFAULT``,
        ``_CHAR_DEFAULT``: 没 mei2, 都 dou1, 给 gei3, 为 wei4, 剥 bo1) keep it. The model learnt CPP's
        sampling, which over-represents the rare readings (没 mo4, 都 du1), and reads them out of place
        in everyday text.
    """

    sources: frozenset[str] = frozenset({"default"})
    min_prob: float = 0.0
    phrase_prob: float | None = None
    curated_defaults: bool = True


RULES_ONLY = PolyphonePolicy(sources=frozenset())
_policy = PolyphonePolicy()


def set_polyphone_policy(policy: PolyphonePolicy) -> PolyphonePolicy:
    """Set the policy :func:`run_words` uses by default; returns the previous one (for the scoring
    scripts, which compare policies on the same front end)."""
    global _policy
    old, _policy = _policy, policy
    return old


def run_words(
    run: str,
    prev: Word | None,
    emotion: str = "emotion_neutral",
    dropped: list[str] | None = None,
    policy: PolyphonePolicy | None = None,
) -> list[Word]:
    """Words of a run of Han characters: jieba segmentation, pinyin by the rules, the polyphones the rules
    left to a default decided by the context model over the whole run (one pass), erhua merged.

    ``prev`` is the word before the run (context for the rules); characters without a reading are left out
    and appended to ``dropped``.
    """
    from . import polyphone

    pol = _policy if policy is None else policy
    model = polyphone.load() if pol.sources or pol.phrase_prob is not None else None
    preds: dict[int, Any] | None = None  # the model runs once per run, and only if a word needs it
    segs = segment(run)
    out: list[Word] = []
    at = 0
    for k, (w, pos) in enumerate(segs):
        nxt = segs[k + 1] if k + 1 < len(segs) else None
        before = out[-1] if out else prev
        pys, srcs = word_pinyin_sources(w, pos, before, nxt)
        if model is not None and any(
            _model_may_decide(c, src, pol) and model.is_polyphone(c) for c, src in zip(w, srcs, strict=True)
        ):
            if preds is None:
                preds = model.predict(run)
            pys = _apply_model(w, at, pys, srcs, preds, pol)
        at += len(w)
        if not all(pys):
            if dropped is not None:
                dropped.extend(c for c, p in zip(w, pys, strict=False) if not p)
            keep = [(c, p) for c, p in zip(w, pys, strict=False) if p]
            w = "".join(c for c, _ in keep)
            pys = [p for _, p in keep]
            if not w:
                continue
        pys, _chars = merge_erhua(w, pys, pos)
        if w == "儿" and out and can_merge_er(out[-1]):
            # jieba often cuts the erhua suffix off (老汉|儿, 应景|儿): merge it into the previous word
            last = out[-1]
            last.syllables[-1] = erhua_syllable(last.syllables[-1])
            last.text += w
            continue
        out.append(Word(w, pos, pys, emotion))
    return out


def _model_may_decide(ch: str, src: str, pol: PolyphonePolicy) -> bool:
    if pol.curated_defaults and (ch in _SINGLE_DEFAULT or ch in _CHAR_DEFAULT):
        return False
    return src in pol.sources or (src == "phrase" and pol.phrase_prob is not None)


def _apply_model(
    word: str, at: int, pys: list[str], srcs: list[str], preds: dict[int, Any], pol: PolyphonePolicy
) -> list[str]:
    from .phones import split_tone, syllable_phones

    out = list(pys)
    for k, (py, src) in enumerate(zip(pys, srcs, strict=True)):
        p = preds.get(at + k)
        if p is None or not py or p.reading == py:
            continue
        if not _model_may_decide(word[k], src, pol):
            continue
        if p.prob < (pol.min_prob if src in pol.sources else (pol.phrase_prob or 0.0)):
            continue
        try:
            syllable_phones(split_tone(p.reading)[0])
        except (KeyError, ValueError):
            continue  # a reading the phone table lacks (儿 as r5): keep the rules'
        out[k] = p.reading
    return out
