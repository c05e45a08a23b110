"""The dashboard's files over HTTP: shipped in the package, served with a strict policy."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from joblot.dashboard import STATIC, load_assets

from .harness import harness

pytestmark = pytest.mark.anyio

# Ways a script can turn a string into markup or code; the dashboard uses none of them.
HTML_SINKS = re.compile(
    r"\.(inner|outer)HTML\s*=|insertAdjacentHTML\(|document\.write|\beval\(|new Function\("
)


class Tags(HTMLParser):
    """Every start tag of a page with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


async def test_the_page_is_served_at_the_root_with_a_strict_content_security_policy(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        response = await h.http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = dict(
        part.strip().split(" ", 1)
        for part in response.headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert policy["require-trusted-types-for"] == "'script'"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


async def test_the_page_has_no_inline_script_or_style_and_its_files_are_all_served(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        page = (await h.http.get("/")).text
        parser = Tags()
        parser.feed(page)
        for tag, attrs in parser.tags:
            assert "style" not in attrs and not any(a.startswith("on") for a in attrs), tag
        scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
        assert scripts and all(a.get("src") for a in scripts)
        assert re.search(r"<script[^>]*>\s*</script>", page)  # nothing between the tags
        linked = [
            a.get("src") or a.get("href") for tag, a in parser.tags if tag in ("script", "link")
        ]
        for url in linked:
            assert url is not None
            served = await h.http.get(f"/{url}")
            assert served.status_code == 200, url
            assert served.headers["content-security-policy"]
        assert HTML_SINKS.search("row.innerHTML = name")  # the check sees what it looks for
        modules = [p.name for p in STATIC.glob("*.js")]
        for name in modules:
            source = (await h.http.get(f"/dashboard/static/{name}")).text
            assert not HTML_SINKS.search(source), name


async def test_dashboard_files_revalidate_with_etags_and_unknown_ones_are_404(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        first = await h.http.get("/dashboard/static/app.js")
        assert first.headers["content-type"] == "text/javascript; charset=utf-8"
        assert first.headers["cache-control"] == "no-cache"
        again = await h.http.get(
            "/dashboard/static/app.js", headers={"If-None-Match": first.headers["etag"]}
        )
        assert again.status_code == 304 and again.content == b""
        missing = await h.http.get("/dashboard/static/../../config.py")
        assert missing.status_code == 404
        assert (await h.http.get("/dashboard/static/index.html")).status_code == 404
        nothing = await h.http.get("/dashboard/static/nope.js")
        assert nothing.status_code == 404 and nothing.json()["error"] == "RecordNotFound"


def test_every_file_of_the_dashboard_ships_with_a_known_media_type() -> None:
    shipped = {p.name for p in STATIC.iterdir() if p.is_file()}
    assert set(load_assets()) == shipped
