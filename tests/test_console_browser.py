"""The web console in a real headless Chromium, driven by Playwright, against a real daemon
and real receivers.

One browser per test session (per xdist worker), a fresh context (cookies, storage) per
test. The browser is the system's Chromium (`chromium` on PATH, or
`$EVENTSTREAMD_CHROMIUM`); Playwright never downloads one. Without it these tests skip,
saying why, unless `EVENTSTREAMD_REQUIRE_BROWSER=1` (set by `.ci/run`), where a missing
browser fails them.

`EVENTSTREAMD_SCREENSHOTS=<dir>` makes `test_screenshots` save a picture of each page
(docs/ holds the ones the README shows); without it that test skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import pytest_asyncio
from aiohttp import web

from tests.helpers.api import BASE, ApiClient, events
from tests.helpers.backends import jetstream_settings
from tests.helpers.daemon import DaemonProcess, Factory, merge
from tests.helpers.nats_server import NatsServer
from tests.helpers.processes import free_port
from tests.helpers.receiver import Received, Receiver, Responder, Switch, ok
from tests.helpers.s3 import MotoServer
from tests.helpers.signing import library_verifies, new_secret
from tests.helpers.wait import eventually

REQUIRED = os.environ.get("EVENTSTREAMD_REQUIRE_BROWSER") == "1"
CHROMIUM = (os.environ.get("EVENTSTREAMD_CHROMIUM") or shutil.which("chromium")
            or "/usr/bin/chromium")
SCREENSHOTS = os.environ.get("EVENTSTREAMD_SCREENSHOTS", "")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WAIT_MS = 20_000  # the longest any one expectation waits (a loaded CI machine)

try:
    from playwright.async_api import Browser, Dialog, Page, async_playwright, expect
except ImportError:  # pragma: no cover - the test extras bring it
    if REQUIRED:
        raise
    pytest.skip("playwright is not installed (pip install -e '.[test]')",
                allow_module_level=True)

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST = {"webhook": {"retry_initial": "50ms", "retry_max": "200ms"},
        "s3": {"endpoint_url": "http://127.0.0.1:9"}}  # S3 stays on loopback (and fails)
HOSTILE_ANSWER = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
HOSTILE_PAYLOAD = {"note": '<img src=x onerror="window.__pwned=3">',
                   "html": "<script>window.__pwned=4</script><b>bold?</b>"}
HOSTILE_EVENT_ID = "<img/src=x/onerror=window.__pwned=5>"
NOT_FOUND = '{"error_code": "not_found", "message": "Not Found", "request_id": "r"}'

expect.set_options(timeout=WAIT_MS)


# ------------------------------------------------------------------ fixtures


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        message = (f"no Chromium at {CHROMIUM} (apt-get install chromium, or set "
                   "EVENTSTREAMD_CHROMIUM)")
        if REQUIRED:
            pytest.fail(message + "; EVENTSTREAMD_REQUIRE_BROWSER=1 requires it")
        pytest.skip(message)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM,
                                                    args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh context per test; a script error on any page fails the test."""
    context = await browser.new_context(viewport={"width": 1400, "height": 900},
                                        locale="en-US", timezone_id="UTC")
    context.set_default_timeout(WAIT_MS)
    opened = await context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    await context.close()
    assert not errors, f"script errors in the console: {errors}"


@pytest_asyncio.fixture(loop_scope="session")
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    started: list[Receiver] = []

    async def start(responder: Responder = ok) -> Receiver:
        receiver = await Receiver(responder).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.close()


# ------------------------------------------------------------------- helpers


async def open_console(page: Page, daemon: DaemonProcess, fragment: str = "#/") -> None:
    """Open the console with the daemon's token (through the fragment), then `fragment`."""
    await page.goto(f"{daemon.url}/ui/#token={daemon.token}")
    await expect(page.locator("#connection")).to_have_text("● live")
    if fragment != "#/":
        await page.evaluate("fragment => { location.hash = fragment; }", fragment)


def detail(integration_id: str) -> str:
    return f"#/integration/{integration_id}"


def field_error(page: Page, label: str) -> Any:
    """The error slot of the form control labelled `label`."""
    return page.locator(".field", has=page.get_by_label(label, exact=True)).locator(
        ".field-error")


def figure(page: Page, label: str) -> Any:
    """A live figure on an integration's page (its value, beside the sparkline if any)."""
    return page.locator(f"dl.figures dt:text-is('{label}') + dd > span").first


def parameter(page: Page, label: str) -> Any:
    """A parameter on an integration's page, by the label its form gives it."""
    return page.locator(f"dl.params dt:text-is('{label}') + dd")


async def fill_form(page: Page, values: dict[str, str]) -> None:
    """Type into the controls with these labels."""
    for label, value in values.items():
        await page.get_by_label(label, exact=True).fill(value)


async def api_status(daemon: DaemonProcess, integration_id: str) -> str:
    async with ApiClient(daemon) as api:
        return str((await api.get(integration_id))["status"])


