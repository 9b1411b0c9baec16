"""Real headless Chromium for the browser tests: Debian's /usr/bin/chromium, driven through /usr/bin/chromedriver.

What these helpers guarantee:
- Nothing is downloaded: Selenium is given the driver's and the browser's paths, so Selenium Manager never runs,
  and Chromium starts with its background networking (updates, sync, field trials) turned off.
- `require_chromium()` skips the calling test where Chromium or ChromeDriver is not installed, except under CI
  (`CI` set, the convention of the Prometheus tests), where a missing browser fails the test: `make tools` installs
  both with apt there.
- `open_browser()` quits the browser and its driver when its block ends, whatever ends it; when the block fails (an
  exception, an assert, pytest.fail) it first saves `failure.png` and `failure-console.txt` in the artifacts
  directory, if the browser still answers, and the failure is raised as it was.
- `Browser.console_errors()` returns every SEVERE entry of the browser's log since the previous call (console.error,
  uncaught exceptions, failed loads such as a 404): nothing is filtered out, a missing favicon included (the
  dashboard serves one, so a page that lacks it has a real error; Chromium asks for it after the load event and
  reports its 404 once per browser). What a page logs after its load event may come in a later call.
- `Browser.a11y_problems()` is a smoke check, not an audit: it reports the mistakes listed in `_A11Y_CHECK`, each
  naming the element (tag, id or name, a snippet of its text), and an empty list means none of those was found.
  It reads the DOM as it is, hidden elements included.
- `artifacts_dir(name)` is a directory that exists: `$TRIAGE_TEST_ARTIFACTS/<name>` if that variable is set, else
  `.triage/test-artifacts/<name>` in the repository (git-ignored). Files there are overwritten by name, never
  deleted.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.helpers import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1400, 1000)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_ARGUMENTS = (
    "--headless=new",
    "--no-sandbox",  # the tests run as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
    "--disable-dev-shm-usage",  # /dev/shm is small in containers
    # No connections but the page's own: this machine's network is closed, and a test must not depend on one.
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
)


def chromium_available() -> bool:
    """Whether both Debian's Chromium and its ChromeDriver are installed (`make tools` installs them as root)."""
    return all(os.access(path, os.X_OK) for path in (CHROMIUM, CHROMEDRIVER))


def require_chromium() -> None:
    """Skips the calling test (or fixture) where Chromium is missing; under CI, fails it instead."""
    if chromium_available():
        return
    missing = " and ".join(str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK))
    if os.environ.get("CI"):
        pytest.fail(
            f"CI is set but {missing} is missing: `make tools` installs Debian's chromium and chromium-driver "
            "with apt-get (as root); the browser tests must run in CI",
            pytrace=False,
        )
    pytest.skip(f"{missing} is not installed (make tools installs Debian's chromium and chromium-driver with apt)")


def artifacts_dir(name: str) -> Path:
    """A directory for a test's screenshots and logs, created if needed; `name` is made safe for a file name."""
    base = Path(os.environ["TRIAGE_TEST_ARTIFACTS"]) if os.environ.get("TRIAGE_TEST_ARTIFACTS") else None
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "artifacts"
    directory = (base or ROOT / ".triage" / "test-artifacts") / safe
    directory.mkdir(parents=True, exist_ok=True)
    return directory


