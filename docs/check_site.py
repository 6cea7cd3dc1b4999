"""Checks that a built docs site's internal links, anchors and images resolve.

    mkdocs build --strict --site-dir SITE && python docs/check_site.py SITE

`mkdocs build --strict` checks the Markdown sources; this checks the HTML it
wrote, where theme templates, API pages and images land too. Every `href` and
`src` inside the site must name a file that exists (a folder means its
index.html), and every `#anchor` must be an `id` on the page it points to.
Links to other sites are not followed. Exit status 1 lists what is broken.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

_ATTRIBUTES = {"a": "href", "link": "href", "img": "src", "script": "src", "source": "src"}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []  # (tag, url)
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for key in ("id", "name"):
            if values.get(key):
                self.ids.add(str(values[key]))
        url = values.get(_ATTRIBUTES.get(tag, ""))
        if url:
            self.links.append((tag, url))


def _parse(path: Path, cache: dict[Path, _Page]) -> _Page:
    if path not in cache:
        page = _Page()
        page.feed(path.read_text(encoding="utf-8", errors="replace"))
        cache[path] = page
    return cache[path]


def _target(site: Path, page: Path, url: str) -> tuple[Path | None, str]:
    """The file a link points to (None when outside the site) and its fragment."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or url.startswith(("mailto:", "javascript:", "data:")):
        return None, ""
    if not parts.path:
        return page, parts.fragment
    if parts.path.startswith("/"):
        target = site / unquote(parts.path.lstrip("/"))
    else:
        target = page.parent / unquote(parts.path)
    target = target.resolve()
    if target.is_dir() or parts.path.endswith("/"):
        target = target / "index.html"
    return target, parts.fragment


def check(site: Path) -> list[str]:
    """Every broken internal link, anchor or image of the site, one line each."""
    site = site.resolve()
    pages: dict[Path, _Page] = {}
    problems: list[str] = []
    html_files = sorted(site.rglob("*.html"))
    for path in html_files:
        for tag, url in _parse(path, pages).links:
            target, fragment = _target(site, path, url)
            if target is None:
                continue
            where = f"{path.relative_to(site)}: <{tag}> {url}"
            if site not in target.parents and target != site:
                problems.append(f"{where}: points outside the site")
            elif not target.exists():
                problems.append(f"{where}: no file {target.relative_to(site)}")
            elif fragment and target.suffix == ".html":
                if fragment not in _parse(target, pages).ids:
                    problems.append(f"{where}: no id {fragment!r} on that page")
    if not html_files:
        problems.append(f"no HTML pages under {site}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python docs/check_site.py SITE_DIR", file=sys.stderr)
        return 2
    problems = check(Path(argv[0]))
    for line in problems:
        print(line)
    pages = len(list(Path(argv[0]).rglob("*.html")))
    print(f"check_site: {pages} pages, {len(problems)} broken links or images")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