async def rejected_row(page: Page, d: DaemonProcess, receiver: Receiver,
                       event: dict[str, Any]) -> Any:
    """`event` sent to `orders` (whose receiver answers 400) and set aside; its row on the
    integration's page."""
    async with ApiClient(d) as api:
        await api.webhook("orders", receiver.url)
        await api.publish([event])
        await eventually(lambda: api.rejected("orders"), what="the rejected event")
    await open_console(page, d, detail("orders"))
    return page.locator("table.rejected tbody tr").first


def accept_dialogs(page: Page) -> None:
    """Confirm the console's own confirmation dialogs (they are <dialog>s, not alerts)."""
    async def confirm(dialog: Dialog) -> None:  # browser-native ones: none are expected
        await dialog.dismiss()
        raise AssertionError(f"unexpected native dialog: {dialog.message}")
    page.on("dialog", confirm)


async def confirm_in_console(page: Page, button: str) -> None:
    dialog = page.locator("dialog.confirm")
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("button", name=button, exact=True).click()
    await expect(dialog).to_have_count(0)


# --------------------------------------------------------------------- tests


async def test_the_token_prompt_shows_no_data_before_a_token(page: Page,
                                                             daemon: DaemonProcess) -> None:
    async with ApiClient(daemon) as api:
        await api.webhook("private-orders", "http://127.0.0.1:9/x")
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    await page.goto(f"{daemon.url}/ui/")
    token = page.get_by_label("API token")
    await expect(token).to_be_focused()
    assert all(url.startswith(f"{daemon.url}/ui/") for url in requested), requested
    await expect(page.locator("body")).not_to_contain_text("private-orders")
    await expect(page.get_by_role("button", name="Forget token")).to_be_hidden()

    await token.fill("not-the-token")
    await page.get_by_role("button", name="Open the console").click()
    await expect(field_error(page, "API token")).to_have_text("The daemon refused this token.")
    await expect(page.locator("body")).not_to_contain_text("private-orders")

    await token.fill(daemon.token)
    await token.press("Enter")
    await expect(page.get_by_role("link", name="private-orders")).to_be_visible()
    assert await page.context.cookies() == []
    assert daemon.token not in page.url


async def test_the_list_shows_an_integration_created_through_the_api_without_a_reload(
        page: Page, daemon_factory: Factory,
        receivers: Callable[..., Awaitable[Receiver]]) -> None:
    d = daemon_factory(FAST)
    receiver = await receivers()
    await page.goto(f"{d.url}/ui/#token={d.token}")
    await expect(page).to_have_url(re.compile(r"/ui/#/$"))  # the token left the address bar
    await expect(page.get_by_text("No integrations yet")).to_be_visible()
    loaded = await page.evaluate("performance.timeOrigin")

    async with ApiClient(d) as api:
        await api.webhook("orders", receiver.url)
        await api.publish(events(3))
    row = page.locator('tr[data-id="orders"]')
    await expect(row.locator(".health")).to_have_text("● ok")
    await expect(row.locator('[data-label="Delivered"]')).to_have_text("3")
    await expect(row.locator('[data-label="Lag"]')).to_have_text("0 events")
    await expect(page.locator(".summary")).to_contain_text("3")  # the head sequence
    assert await page.evaluate("performance.timeOrigin") == loaded  # the same document

    await page.set_viewport_size({"width": 390, "height": 844})  # a phone
    await expect(row.locator(".health")).to_be_visible()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390


async def test_on_jetstream_the_list_names_every_daemon_and_the_deliverer(
        page: Page, daemon_factory: Factory, nats_server: NatsServer) -> None:
    d = daemon_factory(merge(FAST, merge(jetstream_settings(nats_server),
                                         {"jetstream": {"instance": "alpha"}})))
    async with ApiClient(d) as api:
        await api.webhook("orders", "http://127.0.0.1:9/x")
    await open_console(page, d)
    await expect(page.locator('tr[data-id="orders"] [data-label="Delivered by"]')).to_have_text(
        "alpha (this daemon)")
    await expect(page.locator(".cluster")).to_contain_text("★ alpha: 1 integration,")
    await expect(page.locator(".summary")).to_contain_text("jetstream")


async def test_hundreds_of_integrations_are_shown_a_page_at_a_time(
        page: Page, daemon_factory: Factory) -> None:
    """230 integrations: the list draws one page of 100 rows, pages on, and the filter
    finds one by id; the page stays while the list updates."""
    d = daemon_factory(merge(FAST, {"limits": {"max_integrations": 230}}))
    async with ApiClient(d) as api:
        async def one(k: int) -> None:
            await api.webhook(f"hook-{k:03d}", "http://127.0.0.1:9/x",
                              filter_conditions={"event_filter": ["return.processed"]})
        async with anyio.create_task_group() as tg:
            for k in range(230):
                tg.start_soon(one, k)
    await open_console(page, d)
    rows = page.locator("table.integrations tbody tr")
    position = page.locator(".pager-position")
    await expect(position).to_have_text("1–100 of 230")
    await expect(rows).to_have_count(100)
    await expect(rows.first).to_have_attribute("data-id", "hook-000")
    await page.get_by_role("button", name="Next").click()
    await expect(position).to_have_text("101–200 of 230")
    await expect(rows.first).to_have_attribute("data-id", "hook-100")
    await page.get_by_role("button", name="Next").click()
    await expect(position).to_have_text("201–230 of 230")
    await expect(rows).to_have_count(30)
    await expect(page.get_by_role("button", name="Next")).to_be_disabled()
    await page.wait_for_timeout(1500)  # a poll or two later, still there
    await expect(position).to_have_text("201–230 of 230")
    await page.get_by_label("Filter integrations by id or target").fill("hook-042")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-id", "hook-042")
    await expect(page.locator(".pager")).to_be_hidden()


