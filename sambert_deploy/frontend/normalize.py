"""Text normalization: full-width -> half-width, numbers, dates, times, units and symbols -> Chinese words.

Each class of expression is one small function (tested table-driven in tests/frontend). The order in
:func:`normalize` matters: the most specific patterns (dates, phone numbers, times) run before generic
numbers. Characters the later stages cannot read are left alone here; the G2P stage drops them with a
warning.
"""

from __future__ import annotations

import re
import unicodedata

_DIGITS = "零一二三四五六七八九"
_PHONE_DIGITS = "零幺二三四五六七八九"  # 1 is read yao in phone numbers, so 1 and 7 stay distinct

# Characters outside the ASCII full-width block that NFKC would mangle or we read specially.
_SYMBOL_MAP = {
    "\u3000": " ", "\u00a0": " ", "－": "-", "—": "—", "～": "~", "〜": "~", "∼": "~", "﹪": "%",
    "％": "%", "＋": "+", "﹢": "+", "＝": "=", "．": ".", "／": "/", "：": "：", "·": "·", "・": "·",
    "‐": "-", "‑": "-", "–": "-", "−": "-", "²": "²", "³": "³", "㎡": "m²", "㎥": "m³", "㎞": "km",
    "㎏": "kg", "㎎": "mg", "㎝": "cm", "㎜": "mm", "㏄": "cc", "㎖": "ml", "℉": "°F",
}  # fmt: skip
# ASCII punctuation that we keep in its Chinese form so the later stages see one spelling per mark.
_PUNCT_TO_ZH = {",": "，", ";": "；", "!": "！", "?": "？", "(": "（", ")": "）"}


def to_halfwidth(text: str) -> str:
    """Full-width ASCII variants (Ｕ+FF01..FF5E) -> ASCII; ideographic space -> space. Chinese punctuation
    (，。！？：；) is kept as is because it carries the break levels.
    """
    out = []
    for ch in text:
        o = ord(ch)
        if ch in _SYMBOL_MAP:
            out.append(_SYMBOL_MAP[ch])
        elif 0xFF10 <= o <= 0xFF19 or 0xFF21 <= o <= 0xFF3A or 0xFF41 <= o <= 0xFF5A:
            out.append(chr(o - 0xFEE0))  # digits and Latin letters
        elif ch in "（）！？，；＄＠＃＆＊＜＞［］｛｝＂＇｀＾＿｜＼":
            out.append(ch if ch in "（）！？，；" else chr(o - 0xFEE0))
        elif unicodedata.category(ch) == "No" and unicodedata.numeric(ch, -1) != -1 and ch not in "²³":
            # circled/parenthesised numbers (①, ⑵): read the number
            v = unicodedata.numeric(ch)
            out.append(str(int(v)) if v == int(v) else ch)
        else:
            out.append(ch)
    return "".join(out)


# --- number readings ---------------------------------------------------------------------------------------


def digits_reading(s: str, phone: bool = False) -> str:
    """Digit by digit (years, phone numbers, IDs): '2024' -> 二零二四; phone=True reads 1 as 幺."""
    table = _PHONE_DIGITS if phone else _DIGITS
    return "".join(table[int(c)] for c in s if c.isdigit())


def _below_10000(n: int, liang: bool) -> str:
    """0 < n < 10000. ``liang`` reads a leading 2 of 千/百... as 两 (两千, 两百)."""
    units = ["", "十", "百", "千"]
    s = str(n)
    out: list[str] = []
    zero = False
    for i, c in enumerate(s):
        d = int(c)
        pos = len(s) - 1 - i
        if d == 0:
            zero = True
            continue
        if zero and out:
            out.append("零")
        zero = False
        if d == 2 and pos >= 2 and liang and not out:
            out.append("两")
        else:
            out.append(_DIGITS[d])
        out.append(units[pos])
    return "".join(out)


