"""End to end in a real browser: the operator dashboard (/admin/) and the customer portal
(/portal/), served by a real mitmdump with the addon in front of the stand-in upstream.

Debian's headless Chromium, driven by Python playwright (its own browser download does
not work on these machines). Without Chromium the file skips with one line; under CI it
must run. Every page opened here also checks that the browser saw no CSP violation, no
script error and no dialog.

The tests take the screenshots of docs/operations.md: into a temporary folder, or into docs/ under
`make screenshots` (SCREENSHOTS=docs), so an ordinary test run changes no tracked file.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.anthropic_standin import AnthropicStandIn
from tests.support.harness import ADMIN_SECRET, ROOT, Proxy
from tests.support.standin import StandIn

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Where screenshots go: SCREENSHOTS (relative to the repository root), else a temp folder.
SHOTS = ROOT / os.environ["SCREENSHOTS"] if os.environ.get("SCREENSHOTS") else None
ADMIN = {"x-admin-secret": ADMIN_SECRET}
FLUSH_WAIT = 1.6  # usage is written about once a second
HOSTILE = "<img src=x onerror=alert(1)>"
HOSTILE_TIER = "<script>alert(2)</script>"
HOSTILE_MODEL = '"><svg onload=alert(3)>'
#: A model id the upstream does not list: served, and shown by name.
KNOWN_MODEL = "claude-x-unlisted"

try:
    from playwright.sync_api import BrowserContext, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the test extras install it
    sync_playwright = None  # type: ignore[assignment]

_missing = (
    "python playwright is not installed (pip install -e '.[test]')"
    if sync_playwright is None
    else None
    if Path(CHROMIUM).exists() or shutil.which(CHROMIUM)
    else f"{CHROMIUM} not found (apt-get install chromium)"
)
if _missing:
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests must run under CI: {_missing}", pytrace=False)
    pytest.skip(f"browser tests skipped: {_missing}", allow_module_level=True)


#: Elements reaching past the right edge of the screen, outside the tables' scrollers.
WIDER = """[...document.querySelectorAll("body *")]
  .filter((e) => e.getBoundingClientRect().right > innerWidth && !e.closest(".scroll"))
  .map((e) => `${e.tagName}#${e.id}.${e.className} ${e.getBoundingClientRect().right}`)"""


# --- the browser ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(15_000)
        yield context
        context.close()


# Records CSP violations from inside the page, as the browser reports them.
CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""


@dataclass
class Watched:
    """A page and everything worrying the browser said while it was open."""

    page: Page
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    document_headers: dict[str, str] = field(default_factory=dict)

    def check_clean(self) -> None:
        violations = self.page.evaluate("window.__cspViolations || []")
        assert violations == [], f"CSP violations: {violations}"
        assert self.page_errors == [], f"script errors: {self.page_errors}"
        # Failed loads (the 401 of a wrong secret, on purpose) are not script errors.
        errors = [e for e in self.console_errors if not e.startswith("Failed to load resource")]
        assert errors == [], f"console errors: {errors}"
        assert not any("Content Security Policy" in e for e in self.console_errors)
        assert self.dialogs == [], f"dialogs opened: {self.dialogs}"


@pytest.fixture
def open_page(browser: BrowserContext) -> Iterator[Callable[[str], Watched]]:
    opened: list[Watched] = []

    def open_(url: str) -> Watched:
        page = browser.new_page()
        watched = Watched(page)
        page.add_init_script(CSP_WATCH)
        page.on("console", lambda m: m.type == "error" and watched.console_errors.append(m.text))
        page.on("pageerror", lambda e: watched.page_errors.append(str(e)))

        def on_dialog(dialog) -> None:  # type: ignore[no-untyped-def]
            watched.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        response = page.goto(url)
        assert response is not None and response.status == 200
        watched.document_headers = response.all_headers()
        opened.append(watched)
        return watched

    yield open_
    try:
        for watched in opened:
            watched.check_clean()
    finally:
        for watched in opened:
            watched.page.close()


def sign_in(page: Page, secret: str = ADMIN_SECRET) -> None:
    page.fill("#secret", secret)
    page.click("#signin button[type=submit]")


def signed_in(open_page: Callable[[str], Watched], proxy: Proxy) -> Watched:
    watched = open_page(f"{proxy.url}/admin/")
    sign_in(watched.page)
    expect(watched.page.locator("#app")).to_be_visible()
    return watched


def chat(proxy: Proxy, key: str, model: str = "gemini-3-flash", **options: object) -> object:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], **options
    )


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where this test's screenshots go (docs/ under `make screenshots`)."""
    folder = SHOTS or tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def dash(make_proxy: Callable[..., Proxy], standin: StandIn) -> Proxy:
    """A proxy of its own, so that usage totals are exactly this test's traffic."""
    return make_proxy(standin.url)