async def test_stop_and_start_from_the_console_change_the_status_the_api_reports(
        page: Page, daemon_factory: Factory,
        receivers: Callable[..., Awaitable[Receiver]]) -> None:
    d = daemon_factory(FAST)
    receiver = await receivers()
    async with ApiClient(d) as api:
        await api.webhook("orders", receiver.url)
    await open_console(page, d, detail("orders"))
    stop = page.get_by_role("button", name="Stop", exact=True)
    start = page.get_by_role("button", name="Start", exact=True)
    await expect(start).to_be_disabled()
    await stop.click()
    await expect(page.locator(".title-row .health")).to_have_text("■ stopped")
    assert await api_status(d, "orders") == "stopped"
    await expect(start).to_be_enabled()
    await start.focus()  # keyboard-reachable: Enter on the focused button
    await page.keyboard.press("Enter")
    await expect(page.locator(".title-row .health")).to_have_text("● ok")
    assert await api_status(d, "orders") == "running"
    await expect(page.get_by_text("integration_started").first).to_be_visible()
    async with ApiClient(d) as api:  # a change made elsewhere shows up by itself
        await api.stop("orders")
    await expect(page.locator(".title-row .health")).to_have_text("■ stopped")
    await expect(page.get_by_text("integration_stopped").first).to_be_visible()


async def test_markup_from_the_daemon_is_shown_as_text_and_nothing_runs(
        page: Page, daemon_factory: Factory,
        receivers: Callable[..., Awaitable[Receiver]]) -> None:
    d = daemon_factory(FAST)
    receiver = await receivers(lambda _r, _n: web.Response(status=400, text=HOSTILE_ANSWER))
    rejected = await rejected_row(page, d, receiver, {
        "id": HOSTILE_EVENT_ID, "name": "order.created", "payload": HOSTILE_PAYLOAD})
    await expect(rejected).to_contain_text(HOSTILE_ANSWER)
    await expect(rejected).to_contain_text(HOSTILE_EVENT_ID)
    await rejected.get_by_role("button", name="View").click()
    payload = page.locator("pre.payload")
    for text in HOSTILE_PAYLOAD.values():  # as JSON shows it
        await expect(payload).to_contain_text(json.dumps(text))
    assert await page.evaluate("window.__pwned") is None
    assert await page.locator("main img, main script, main b").count() == 0


async def test_retry_of_a_rejected_event_from_the_console_delivers_it(
        page: Page, daemon_factory: Factory,
        receivers: Callable[..., Awaitable[Receiver]]) -> None:
    d = daemon_factory(FAST)
    receiver = await receivers(
        lambda _r, attempt: web.Response(status=400 if attempt == 1 else 200, text="not yet"))
    row = await rejected_row(page, d, receiver, {
        "id": "evt-1", "name": "order.created", "payload": {"n": 1}})
    await expect(row).to_contain_text("not yet")
    await row.get_by_role("button", name="Retry").click()
    await expect(page.locator(".flash")).to_contain_text("Delivered the rejected event evt-1")
    await expect(page.locator("table.rejected")).to_contain_text("No rejected events.")
    assert receiver.delivered_keys == {"evt-1"}
    async with ApiClient(d) as api:
        assert await api.rejected("orders") == []


async def test_a_rejected_event_deleted_from_the_console_is_gone(
        page: Page, daemon_factory: Factory,
        receivers: Callable[..., Awaitable[Receiver]]) -> None:
    d = daemon_factory(FAST)
    receiver = await receivers(lambda _r, _n: web.Response(status=400, text="never"))
    row = await rejected_row(page, d, receiver, events(1)[0])
    await row.get_by_role("button", name="Delete").click()
    await confirm_in_console(page, "Delete rejected event")
    await expect(page.locator("table.rejected")).to_contain_text("No rejected events.")
    async with ApiClient(d) as api:
        assert await api.rejected("orders") == []