def cardinal(s: str, liang: bool = True) -> str:
    """Integer string -> Chinese: '10' -> 十, '105' -> 一百零五, '20000' -> 两万, '100000000' -> 一亿.

    Leading '一十' is read 十 (10-19). Numbers of 17 digits or more are read digit by digit.
    """
    s = s.lstrip("0") or "0"
    if s == "0":
        return "零"
    if len(s) > 16:
        return digits_reading(s)
    n = int(s)
    groups = []
    while n > 0:
        groups.append(n % 10000)
        n //= 10000
    names = ["", "万", "亿", "万亿"]
    out = ""
    need_zero = False
    for gi in range(len(groups) - 1, -1, -1):
        g = groups[gi]
        if g == 0:
            need_zero = bool(out)
            continue
        part = _below_10000(g, liang)
        if liang and gi > 0 and part == "二":
            part = "两"  # 两万, 两亿
        if out and (need_zero or g < 1000):
            out += "零"
        out += part + names[gi]
        need_zero = False
    if out.startswith("一十"):
        out = out[1:]
    return out


def decimal(s: str) -> str:
    """'25.5' -> 二十五点五, '0.05' -> 零点零五, '-3' -> 负三 (digits after the point one by one)."""
    neg = s.startswith("-")
    s = s.lstrip("+-")
    ip, _, fp = s.partition(".")
    out = cardinal(ip.replace(",", "") or "0", liang=False)
    if fp:
        out += "点" + digits_reading(fp)
    return ("负" if neg else "") + out


def ordinal(s: str) -> str:
    """'第3' -> 第三 (never 两)."""
    return "第" + cardinal(s, liang=False)


# --- regex passes ------------------------------------------------------------------------------------------

_NUM = r"\d+(?:\.\d+)?"

_UNITS = {
    "km/h": "千米每小时", "m/s": "米每秒", "kWh": "千瓦时", "kwh": "千瓦时", "mAh": "毫安时", "km²": "平方千米",
    "m²": "平方米", "m³": "立方米", "cm²": "平方厘米", "km": "千米", "kg": "千克", "mg": "毫克", "cm": "厘米",
    "mm": "毫米", "ml": "毫升", "mL": "毫升", "kW": "千瓦", "kw": "千瓦", "MW": "兆瓦", "GW": "吉瓦", "Hz": "赫兹",
    "GHz": "吉赫兹", "MHz": "兆赫兹", "°C": "摄氏度", "℃": "摄氏度", "°F": "华氏度", "°": "度", "L": "升",
    "g": "克", "m": "米", "t": "吨", "h": "小时", "min": "分钟", "s": "秒", "ms": "毫秒", "cc": "毫升",
    "W": "瓦", "V": "伏", "A": "安", "GB": "G B", "MB": "M B", "KB": "K B", "TB": "T B", "nm": "纳米",
    "μm": "微米", "亩": "亩",
}  # fmt: skip
_UNIT_RE = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))

_CURRENCY_PREFIX = {
    "¥": "元",
    "￥": "元",
    "$": "美元",
    "US$": "美元",
    "€": "欧元",
    "£": "英镑",
    "HK$": "港元",
}
_CUR_RE = "|".join(re.escape(c) for c in sorted(_CURRENCY_PREFIX, key=len, reverse=True))

_PHONE_CONTEXT = (
    "电话",
    "手机",
    "热线",
    "拨打",
    "致电",
    "号码",
    "来电",
    "座机",
    "呼叫",
    "短信",
    "拨",
    "联系方式",
    "tel",
    "Tel",
    "TEL",
)
_ID_CONTEXT = ("编号", "号码", "卡号", "账号", "帐号", "尾号", "身份证", "工号", "学号", "单号", "订单", "邮编", "代码",
               "验证码", "密码", "车牌", "航班", "车次", "房间", "批号", "序列号", "QQ", "ID")  # fmt: skip


