"""Runs scripts/score_frontend.py on the development set (read in place from ../shared; absent, the test
skips locally and fails under CI)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import DEV_PAIRS, REPO, need_path


def test_dev_set_scores() -> None:
    pairs = need_path(DEV_PAIRS, "the development set (it lives outside the repo, licence: research only)")
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "score_frontend.py"), str(pairs), "--json"],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["sentences"] == 300
    assert res["phones"] >= 0.999
    assert res["phones_tone"] >= 0.97
    assert res["boundary_f1"] >= 0.85
