"""The HTML report as a browser shows it: headless Chromium renders the report of a fake sweep.

Skipped when no Chromium is installed (Debian: ``apt-get install -y chromium``; CI installs it
when it can). Set ``COQAT_SCREENSHOT_DIR`` to keep the screenshot for a look.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from coqat.sweep.report import build_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run")
WIDTH, HEIGHT = 1280, 4000
# lists every <img>'s decoded size ("WxH", "!" when not complete) in a <pre> once loaded
CHECK_JS = (
    "<script>window.addEventListener('load',function(){var im=document.images,o=[];"
    "for(var i=0;i<im.length;i++){o.push(im[i].naturalWidth+'x'+im[i].naturalHeight"
    "+(im[i].complete?'':'!'))}var p=document.createElement('pre');p.id='coqat-check';"
    "p.textContent=o.join(' ');document.body.appendChild(p)});</script>"
)


def _chromium() -> str | None:
    exe = os.environ.get("COQAT_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if not exe:
        return None
    try:
        ok = subprocess.run([exe, "--version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return exe if ok else None


def _run(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"  # a fresh one per launch
    return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=90)


@pytest.fixture(scope="module")
def chromium():
    exe = _chromium()
    if exe is None:
        pytest.skip("headless Chromium not found (apt-get install -y chromium)")
    return exe


def test_report_renders_in_headless_chromium(chromium, fake_sweep_store, tmp_path):
    from PIL import Image

    page = build_report(tmp_path / "rep", store=fake_sweep_store)
    html = page.read_text()
    n_img = html.count("<img")
    assert n_img == 4  # loss vs f, f* vs S, fusion, memory frontier (no law: no prediction)

    # every figure <img> decodes in the browser
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", CHECK_JS + "</body>"))
    res = _run(chromium, tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    m = re.search(r'<pre id="coqat-check">([^<]*)</pre>', res.stdout)
    assert m, f"no check output from chromium (rc {res.returncode}): {res.stderr[-2000:]}"
    sizes = m.group(1).split()
    assert len(sizes) == n_img and all(re.fullmatch(r"[1-9]\d*x[1-9]\d*", s) for s in sizes), sizes

    # the screenshot: figures first, so the window's top 4000 px are figures, in colour
    shot = tmp_path / "report.png"
    res = _run(chromium, tmp_path, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}",
               page.as_uri())
    assert shot.exists(), f"no screenshot (rc {res.returncode}): {res.stderr[-2000:]}"
    if os.environ.get("COQAT_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["COQAT_SCREENSHOT_DIR"]) / "report.png")
    im = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert im.shape[:2] == (HEIGHT, WIDTH)
    ink = (im < 235).any(axis=2)  # anything but white / the faintest grey
    rows = np.flatnonzero(ink.any(axis=1))
    assert ink.mean() > 0.02, "the page is (nearly) blank"
    assert rows.max() > 0.75 * HEIGHT, "the page ends early: figures missing or not shown"
    # matplotlib's tab:blue (31, 119, 180), the fused curves' and markers' colour
    blue = (np.abs(im - np.array([31, 119, 180])) < 40).all(axis=2)
    assert blue.sum() > 2000, "no plotted data visible"
    # figures before tables: the first plotted data is near the top of the page
    assert np.flatnonzero(blue.any(axis=1)).min() < 1200