def _sub_dates(text: str) -> str:
    def ymd(m: re.Match[str]) -> str:
        y, mo, d = m.group(1), m.group(2), m.group(3)
        return f"{digits_reading(y)}年{cardinal(mo, False)}月{cardinal(d, False)}日"

    # 2024-05-01, 2024/5/1, 2024.05.01 (year first; month 1-12, day 1-31)
    text = re.sub(r"(?<![\d.])(\d{4})[-/.](0?[1-9]|1[0-2])[-/.](0?[1-9]|[12]\d|3[01])(?![\d.])", ymd, text)

    def ym(m: re.Match[str]) -> str:
        return f"{digits_reading(m.group(1))}年{cardinal(m.group(2), False)}月"

    text = re.sub(r"(?<![\d.])(\d{4})[-/](0?[1-9]|1[0-2])(?![\d/-])(?=\s*[^\d])", ym, text)
    # year ranges: 2020-2023年
    text = re.sub(
        r"(?<![\d.])(\d{4})\s?[-~至到]\s?(\d{4})(?=\s*年)",
        lambda m: f"{digits_reading(m.group(1))}到{digits_reading(m.group(2))}",
        text,
    )
    # years are read digit by digit: any number after 公元(前); 4 digits before 年 (2023年度, 2015年间);
    # 2 digits only where a year is the likely reading (08年, 98年, 12年3月): 工作10年 is a duration
    text = re.sub(
        r"(?<=公元)(前?)(\d{1,4})(?=\s*年)", lambda m: m.group(1) + digits_reading(m.group(2)), text
    )
    text = re.sub(
        r"(?<![\d.])(\d{4})(?=\s*年(?!代|龄|级|纪|限|薪|均))", lambda m: digits_reading(m.group(1)), text
    )
    text = re.sub(
        r"(?<![\d.])(0\d|[6-9]\d|\d{2}(?=\s*年\d{1,2}月))(?=\s*年(?!代|龄|级|纪|限|薪|均|度|初|末|底|中|间))",
        lambda m: digits_reading(m.group(1)),
        text,
    )
    text = re.sub(r"(?<![\d.])(\d{4})(?=\s*年代)", lambda m: digits_reading(m.group(1)), text)
    # generations: 90后, 00后 -> 九零后
    text = re.sub(r"(?<![\d.])(\d0)(?=后)", lambda m: digits_reading(m.group(1)), text)
    return text


# h:mm between these words is a score, not a time (以21:19拿下, 战成10:10)
_SCORE_BEFORE = re.compile(r"(?:比分|战成|比数)(?:是|为)?\s?$")
_SCORE_AFTER = re.compile(
    r"\s?(?:拿下|获胜|战胜|击败|取胜|力克|险胜|大胜|完胜|负于|不敌|落败|惜败|惨败|告负|赢)"
)


def _sub_times(text: str) -> str:
    def hms(m: re.Match[str]) -> str:
        h, mi, s = m.group(1), m.group(2), m.group(3)
        if not s and (_SCORE_BEFORE.search(text, 0, m.start()) or _SCORE_AFTER.match(text, m.end())):
            return f"{cardinal(h, False)}比{cardinal(mi, False)}"
        out = cardinal(h, liang=False).replace("二", "两") if h in ("2", "02") else cardinal(h, liang=False)
        if mi == "00" and not s:
            return out + "点"
        out += (
            "点"
            + ("零" + _DIGITS[int(mi)] if mi.startswith("0") and mi != "00" else cardinal(mi, False))
            + "分"
        )
        if s:
            out += cardinal(s, False) + "秒"
        return out

    text = re.sub(r"(?<![\d:.])([01]?\d|2[0-4])[:：]([0-5]\d)(?:[:：]([0-5]\d))?(?![\d:])", hms, text)
    # time ranges 8:00-9:00 -> 八点到九点
    return re.sub(r"(?<=[点分秒])\s?[-~]\s?(?=[零一二三四五六七八九十两])", "到", text)


def _sub_scores(text: str) -> str:
    """'3:2' left after the time rule (minutes not two digits) is a ratio or a score: 三比二; so is 4-2 after
    the word 比分 (elsewhere 4-2 is a range)."""

    def dash(m: re.Match[str]) -> str:
        if "比分" not in text[max(0, m.start() - 6) : m.start()]:
            return m.group(0)
        return f"{cardinal(m.group(1), False)}比{cardinal(m.group(2), False)}"

    text = re.sub(r"(?<![\d.])(\d{1,3})\s?-\s?(\d{1,3})(?![\d.])", dash, text)
    return re.sub(
        r"(?<![\d.])(\d+)[:：](\d+)(?![\d.])",
        lambda m: f"{cardinal(m.group(1), False)}比{cardinal(m.group(2), False)}",
        text,
    )