async def test_form_validation_errors_appear_at_the_field(page: Page,
                                                         daemon_factory: Factory) -> None:
    d = daemon_factory(FAST)
    await open_console(page, d, "#/new/webhook")
    url = page.get_by_label("Callback URL")
    await page.get_by_label("Id", exact=True).fill("orders")
    await url.fill("ftp://hooks.example.com/x")
    await page.get_by_role("button", name="Create webhook").click()
    await expect(field_error(page, "Callback URL")).to_contain_text(
        "'callback_parameters.callback_url' must be an http:// or https:// URL")
    await expect(url).to_have_attribute("aria-invalid", "true")
    await expect(url).to_be_focused()

    await url.fill("http://127.0.0.1:9/hooks")
    await page.get_by_label("Id", exact=True).fill("Not An Id")
    await page.get_by_role("button", name="Create webhook").click()
    await expect(field_error(page, "Id")).to_contain_text("'id'")
    await expect(field_error(page, "Callback URL")).to_be_hidden()

    await fill_form(page, {"Id": "orders", "API key": "erp-key-0123456789",
                           "Entities": "order, return"})
    await page.get_by_role("button", name="Create webhook").click()
    await expect(page).to_have_url(re.compile(r"#/integration/orders$"))
    async with ApiClient(d) as api:
        created = await api.get("orders")
    assert created["callback_parameters"]["callback_url"] == "http://127.0.0.1:9/hooks"
    assert created["filter_conditions"] == {"entity_filter": ["order", "return"]}
    await expect(page.locator("dl.params")).to_contain_text(
        created["callback_parameters"]["api_key"])  # masked, as the API shows it
    await expect(page.locator("dl.params")).not_to_contain_text("erp-key-0123456789")

    # An S3 integration's form puts the daemon's message at its field too.
    await page.evaluate("location.hash = '#/new/s3'")
    await fill_form(page, {"Id": "archive", "Region": "eu-west-1", "Bucket": "no",
                           "Access key id": "AKIDEXAMPLE", "Secret access key": "secret"})
    await page.get_by_role("button", name="Create S3 integration").click()
    await expect(field_error(page, "Bucket")).to_contain_text("'s3_parameters.bucket'")


async def test_the_edit_form_changes_a_stopped_integration_and_keeps_its_secret(
        page: Page, daemon_factory: Factory) -> None:
    d = daemon_factory(FAST)
    async with ApiClient(d) as api:
        await api.webhook("orders", "http://127.0.0.1:9/old", api_key="erp-key-0123456789")
    await open_console(page, d, detail("orders"))
    edit = page.get_by_role("button", name="Edit", exact=True)
    await expect(edit).to_be_disabled()  # the daemon accepts changes only while stopped
    await page.get_by_role("button", name="Stop", exact=True).click()
    await edit.click()
    await expect(page.get_by_label("Id", exact=True)).to_be_disabled()
    await page.get_by_label("Callback URL").fill("http://127.0.0.1:9/new")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page).to_have_url(re.compile(r"#/integration/orders$"))
    async with ApiClient(d) as api:
        changed = await api.get("orders")
    assert changed["callback_parameters"]["callback_url"] == "http://127.0.0.1:9/new"
    assert changed["callback_parameters"]["api_key"].endswith("***")  # kept, still masked


async def test_a_401_returns_to_the_token_prompt(page: Page, daemon: DaemonProcess) -> None:
    await open_console(page, daemon, "#/new/webhook")
    await expect(page.get_by_label("Callback URL")).to_be_visible()
    # The token stops being accepted (here: the tab's copy of it changes).
    await page.evaluate("sessionStorage.setItem('eventstreamd.console.token', 'revoked')")
    await expect(page.get_by_role("alert")).to_contain_text("refused the token (401)")
    await expect(page.get_by_label("Callback URL")).to_have_count(0)
    assert await page.evaluate("sessionStorage.length") == 0
    await page.get_by_label("API token").fill(daemon.token)
    await page.get_by_role("button", name="Open the console").click()
    await expect(page.get_by_label("Callback URL")).to_be_visible()  # back where it was


async def test_the_daemon_going_away_is_shown_and_the_console_recovers(
        page: Page, daemon_factory: Factory) -> None:
    d = daemon_factory({**FAST, "server": {"port": free_port()}})
    async with ApiClient(d) as api:
        await api.webhook("before", "http://127.0.0.1:9/x")
    await open_console(page, d)
    await expect(page.get_by_role("link", name="before")).to_be_visible()
    d.stop()
    connection = page.locator("#connection")
    await expect(connection).to_contain_text("The daemon does not answer")
    await expect(page.locator(".list-page")).to_have_class(re.compile(r"\bstale\b"))
    await expect(page.get_by_role("link", name="before")).to_be_visible()  # last data kept
    d.start()
    await expect(connection).to_have_text("● live")
    await expect(page.locator(".list-page")).not_to_have_class(re.compile(r"\bstale\b"))
    async with ApiClient(d) as api:
        await api.webhook("after", "http://127.0.0.1:9/x")
    await expect(page.get_by_role("link", name="after")).to_be_visible()


async def test_the_csp_blocks_inline_script_and_markup_sinks(page: Page,
                                                             daemon: DaemonProcess) -> None:
    """The daemon's own page with an inline script and an inline handler slipped in (as an
    injection would): the real CSP header comes with it, and neither runs."""
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text)
            if "Content Security Policy" in m.text else None)

    async def inject(route: Any) -> None:
        response = await route.fetch()
        body = (await response.text()).replace(
            "</body>", '<script>window.__inline = 1</script>'
                       '<img src="missing.png" onerror="window.__handler = 1"></body>')
        await route.fulfill(response=response, body=body)

    await page.route(f"{daemon.url}/ui/", inject)
    response = await page.goto(f"{daemon.url}/ui/")
    assert response is not None
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    await expect(page.get_by_label("API token")).to_be_visible()  # the console's module runs
    await eventually(lambda: len(violations) >= 2, what="CSP violation reports")
    assert await page.evaluate("[window.__inline, window.__handler]") == [None, None]
    # Trusted Types: the page cannot turn a string into markup at all.
    refused = await page.evaluate(
        "() => { try { document.body.innerHTML = '<b>x</b>'; return 'allowed'; }"
        " catch (error) { return error.name; } }")
    assert refused == "TypeError"


