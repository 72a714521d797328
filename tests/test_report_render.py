"""Headless-Chromium render check of the HTML report (skipped when chromium is not installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_report_render.py"
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--chromium", str(CHROMIUM)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shot = tmp_path / "screenshot.png"
    with Image.open(shot) as im:
        assert im.size == (1280, 4000)


def test_blank_screenshot_is_detected(tmp_path: Path) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import check_report_render as crr
    finally:
        sys.path.remove(str(SCRIPT.parent))
    blank = tmp_path / "blank.png"
    Image.new("RGB", (1280, 4000), "white").save(blank)
    problems = crr.check_not_blank(blank)
    assert any("non-white" in p for p in problems)
    assert any("distinct colours" in p for p in problems)
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 100), "black").save(small)
    assert any("expected 1280x4000" in p for p in crr.check_not_blank(small))
