"""The browser-test helpers (tests/browser.py) in a real headless Chromium, on small pages served from 127.0.0.1:
the accessibility smoke check passes a good page and names each mistake of a bad one, console errors are caught,
screenshots are PNG files, and the browser is quit even when a test fails. Also what the dashboard's tests rely on:
Chromium keeps a Secure cookie set over plain http://127.0.0.1."""

from __future__ import annotations

import base64
import os
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests import browser as browser_module
from tests.browser import PNG_SIGNATURE, WINDOW, Browser, artifacts_dir, open_browser, require_chromium
from tests.helpers import ROOT

# A 1×1 GIF: the pages' favicon and images.
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")

GOOD = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Queues · Triage</title></head>
<body>
  <header><a href="/"><img src="/logo.gif" alt="Triage"></a> <a href="/queues">Queues</a></header>
  <main>
    <h1>Queues</h1>
    <h2>Filters</h2>
    <form>
      <label for="name">Name</label> <input id="name" name="name">
      <label>Tier <select name="tier"><option>critical</option><option>bulk</option></select></label>
      <input type="search" name="q" aria-label="Search queues">
      <span id="note-label">Note</span> <textarea name="note" aria-labelledby="note-label"></textarea>
      <input type="checkbox" name="paused" title="Paused only">
      <input type="hidden" name="csrf" value="x">
      <input type="submit" value="Filter">
      <button type="button" aria-label="Refresh">⟳</button>
      <button type="button" title="Close"><img src="/logo.gif" alt=""></button>
    </form>
    <h2>Critical</h2>
    <h3>Dead letters</h3>
    <img src="/logo.gif" alt="">
    <a href="/queues/critical"><img src="/logo.gif" alt="Critical queue"></a>
  </main>
  <script>console.log("loaded"); console.warn("a warning is not an error");</script>
</body>
</html>"""

# The mistakes the dashboard is most likely to make, one of each.
BAD = """<!doctype html>
<html>
<head><title>Bad</title></head>
<body>
  <h1>Bad</h1>
  <h3 id="dup">Skipped a level</h3>
  <input id="email" name="email" placeholder="you@example.com">
  <img src="/logo.gif">
  <p id="dup">Second one</p>
</body>
</html>"""

# Every other check, failing once each.
WORSE = """<!doctype html>
<html lang="en">
<head><title> </title></head>
<body>
  <h1>One</h1><h1>Two</h1>
  <label for="tier"></label><select id="tier" name="tier"><option>critical</option></select>
  <label><textarea name="note">typed text is not a name</textarea></label>
  <input name="x" aria-labelledby="nowhere">
  <button type="button"></button>
  <a href="/somewhere"><img src="/logo.gif" alt=""></a>
  <input type="button" name="go">