def _sub_phone_numbers(text: str) -> str:
    def phone(m: re.Match[str]) -> str:
        return digits_reading(m.group(0), phone=True)

    # mobile numbers (1[3-9] + 9 digits), with optional +86; landlines 0xx(x)-xxxxxxx(x); 400/800 hotlines
    text = re.sub(r"(?:\+?86[- ]?)?(?<!\d)1[3-9]\d(?:[- ]?\d{4}){2}(?!\d)", phone, text)
    text = re.sub(r"(?<![\d-])0\d{2,3}-\d{7,8}(?:-\d{1,5})?(?![\d-])", phone, text)
    text = re.sub(r"(?<![\d-])[48]00-?\d{3}-?\d{4}(?![\d-])", phone, text)
    text = re.sub(r"(?<!\d)(1[12]0|119|12[0-2]|95\d{3}|10086|10010|10000|12315|12345)(?!\d)(?=[^\d%.]|$)",
                  lambda m: phone(m) if _near_phone_context(text, m.start()) else m.group(0), text)  # fmt: skip

    def contextual(m: re.Match[str]) -> str:
        before = text_ref[max(0, m.start() - 8) : m.start()]
        if _AMOUNT_AFTER.match(text_ref, m.end()):
            return m.group(0)  # 手机售价4999元: a price near the word 手机, not a number to dial
        if len(m.group(0)) >= 5 and any(k in before for k in _PHONE_CONTEXT):
            return digits_reading(m.group(0), phone=True)
        if any(k in before for k in _ID_CONTEXT) or _CODE_BEFORE.search(before):
            return digits_reading(m.group(0), phone=False)
        return m.group(0)

    text_ref = text
    text = re.sub(r"(?<![\d.,])\d{3,}(?:-\d+)*(?![\d.,%])", contextual, text)
    # an extension after a number read out (010-88888888转123) is dialled too
    return re.sub(
        r"(?<=[零幺二三四五六七八九])\s?转\s?(\d{1,5})(?!\d)",
        lambda m: "转" + digits_reading(m.group(1), phone=True),
        text,
    )


# A number right after a word ending in 码/号 (取件码是, 会员号) is a code.
_CODE_BEFORE = re.compile(r"[码号](?:是|为)?\s?[:：]?\s?$")
# A number followed by one of these is an amount, whatever words stand before it.
_AMOUNT_AFTER = re.compile(r"\s?[元块角万亿千百个人次件台岁米克吨天年]")


def _near_phone_context(text: str, pos: int) -> bool:
    before = text[max(0, pos - 8) : pos]
    return any(k in before for k in _PHONE_CONTEXT)


def _sub_long_digit_strings(text: str) -> str:
    """IDs: digit strings starting with 0 (007, 0571) or longer than 12 digits are read digit by digit, and
    so are 3+ digits right after 1-3 capitals (train G1234, flight CA1831, model RTX4090, ISO9001).
    """
    text = re.sub(
        r"(?<![A-Za-z])([A-Z]{1,3})(\d{3,})(?![\d.])", lambda m: m.group(1) + digits_reading(m.group(2)), text
    )
    text = re.sub(r"(?<![\d.,])0\d+(?![\d.,])", lambda m: digits_reading(m.group(0)), text)
    return re.sub(r"(?<![\d.,])\d{13,}(?![\d.,])", lambda m: digits_reading(m.group(0)), text)


def _sub_currency(text: str) -> str:
    def cur(m: re.Match[str]) -> str:
        sym, num, mag = m.group(1), m.group(2), m.group(3) or ""
        return decimal(num.replace(",", "")) + mag + _CURRENCY_PREFIX[sym]

    return re.sub(rf"({_CUR_RE})\s?(\d[\d,]*(?:\.\d+)?)(万亿|亿|万|千)?", cur, text)


def _sub_percent(text: str) -> str:
    def rng(m: re.Match[str]) -> str:
        return f"百分之{decimal(m.group(1))}到百分之{decimal(m.group(2))}"

    text = re.sub(rf"({_NUM})%?\s?[-~至到]\s?({_NUM})%", rng, text)

    def pct(m: re.Match[str]) -> str:
        sign, num, mark = m.group(1), m.group(2), m.group(3)
        word = "百分之" if mark == "%" else "千分之"
        return ("负" if sign else "") + word + decimal(num)

    return re.sub(rf"(-)?({_NUM})\s?([%‰])", pct, text)


