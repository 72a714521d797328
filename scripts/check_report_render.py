"""Render a small tcm report in headless Chromium and check the screenshot is not blank.

Builds a report from synthetic embeddings (three runs of increasing class separation, cosine
similarity, pair accepted when s >= t), opens ``index.html`` with ``chromium --headless
--screenshot`` and checks the screenshot: it must exist, be a valid PNG, and show real content
(many distinct colours, a sizeable share of non-white pixels, and coloured plot pixels).

Usage::

    python scripts/check_report_render.py [--out DIR] [--chromium PATH] [--keep]

Exit status 0 when the page renders, 1 when the screenshot looks blank or broken, 2 when
Chromium is not installed. Prints the report and screenshot paths.

Example::

    .venv/bin/python scripts/check_report_render.py --out /tmp/tcm-report-check --keep
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from tcm.report import ReportRun, write_report

WINDOW = (1280, 4000)


def synthetic_runs(
    n_classes: int = 24, per_class: int = 8, dim: int = 32, seed: int = 0
) -> list[ReportRun]:
    """Three runs on the same classes: noisier embeddings are less accurate and less consistent.

    Class ``c`` gets its own noise scale so per-class utility curves spread out like a real
    model's; the embeddings are ``center[c] + noise_c * N(0, I)`` (L2-normalised by tcm).
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    centers = rng.normal(size=(n_classes, dim))
    class_noise = rng.uniform(0.5, 1.5, size=n_classes)
    runs = []
    for name, scale in (("baseline (Smooth-AP)", 1.0), ("+ TCM", 0.8), ("<b>escaped</b>", 1.3)):
        noise = scale * (1.0 + (class_noise - 1.0) * (scale - 0.6))
        emb = centers[labels] + noise[labels, None] * rng.normal(size=(labels.size, dim))
        runs.append(ReportRun(name, emb, labels))
    return runs


def find_chromium(explicit: str | None) -> str | None:
    """Path of the Chromium binary (``--chromium``, else ``chromium``/``chromium-browser``)."""
    if explicit:
        return explicit if Path(explicit).exists() or shutil.which(explicit) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(chromium: str, html: Path, out_png: Path, timeout: float = 120.0) -> None:
    """Screenshot ``html`` (a ``file://`` URL, no network) into ``out_png`` with Chromium."""
    with tempfile.TemporaryDirectory(prefix="tcm-chromium-") as profile:
        cmd = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={out_png}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            html.resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0 or not out_png.exists():
            raise RuntimeError(
                f"chromium failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
            )


def check_not_blank(png: Path) -> list[str]:
    """Problems found in the screenshot (empty list = looks like a rendered report)."""
    problems = []
    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    h, w, _ = rgb.shape
    if (w, h) != WINDOW:
        problems.append(f"screenshot is {w}x{h}, expected {WINDOW[0]}x{WINDOW[1]}")
    non_white = np.any(rgb < 235, axis=2)
    frac = float(non_white.mean())
    if frac < 0.05:
        problems.append(f"only {frac:.1%} of pixels are non-white (blank page?)")
    colours = np.unique(rgb[::4, ::4].reshape(-1, 3), axis=0).shape[0]
    if colours < 200:
        problems.append(f"only {colours} distinct colours (images missing?)")
    saturated = (rgb.max(axis=2) - rgb.min(axis=2)) > 80
    if float(saturated.mean()) < 0.002:
        problems.append("almost no coloured pixels (plots not rendered?)")
    # content must reach down the page: the last plots sit well below the first screen
    rows = np.nonzero(non_white.mean(axis=1) > 0.01)[0]
    if rows.size == 0 or rows[-1] < 1500:
        problems.append("content ends near the top of the page (images not loaded?)")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="output directory (default: temp)")
    ap.add_argument("--chromium", default=None, help="Chromium binary (default: from PATH)")
    ap.add_argument("--keep", action="store_true", help="keep the temp output directory")
    args = ap.parse_args(argv)

    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("chromium not found on PATH; install it (apt-get install chromium)", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="tcm-report-check-"))
    try:
        index = write_report(
            out / "report", synthetic_runs(), target_far=1e-2, title="tcm render check"
        )
        shot = out / "screenshot.png"
        screenshot(chromium, index, shot)
        problems = check_not_blank(shot)
        print(f"report: {index}\nscreenshot: {shot}")
        for p in problems:
            print(f"PROBLEM: {p}", file=sys.stderr)
        return 1 if problems else 0
    finally:
        if args.out is None and not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
