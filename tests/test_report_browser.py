"""The report in a real browser: headless Chromium renders report.html to a screenshot.

Skips (with the reason) when no ``chromium`` is on PATH (Debian: ``apt-get install chromium``).
bench/report_screenshot.py is the same as a script, for looking at the PNG by eye.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "report_screenshot", ROOT / "bench" / "report_screenshot.py"
)
shot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shot)


@pytest.mark.slow
@pytest.mark.skipif(
    shot.find_chromium() is None,
    reason="chromium is not installed (Debian: apt-get install chromium)",
)
def test_report_renders_in_headless_chromium(tmp_path):
    import matplotlib.image as mpimg

    rc = shot.main(["--out", str(tmp_path), "--width", "1400", "--height", "3000"])
    assert rc == 0
    html = (tmp_path / "report" / "report.html").read_text()
    assert "raysearch analysis: synthetic-demo" in html
    img = mpimg.imread(tmp_path / "report.png")
    assert img.shape[:2] == (3000, 1400)
    rgb = img[..., :3]
    # drawn: the page is not blank, and the top holds dark text (the title and the header)
    assert (rgb.sum(axis=2) < 1.0).mean() > 0.001
    assert (rgb[:300].sum(axis=2) < 1.0).any()
    # the figures are laid out in the page (colour somewhere below the header)
    sat = rgb.max(axis=2) - rgb.min(axis=2)
    assert (sat[600:] > 0.3).mean() > 0.001
    assert np.isfinite(rgb).all()