def _sub_fractions(text: str) -> str:
    def frac(m: re.Match[str]) -> str:
        return f"{cardinal(m.group(2), False)}分之{cardinal(m.group(1), False)}"

    return re.sub(r"(?<![\d./])(\d+)/(\d+)(?![\d/])", frac, text)


def _sub_units(text: str) -> str:
    def unit(m: re.Match[str]) -> str:
        num, u = m.group(1), m.group(2)
        if num == "2" and u not in ("°C", "℃", "°F", "°"):
            num = "两"  # 两小时, 两公斤; temperatures keep 二
        return num + _UNITS[u]

    # ranges first so the first number keeps its unit implicitly (3-5kg -> 三到五千克); a magnitude may stand
    # between number and unit (3.2亿m³)
    text = re.sub(
        rf"({_NUM}(?:万|亿))\s?({_UNIT_RE})(?![A-Za-z])", lambda m: m.group(1) + _UNITS[m.group(2)], text
    )
    text = re.sub(rf"({_NUM}(?:\s?[-~]\s?{_NUM})?)\s?({_UNIT_RE})(?![A-Za-z])", unit, text)
    # fuel consumption: 8L/100km -> 每百公里八升
    text = re.sub(
        rf"({_NUM})\s?(?:L|升)/100\s?(?:km|公里|千米)",
        lambda m: f"每百公里{_number_word(m.group(1))}升",
        text,
    )
    # a rate: 元/升, 米/秒 written with Chinese units -> 每
    return re.sub(r"(?<=[元米克升吨秒时天角分])/(?=[升米克吨斤秒时天件个人次台])", "每", text)


def _sub_ranges(text: str) -> str:
    def rng(m: re.Match[str]) -> str:
        return f"{_number_word(m.group(1))}到{_number_word(m.group(2))}"

    return re.sub(rf"(?<![\d.A-Za-z-])({_NUM})\s?[-~]\s?({_NUM})(?![\d.])", rng, text)


def _number_word(s: str, next_char: str = "") -> str:
    if "." in s:
        return decimal(s)
    return cardinal(s, liang=True)


# Measure words after which a standalone 2 is read 两 (两个, 两只); plus the big units.
_LIANG_BEFORE = set(
    "个只条位名台辆件本张次天年岁周种家所把匹头架座层项场间部首双对片枚颗棵株支根块门份批组套轮节句声下倍万亿千百点"
)  # not 月: 2月 is February (两个月 has 个)
_LIANG_BEFORE_WORDS = ("小时", "公里", "公斤", "公顷", "分钟", "秒钟")


def _sub_numbers(text: str) -> str:
    # a hyphen between a name and its number is not read (CCTV-1, COVID-19): no minus sign
    text = re.sub(r"(?<=[A-Za-z])-(?=\d)", "", text)
    # ordinals
    text = re.sub(r"第\s?(\d+)", lambda m: ordinal(m.group(1)), text)

    # negatives: a minus sign not preceded by a digit or letter (so 3-5 stays a range, handled earlier)
    def neg(m: re.Match[str]) -> str:
        return "负" + _number_word(m.group(1))

    text = re.sub(rf"(?<![\dA-Za-z)）])-({_NUM})", neg, text)
    text = re.sub(r"(?<![\d.])\+(\d+(?:\.\d+)?)", lambda m: "正" + _number_word(m.group(1)), text)

    # 141178万 is 十四亿一千一百七十八万: a count of ten-thousands at or above 万 itself is scaled first
    text = re.sub(
        r"(?<![\d.,])(\d{5,12})万(?!亿)", lambda m: cardinal(str(int(m.group(1)) * 10000), liang=True), text
    )

    def num(m: re.Match[str]) -> str:
        s = m.group(0).replace(",", "")
        if s.count(".") > 1:  # version numbers 1.2.3
            return "点".join(cardinal(p, False) for p in s.split("."))
        if "." in s:
            return decimal(s)
        nxt = text[m.end() : m.end() + 2]
        if s == "2" and nxt and (nxt[0] in _LIANG_BEFORE or nxt.startswith(_LIANG_BEFORE_WORDS)):
            return "两"
        return cardinal(s, liang=True)

    return re.sub(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)*", num, text)