</body>
</html>"""


def _page(body: str, title: str = "t") -> str:
    return f'<!doctype html><html lang="en"><head><title>{title}</title></head><body>{body}</body></html>'


NO_H1 = _page("<h2>Only an h2</h2>")
TALL = _page('<h1>Tall</h1><div style="height: 3000px"></div>', title="Tall")
CONSOLE_ERROR = _page('<h1>t</h1><script>console.error("boom")</script>')
EXCEPTION = _page("<h1>t</h1><script>null.boom()</script>")
MISSING_IMAGE = _page('<h1>t</h1><img src="/missing.gif" alt="x">')

PAGES = {
    "/good": GOOD,
    "/bad": BAD,
    "/worse": WORSE,
    "/no-h1": NO_H1,
    "/tall": TALL,
    "/console-error": CONSOLE_ERROR,
    "/exception": EXCEPTION,
    "/missing-image": MISSING_IMAGE,
}


class _Pages(BaseHTTPRequestHandler):
    """PAGES, a favicon and an image; /login sets a Secure cookie and /whoami shows the cookies it was sent."""

    def do_GET(self) -> None:
        headers = {"Content-Type": "text/html; charset=utf-8"}
        if self.path in PAGES:
            status, body = 200, PAGES[self.path].encode()
        elif self.path in ("/favicon.ico", "/logo.gif"):
            status, body, headers = 200, GIF, {"Content-Type": "image/gif"}
        elif self.path == "/login":
            status, body = 200, _page("<h1>Signed in</h1>").encode()
            headers["Set-Cookie"] = "a=b; Secure; HttpOnly; SameSite=Strict; Path=/"
        elif self.path == "/whoami":
            cookie = (self.headers.get("Cookie") or "none").replace("<", "")
            status, body = 200, _page(f"<h1>{cookie}</h1>").encode()
        else:
            status, body = 404, b"not found"
            headers["Content-Type"] = "text/plain"
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The pages, served on a free port of 127.0.0.1 by a thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture(scope="module")
def shared_browser() -> Iterator[Browser]:
    require_chromium()
    with open_browser(artifacts_dir("browser-checks")) as browser:
        yield browser


@pytest.fixture
def browser(shared_browser: Browser) -> Browser:
    """One Chromium for the module (it starts in about a second); each test starts with an empty console log."""
    shared_browser.visit("about:blank")
    shared_browser.console_errors()
    return shared_browser


def test_a_good_page_has_no_problems(browser: Browser, site: str) -> None:
    # Given a page with a language, a title, one h1, headings in order, every control and link named,
    # alt text on its images, unique ids, and a favicon
    # When the browser loads it
    browser.visit(site + "/good")
    # Then the accessibility check finds nothing, and nothing was logged as an error
    # (console.log and console.warn are not errors)
    assert browser.a11y_problems() == []
    assert browser.console_errors() == []


def test_each_common_mistake_is_reported_by_name(browser: Browser, site: str) -> None:
    # Given a page with no lang, a skipped heading level, an unlabeled input (a placeholder is no label),
    # an image without alt and an id used twice
    browser.visit(site + "/bad")
    # When the accessibility check runs
    problems = browser.a11y_problems()
    # Then it reports each one, naming the element
    assert problems == [
        "<html> has no lang attribute",
        'heading level skipped: h3#dup "Skipped a level" follows h1 "Bad"',
        'form control without a label: input#email[name="email"][type="text"] "you@example.com"',
        'image without alt: img "/logo.gif"',
        'duplicate id "dup" on 2 elements: h3#dup "Skipped a level", p#dup "Second one"',
    ]


def test_every_other_check_can_fail(browser: Browser, site: str) -> None:
    # Given a page with an empty title, two h1s, a label with no text, a textarea whose only "name" is its content,
    # an aria-labelledby that points nowhere, a button and an input button with no name, and a link whose only
    # content is a decorative image
    browser.visit(site + "/worse")
    # When the accessibility check runs
    problems = browser.a11y_problems()
    # Then each one is reported
    assert problems == [
        "the page has no <title> text",
        'the page has 2 <h1> elements: h1 "One", h1 "Two"',
        'form control without a label: select#tier[name="tier"] "critical"',
        'form control without a label: textarea[name="note"] "typed text is not a name"',
        'form control without a label: input[name="x"][type="text"]',
        "button without an accessible name: button",
        'link without an accessible name: a "/somewhere"',
        'button without an accessible name: input[name="go"][type="button"]',
    ]
    # And a page without an h1 is reported too
    browser.visit(site + "/no-h1")
    assert browser.a11y_problems() == ["the page has no <h1>"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/console-error", '"boom"'),
        ("/exception", "Uncaught TypeError: Cannot read properties of null"),
        ("/missing-image", "/missing.gif - Failed to load resource: the server responded with a status of 404"),
    ],
)
def test_console_errors_are_caught(browser: Browser, site: str, path: str, expected: str) -> None:
    # Given a page that calls console.error, throws, or loads an image that is not there
    # When the browser loads it
    browser.visit(site + path)
    # Then the error is reported, with the page's or the resource's URL
    (error,) = browser.console_errors()
    assert expected in error
    assert error.startswith(site)
    # And it is reported once: the next call returns what came since
    assert browser.console_errors() == []


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk, always first
    return int(width), int(height)


def test_a_screenshot_is_a_png_of_the_window(browser: Browser, site: str) -> None:
    # Given a page taller than the window
    browser.visit(site + "/tall")
    # When a screenshot is taken of the window, and one of the whole page
    window = browser.screenshot("tall-window")
    page = browser.screenshot("tall-page.png", full_page=True)
    # Then both are non-empty PNG files in the artifacts directory: the window's width, the window
    # (less the toolbar room headless Chromium keeps) and the page's full height
    assert window == browser.artifacts / "tall-window.png"
    assert page == browser.artifacts / "tall-page.png"
    width, height = _png_size(window)
    assert width == WINDOW[0]
    assert WINDOW[1] / 2 < height <= WINDOW[1]
    assert _png_size(page)[1] > 3000


def test_the_browser_is_quit_and_the_failure_kept_when_a_test_fails(site: str, tmp_path: Path) -> None:
    # Given a browser on a page, in a block that fails
    opened: list[Browser] = []

    def failing_test() -> None:
        with open_browser(tmp_path) as browser:
            opened.append(browser)
            browser.visit(site + "/console-error")
            raise AssertionError("the test's own failure")

    # When the block ends, then the failure is the test's own
    with pytest.raises(AssertionError, match="the test's own failure"):
        failing_test()
    # And ChromeDriver has exited (it quits Chromium first), and the page's screenshot and console log were kept
    driver = opened[0].driver.service.process
    assert driver is not None
    assert driver.poll() is not None
    assert (tmp_path / "failure.png").read_bytes().startswith(PNG_SIGNATURE)
    assert '"boom"' in (tmp_path / "failure-console.txt").read_text()


def test_require_chromium_skips_outside_ci_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Given a machine without Chromium
    monkeypatch.setattr(browser_module, "CHROMIUM", tmp_path / "chromium")
    assert not browser_module.chromium_available()
    # When a test requires it outside CI, then it is skipped, saying how to install it
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="make tools"):
        require_chromium()
    # When it does in CI, then it fails
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"CI is set but .*chromium is missing"):
        require_chromium()


def test_artifacts_go_where_triage_test_artifacts_says(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Given TRIAGE_TEST_ARTIFACTS, then a test's directory is made under it, its name made safe
    monkeypatch.setenv("TRIAGE_TEST_ARTIFACTS", str(tmp_path / "artifacts"))
    directory = artifacts_dir("test_dashboard[queue/critical]")
    assert directory == tmp_path / "artifacts" / "test_dashboard_queue_critical"
    assert directory.is_dir()
    # Without it, under the repository's git-ignored .triage directory
    monkeypatch.delenv("TRIAGE_TEST_ARTIFACTS")
    assert artifacts_dir("browser-checks") == ROOT / ".triage" / "test-artifacts" / "browser-checks"
    assert os.path.isdir(ROOT / ".triage" / "test-artifacts" / "browser-checks")


def test_chromium_keeps_a_secure_cookie_set_over_plain_http_127_0_0_1(browser: Browser, site: str) -> None:
    # Given a response over http://127.0.0.1 that sets a Secure, HttpOnly, SameSite=Strict cookie
    browser.visit(site + "/login")
    # When the browser makes its next request to the same origin
    browser.visit(site + "/whoami")
    # Then it sends the cookie back: Chromium treats 127.0.0.1 as a secure context, so the dashboard's
    # Secure session cookie can be tested over plain HTTP
    assert browser.driver.find_element("tag name", "h1").text == "a=b"
    (cookie,) = browser.driver.get_cookies()
    assert (cookie["name"], cookie["secure"], cookie["httpOnly"], cookie["sameSite"]) == ("a", True, True, "Strict")
    browser.driver.delete_all_cookies()