# --- serving -------------------------------------------------------------------------


def test_pages_carry_a_strict_csp_and_no_framing(dash: Proxy, open_page) -> None:
    for path in ("/admin/", "/portal/"):
        watched = open_page(f"{dash.url}{path}")
        headers = watched.document_headers
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        # The page's scripts ran (a blocked module would leave the form without a handler).
        expect(watched.page.locator("#signin")).to_be_visible()
        expect(watched.page.locator("#secret, #key")).to_be_focused()
    # Bare prefixes redirect; the pages need no secret, the API behind them does.
    response = httpx.get(f"{dash.url}/admin", follow_redirects=False)
    assert response.status_code == 308 and response.headers["location"] == "/admin/"
    assert httpx.get(f"{dash.url}/admin/stats").status_code == 401


# --- operator dashboard ----------------------------------------------------------------


def test_wrong_secret_is_refused_like_the_api_then_the_right_one_signs_in(
    dash: Proxy, open_page
) -> None:
    api_answer = httpx.get(f"{dash.url}/admin/keys", headers={"x-admin-secret": "nope"})
    assert api_answer.status_code == 401
    watched = open_page(f"{dash.url}/admin/")
    page = watched.page
    sign_in(page, "nope")
    expect(page.locator("#signin-error")).to_have_text(api_answer.json()["error"]["message"])
    expect(page.locator("#app")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0

    sign_in(page)
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#signin")).to_be_hidden()
    # The secret stays in this tab's session: not in the URL, localStorage or a cookie.
    assert ADMIN_SECRET not in page.url
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("document.cookie") == ""
    assert page.evaluate("Object.values(sessionStorage)") == [ADMIN_SECRET]
    # A reload keeps the session; signing out forgets it.
    page.reload()
    expect(page.locator("#app")).to_be_visible()
    page.click("#signout")
    expect(page.locator("#signin")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    assert ADMIN_SECRET not in dash.log()


def test_create_copy_use_and_revoke_a_key_in_the_ui(
    dash: Proxy, open_page, browser: BrowserContext
) -> None:
    browser.grant_permissions(["clipboard-read", "clipboard-write"], origin=dash.url)
    page = signed_in(open_page, dash).page
    page.click("#key-new")
    page.fill("#key-form [name=name]", "made-in-browser")
    page.fill("#key-form [name=tier]", "pro")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#secret-dialog")).to_be_visible()
    page.click("#secret-copy")
    expect(page.locator("#secret-copied")).to_have_text("Copied to the clipboard.")
    key = page.evaluate("navigator.clipboard.readText()")
    assert key.startswith("apk_") and key == page.input_value("#secret-value")
    page.click("#secret-done")
    assert page.input_value("#secret-value") == ""  # shown once

    row = page.locator("#keys-table tbody tr", has_text="made-in-browser")
    expect(row).to_contain_text("pro")
    expect(row).to_contain_text(key[:10])
    expect(row.locator(".badge")).to_have_text("active")

    answer = chat(dash, key)
    assert answer.choices[0].message.content == "hello from gemini-3-flash"

    row.get_by_role("button", name="Revoke").click()
    expect(row.locator(".badge")).to_have_text("revoked")
    expect(page.locator("#keys-message")).to_contain_text("Revoked key")
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat(dash, key)
    assert refused.value.code == "inactive_api_key"

    row.get_by_role("button", name="Activate").click()
    expect(row.locator(".badge")).to_have_text("active")
    chat(dash, key)

    # Search and the status filter narrow the table.
    dash.create_key("someone-else", tier="trial")
    page.click("#usage-refresh")
    expect(page.locator("#keys-table tbody tr")).to_have_count(2)
    page.fill("#key-search", "made-in")
    expect(page.locator("#keys-table tbody tr")).to_have_count(1)
    page.fill("#key-search", "")
    page.select_option("#key-tier", "trial")
    expect(page.locator("#keys-table tbody tr")).to_have_count(1)
    expect(page.locator("#keys-table tbody tr")).to_contain_text("someone-else")
    page.select_option("#key-tier", "")
    page.select_option("#key-status", "revoked")
    expect(page.locator("#keys-table tbody tr")).to_have_text("No key matches")


def test_hostile_names_are_shown_as_text(dash: Proxy, open_page) -> None:
    """A key name and a tier from the operator, a model name from any client: all text."""
    key = dash.create_key(HOSTILE, tier=HOSTILE_TIER)
    # A client's model name that is no model id never gets as far as a usage row...
    with pytest.raises(openai.BadRequestError) as refused:
        chat(dash, key, HOSTILE_MODEL)
    assert refused.value.code == "invalid_model"
    chat(dash, key, KNOWN_MODEL)  # ...a plausible one is counted by name, as text
    time.sleep(FLUSH_WAIT)
    watched = signed_in(open_page, dash)
    page = watched.page
    cell = page.locator("#keys-table tbody td.name")
    expect(cell).to_have_text(HOSTILE)
    expect(page.locator("#keys-table tbody tr")).to_contain_text(HOSTILE_TIER)
    expect(page.locator("#key-tier option").last).to_have_text(HOSTILE_TIER)
    requests = page.locator("#usage-requests")
    expect(requests.locator("thead th").nth(1)).to_have_text(KNOWN_MODEL)
    expect(requests.locator(".legend li")).to_have_text(KNOWN_MODEL)
    expect(requests.locator("svg rect.bar title")).to_contain_text(KNOWN_MODEL)
    expect(page.locator("body")).not_to_contain_text(HOSTILE_MODEL)
    expect(page.locator("#usage-top tbody")).to_contain_text(HOSTILE)
    page.fill("#key-search", "onerror")
    expect(cell).to_have_text(HOSTILE)
    page.wait_for_timeout(500)  # time for an injected handler to have fired
    assert page.locator("img, script:not([src]), svg script").count() == 0
    assert watched.dialogs == []


def test_usage_charts_have_points_and_their_tables_the_right_totals(
    make_proxy: Callable[..., Proxy], standin: StandIn, open_page, tmp_path: Path, shots: Path
) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text(PRICED_ROUTES)
    dash = make_proxy(standin.url, ROUTES_FILE=str(routes))
    tier = "starter"
    alice = dash.create_key("alice", tier=tier)
    bob = dash.create_key("bob", tier=tier)
    tokens, cost = 0, 0.0
    for key, model in [
        (alice, "gemini-3-flash"),
        (alice, "claude-sonnet-4-5"),
        (bob, "gemini-3-flash"),
        (bob, "gemini-3-flash"),
        (bob, "claude-sonnet-4-5"),
    ]:
        usage = chat(dash, key, model).usage  # type: ignore[attr-defined]
        tokens += usage.total_tokens
        price = PRICES[model]
        cost += (usage.prompt_tokens * price[0] + usage.completion_tokens * price[1]) / 1e6
    with pytest.raises(openai.InternalServerError):
        chat(dash, bob, extra_headers={"x-standin-status": "500"})
    time.sleep(FLUSH_WAIT)

    watched = signed_in(open_page, dash)
    page = watched.page
    for period in ("#period-hour", "#period-day"):
        page.click(period)
        expect(page.locator(period)).to_have_attribute("aria-pressed", "true")
        requests = page.locator("#usage-requests")
        expect(requests.locator("svg rect.bar").first).to_be_visible()
        expect(requests.locator("tfoot [data-total]")).to_have_attribute("data-total", "6")
        expect(requests.locator("tfoot [data-total]")).to_have_text("6 req")
        expect(page.locator("#usage-errors tfoot [data-total]")).to_have_attribute(
            "data-total", "1"
        )
        expect(page.locator("#usage-tokens tfoot [data-total]")).to_have_attribute(
            "data-total", str(tokens)
        )
        # One bar segment per model in the bucket holding the traffic.
        assert requests.locator("svg rect.bar").count() == 2
        top = page.locator("#usage-top tbody tr")
        expect(top).to_have_count(2)
        expect(top.first).to_contain_text("bob")
        expect(top.first).to_contain_text("4 req")  # bob's failed request counts too
        # The failed request cost nothing.
        expect(page.locator("#usage-cost tfoot [data-total]")).to_have_text(f"${cost:.4f} USD")
        expect(page.locator("#usage-cost svg rect.bar")).to_have_count(2)
    bob_row = page.locator("#keys-table tbody tr", has_text="bob")
    expect(bob_row).to_contain_text("4 req1 error")
    expect(bob_row).to_contain_text("of $5.00 USD per month")
    expect(bob_row.locator("meter")).to_have_count(1)

    # The live panel shows rates with their units, and a stream while it runs.
    stream_client = openai.OpenAI(base_url=f"{dash.url}/v1", api_key=alice, max_retries=0)

    def run_stream() -> None:
        for _ in stream_client.chat.completions.create(
            model="gemini-3-flash",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"x-standin-chunks": "20", "x-standin-interval": "0.5"},
        ):
            pass

    stream = threading.Thread(target=run_stream)
    stream.start()
    try:
        expect(page.locator("#live-streams")).to_have_text("1 stream", timeout=15_000)
        expect(page.locator("#live-rps")).to_have_text(re.compile(r"^\d+\.\d+ req/s$"))
        expect(page.locator("#live-db")).to_have_text("ok")
        expect(page.locator("#live-history svg polyline")).to_have_count(1)
    finally:
        stream.join(30)
    page.click("#period-hour")
    expect(page.locator("#usage-requests tfoot [data-total]")).to_have_attribute("data-total", "6")
    page.screenshot(path=str(shots / "dashboard.png"), full_page=True)

    # Usable on a phone: nothing wider than the screen but the tables' own scrollers.
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, page.evaluate(WIDER)
    page.screenshot(path=str(shots / "dashboard-phone.png"))


def test_live_panel_lists_models_in_quota_cooldown(
    make_proxy: Callable[..., Proxy], claude_upstream: AnthropicStandIn, open_page
) -> None:
    """A model whose upstream quota ran out shows in the live panel, with its reset."""
    proxy = make_proxy(claude_upstream.url, UPSTREAM_API="anthropic")
    created = httpx.post(f"{proxy.url}/admin/create-key", headers=ADMIN, json={"name": "cool"})
    claude_upstream.exhaust("gemini-3-flash", reset="1h")
    with pytest.raises(openai.RateLimitError):
        chat(proxy, created.json()["api_key"])
    page = signed_in(open_page, proxy).page
    cooling = page.locator("#live-cooldowns li")
    expect(cooling).to_have_count(1)
    expect(cooling.locator("code")).to_have_text("gemini-3-flash")
    expect(cooling).to_have_text(re.compile(r"^gemini-3-flash until 20\S+ \S+ UTC \(in 60 min\)$"))


def test_routing_panel_shows_the_table_in_force_and_its_file(
    make_proxy: Callable[..., Proxy], standin: StandIn, open_page, tmp_path: Path
) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text(
        '[aliases."team-default"]\ntargets = { "claude-sonnet-4-5" = 1, "gemini-3-flash" = 3 }\n'
        'sticky = true\n[renames]\n"gpt-4o" = "gemini-3-pro-high"\n'
    )
    proxy = make_proxy(standin.url, ROUTES_FILE=str(routes), TIER_RPM="trial=10")
    page = signed_in(open_page, proxy).page
    expect(page.locator("#routing-source")).to_contain_text(str(routes))
    expect(page.locator("#routing-source")).to_contain_text("loaded 20")
    aliases = page.locator("#routing-aliases tbody tr")
    expect(aliases).to_have_count(2)
    expect(aliases.nth(0)).to_contain_text("claude-sonnet-4-5")
    expect(aliases.nth(0)).to_contain_text("25 %")
    expect(aliases.nth(1)).to_contain_text("75 %")
    expect(aliases.nth(1)).to_contain_text("sticky")
    tables = page.locator("#routing-tables")
    expect(tables).to_contain_text("gemini-3-pro-high")
    expect(tables).to_contain_text("tier trial (TIER_RPM)")
    expect(tables).to_contain_text("10 req/min")


def test_edit_and_rotate_a_key_in_the_ui(dash: Proxy, open_page) -> None:
    old = dash.create_key("to-edit")
    page = signed_in(open_page, dash).page
    row = page.locator("#keys-table tbody tr", has_text="to-edit")
    row.get_by_role("button", name="Edit").click()
    page.fill("#key-form [name=name]", "edited")
    page.fill("#key-form [name=budget]", "20")
    page.select_option("#key-form [name=budget_period]", "month")
    page.fill("#key-form [name=models]", "gemini-3-flash")
    page.click("#key-form button[type=submit]")
    row = page.locator("#keys-table tbody tr", has_text="edited")
    expect(row).to_contain_text("of $20.00 USD per month")
    keys = httpx.get(f"{dash.url}/admin/keys", headers=ADMIN).json()["data"]
    (edited,) = [k for k in keys if k["name"] == "edited"]
    assert edited["budget"] == 20 and edited["budget_period"] == "month"
    assert edited["models"] == ["gemini-3-flash"]

    row.get_by_role("button", name="Rotate").click()
    page.click("#rotate-form button[type=submit]")
    expect(page.locator("#secret-dialog")).to_be_visible()
    new = page.input_value("#secret-value")
    page.click("#secret-done")
    assert new.startswith("apk_") and new != old
    # The key now has a budget, so it may use priced models only (none are priced here):
    # the new secret is accepted and refused for the price, the old one for the key.
    with pytest.raises(openai.PermissionDeniedError) as unpriced:
        chat(dash, new)
    assert unpriced.value.code == "model_not_priced"
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat(dash, old)
    assert refused.value.code == "invalid_api_key"


# --- customer portal -------------------------------------------------------------------


def test_portal_refuses_a_bad_key_clearly(dash: Proxy, open_page, shots: Path) -> None:
    watched = open_page(f"{dash.url}/portal/")
    page = watched.page
    page.fill("#key", "apk_" + "x" * 43)
    page.click("#signin button[type=submit]")
    expect(page.locator("#signin-error")).to_have_text("This key was not accepted: Invalid API key")
    expect(page.locator("#account")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0  # a refused key is not kept
    page.set_viewport_size({"width": 900, "height": 360})
    page.screenshot(path=str(shots / "portal-refused.png"))


#: USD per million tokens (input, output): steep, so that a few requests cost cents.
PRICES = {"gemini-3-flash": (100.0, 1000.0), "claude-sonnet-4-5": (300.0, 1500.0)}
PRICED_ROUTES = """
[prices."gemini-3-flash"]
input = 100.0
output = 1000.0

[prices."claude-sonnet-4-5"]
input = 300.0
output = 1500.0

[tiers.starter]
rpm = 60
budget = 5.0
budget_period = "month"
models = ["gemini-3-flash", "claude-sonnet-4-5", "cursor-pro-sonnet"]
"""


def test_portal_shows_a_customers_own_spend_after_a_priced_request(
    make_proxy: Callable[..., Proxy], standin: StandIn, open_page, tmp_path: Path, shots: Path
) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text(PRICED_ROUTES)
    proxy = make_proxy(standin.url, ROUTES_FILE=str(routes))
    mine = proxy.create_key("carol", tier="starter")
    other = proxy.create_key("dave", tier="starter")
    usage = chat(proxy, mine, "gemini-3-flash").usage  # type: ignore[attr-defined]
    chat(proxy, other, "gemini-3-flash")
    chat(proxy, other, "gemini-3-flash")
    cost = (usage.prompt_tokens * 100.0 + usage.completion_tokens * 1000.0) / 1e6
    time.sleep(FLUSH_WAIT)
    account = httpx.get(f"{proxy.url}/account", headers={"authorization": f"Bearer {mine}"})
    assert account.status_code == 200, account.text

    watched = open_page(f"{proxy.url}/portal/")
    page = watched.page
    page.fill("#key", mine)
    page.click("#signin button[type=submit]")
    expect(page.locator("#account")).to_be_visible()
    expect(page.locator("#account-name")).to_have_text("carol")
    expect(page.locator("#account-tier")).to_have_text("starter")
    expect(page.locator("#spend-text")).to_contain_text(f"${cost:.4f} USD of $5.00 USD")
    expect(page.locator("#account-spend")).to_contain_text("Resets 20")
    expect(page.locator("#account-models")).to_contain_text("gemini-3-flash")
    requests = page.locator("#account-requests tfoot [data-total]")
    expect(requests).to_have_attribute("data-total", "1")  # carol's one, never dave's two
    expect(page.locator("#account-requests svg rect.bar")).to_have_count(1)
    assert "dave" not in page.content()
    assert page.evaluate("localStorage.length") == 0
    page.screenshot(path=str(shots / "portal.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, page.evaluate(WIDER)