# Left operand of a math sign: a digit (a space may follow) or a letter right before it ('tel +86' is no sum).
_LEFT = r"(?:(?<=\d)\s?|(?<=[A-Za-z]))"
_SYMBOL_WORDS = [
    (re.compile(r"(?<=\d)\s?[xX×*]\s?(?=\d)"), "乘"),
    (re.compile(r"(?<=\d)\s?÷\s?(?=\d)"), "除以"),
    (re.compile(rf"{_LEFT}\+\s?(?=\d|[A-Za-z]\b)"), "加"),
    # a difference before '=' (8-3=5) is a subtraction, not a range
    (re.compile(rf"{_LEFT}-\s?(?=\d+(?:\.\d+)?\s?=)"), "减"),
    (re.compile(rf"{_LEFT}=\s?(?=[\dA-Za-z]|负|-)"), "等于"),
    (re.compile(rf"{_LEFT}(?:≥|>=)\s?(?=[\dA-Za-z-])"), "大于等于"),
    (re.compile(rf"{_LEFT}(?:≤|<=)\s?(?=[\dA-Za-z-])"), "小于等于"),
    (re.compile(rf"{_LEFT}>\s?(?=[\dA-Za-z-])"), "大于"),
    (re.compile(rf"{_LEFT}<\s?(?=[\dA-Za-z-])"), "小于"),
    (re.compile(r"℃"), "摄氏度"),
    (re.compile(r"&"), "和"),
    (re.compile(r"@"), " at "),
    (re.compile(r"№"), "第"),
]


_TLD = "com|cn|net|org|gov|edu|io|info|top|xyz|co|me|tv|cc|uk|jp|hk|tw|de|fr|ai|app|dev"
_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# \b would not end a domain before a Chinese character (str patterns count Han as word characters)
_URL_RE = re.compile(
    rf"(?:https?://)?(?:[A-Za-z0-9-]+\.)+(?:{_TLD})(?![A-Za-z0-9])(?:/[A-Za-z0-9._~%/?#=&+-]*)?",
    re.IGNORECASE,
)
_URL_SYMBOLS = {
    ".": "点", "/": "斜杠", "-": "杠", "_": "下划线", "@": " at ", ":": "冒号", "?": "问号", "=": "等于",
    "&": "和", "#": "井号", "%": "百分号", "~": "波浪号", "+": "加",
}  # fmt: skip


def _read_address(m: re.Match[str]) -> str:
    """An e-mail address or URL, as read aloud: the scheme dropped, marks by name, digits one by one."""
    s = re.sub(r"^https?://", "", m.group(0), flags=re.IGNORECASE).rstrip("/")
    out = re.sub(r"\d+", lambda d: digits_reading(d.group(0)), s)
    return "".join(_URL_SYMBOLS.get(c, c) for c in out)


def _sub_addresses(text: str) -> str:
    text = _EMAIL_RE.sub(_read_address, text)
    return _URL_RE.sub(_read_address, text)


def normalize(text: str) -> str:
    """Full text normalization (see module doc). Keeps punctuation; returns speakable Chinese + Latin."""
    text = to_halfwidth(text)
    text = _sub_addresses(text)
    text = _sub_dates(text)
    text = _sub_phone_numbers(text)
    text = _sub_times(text)
    text = _sub_currency(text)
    text = _sub_percent(text)
    text = _sub_fractions(text)
    text = _sub_scores(text)
    text = _sub_long_digit_strings(text)
    text = _sub_units(text)
    for pat, rep in _SYMBOL_WORDS:
        text = pat.sub(rep, text)
    text = _sub_ranges(text)
    text = _sub_numbers(text)
    for a, b in _PUNCT_TO_ZH.items():
        text = text.replace(a, b)
    # '~' left alone (not between numbers) is a tilde of tone, not speech
    return text.replace("~", "")