async def test_operations_the_daemon_lacks_say_not_supported(
        page: Page, daemon: DaemonProcess) -> None:
    """A daemon without replays or secret rotation answers 404 `not_found` for them; the
    console says so instead of failing."""
    async with ApiClient(daemon) as api:
        await api.webhook("orders", "http://127.0.0.1:9/x")
    for suffix in ("/replays", "/_replay", "/_rotate_secret"):
        await page.route(f"**{BASE}/orders{suffix}", lambda route: route.fulfill(
            status=404, content_type="application/json", body=NOT_FOUND))
    accept_dialogs(page)
    await open_console(page, daemon, detail("orders"))
    await expect(page.get_by_text("Replays are not supported by this daemon.")).to_be_visible()
    await expect(page.get_by_role("button", name="Count events")).to_be_hidden()
    await page.get_by_role("button", name="Rotate signing secret").click()
    await confirm_in_console(page, "Rotate secret")
    await expect(page.locator(".flash")).to_have_text(
        "Rotating the signing secret is not supported by this daemon.")


# ------------------------------------------- operations from other parts of the daemon


def utc_input(moment: datetime) -> str:
    """A `datetime-local` value; the tests' browser runs in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


async def delivered_then_replay_form(page: Page, d: DaemonProcess, receiver: Receiver,
                                     count: int) -> None:
    """`count` events delivered live to `orders`; its page open with the replay's start
    filled in (a little before they were published)."""
    since = datetime.now(UTC) - timedelta(seconds=5)
    async with ApiClient(d) as api:
        await api.webhook("orders", receiver.url)
        await api.publish(events(count))
        await eventually(lambda: len(receiver.delivered) == count)
    await open_console(page, d, detail("orders"))
    await page.get_by_label("From (your local time)").fill(utc_input(since))


async def test_a_replay_started_from_the_console_completes(
        page: Page, daemon_factory: Factory,
        receivers: Callable[..., Awaitable[Receiver]]) -> None:
    receiver = await receivers()
    await delivered_then_replay_form(page, daemon_factory(FAST), receiver, 5)
    await page.get_by_role("button", name="Count events").click()
    await expect(page.locator(".replay-form .count")).to_have_text("5 events would be replayed.")
    await page.get_by_role("button", name="Start replay of 5 events").click()
    row = page.locator("table.replays tbody tr").first
    await expect(row).to_contain_text("completed")
    await expect(row).to_contain_text("5 / 5")
    replayed = [r for r in receiver.requests if "Eventstreamd-Replay" in r.headers]
    assert len(replayed) == 5
    assert {r.key for r in replayed} == {r.key for r in receiver.delivered[:5]}


async def test_a_replay_is_cancelled_from_the_console(
        page: Page, daemon_factory: Factory,
        receivers: Callable[..., Awaitable[Receiver]]) -> None:
    d = daemon_factory(FAST)
    await delivered_then_replay_form(page, d, await receivers(), 100)
    await page.get_by_label("Max rate (events/s)").fill("2")
    await page.get_by_role("button", name="Count events").click()
    await page.get_by_role("button", name="Start replay of 100 events").click()
    row = page.locator("table.replays tbody tr").first
    await expect(row).to_contain_text("running")
    await row.get_by_role("button", name="Cancel").click()
    await confirm_in_console(page, "Cancel replay")
    await expect(row).to_contain_text("cancelled")
    async with ApiClient(d) as api:
        listed = await api.request("GET", f"{BASE}/orders/replays")
    assert [r["status"] for r in listed["replays"]] == ["cancelled"]


async def test_rotating_the_secret_from_the_console_signs_with_the_new_one(
        page: Page, daemon_factory: Factory,
        receivers: Callable[..., Awaitable[Receiver]]) -> None:
    d = daemon_factory(FAST)
    receiver = await receivers()
    old = new_secret()
    async with ApiClient(d) as api:
        await api.create(id="orders", callback_parameters={
            "callback_url": receiver.url, "signing_secret": old})
    await open_console(page, d, detail("orders"))
    await expect(parameter(page, "Signing secret")).to_have_text("wh***")
    await page.get_by_role("button", name="Rotate signing secret").click()
    await confirm_in_console(page, "Rotate secret")
    shown = page.get_by_label(re.compile("New signing secret"))
    await expect(shown).to_have_value(re.compile(r"^whsec_"))
    new = await shown.input_value()
    assert new != old
    async with ApiClient(d) as api:
        assert new not in str(await api.get("orders"))  # masked on read
        await api.publish(events(1))
    await eventually(lambda: len(receiver.delivered) == 1)
    body, headers = receiver.requests[0].raw, receiver.requests[0].headers
    assert library_verifies(new, body, headers)
    await page.get_by_role("button", name="Done").click()  # shown once: then gone for good
    await expect(shown).to_have_count(0)
    assert new not in await page.content()
    await expect(parameter(page, "Signing secret")).to_have_text("wh***")


async def test_the_create_form_sends_the_delivery_controls_and_shows_their_errors_at_the_field(
        page: Page, daemon_factory: Factory) -> None:
    d = daemon_factory(FAST)
    await open_console(page, d, "#/new/webhook")
    await fill_form(page, {"Id": "orders", "Callback URL": "http://127.0.0.1:9/hooks"})
    create = page.get_by_role("button", name="Create webhook")
    for label, value, message in (
            ("Extra headers", "Authorization: mine",
             "'callback_parameters.headers': Authorization is set by the daemon"),
            ("Extra headers", "X-Tenant: café", "'callback_parameters.headers.X-Tenant'"),
            ("Extra headers", "no colon here", 'line 1: expected "Name: value"'),
            ("Signing secret", "whsec_short", "'callback_parameters.signing_secret' must be"),
            ("Max rate (deliveries/s)", "0", "'callback_parameters.max_rate' must be more than 0"),
            ("Ordering key", "customer.id",
             "'callback_parameters.ordering_key' needs 'callback_parameters.ordered': true"),
            ("Stop after failing for", "soon", "'callback_parameters.stop_after_failing'")):
        control = page.get_by_label(label, exact=True)
        await control.fill(value)
        await create.click()
        await expect(field_error(page, label)).to_contain_text(message)
        await expect(control).to_be_focused()
        await expect(page.locator(".field-error:visible")).to_have_count(1)
        await control.fill("")
    async with ApiClient(d) as api:
        assert await api.list_integrations() == []

    await fill_form(page, {
        "Signing secret": "whsec_bmV3LXNlY3JldC1uZXctc2VjcmV0LTEyMzQ1Njc4OTA=",
        "Extra headers": "X-Tenant: acme\nX-Team: billing-team-0123",
        "Max rate (deliveries/s)": "5", "Ordering key": "customer.id",
        "Stop after failing for": "2h"})
    await page.get_by_label("Deliver in sequence order").check()
    await create.click()
    await expect(page).to_have_url(re.compile(r"#/integration/orders$"))
    async with ApiClient(d) as api:
        params = (await api.get("orders"))["callback_parameters"]
    assert params["max_rate"] == 5 and params["ordered"] is True
    assert params["ordering_key"] == "customer.id" and params["stop_after_failing"] == "2h"
    assert params["headers"] == {"X-Tenant": "***", "X-Team": "bi***"}  # each value masked
    assert "acme" not in str(params) and "bmV3LXNlY3JldC1" not in str(params)
    # Its page shows the controls, the secrets as the API shows them.
    await expect(figure(page, "Max rate")).to_have_text("5 deliveries/s at most")
    await expect(figure(page, "Order")).to_have_text(
        "in sequence order per value of customer.id")
    await expect(parameter(page, "Signing secret")).to_have_text("wh***")
    await expect(parameter(page, "Extra headers")).to_have_text("X-Tenant: ***\nX-Team: bi***")
    await expect(parameter(page, "Stop after failing for")).to_have_text("2h")
    await expect(page.locator("dl.params")).not_to_contain_text("billing-team")
    await page.get_by_role("link", name="Integrations").click()
    await expect(page.locator('tr[data-id="orders"] [data-label="Mode"]')).to_have_text(
        "≤ 5/s, in order by key")


async def test_an_edit_keeps_masked_header_values_and_the_signing_secret(
        page: Page, daemon_factory: Factory,
        receivers: Callable[..., Awaitable[Receiver]]) -> None:
    d = daemon_factory(FAST)
    receiver = await receivers()
    secret = new_secret()
    async with ApiClient(d) as api:
        await api.create(id="orders", callback_parameters={
            "callback_url": receiver.url, "signing_secret": secret, "max_rate": 5,
            "headers": {"X-Tenant-Token": "tenant-token-0123456789", "X-Team": "ops"}})
        await api.stop("orders")
    await open_console(page, d, detail("orders"))
    await page.get_by_role("button", name="Edit", exact=True).click()
    headers = page.get_by_label("Extra headers")
    await expect(headers).to_have_value("X-Tenant-Token: te***\nX-Team: ***")
    await expect(page.get_by_label("Signing secret")).to_have_value("wh***")
    await page.get_by_label("Max rate (deliveries/s)").fill("50")
    await headers.fill("X-Tenant-Token: te***\nX-Team: ***\nX-Env: prod")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page).to_have_url(re.compile(r"#/integration/orders$"))
    await page.get_by_role("button", name="Start", exact=True).click()
    await expect(page.locator(".title-row .health")).to_have_text("● ok")
    async with ApiClient(d) as api:
        params = (await api.get("orders"))["callback_parameters"]
        await api.publish(events(1))
    assert params["max_rate"] == 50
    await eventually(lambda: len(receiver.delivered) == 1)
    sent = receiver.delivered[0]
    assert sent.headers["X-Tenant-Token"] == "tenant-token-0123456789"  # kept, not its mask
    assert sent.headers["X-Team"] == "ops" and sent.headers["X-Env"] == "prod"
    assert library_verifies(secret, sent.raw, sent.headers)


async def test_an_auto_stopped_integration_says_why_and_starts_again_from_the_console(
        page: Page, daemon_factory: Factory,
        receivers: Callable[..., Awaitable[Receiver]]) -> None:
    d = daemon_factory(FAST)
    down = Switch(lambda _r, _n: web.Response(status=503))
    receiver = await receivers(down)
    async with ApiClient(d) as api:
        await api.create(id="orders", callback_parameters={
            "callback_url": receiver.url, "stop_after_failing": "1s"})
        # The reason quotes the payload of the event that failed last.
        await api.publish([{"id": "evt-1", "name": "order.created", "payload": HOSTILE_PAYLOAD}])
        await api.wait_logs("orders", "auto_stopped")
    await open_console(page, d)
    row = page.locator('tr[data-id="orders"]')
    await expect(row.locator(".health")).to_have_text("■ auto-stopped")
    await expect(row.locator('[data-label="Status"]')).to_contain_text("stopped by the daemon")
    reason = row.locator(".stop-reason")
    await expect(reason).to_contain_text("Every delivery attempt failed for")
    await expect(reason).to_contain_text("(HTTP status code 503)")
    await expect(reason).to_contain_text(HOSTILE_PAYLOAD["html"])  # as text

    await row.get_by_role("link", name="orders").click()
    notice = page.locator(".notice", has_text="Stopped automatically by the daemon")
    await expect(notice).to_contain_text(HOSTILE_PAYLOAD["html"])
    await expect(page.locator(".title-row .health")).to_have_text("■ auto-stopped")
    await expect(figure(page, "Status")).to_have_text("stopped by the daemon")
    down.flip()  # the receiver is fixed
    await page.get_by_role("button", name="Start", exact=True).click()
    await expect(page.locator(".title-row .health")).to_have_text("● ok")
    await expect(notice).to_be_hidden()
    assert await api_status(d, "orders") == "running"
    await eventually(lambda: receiver.delivered_keys == {"evt-1"},
                     what="what it missed, delivered")
    await page.get_by_role("link", name="Integrations").click()
    await expect(row.locator(".health")).to_have_text("● ok")
    await expect(row.locator(".stop-reason")).to_be_hidden()
    assert await page.evaluate("window.__pwned") is None
    assert await page.locator("main img, main script, main b").count() == 0


async def test_the_s3_forms_send_compression_format_and_key_template(
        page: Page, daemon_factory: Factory) -> None:
    d = daemon_factory(FAST)
    await open_console(page, d, "#/new/s3")
    await fill_form(page, {"Id": "archive", "Bucket": "acme-archive", "Region": "eu-west-1",
                           "Access key id": "AKIDEXAMPLE",
                           "Secret access key": "secret-0123456789",
                           "Key template": "{tenant}/{date}/{hour}"})
    create = page.get_by_role("button", name="Create S3 integration")
    await create.click()
    await expect(field_error(page, "Key template")).to_contain_text(
        "'s3_parameters.key_template' must hold {random} or {first_seq}")
    await expect(page.get_by_label("Key template")).to_be_focused()
    await page.get_by_label("Compression").select_option("zstd")
    await page.get_by_label("Format").select_option("parquet")
    await page.get_by_label("Key template").fill("{tenant}/{date}/{first_seq}")
    await create.click()
    await expect(page).to_have_url(re.compile(r"#/integration/archive$"))
    async with ApiClient(d) as api:
        params = (await api.get("archive"))["s3_parameters"]
    assert params["compression"] == "zstd" and params["format"] == "parquet"
    assert params["key_template"] == "{tenant}/{date}/{first_seq}"
    await expect(parameter(page, "Format")).to_have_text("Parquet")
    await expect(parameter(page, "Compression")).to_have_text("zstd (.zst)")
    await expect(parameter(page, "Key template")).to_have_text("{tenant}/{date}/{first_seq}")
    await expect(parameter(page, "Key prefix")).to_have_text("none")
    await expect(figure(page, "Target")).to_have_text(
        "s3://acme-archive (parquet+zstd, {tenant}/{date}/{first_seq})")
    await expect(figure(page, "Max rate")).to_be_hidden()  # a webhook's control only

    # The edit form holds them, puts its errors at the field, keeps the secret.
    await page.get_by_role("button", name="Stop", exact=True).click()
    await page.get_by_role("button", name="Edit", exact=True).click()
    await expect(page.get_by_label("Compression")).to_have_value("zstd")
    await expect(page.get_by_label("Format")).to_have_value("parquet")
    template = page.get_by_label("Key template")
    await expect(template).to_have_value("{tenant}/{date}/{first_seq}")
    await template.fill("{tenant} {first_seq}")
    save = page.get_by_role("button", name="Save changes")
    await save.click()
    await expect(field_error(page, "Key template")).to_contain_text("holds ' '")
    await template.fill("")  # back to the default
    await page.get_by_label("Compression").select_option("none")
    await save.click()
    await expect(page).to_have_url(re.compile(r"#/integration/archive$"))
    async with ApiClient(d) as api:
        params = (await api.get("archive"))["s3_parameters"]
    assert params == {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "se***",
                      "aws_region": "eu-west-1", "bucket": "acme-archive",
                      "format": "parquet"}
    await expect(parameter(page, "Compression")).to_have_text("none (default)")
    await expect(parameter(page, "Key template")).to_have_text(
        "{key_prefix}/{tenant}/{timestamp}-data-{random}.export (default)")


# --------------------------------------------------------------- screenshots


@pytest.mark.skipif(not SCREENSHOTS, reason="set EVENTSTREAMD_SCREENSHOTS=<dir> to take them")
async def test_screenshots(page: Page, daemon_factory: Factory, moto: MotoServer,
                           receivers: Callable[..., Awaitable[Receiver]]) -> None:
    """The pictures in docs/: the token prompt, the list (wide, and at phone width in dark
    mode), an integration's page with hostile text in its data, and the create form; with
    delivery controls, an auto-stopped integration and an S3 integration writing Parquet."""
    out = Path(SCREENSHOTS)
    await anyio.Path(out).mkdir(parents=True, exist_ok=True)
    d = daemon_factory({**FAST, "s3": {"endpoint_url": moto.url, "rotate_interval": "1s"}})
    await moto.create_bucket("acme-archive")

    def refusing(received: Received, _attempt: int) -> web.Response:
        if received.body["payload"].get("vip"):
            return web.Response(status=400, text=HOSTILE_ANSWER)
        return web.Response(status=200)

    fine, picky = await receivers(), await receivers(refusing)
    down = await receivers(lambda _r, _n: web.Response(status=503))
    async with ApiClient(d) as api:
        await api.create(id="erp-orders", callback_parameters={
            "callback_url": fine.url, "api_key": "erp-key-0123456789", "max_rate": 150},
            filter_conditions={"entity_filter": ["order"]})
        await api.create(id="billing-hooks", callback_parameters={
            "callback_url": picky.url, "api_key": "billing-key-0123456789",
            "signing_secret": new_secret(), "ordered": True, "ordering_key": "customer.id",
            "headers": {"X-Tenant-Token": "tenant-token-0123456789", "X-Team": "billing"},
            "stop_after_failing": "2d"})
        await api.create(id="legacy-crm", callback_parameters={
            "callback_url": down.url, "stop_after_failing": "1s"},
            filter_conditions={"event_filter": ["invoice.issued"]})
        await api.create(id="archive", s3_parameters={
            "bucket": "acme-archive", "aws_region": "eu-west-1", "key_prefix": "events",
            "aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "secret-0123456789",
            "format": "parquet", "compression": "zstd",
            "key_template": "{key_prefix}/date={date}/{tenant}-{first_seq}-{last_seq}"})
        await api.publish([{"id": HOSTILE_EVENT_ID, "name": "invoice.issued",
                            "payload": {**HOSTILE_PAYLOAD, "vip": True}}])
        await api.wait_logs("legacy-crm", "auto_stopped")  # its reason quotes that payload
        await open_console(page, d)
        since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
        for burst in (5, 20, 40, 25, 60, 30, 80, 45, 20, 50, 35, 70):
            await api.publish(events(burst, "order.created") + events(burst // 3, "invoice.paid"))
            await anyio.sleep(1.0)
        # The page's replay panel: one replay done, one under way at its own pace.
        invoices = await api.request("POST", f"{BASE}/billing-hooks/_replay", {
            "starts_at": since, "filter_conditions": {"entity_filter": ["invoice"]}}, 202)
        await api.wait_replay("billing-hooks", invoices["replay_id"])
        paced = await api.request("POST", f"{BASE}/billing-hooks/_replay",
                                  {"starts_at": since, "max_rate": 20}, 202)
        await eventually(lambda: api.replays("billing-hooks"), lambda replays: next(
            r for r in replays if r["replay_id"] == paced["replay_id"])["delivered"] >= 40)
    rejected = page.locator('tr[data-id="billing-hooks"] [data-label="Rejected"]')
    await expect(rejected).to_have_text("1")
    await expect(page.locator('tr[data-id="legacy-crm"] .health')).to_have_text("■ auto-stopped")
    await page.screenshot(path=out / "console-list.png")
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.emulate_media(color_scheme="dark")
    await page.screenshot(path=out / "console-list-phone-dark.png")
    await page.emulate_media(color_scheme="light")
    await page.set_viewport_size({"width": 1400, "height": 900})
    await page.evaluate("location.hash = '#/integration/billing-hooks'")
    row = page.locator("table.rejected tbody tr").first
    await row.get_by_role("button", name="View").click()
    await expect(page.locator("pre.payload")).to_be_visible()
    await page.screenshot(path=out / "console-detail.png", full_page=True)
    await page.evaluate("location.hash = '#/new/webhook'")
    await fill_form(page, {"Id": "crm", "Callback URL": "ftp://crm.example.com/hooks",
                           "Extra headers": "X-Env: prod", "Max rate (deliveries/s)": "50",
                           "Ordering key": "order_id"})
    await page.get_by_label("Deliver in sequence order").check()
    await page.get_by_role("button", name="Create webhook").click()
    await expect(field_error(page, "Callback URL")).to_be_visible()
    await page.screenshot(path=out / "console-create.png", full_page=True)
    await page.evaluate("sessionStorage.clear()")
    await page.reload()
    await expect(page.get_by_label("API token")).to_be_visible()
    await page.screenshot(path=out / "console-token.png")
