"""Exact timestamps (issue 21 part 3): marks from the predicted durations, carried per chunk, with
their spans in the caller's input; the CLI's JSON/SRT/VTT and the HTTP captioned variants."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sambert_deploy.frontend import FrontEnd
from sambert_deploy.runtime.acoustic import AcousticModel
from sambert_deploy.runtime.captions import cues, to_srt, to_vtt
from sambert_deploy.runtime.synthesizer import StreamOptions, Synthesizer
from sambert_deploy.runtime.timestamps import Mark
from sambert_deploy.symbols import encode_units, format_units

TEXT = "2024年3月5日下午3点，Hello world。今天天气很好！"


@pytest.fixture(scope="module")
def synth(tiny_bundles: dict[str, Path]) -> Iterator[Synthesizer]:
    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=StreamOptions(vocoder_chunk=16)) as s:
        yield s


@pytest.fixture(scope="module")
def fe() -> FrontEnd:
    return FrontEnd()


def _tokens(fe: FrontEnd, text: str, step: int = 0) -> list[tuple]:
    rd = fe.reader()
    pieces = [text[i:i + step] for i in range(0, len(text), step)] if step else [text]
    for p in pieces:
        rd.feed(p)
    rd.finish()
    out = []
    while rd.next_sentence() is not None:
        out.append(rd.tokens())
    return out


# -- source spans (front end only) --------------------------------------------------------------------------


@pytest.mark.parametrize("step", [0, 1, 4])
def test_source_spans_slice_the_input_for_numbers_and_english(fe: FrontEnd, step: int) -> None:
    text = "你好。" + TEXT
    sents = _tokens(fe, text, step)
    assert len(sents) == 3
    spoken = [(t.text, text[t.source[0]:t.source[1]]) for t in sents[1] if t.kind != "break"]
    assert spoken == [("二", "2024"), ("零", "2024"), ("二", "2024"), ("四", "2024"), ("年", "年"), ("三", "3"),
                      ("月", "月"), ("五", "5"), ("日", "日"), ("下", "下"), ("午", "午"), ("三", "3"), ("点", "点"),
                      ("Hello", "Hello"), ("world", "world")]
    assert [t.kind for t in sents[1] if t.kind != "break"][-2:] == ["word", "word"]
    puncts = [(t.text, text[t.source[0]:t.source[1]], t.level) for t in sents[1] if t.kind == "break" and t.source]
    assert puncts == [("，", "，", 3), ("。", "。", 4)]
    assert "".join(text[t.source[0]:t.source[1]] for t in sents[2] if t.kind == "syllable") == "今天天气很好"


def test_source_spans_through_markup_erhua_and_percent(fe: FrontEnd) -> None:
    text = "[emotion=happy]我们去哪儿？涨了50%。"
    (first, second) = _tokens(fe, text, 5)
    assert [(t.text, text[t.source[0]:t.source[1]]) for t in first if t.kind == "syllable"] == [
        ("我", "我"), ("们", "们"), ("去", "去"), ("哪儿", "哪儿")]
    pct = [text[t.source[0]:t.source[1]] for t in second if t.kind == "syllable"][2:]
    assert pct == ["50%"] * 5  # 百分之五十: the whole construct


def test_source_spans_in_a_long_block(fe: FrontEnd) -> None:
    """Over 200 characters the alignment is pinned at unique k-grams first (spans.py): same spans."""
    text = "".join(f"第{i}段讲{2000 + i}年的事，" for i in range(1, 40)) + "完。"
    (sent,) = _tokens(fe, text, 7)
    runs: list[str] = []
    for t in sent:
        piece = text[t.source[0]:t.source[1]] if t.source else ""
        if t.kind == "syllable" and piece != t.text:
            assert piece.isdigit() or piece[1:].isdigit(), (t, piece)  # 2001, or 第1 where 第 was respelled
            if not runs or runs[-1] != piece:
                runs.append(piece)
    assert [r.removeprefix("第") for r in runs] == [str(x) for i in range(1, 40) for x in (i, 2000 + i)]


def test_tokens_tile_every_unit(fe: FrontEnd) -> None:
    rd = fe.reader()
    rd.feed(TEXT)
    rd.finish()
    while (units := rd.next_sentence()) is not None:
        toks = rd.tokens()
        assert [t.first for t in toks] == list(np.cumsum([0] + [t.count for t in toks[:-1]]))
        assert toks[-1].first + toks[-1].count == len(units) and toks[-1].level == 4


# -- marks against the graphs' durations ----------------------------------------------------------------------


def test_marks_are_the_graph_durations_and_cover_the_audio(synth: Synthesizer) -> None:
    with synth.stream(TEXT) as s:
        chunks = list(s)
    total = sum(len(c.samples) for c in chunks)
    marks = [m for c in chunks for m in c.marks]
    hop = synth.manifest.voices[synth.default_voice].vocoder.hop
    assert marks[0].start_sample == 0 and marks[-1].end_sample == total
    assert all(m.start_sample <= m.end_sample for m in marks)
    assert all(a.end_sample == b.start_sample for a, b in zip(marks, marks[1:], strict=False))  # no gap, no overlap
    # independently: the front end's units through the encoder and duration graphs, reps -> samples
    vm = synth.manifest.voices[synth.default_voice]
    am = AcousticModel(synth.manifest, vm, "cpu")
    try:
        start = 0
        for i, units in enumerate(synth.front_end().units(TEXT)):
            reps = am.plan(encode_units(units, vm.inventories)).reps
            bounds = start + hop * np.concatenate([[0], np.cumsum(reps)])
            mine = [m for m in marks if m.sentence == i]
            assert mine and mine[-1].first_unit + mine[-1].num_units == len(units)
            for m in mine:
                assert (m.start_sample, m.end_sample) == (bounds[m.first_unit], bounds[m.first_unit + m.num_units])
            start = int(bounds[-1])
    finally:
        am.close()
    assert start == total


def test_each_chunk_carries_the_marks_that_start_in_it(synth: Synthesizer) -> None:
    with synth.stream(iter([TEXT[:7], TEXT[7:]])) as s:
        chunks = list(s)
    assert len(chunks) > 3 and chunks[0].marks, "the first audio comes with the first timestamps"
    for c in chunks:
        end = c.offset + len(c.samples)
        for m in c.marks:
            assert c.offset <= m.start_sample < end or (c.final and m.start_sample == end), (m, c.offset, end)
    seen = [m for c in chunks for m in c.marks]
    for c in chunks:  # nothing that starts in a chunk is held back to a later one
        end = c.offset + len(c.samples)
        later = [m for d in chunks if d.offset > c.offset for m in d.marks]
        assert not [m for m in later if m.start_sample < end]
    assert len(seen) == len({(m.sentence, m.first_unit) for m in seen})


def test_symbol_input_marks_have_phones_and_no_source(synth: Synthesizer) -> None:
    lines = "\n".join(format_units(u) for u in synth.front_end().units("你好。"))
    speech = synth.synthesize_timed(symbols=lines)
    assert speech.marks and all(m.source is None for m in speech.marks)
    assert [m.text for m in speech.marks if m.kind == "phone"] == ["n_c i_c", "h_c ao_c"]
    assert speech.marks[-1].end_sample == len(speech.samples)


def test_max_units_pieces_keep_times_continuous(tiny_bundles: dict[str, Path]) -> None:
    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=StreamOptions(max_units=12)) as syn:
        speech = syn.synthesize_timed(TEXT)
    assert len({m.sentence for m in speech.marks}) > 3
    assert all(a.end_sample == b.start_sample for a, b in zip(speech.marks, speech.marks[1:], strict=False))
    assert speech.marks[-1].end_sample == len(speech.samples)


# -- captions ------------------------------------------------------------------------------------------------


def _mark(text: str, kind: str, a: int, b: int, src: tuple[int, int] | None, level: int = 0) -> Mark:
    return Mark(text, kind, a * 160, b * 160, 16000, 0, 0, 1, *(src or (None, None)), level)


def test_cues_end_at_punctuation_and_show_the_input_text() -> None:
    src = "3点，好。"
    marks = [_mark("三", "syllable", 0, 10, (0, 1)), _mark("点", "syllable", 10, 20, (1, 2)),
             _mark("，", "break", 20, 25, (2, 3), 3), _mark("好", "syllable", 25, 40, (3, 4)),
             _mark("。", "break", 40, 50, (4, 5), 4)]
    got = cues(marks, src)
    assert [(c.start_s, c.end_s, c.text) for c in got] == [(0.0, 0.2, "3点，"), (0.25, 0.4, "好。")]
    assert [c.text for c in cues(marks)] == ["三点，", "好。"]
    assert to_srt(got).startswith("1\n00:00:00,000 --> 00:00:00,200\n3点，\n\n2\n00:00:00,250 --> ")
    assert to_vtt(got).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:00.200\n3点，\n")


# -- CLI -----------------------------------------------------------------------------------------------------

_SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n(.+)\n")


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def test_cli_writes_json_srt_vtt(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    import soundfile as sf
    from click.testing import CliRunner

    from sambert_deploy.cli import main

    bundle = str(tiny_bundles["causal"])
    outs = {}
    for suffix in ("json", "srt", "vtt"):
        wav, ts = tmp_path / f"a_{suffix}.wav", tmp_path / f"a.{suffix}"
        r = CliRunner().invoke(main, ["synth", bundle, TEXT, "-o", str(wav), "--backend", "cpu", "--timestamps",
                                      str(ts)])
        assert r.exit_code == 0, r.output
        outs[suffix] = ts.read_text("utf-8")
    duration = len(sf.read(str(tmp_path / "a_json.wav"))[0]) / 16000
    data = json.loads(outs["json"])
    marks = data["marks"]
    assert data["sample_rate"] == 16000 and abs(data["duration_s"] - duration) < 1e-9
    assert marks[0]["start_s"] == 0 and abs(marks[-1]["end_s"] - duration) < 1e-6
    assert [m["text"] for m in marks if m["kind"] == "syllable"][:4] == ["二", "零", "二", "四"]
    assert TEXT[slice(*marks[0]["source"])] == "2024"
    srt = _SRT_CUE.findall(outs["srt"])
    assert [c[0] for c in srt] == [str(i) for i in range(1, len(srt) + 1)]
    assert [c[9] for c in srt] == ["2024年3月5日下午3点，", "Hello world。", "今天天气很好！"]
    times = [(_seconds(*c[1:5]), _seconds(*c[5:9])) for c in srt]
    assert all(a < b for a, b in times) and all(b <= c for (_, b), (c, _) in zip(times, times[1:], strict=False))
    assert times[-1][1] <= duration + 0.001
    vtt = outs["vtt"]
    assert vtt.startswith("WEBVTT\n\n") and vtt.count(" --> ") == len(srt) and "Hello world。" in vtt


def test_cli_refuses_an_unknown_timestamps_format(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sambert_deploy.cli import main

    keep = tmp_path / "a.txt"
    keep.write_text("mine")
    r = CliRunner().invoke(main, ["synth", str(tiny_bundles["causal"]), "你好", "-o", str(tmp_path / "a.wav"),
                                  "--timestamps", str(keep)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    line, = r.output.strip().splitlines()
    assert "timestamps" in line and ".json" in line and ".srt" in line
    assert keep.read_text() == "mine" and not (tmp_path / "a.wav").exists()


# -- HTTP ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(served_synth: Synthesizer) -> Iterator[object]:
    from tests.conftest import need_module

    need_module("httpx", "the dev extra (pip install -e '.[dev]')")
    from fastapi.testclient import TestClient

    from sambert_deploy.serve.app import ServeConfig, create_app

    with TestClient(create_app(served_synth, ServeConfig(max_concurrent=2, max_queue=2))) as c:
        yield c


def _body(synth: Synthesizer, **kw: object) -> dict:
    return {"model": "tts-1", "input": TEXT, "voice": synth.voices()[0], "response_format": "pcm", **kw}


def test_captioned_route_streams_timestamps_with_the_audio(client: object, served_synth: Synthesizer) -> None:
    plain = client.post("/v1/audio/speech", json=_body(served_synth)).content  # type: ignore[attr-defined]
    r = client.post("/v1/audio/captioned_speech", json=_body(served_synth))  # type: ignore[attr-defined]
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert lines[0]["audio"] and lines[0]["timestamps"], "the first timestamps come with the first audio"
    assert lines[0]["timestamps"][0]["start_time"] == 0 and lines[0]["audio_format"].startswith("audio/L16")
    assert b"".join(base64.b64decode(x["audio"]) for x in lines) == plain
    stamps = [t for x in lines for t in x["timestamps"]]
    assert abs(stamps[-1]["end_time"] - len(plain) / 2 / 16000) < 1e-6
    assert TEXT[slice(*stamps[0]["source"])] == "2024" and stamps[0]["word"] == "二"
    whole = client.post("/v1/audio/captioned_speech", json=_body(served_synth, stream=False))  # type: ignore
    assert whole.headers["content-type"].startswith("application/json")
    one = whole.json()
    assert base64.b64decode(one["audio"]) == plain and one["timestamps"] == stamps


def test_sse_timestamp_events_come_before_the_audio(client: object, served_synth: Synthesizer) -> None:
    r = client.post("/v1/audio/speech", json=_body(served_synth, stream_format="sse", timestamps=True))  # type: ignore
    events = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "speech.audio.timestamps" and kinds[1] == "speech.audio.delta"
    assert kinds[-1] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert audio == client.post("/v1/audio/speech", json=_body(served_synth)).content  # type: ignore
    bad = client.post("/v1/audio/speech", json=_body(served_synth, timestamps=True))  # type: ignore
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "timestamps"
    bad = client.post("/v1/audio/captioned_speech", json=_body(served_synth, stream_format="sse"))  # type: ignore
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "stream_format"
