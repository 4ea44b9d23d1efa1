"""docs/: the figures script runs and draws real pictures; every path how-it-works.md names exists."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FIGURES = ("fprop_im2col.png", "dgrad_phases.png", "wgrad_splitk.png")


def test_figures_script_writes_non_blank_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    out = tmp_path / "tmp"
    run = subprocess.run([sys.executable, str(DOCS / "figures.py"), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    for name in FIGURES:
        png = out / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert matplotlib.image.imread(png).std() > 0, f"{name} is blank"


def test_how_it_works_shows_the_figures_it_generates():
    text = (DOCS / "how-it-works.md").read_text()
    for name in FIGURES:
        assert f"]({name})" in text, name


def mentioned_paths(text):
    """Backticked tokens and link targets that look like repository paths."""
    tokens = re.findall(r"`([^`\s]+)`", text) + re.findall(r"\]\(([^)\s]+)\)", text)
    return {t for t in tokens
            if re.fullmatch(r"[\w*][\w./*-]*", t) and ("/" in t or re.search(r"\.(py|cuh?|h|md|png)$", t))}


def test_every_path_in_how_it_works_exists():
    paths = mentioned_paths((DOCS / "how-it-works.md").read_text())
    assert "kernels/dgrad.cu" in paths and "dgrad_phases.png" in paths  # the extractor works
    missing = [p for p in sorted(paths)
               if not any(list(base.glob(p)) for base in (ROOT, DOCS))]
    assert not missing, f"how-it-works.md names paths that do not exist: {missing}"
