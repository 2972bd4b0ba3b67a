"""Runs scripts/score_frontend.py on the development set (read in place; skipped when absent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAIRS = (REPO / ".." / "shared" / "kantts" / "frontend" / "dev_pairs.jsonl").resolve()


def test_dev_set_scores() -> None:
    if not PAIRS.is_file():
        pytest.skip(
            f"development set not found at {PAIRS} (it lives outside the repo, licence: research only)"
        )
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "score_frontend.py"), str(PAIRS), "--json"],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["sentences"] == 300
    assert res["phones"] >= 0.999
    assert res["phones_tone"] >= 0.97
    assert res["boundary_f1"] >= 0.85
