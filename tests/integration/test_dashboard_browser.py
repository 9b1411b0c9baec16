"""The dashboard in real headless Chromium, against a real `triage serve`, a real `dramatiq`
worker and actors that write to Redis: log in, read the overview's real numbers (and watch
them refresh), group dead letters and requeue all matching a filter at a rate and watch them
run, pause a queue and see delivery stop, open and reset a breaker, and look at tenants,
workers and the schedule. On every screen: a screenshot saved as a test artifact
(`.triage/test-artifacts/dashboard/`, or `$TRIAGE_TEST_ARTIFACTS`), no console error, and the
accessibility smoke check clean."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
import redis
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from actors import runtime
from tests.browser import Browser, artifacts_dir, open_browser
from tests.dashboard_actors import GATEWAY_DOWN, LEDGER, QUEUE, t_dash_report, t_dash_sms
from tests.helpers import dramatiq_worker, wait_for
from tests.web_helpers import Server, serving

TOKEN = "dashboard-browser-token-0123"
PHONE = "+33-6-55-01-23-45"
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with open_browser(artifacts_dir("dashboard")) as opened:
        yield opened


def css(browser: Browser, selector: str) -> WebElement:
    return browser.driver.find_element(By.CSS_SELECTOR, selector)


T = TypeVar("T")


def again(read: Callable[[], T]) -> T:
    """`read()`, done again while the page it reads is being replaced (a navigation, a refresh)."""
    for _ in range(50):
        try:
            return read()
        except (StaleElementReferenceException, NoSuchElementException):
            time.sleep(0.1)
    return read()


def text_of(browser: Browser, selector: str) -> str:
    return again(lambda: css(browser, selector).text)


def heading(browser: Browser, expected: str) -> None:
    """Wait for the page whose h1 is `expected` (the one a click navigated to)."""
    eventually(lambda: text_of(browser, "h1") == expected, 10)


def eventually(condition: Callable[[], object], timeout: float = 20) -> None:
    def safe() -> object:
        try:
            return condition()
        except (StaleElementReferenceException, NoSuchElementException):
            return False

    wait_for(safe, timeout, interval=0.2)


def screen(browser: Browser, name: str) -> None:
    """The screen as it is now: saved, with no console error and no accessibility problem."""
    browser.screenshot(name, full_page=True)
    assert browser.console_errors() == [], name
    assert browser.a11y_problems() == [], name


def click(browser: Browser, selector: str, link: str | None = None) -> None:
    """Click the element at `selector` (or the link of that text inside it)."""

    def clicked() -> None:
        found = css(browser, selector)
        (found.find_element(By.LINK_TEXT, link) if link else found).click()

    again(clicked)


def entry_id(browser: Browser) -> str:
    """The id of the dead letter whose page is open."""
    return browser.driver.current_url.split("/dead-letters/entry/")[1].split("?")[0]


def ledger(r: redis.Redis, prefix: str) -> int:
    items: list[bytes] = r.lrange(LEDGER, 0, -1)  # type: ignore[assignment]
    return sum(1 for item in items if item.decode().startswith(prefix))


@pytest.fixture
def stack(r: redis.Redis) -> Iterator[Server]:
    """A web process with a token (and a breaker declared), and a worker of the dashboard actors."""
    env = {"TRIAGE_ADMIN_TOKEN": TOKEN, "TRIAGE_BREAKERS": '{"sms": {"failure_threshold": 3}}'}
    with serving(**env) as server, dramatiq_worker("actors", "tests.dashboard_actors", queues=[QUEUE], threads=4):
        yield server


def log_in(browser: Browser, server: Server, path: str) -> None:
    browser.driver.delete_all_cookies()
    browser.visit(server.url + path)
    # Without a session, the page is the login form; it comes back to the page asked for
    assert browser.driver.current_url.startswith(server.url + "/login?next=")
    screen(browser, "login")
    css(browser, "#token").send_keys(TOKEN)
    click(browser, "form.login button[type=submit]")
    eventually(lambda: browser.driver.current_url == server.url + path)


def test_an_operator_sees_the_slas_and_puts_failed_messages_back(
    r: redis.Redis, stack: Server, browser: Browser
) -> None:
    # Given a worker that ran 20 reports, and 8 SMS that failed while the gateway was down
    r.set(GATEWAY_DOWN, 1)
    for n in range(20):
        t_dash_report.send(n)
    for n in range(8):
        t_dash_sms.send(n, PHONE)
    wait_for(lambda: runtime.queue_stats()[QUEUE]["dead_letters_total"] == 8 and ledger(r, "report") == 20)
    wait_for(lambda: runtime.queue_stats()[QUEUE]["succeeded_last_hour"] == 20)  # the worker's per-second flush

    # When the operator logs in and reads the overview
    log_in(browser, stack, "/")
    card = f'[data-queue="{QUEUE}"]'
    # Then the card shows the real figures, the same as `triage stats`
    stats = runtime.queue_stats()[QUEUE]
    assert text_of(browser, f"{card} [data-field=done-hour]") == str(stats["succeeded_last_hour"]) == "20"
    assert text_of(browser, f"{card} [data-field=failed-hour]") == "8"
    assert text_of(browser, f"{card} [data-field=dead]") == "8"
    assert text_of(browser, f"{card} [data-field=workers]") == "1"
    assert text_of(browser, f"{card} [data-field=p95]").endswith("ms")
    assert text_of(browser, '[data-queue="critical"] [data-field=status]') == "meeting its SLA"
    screen(browser, "overview")
    # And the cards refresh by themselves: 5 more reports appear without a reload
    for n in range(20, 25):
        t_dash_report.send(n)
    eventually(lambda: text_of(browser, f"{card} [data-field=done-hour]") == "25", 15)
    assert browser.console_errors() == []

    # When the operator opens the dead letters: one group, 8 SMS refused by the gateway
    click(browser, 'nav a[href="/dead-letters"]')
    heading(browser, "Dead letters")
    group = f'tr[data-group^="{QUEUE}|{t_dash_sms.actor_name}|ConnectionError|"]'
    assert text_of(browser, f"{group} [data-field=count]") == "8"
    screen(browser, "dead-letters")
    click(browser, group, "Show 8")
    eventually(lambda: "actor=" + t_dash_sms.actor_name in browser.driver.current_url)
    eventually(lambda: len(browser.driver.find_elements(By.CSS_SELECTOR, "tr[data-entry]")) == 8)
    # And looks at one: its arguments are hidden until asked for
    click(browser, "tr[data-entry] td a")
    eventually(lambda: "/dead-letters/entry/" in browser.driver.current_url)
    assert PHONE not in browser.driver.page_source
    click(browser, "[data-field=arguments] a")
    eventually(lambda: PHONE in text_of(browser, "[data-field=arguments]"))
    screen(browser, "dead-letter")
    # (a purge is confirmed the same way, and an entry that does not exist is a page that says so)
    browser.visit(stack.url + "/dead-letters/confirm?action=purge&ids=" + entry_id(browser))
    heading(browser, "Purge 1 dead letters")
    screen(browser, "confirm-purge")
    browser.visit(stack.url + "/dead-letters/entry/0-0")
    heading(browser, "No such dead letter")
    # the only console line allowed: Chromium's note of the page's own 404 status
    assert all("/dead-letters/entry/0-0" in line and "404" in line for line in browser.console_errors())
    assert browser.a11y_problems() == []
    browser.visit(stack.url + f"/dead-letters?actor={t_dash_sms.actor_name}")

    # (one box ticks every entry of the page, and unticks them)
    click(browser, "#pick-all")
    boxes = browser.driver.find_elements(By.CSS_SELECTOR, 'input[name="ids"]')
    assert len(boxes) == 8
    assert all(box.is_selected() for box in boxes)
    click(browser, "#pick-all")
    assert not any(box.is_selected() for box in boxes)

    # When the gateway is back and the operator requeues all matching, at 20 per second
    r.delete(GATEWAY_DOWN)
    click(browser, "#scope-matching")
    css(browser, "#b-rate").send_keys("20/s")
    click(browser, "fieldset.actions button[type=submit]")
    # Then the confirmation counts them before anything is done
    heading(browser, "Requeue 8 dead letters")
    assert runtime.queue_stats()[QUEUE]["dead_letters_total"] == 8
    screen(browser, "confirm-requeue")
    click(browser, "form.confirm button[type=submit]")
    # And the job's page shows the progress until all 8 are back, and they run
    eventually(lambda: text_of(browser, "[data-field=done]") == "8", 30)
    eventually(lambda: css(browser, "h1").text.endswith(": done"), 10)
    screen(browser, "job")
    wait_for(lambda: ledger(r, "sms") == 8, 20)
    assert runtime.queue_stats()[QUEUE]["dead_letters_total"] == 0


def test_an_operator_pauses_a_queue_and_reads_every_screen(r: redis.Redis, stack: Server, browser: Browser) -> None:
    log_in(browser, stack, "/queues")
    row = f'tr[data-queue="{QUEUE}"]'
    # When the operator pauses the queue from the queues screen (after confirming)
    click(browser, row, f"Pause {QUEUE}")
    heading(browser, f"Pause queue {QUEUE}")
    screen(browser, "confirm-pause")
    click(browser, "form.confirm button[type=submit]")
    assert text_of(browser, f"{row} [data-field=state]") == "paused"
    # Then messages sent meanwhile wait: none runs in 3 seconds
    for n in range(5):
        t_dash_report.send_with_options(args=(n,), tenant="acme" if n < 4 else "globex")
    time.sleep(3)
    assert ledger(r, "report") == 0
    assert runtime.queue_stats()[QUEUE]["queued"] == 5
    browser.visit(stack.url + "/queues")
    screen(browser, "queues")

    # And the tenants screen shows who is waiting
    click(browser, 'nav a[href="/tenants"]')
    heading(browser, "Tenants")
    assert again(lambda: css(browser, 'tr[data-tenant="acme"]').find_elements(By.TAG_NAME, "td")[0].text) == "4"
    screen(browser, "tenants")

    # When the operator resumes it, the 5 run
    browser.visit(stack.url + "/queues")
    click(browser, row, f"Resume {QUEUE}")
    click(browser, "form.confirm button[type=submit]")
    assert text_of(browser, f"{row} [data-field=state]") == "delivering"
    wait_for(lambda: ledger(r, "report") == 5, 20)

    # The breakers: open one for 10 minutes, then reset it
    click(browser, 'nav a[href="/breakers"]')
    heading(browser, "Circuit breakers")
    assert text_of(browser, 'tr[data-breaker="sms"] [data-field=state]') == "closed"
    click(browser, 'tr[data-breaker="sms"] form.inline button')  # "10 minutes" is the first choice
    heading(browser, "Open breaker sms")
    click(browser, "form.confirm button[type=submit]")
    assert text_of(browser, 'tr[data-breaker="sms"] [data-field=state]') == "open (forced)"
    screen(browser, "breakers")
    click(browser, 'tr[data-breaker="sms"]', "Reset sms")
    click(browser, "form.confirm button[type=submit]")
    assert text_of(browser, 'tr[data-breaker="sms"] [data-field=state]') == "closed"

    # The workers: the live worker process, its queue
    click(browser, 'nav a[href="/workers"]')
    heading(browser, "Workers")
    rows = browser.driver.find_elements(By.CSS_SELECTOR, "tr[data-worker]")
    assert len(rows) == 1
    assert QUEUE in rows[0].text
    screen(browser, "workers")

    # The schedule: the service's periodic actor, with its next run
    click(browser, 'nav a[href="/schedule"]')
    heading(browser, "Schedule")
    assert "5 0 * * *" in text_of(browser, 'tr[data-actor="schedule_daily_rollups"]')
    screen(browser, "schedule")

    # And logging out ends the session: the pages go back to the login form
    click(browser, "header form button[type=submit]")
    eventually(lambda: browser.driver.current_url == stack.url + "/login")
    browser.visit(stack.url + "/workers")
    assert browser.driver.current_url.startswith(stack.url + "/login?next=")