# The accessibility smoke check, run in the page; it returns one sentence per problem.
_A11Y_CHECK = r"""
const problems = [];
const text = (node) => (node ? node.textContent : "").replace(/\s+/g, " ").trim();
const describe = (el) => {
  let name = el.tagName.toLowerCase();
  if (el.id) name += "#" + el.id;
  if (el.getAttribute("name")) name += `[name="${el.getAttribute("name")}"]`;
  if (el.tagName === "INPUT") name += `[type="${el.type}"]`;
  const snippet = text(el) || el.getAttribute("placeholder") || el.getAttribute("value") || el.getAttribute("src")
    || el.getAttribute("href") || "";
  if (snippet) name += ` "${snippet.length > 40 ? snippet.slice(0, 39) + "…" : snippet}"`;
  return name;
};
const attribute = (el, name) => (el.getAttribute(name) || "").trim();
const labelledBy = (el) => attribute(el, "aria-labelledby").split(/\s+/).filter(Boolean)
  .map((id) => text(document.getElementById(id))).join(" ").trim();
const imageAlts = (el) => Array.from(el.querySelectorAll("img[alt]")).map((img) => img.alt.trim()).join(" ").trim();
const ownName = (el) => attribute(el, "aria-label") || labelledBy(el) || attribute(el, "title");

// The document: a language, a title, one h1, heading levels that go down one at a time.
if (!attribute(document.documentElement, "lang")) problems.push("<html> has no lang attribute");
if (!document.title.trim()) problems.push("the page has no <title> text");
const h1s = Array.from(document.querySelectorAll("h1"));
if (h1s.length === 0) problems.push("the page has no <h1>");
if (h1s.length > 1) problems.push(`the page has ${h1s.length} <h1> elements: ${h1s.map(describe).join(", ")}`);
let previous = null;
for (const heading of document.querySelectorAll("h1, h2, h3, h4, h5, h6")) {
  const level = Number(heading.tagName[1]);
  if (previous && level > Number(previous.tagName[1]) + 1) {
    problems.push(`heading level skipped: ${describe(heading)} follows ${describe(previous)}`);
  }
  previous = heading;
}

// Form controls: a label (for= or wrapping, with text), aria-label, aria-labelledby or title.
const controls = "input:not([type=hidden]):not([type=submit]):not([type=reset]):not([type=button])"
  + ":not([type=image]), select, textarea";
for (const control of document.querySelectorAll(controls)) {
  const labels = Array.from(control.labels || []).map((label) => {
    const copy = label.cloneNode(true);
    copy.querySelectorAll("input, select, textarea, button").forEach((inner) => inner.remove());
    return (text(copy) + " " + imageAlts(copy)).trim();
  });
  if (!labels.some(Boolean) && !ownName(control)) problems.push(`form control without a label: ${describe(control)}`);
}

// Buttons and links: text, aria-label, aria-labelledby, title, or the alt of an image inside.
const actions = "button, a[href], [role=button], [role=link], input[type=button], input[type=image]";
for (const action of document.querySelectorAll(actions)) {
  let name = text(action) || ownName(action) || imageAlts(action);
  if (action.tagName === "INPUT") name = name || attribute(action, action.type === "image" ? "alt" : "value");
  if (!name) {
    const kind = action.matches("a[href], [role=link]") ? "link" : "button";
    problems.push(`${kind} without an accessible name: ${describe(action)}`);
  }
}

// Images: an alt attribute (alt="" marks a decorative one).
for (const img of document.querySelectorAll("img:not([alt])")) problems.push(`image without alt: ${describe(img)}`);

// Ids: each one once.
const byId = new Map();
for (const el of document.querySelectorAll("[id]")) byId.set(el.id, [...(byId.get(el.id) || []), el]);
for (const [id, elements] of byId) {
  if (elements.length > 1) {
    problems.push(`duplicate id "${id}" on ${elements.length} elements: ${elements.map(describe).join(", ")}`);
  }
}
return problems;
"""


class Browser:
    """A headless Chromium: `driver` is its Selenium WebDriver, for anything the helpers below do not cover."""

    def __init__(self, driver: webdriver.Chrome, artifacts: Path) -> None:
        self.driver, self.artifacts = driver, artifacts

    def visit(self, url: str) -> None:
        """Loads the page and returns once its load event has fired."""
        self.driver.get(url)

    def console_errors(self) -> list[str]:
        """The SEVERE entries of the browser's log since the previous call (reading the log empties it): each is
        Chromium's message, which starts with the page's or the resource's URL."""
        entries: list[dict[str, Any]] = self.driver.get_log("browser")
        return [str(entry["message"]) for entry in entries if entry.get("level") == "SEVERE"]

    def screenshot(self, name: str, *, full_page: bool = False) -> Path:
        """Saves the window as `<artifacts>/<name>.png` and returns that path. The window's page area is WINDOW's
        width and a little less than its height (headless Chromium keeps room for a toolbar it does not draw);
        `full_page` captures the whole page instead, however long."""
        path = self.artifacts / (name if name.endswith(".png") else f"{name}.png")
        if full_page:
            size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            shot = self.driver.execute_cdp_cmd(
                "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
            )
            png = base64.b64decode(shot["data"])
        else:
            png = self.driver.get_screenshot_as_png()
        assert png.startswith(PNG_SIGNATURE), "Chromium's screenshot is not a PNG"
        path.write_bytes(png)
        return path

    def a11y_problems(self) -> list[str]:
        """The accessibility smoke check's findings on the current page; empty when it found nothing."""
        problems: list[str] = self.driver.execute_script(_A11Y_CHECK)
        return [str(problem) for problem in problems]


@contextmanager
def open_browser(artifacts: Path) -> Iterator[Browser]:
    """A fresh headless Chromium with an empty profile, its console captured; quit when the block ends."""
    require_chromium()
    with tempfile.TemporaryDirectory(prefix="triage-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in (*_ARGUMENTS, f"--user-data-dir={profile}"):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
        browser = Browser(driver, artifacts)
        try:
            yield browser
        except (Exception, pytest.fail.Exception):  # a failure, not a skip or a Ctrl-C
            _save_failure(browser)
            raise
        finally:
            driver.quit()


def _save_failure(browser: Browser) -> None:
    """What the page looked like and logged when the test failed; never hides the failure itself."""
    # The browser may be what failed: then nothing is saved, and the test's own error is still the one raised.
    with contextlib.suppress(Exception):
        browser.screenshot("failure")
        lines = [f"{entry['level']} {entry['message']}" for entry in browser.driver.get_log("browser")]
        (browser.artifacts / "failure-console.txt").write_text("".join(line + "\n" for line in lines))
