"""docs/check_site.py: broken internal links, anchors and images of a built site are found."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_site", ROOT / "docs" / "check_site.py")
assert _spec is not None and _spec.loader is not None
check_site = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_site)


def test_broken_links_anchors_and_images_are_reported(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "plot.png").write_bytes(b"\x89PNG")
    (tmp_path / "guide").mkdir()
    (tmp_path / "guide" / "index.html").write_text('<h2 id="setup">Setup</h2>')
    (tmp_path / "index.html").write_text(
        '<a href="guide/">ok</a> <a href="guide/#setup">ok</a> <a href="#top">ok</a>'
        '<p id="top"></p> <img src="images/plot.png"> <a href="https://example.org/x">ext</a>'
        '<a href="missing/">bad</a> <a href="guide/#nowhere">bad</a>'
        '<img src="images/gone.png"> <a href="../../etc/passwd">bad</a>'
    )
    problems = check_site.check(tmp_path)
    assert problems == [
        "index.html: <a> missing/: no file missing/index.html",
        "index.html: <a> guide/#nowhere: no id 'nowhere' on that page",
        "index.html: <img> images/gone.png: no file images/gone.png",
        "index.html: <a> ../../etc/passwd: points outside the site",
    ]
    assert check_site.main([str(tmp_path)]) == 1


def test_a_clean_site_passes(tmp_path, capsys):
    (tmp_path / "index.html").write_text('<a href="index.html">home</a>')
    assert check_site.main([str(tmp_path)]) == 0
    assert "1 pages, 0 broken" in capsys.readouterr().out
