"""The built site in a real browser (``make docs-check``): headless Chromium opens every page of the site
and checks that its math rendered and fits its box, that every image loaded, that no script failed, and
that no request went to any host but the local server; it saves screenshots of a few pages to
docs/_build/screenshots/.

Run after ``make docs``; it fails (it does not skip) when the site or Chromium is missing.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Browser, sync_playwright

SITE = Path(__file__).resolve().parent / "_build" / "html"
SHOTS = SITE.parent / "screenshots"
# the flags this machine's closed network needs: no background connections to Google's hosts
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# pages that must hold math (each rendered), and pages whose executed example must have drawn a figure;
# every other page of the site is opened too (ALL below) and held to the same rules where they apply
MATH_PAGES = {"math.html", "paper.html", "api/pooling.html", "api/nn.html"}
FIGURE_PAGES = {
    "auto_tutorial/plot_getting_started.html",
    "auto_gallery/plot_attention_maps.html",
    "auto_gallery/plot_compress.html",
}
SCREENSHOTS = {"index.html", "math.html", "api/pooling.html", "auto_gallery/plot_attention_maps.html"}
SKIP_DIRS = {"_static", "_sources", "_images", "_downloads", "_modules"}


def _all_pages() -> list[str]:
    """Every HTML page of the built site (none when it is not built: the server fixture then says so)."""
    if not SITE.exists():
        return ["index.html"]
    pages = [p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html")]
    return sorted(p for p in pages if p.split("/")[0] not in SKIP_DIRS)


ALL = _all_pages()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    assert (SITE / "index.html").exists(), f"no built site at {SITE}: run make docs first"

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is not installed: make docs-check installs Debian's chromium package as root"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_the_site_is_complete() -> None:
    """The pages the rules single out exist (a page renamed away would silently leave its checks)."""
    missing = sorted((MATH_PAGES | FIGURE_PAGES | SCREENSHOTS) - set(ALL))
    assert not missing, f"pages missing from the built site: {missing}"
    assert not [p for p in ALL if "sg_execution_times" in p], "sphinx-gallery's timing pages load outside scripts"


@pytest.mark.parametrize("path", ALL)
def test_page_renders_offline(path: str, server: str, browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside: list[str] = []
    errors: list[str] = []
    local = urlparse(server).netloc

    def route(r):  # every request: local ones go through, any other host is recorded and refused
        url = r.request.url
        if urlparse(url).netloc == local or url.startswith(("data:", "blob:", "about:")):
            r.continue_()
        else:
            outside.append(url)
            r.abort()

    page.route("**/*", route)
    page.on("pageerror", lambda err: errors.append(str(err)))
    response = page.goto(f"{server}/{path}", wait_until="load")
    assert response is not None and response.ok, f"{path}: HTTP {response and response.status}"
    n_math = page.locator(".math").count()
    assert n_math > 0 or path not in MATH_PAGES, f"{path}: no math on the page"
    if n_math:
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=20000)
        page.evaluate("() => MathJax.startup.promise")
        page.wait_for_load_state("networkidle")
        n_rendered = page.locator(".math mjx-container").count()
        assert n_rendered == n_math, f"{path}: {n_rendered} of {n_math} formulas rendered by MathJax"
        raw = page.evaluate(
            "() => [...document.querySelectorAll('.math')].filter(e => !e.querySelector('mjx-container'))"
            ".map(e => e.textContent.slice(0, 60))"
        )
        assert raw == [], f"{path}: formulas left as TeX source: {raw}"
        # the glyphs come from MathJax's own web fonts, served by the site itself
        assert page.evaluate("() => document.fonts.status") == "loaded"
        # no formula is cut off: each fits its box or the box scrolls (a long display equation)
        clipped = page.evaluate(
            "() => [...document.querySelectorAll('.math mjx-container')].filter(e => {"
            " const box = e.closest('div.math') || e.parentElement;"
            " const style = getComputedStyle(box);"
            " return e.scrollWidth > box.clientWidth + 1 && !['auto', 'scroll'].includes(style.overflowX)"
            "   && !['auto', 'scroll'].includes(getComputedStyle(e).overflowX);"
            "}).map(e => e.textContent.slice(0, 40))"
        )
        assert clipped == [], f"{path}: formulas cut off by their box: {clipped}"
    images = page.evaluate(
        "() => [...document.images].map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0}))"
    )
    broken = [i["src"] for i in images if not i["ok"]]
    assert not broken, f"{path}: images that did not load: {broken}"
    if path in FIGURE_PAGES:
        figures = [i for i in images if "sphx_glr" in i["src"]]
        assert figures, f"{path}: the executed example produced no figure"
    if path in SCREENSHOTS:
        page.screenshot(path=str(SHOTS / (path.replace("/", "_").removesuffix(".html") + ".png")), full_page=False)
    assert not errors, f"{path}: script errors: {errors}"
    assert not outside, f"{path}: requests to outside hosts: {outside}"
    page.close()
