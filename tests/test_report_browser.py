"""report.html in headless Chromium (scripts/check_report.py), as a reader sees it: every figure loaded and laid
out at a non-zero size, the tables present, no console errors, broken images or content sticking out of the
page; the same check catches each of those when planted. Needs a Chromium binary (Debian: apt-get install
chromium; .ci/run installs it); skipped without one."""
from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest

from diffprune.report import build_report

sys.path.insert(0, str(Path(__file__).parent))
from test_report import fabricate_run  # noqa: E402

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_report.py"
BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium on PATH (apt-get install chromium)")


def _checker():
    spec = importlib.util.spec_from_file_location("check_report", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_report_renders_cleanly_and_the_check_catches_planted_faults(tmp_path):
    from PIL import Image

    check = _checker().check
    run = fabricate_run(tmp_path / "runs" / "demo")
    build_report(run)
    html = run / "report" / "report.html"
    text = html.read_text()
    result = check(html, tmp_path / "report.png", BROWSER)
    assert result["images"] == len(re.findall(r"<img ", text)) > 5  # every figure is an image the browser decoded
    assert not (result["console_errors"] or result["exceptions"] or result["failed_loads"]
                or result["broken_images"] or result["overflowing"]), result
    assert all(w > 20 and h > 20 for w, h in result["image_sizes"]), result["image_sizes"]  # laid out, visible
    # the tables a reader looks for are there, laid out, with rows beyond the header
    assert len(result["tables"]) == text.count("<table>") >= 4
    assert all(t["visible"] and t["rows"] >= 2 for t in result["tables"]), result["tables"]
    names = " ".join(t["name"] for t in result["tables"])
    assert "Lower FID/KID" in names and "From each stage's manifest.json" in names  # results and cost tables
    with Image.open(tmp_path / "report.png") as shot:  # the full page, not one viewport
        assert shot.size == (1100, result["page_size"][1]) and shot.size[1] > 2000
    first = re.search(r'src="data:image/png;base64,[^"]+"', text).group(0)
    bad = text.replace(first, 'src="data:image/png;base64,AAAA"', 1).replace(
        "</body>", '<div style="width:3000px">wide</div><script>console.error("planted")</script></body>')
    (tmp_path / "bad.html").write_text(bad)
    faults = check(tmp_path / "bad.html", None, BROWSER)
    assert len(faults["broken_images"]) == 1 and faults["console_errors"] == ["planted"]
    hidden = text.replace("<img ", '<img style="display:none" ', 1)  # decoded but shown at zero size
    (tmp_path / "hidden.html").write_text(hidden)
    assert len(check(tmp_path / "hidden.html", None, BROWSER)["broken_images"]) == 1
    assert faults["overflowing"] == ["div: wide"] and faults["images"] == result["images"]
