"""The live dashboard, end to end: headless Chromium (Debian's, driven by
Playwright) against the real aggregator and collector.

A stack of its own gets a known run: a seeded mix of pixels, clicks,
leads and sales posted here, and a burst from the real load generator,
whose ground-truth ledger says what the collector accepted. Every number
the page is expected to show is computed here from those two, with the
rules of `conftest.RULES` (campaign 1 CPA 12.50 USD, campaign 2 10 %
revenue share, affiliate 7's parent 8 earns 5 % on top, all rounded half
to even per conversion) and the exchange rates below (API.md,
"Reporting currency") — never read back from the server.

The load generator is kept to campaign 1 (`--campaigns 1`): a CPA pays
the same for every lead and sale, so its commissions follow exactly from
the ledger's counts; a revenue share rounds per sale, which the ledger's
per-currency sums cannot recover.

Screenshots of every state checked go to `$EDGETALLY_ARTIFACTS_DIR`, else
`target/test-artifacts/dashboard/`.
"""

from __future__ import annotations

import csv
import datetime
import http.client
import io
import json
import os
import pathlib
import random
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from conftest import REPO, bin_dir, start_stack

CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
# Every wait on the page is bounded by this.
WAIT_MS = 15_000

EXPONENTS = {"USD": 2, "EUR": 2, "GBP": 2, "JPY": 0, "BHD": 3}
# Into EUR; GBP (which the load generator sells in) has no rate, so it is
# left out of the converted sums and named as unconverted.
RATES = {"reporting_currency": "EUR", "rates": {"USD": "0.90", "JPY": "0.0061", "BHD": "2.43"}}
REPORTING = RATES["reporting_currency"]

CPA_MINOR = 1250  # campaign 1: 12.50 USD per lead or sale
REVSHARE = Fraction(10, 100)  # campaign 2
OVERRIDE = Fraction(5, 100)  # affiliate 7's parent
PARENT_OF = {7: 8}

# The posted traffic: these affiliates, on campaigns 1 and 2. The load
# generator adds affiliates 1..LOAD_AFFILIATES on campaign 1.
AFFILIATES = [7, 9, 12, 17, 70, 107]
LOAD_AFFILIATES = 30
LOAD_REQUESTS = 1500
FILTER = "7"


# === Ground truth ===


@dataclass
class Totals:
    impressions: int = 0
    clicks: int = 0
    unique_clicks: int = 0
    leads: int = 0
    sales: int = 0
    duplicates: int = 0
    # Accepted events a fraud rule counted apart (the load generator's
    # crawler pixels).
    flagged: int = 0
    # currency -> [revenue, commission, parent commission], minor units.
    money: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))

    def add(self, other: Totals) -> None:
        for name in ("impressions", "clicks", "unique_clicks", "leads", "sales", "duplicates", "flagged"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for currency, amounts in other.money.items():
            mine = self.money[currency]
            for idx in range(3):
                mine[idx] += amounts[idx]


def half_even(value: Fraction) -> int:
    # Fraction.__round__ without digits rounds half to even.
    return round(value)


class Truth:
    """What the collector accepted, per (affiliate, campaign)."""

    def __init__(self):
        self.pairs: dict[tuple[int, int], Totals] = defaultdict(Totals)

    def conversion(self, affiliate_id, campaign_id, kind, currency=None, amount_minor=0):
        pair = self.pairs[(affiliate_id, campaign_id)]
        if kind == "lead":
            pair.leads += 1
        else:
            pair.sales += 1
        if currency is not None:
            pair.money[currency][0] += amount_minor
        if campaign_id == 1:
            commission, commission_currency = CPA_MINOR, "USD"
        elif campaign_id == 2 and currency is not None:
            commission, commission_currency = half_even(amount_minor * REVSHARE), currency
        else:
            commission, commission_currency = 0, None
        if commission_currency is not None:
            pair.money[commission_currency][1] += commission
            if affiliate_id in PARENT_OF:
                pair.money[commission_currency][2] += half_even(commission * OVERRIDE)

    def total(self, affiliate_id=None, campaign_id=None) -> Totals:
        totals = Totals()
        for (aff, cmp), pair in self.pairs.items():
            if affiliate_id not in (None, aff) or campaign_id not in (None, cmp):
                continue
            totals.add(pair)
        return totals

    def ids(self, by: str) -> list[int]:
        return sorted({pair[0] if by == "affiliate" else pair[1] for pair in self.pairs})

    def by(self, by: str, id: int) -> Totals:
        return self.total(affiliate_id=id) if by == "affiliate" else self.total(campaign_id=id)


def convert(minor: int, currency: str) -> int:
    rate = Fraction(1) if currency == REPORTING else Fraction(RATES["rates"][currency])
    return half_even(minor * rate * Fraction(10) ** (EXPONENTS[REPORTING] - EXPONENTS[currency]))


def expected_metrics(totals: Totals) -> dict:
    """What API.md says a Metrics of `totals` is, in the comparable form
    of `api_metrics`."""
    clicks = totals.clicks
    conversions = totals.leads + totals.sales
    money = {}
    for currency in sorted(totals.money):
        revenue, commission, parent = totals.money[currency]
        if revenue == commission == parent == 0:
            continue
        payable = commission + parent
        money[currency] = {
            "exponent": EXPONENTS[currency],
            "revenue": revenue,
            "commission": commission,
            "parent": parent,
            "payable": payable,
            "margin": revenue - payable,
            "epc": payable / clicks if clicks else None,
        }
    revenue = payable = 0
    unconverted = []
    for currency, line in money.items():
        if currency != REPORTING and currency not in RATES["rates"]:
            unconverted.append(currency)
            continue
        revenue += convert(line["revenue"], currency)
        payable += convert(line["payable"], currency)
    return {
        "impressions": totals.impressions,
        "clicks": clicks,
        "unique_clicks": totals.unique_clicks,
        "leads": totals.leads,
        "sales": totals.sales,
        "conversions": conversions,
        "duplicates": totals.duplicates,
        "flagged": totals.flagged,
        "conversion_rate": conversions / clicks if clicks else None,
        "money_order": list(money),
        "money": money,
        "reporting": {
            "currency": REPORTING,
            "exponent": EXPONENTS[REPORTING],
            "revenue": revenue,
            "payable": payable,
            "margin": revenue - payable,
            "epc": payable / clicks if clicks else None,
            "unconverted": unconverted,
        },
    }


def api_metrics(metrics: dict) -> dict:
    """An API Metrics in the form `expected_metrics` gives."""
    money = {}
    for line in metrics["money"]:
        for name in ("revenue_minor", "commission_minor", "parent_commission_minor", "payable_minor", "margin_minor"):
            assert isinstance(line[name], str), f"{name} must be a string (API.md, Money): {line}"
        money[line["currency"]] = {
            "exponent": line["exponent"],
            "revenue": int(line["revenue_minor"]),
            "commission": int(line["commission_minor"]),
            "parent": int(line["parent_commission_minor"]),
            "payable": int(line["payable_minor"]),
            "margin": int(line["margin_minor"]),
            "epc": line["epc_minor"],
        }
    reporting = metrics["reporting"]
    if reporting is not None:
        reporting = {
            "currency": reporting["currency"],
            "exponent": reporting["exponent"],
            "revenue": int(reporting["revenue_minor"]),
            "payable": int(reporting["payable_minor"]),
            "margin": int(reporting["margin_minor"]),
            "epc": reporting["epc_minor"],
            "unconverted": reporting["unconverted"],
        }
    keys = (
        *("impressions", "clicks", "unique_clicks", "leads", "sales"),
        *("conversions", "duplicates", "flagged", "conversion_rate"),
    )
    return {
        **{key: metrics[key] for key in keys},
        "money_order": [line["currency"] for line in metrics["money"]],
        "money": money,
        "reporting": reporting,
    }


def major_units(minor: int, exponent: int) -> str:
    sign = "-" if minor < 0 else ""
    digits = str(abs(minor))
    if exponent == 0:
        return sign + digits
    digits = digits.rjust(exponent + 1, "0")
    return f"{sign}{digits[:-exponent]}.{digits[-exponent:]}"


def expected_csv(truth: Truth, by: str, q: str | None) -> list[list[str]]:
    """The table CSV of API.md: one line per id and currency, counters
    on the id's first line only, money in major units."""
    id_column = "affiliate_id" if by == "affiliate" else "campaign_id"
    rows = [
        [id_column, "impressions", "clicks", "unique_clicks", "leads", "sales", "conversions", "duplicates", "flagged"]
        + ["currency", "revenue", "commission", "parent_commission", "payable", "margin"]
    ]
    for id in truth.ids(by):
        if q is not None and q not in str(id):
            continue
        metrics = expected_metrics(truth.by(by, id))
        counters = [str(metrics[key]) for key in ("impressions", "clicks", "unique_clicks", "leads", "sales")]
        counters += [str(metrics["conversions"]), str(metrics["duplicates"]), str(metrics["flagged"])]
        if not metrics["money"]:
            rows.append([str(id), *counters, *[""] * 6])
        for line_idx, (currency, line) in enumerate(metrics["money"].items()):
            amounts = [line[key] for key in ("revenue", "commission", "parent", "payable", "margin")]
            rows.append(
                [str(id), *(counters if line_idx == 0 else [""] * len(counters)), currency]
                + [major_units(amount, line["exponent"]) for amount in amounts]
            )
    return rows


# === Traffic ===


def format_amount(minor: int, currency: str) -> str:
    return major_units(minor, EXPONENTS[currency])


def click(stack, campaign_id: int, affiliate_id: int, user_agent: str) -> None:
    """A click through `/c/`, not following its redirect."""
    url = urllib.parse.urlsplit(stack.collector_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.request("GET", f"/c/{campaign_id}?aff={affiliate_id}", headers={"User-Agent": user_agent})
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 302, answer.status
        assert answer.getheader("x-edgetally-outcome") == "accepted"
    finally:
        connection.close()


def post_own_traffic(stack, truth: Truth, rng: random.Random) -> None:
    """A seeded mix of every kind, booked in `truth` as it is accepted."""
    pairs = [(aff, cmp) for aff in AFFILIATES for cmp in (1, 2)]
    for _ in range(40):
        aff, cmp = rng.choice(pairs)
        stack.pixel(aff, cmp)
        truth.pairs[(aff, cmp)].impressions += 1
    # Clicks through /c/ from three visitors (user agents): a visitor's
    # repeat on the same affiliate and campaign is a click but not a
    # unique one.
    visitors_seen = set()
    for _ in range(30):
        aff, cmp = rng.choice(pairs)
        visitor = rng.choice(["visitor-a/1.0", "visitor-b/1.0", "visitor-c/1.0"])
        click(stack, cmp, aff, visitor)
        pair = truth.pairs[(aff, cmp)]
        pair.clicks += 1
        if (visitor, aff, cmp) not in visitors_seen:
            visitors_seen.add((visitor, aff, cmp))
            pair.unique_clicks += 1
    events = []
    # Posted clicks have no visitor: each is unique.
    for _ in range(5):
        aff, cmp = rng.choice(pairs)
        events.append({"kind": "click", "affiliate_id": aff, "campaign_id": cmp})
        truth.pairs[(aff, cmp)].clicks += 1
        truth.pairs[(aff, cmp)].unique_clicks += 1
    for lead_idx in range(8):
        aff, cmp = rng.choice(pairs)
        events.append({"kind": "lead", "affiliate_id": aff, "campaign_id": cmp, "order_id": f"py-lead-{lead_idx}"})
        truth.conversion(aff, cmp, "lead")
    sales = [
        # Ties, rounded to even: 10 % of 12.25 EUR is 122.5 cents -> 122
        # (the parent's 5 % of it 6.1 -> 6); 10 % of 12.35 USD is 123.5 -> 124.
        (7, 2, "EUR", 1225),
        (9, 2, "USD", 1235),
    ]
    for _ in range(16):
        aff, cmp = rng.choice(pairs)
        sales.append((aff, cmp, rng.choice(["USD", "EUR"]), rng.randrange(100, 50_000)))
    for sale_idx, (aff, cmp, currency, minor) in enumerate(sales):
        events.append(
            {
                "kind": "sale",
                "affiliate_id": aff,
                "campaign_id": cmp,
                "order_id": f"py-sale-{sale_idx}",
                "amount": format_amount(minor, currency),
                "currency": currency,
            }
        )
        truth.conversion(aff, cmp, "sale", currency, minor)
    answer = stack.post(events)
    assert answer["accepted"] == len(events), answer
    # The same order again: a duplicate, counted apart and never paid.
    again = stack.post(events[-1])
    assert again["duplicates"] == 1, again
    truth.pairs[(events[-1]["affiliate_id"], events[-1]["campaign_id"])].duplicates += 1


def run_load_generator(stack, truth: Truth, dir: pathlib.Path) -> dict:
    """A burst from `edgetally-loadtest run`, booked from its ledger."""
    ledger_path = dir / "ledger.json"
    command = [
        str(bin_dir() / "edgetally-loadtest"),
        "run",
        *("--target", stack.collector_url, "--max", "--requests", str(LOAD_REQUESTS)),
        *("--connections", "8", "--seed", "11", "--ledger", str(ledger_path), "--json"),
        *("--affiliates", str(LOAD_AFFILIATES), "--campaigns", "1"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    ledger = json.loads(ledger_path.read_text())
    for key, counts in ledger["counts"].items():
        aff, cmp = (int(part) for part in key.split("/"))
        assert cmp == 1, f"the load generator was kept to campaign 1, its ledger has {key}"
        pair = truth.pairs[(aff, cmp)]
        pair.impressions += counts["impressions"]
        pair.clicks += counts["clicks"]
        # Every generated click comes from one visitor (127.0.0.1, one user
        # agent): the first on each affiliate and campaign is unique.
        pair.unique_clicks += 1 if counts["clicks"] else 0
        pair.duplicates += counts["duplicates"]
        # Its crawler pixels, counted apart by the bot rule.
        pair.flagged += counts["flagged"]
        for _ in range(counts["leads"]):
            truth.conversion(aff, cmp, "lead")
        # Sales' revenue comes from the ledger's money; a CPA pays the same
        # for each, so the count is enough for the commissions.
        for _ in range(counts["sales"]):
            truth.conversion(aff, cmp, "sale")
    for key, minor in ledger["money"].items():
        aff, cmp, currency = key.split("/")
        truth.pairs[(int(aff), int(cmp))].money[currency][0] += minor
    return ledger


# === HTTP ===


def api(stack, path: str, token: str):
    request = urllib.request.Request(
        f"{stack.aggregator_http_url}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


def server_view(stack, token: str) -> dict:
    overview = api(stack, "/api/overview", token)
    table = api(stack, "/api/table?by=affiliate", token)
    return {
        "overview": api_metrics(overview["current"]),
        "affiliates": {row["id"]: api_metrics(row) for row in table["rows"]},
    }


def expected_view(truth: Truth, affiliate_id: int | None = None) -> dict:
    ids = truth.ids("affiliate") if affiliate_id is None else [affiliate_id]
    return {
        "overview": expected_metrics(truth.total(affiliate_id=affiliate_id)),
        "affiliates": {id: expected_metrics(truth.by("affiliate", id)) for id in ids},
    }


def wait_for_server(stack, truth: Truth, token: str, affiliate_id: int | None = None, seconds: float = 20):
    """Polls the API until it answers the ground truth; then asserts it
    does (so a mismatch fails with the whole difference)."""
    want = expected_view(truth, affiliate_id)
    deadline = time.monotonic() + seconds
    while True:
        have = server_view(stack, token)
        if have == want or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert have == want, "the API differs from the ground truth:\n" + "\n".join(differences(have, want))


def differences(have, want, path="") -> list[str]:
    """Where two nested answers differ, one line each."""
    if isinstance(have, dict) and isinstance(want, dict):
        lines = []
        for key in sorted(set(have) | set(want), key=str):
            lines += differences(have.get(key, "<missing>"), want.get(key, "<missing>"), f"{path}/{key}")
        return lines
    return [] if have == want else [f"{path}: API {have!r}, expected {want!r}"]


# === Browser ===


def artifacts_dir() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("EDGETALLY_ARTIFACTS_DIR") or REPO / "target" / "test-artifacts" / "dashboard")
    path.mkdir(parents=True, exist_ok=True)
    return path


def screenshot(page: Page, name: str) -> None:
    page.screenshot(path=str(artifacts_dir() / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(
            f"the dashboard tests need Chromium at {CHROMIUM}: apt-get install --no-install-recommends chromium",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        # Playwright gives the browser a fresh temporary profile of its own.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser):
    """A page in a context of its own (no cookies from other tests);
    uncaught script errors fail the test."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert errors == [], f"the page threw: {errors}"


def log_in(page: Page, stack, token: str, role: str) -> None:
    page.goto(f"{stack.aggregator_http_url}/")
    expect(page.locator("#login-view")).to_be_visible(timeout=WAIT_MS)
    page.fill("#token", token)
    page.click("#login-submit")
    expect(page.locator("#app")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#role")).to_have_text(role, timeout=WAIT_MS)
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live", timeout=WAIT_MS)


def js_number(value: float) -> str:
    """`String(value)` in JavaScript: the shortest digits that read back
    as the same double (as Python's repr), in JavaScript's notation."""
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    if "e" not in text:
        return text
    if 1e-6 <= abs(value) < 1e21:
        return format(Decimal(text), "f")
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent):+d}"


def expect_number(locator, value: float | None) -> None:
    """`data-value` is the JavaScript Number `value` ("" for None)."""
    expect(locator).to_have_attribute("data-value", "" if value is None else js_number(value), timeout=WAIT_MS)


def expect_overview(page: Page, metrics: dict) -> None:
    """Every tile's exact value: counts, the conversion rate, and each
    money metric per currency and in the reporting currency."""
    for metric in ("impressions", "clicks", "conversions", "flagged"):
        tile = page.locator(f'[data-testid="tile-{metric}"]')
        expect(tile).to_have_attribute("data-value", str(metrics[metric]), timeout=WAIT_MS)
    expect_number(page.locator('[data-testid="tile-conversion_rate"]'), metrics["conversion_rate"])
    for metric in ("revenue", "payable", "margin", "epc"):
        tile = page.locator(f'[data-testid="tile-{metric}"]')
        for currency, line in metrics["money"].items():
            money = tile.locator(f'[data-testid="money-{metric}-{currency}"]')
            if metric == "epc":
                expect_number(money, line["epc"])
            else:
                expect(money).to_have_attribute("data-value", str(line[metric]), timeout=WAIT_MS)
        reporting = tile.locator(f'[data-testid="money-{metric}-reporting"]')
        if metric == "epc":
            expect_number(reporting, metrics["reporting"]["epc"])
        else:
            expect(reporting).to_have_attribute("data-value", str(metrics["reporting"][metric]), timeout=WAIT_MS)
        # No currency shown that the ground truth does not have.
        shown = tile.locator('[data-testid^="money-"]').evaluate_all("lines => lines.map(l => l.dataset.testid)")
        want = [f"money-{metric}-reporting"] + [f"money-{metric}-{currency}" for currency in metrics["money"]]
        assert shown == want, f"{metric} tile lines {shown}, expected {want}"


def table_ids(page: Page, route: str) -> list[str]:
    return page.locator(f"#table-{route} tbody tr[data-id]").evaluate_all("rows => rows.map(r => r.dataset.id)")


def money_cell(line_values: dict, metric: str) -> str:
    """A money cell's `data-value` for minor-unit metrics: "EUR:8000 USD:10000"."""
    return " ".join(f"{currency}:{line[metric]}" for currency, line in line_values.items())


def expect_table_row(page: Page, route: str, id: int, metrics: dict) -> None:
    row = page.locator(f'#table-{route} tbody tr[data-id="{id}"]')
    for column in ("impressions", "clicks", "conversions"):
        expect(row.locator(f'td[data-col="{column}"]')).to_have_attribute(
            "data-value", str(metrics[column]), timeout=WAIT_MS
        )
    expect_number(row.locator('td[data-col="conversion_rate"]'), metrics["conversion_rate"])
    for column in ("revenue", "payable", "margin"):
        cell = row.locator(f'td[data-col="{column}"]')
        expect(cell).to_have_attribute("data-value", money_cell(metrics["money"], column), timeout=WAIT_MS)
        expect(cell).to_have_attribute("data-reporting-value", str(metrics["reporting"][column]), timeout=WAIT_MS)
    # EPC: the per-click Number of each currency; none without clicks.
    epc = " ".join(
        f"{currency}:{js_number(line['epc'])}" for currency, line in metrics["money"].items() if line["epc"] is not None
    )
    expect(row.locator('td[data-col="epc"]')).to_have_attribute("data-value", epc, timeout=WAIT_MS)
    reporting_epc = metrics["reporting"]["epc"]
    expect(row.locator('td[data-col="epc"]')).to_have_attribute(
        "data-reporting-value", "" if reporting_epc is None else js_number(reporting_epc), timeout=WAIT_MS
    )


# === The stack and its run ===


def wait_out_midnight() -> None:
    """Keeps the run inside one UTC day, the page's "today": everything
    is sent now, and a period boundary in the middle would split it."""
    now = datetime.datetime.now(datetime.timezone.utc)
    midnight = datetime.datetime.combine(now.date() + datetime.timedelta(days=1), datetime.time(), now.tzinfo)
    if (midnight - now).total_seconds() < 90:
        time.sleep((midnight - now).total_seconds() + 2)


@dataclass
class Run:
    stack: object
    truth: Truth


@pytest.fixture(scope="module")
def run():
    """A stack with exchange rates, loaded with the known run."""
    wait_out_midnight()
    with tempfile.TemporaryDirectory(prefix="edgetally-dashboard-") as dir:
        dir = pathlib.Path(dir)
        rates = dir / "rates.json"
        rates.write_text(json.dumps(RATES))
        stack = start_stack(dir, aggregator_args=["--exchange-rates", str(rates)])
        try:
            truth = Truth()
            post_own_traffic(stack, truth, random.Random(20240917))
            ledger = run_load_generator(stack, truth, dir)
            assert sum(sum(counts.values()) for counts in ledger["counts"].values()) > 0, ledger
            wait_for_server(stack, truth, stack.admin_token)
            yield Run(stack=stack, truth=truth)
        finally:
            stack.stop()


# === Tests ===


def test_admin_overview_equals_the_ground_truth(run, page):
    """The admin's overview: every tile equals the numbers computed from
    the posted events and the load generator's ledger."""
    log_in(page, run.stack, run.stack.admin_token, "admin")
    expect(page.locator("#nav-overview")).to_have_attribute("aria-current", "page")
    metrics = expected_metrics(run.truth.total())
    # The run has every currency of the load generator; GBP has no rate.
    assert set(metrics["money"]) == set(EXPONENTS), metrics["money_order"]
    assert metrics["reporting"]["unconverted"] == ["GBP"]
    # The load generator's crawler pixels are counted apart, on their tile.
    assert metrics["flagged"] > 0, metrics
    expect_overview(page, metrics)
    expect(page.locator('[data-testid="tile-revenue"] .tile-note')).to_have_text(
        f"Not in {REPORTING} (no rate): GBP", timeout=WAIT_MS
    )
    # Nothing happened yesterday.
    for metric in ("impressions", "revenue"):
        expect(page.locator(f'[data-testid="change-{metric}"]')).to_have_text("new", timeout=WAIT_MS)
    expect(page.locator("#freshness")).to_have_attribute("data-last-applied-ms", re.compile(r"^\d+$"))
    screenshot(page, "01-overview-admin")


def test_a_new_conversion_shows_live_without_a_reload(run, page):
    """With the page open, sales posted to the collector move the money
    tiles and the affiliate's row to their new exact values, from the
    stream: no reload, and no new read of the overview or the tables."""
    stack, truth = run.stack, run.truth
    log_in(page, stack, stack.admin_token, "admin")
    expect_overview(page, expected_metrics(truth.total()))
    page.evaluate("window.__marker = 'still-here'")
    reads = []
    page.on(
        "request",
        lambda request: reads.append(request.url)
        if urllib.parse.urlsplit(request.url).path in ("/api/overview", "/api/table")
        else None,
    )

    def sell(affiliate_id, campaign_id, currency, minor, order_id):
        answer = stack.post(
            {
                "kind": "sale",
                "affiliate_id": affiliate_id,
                "campaign_id": campaign_id,
                "order_id": order_id,
                "amount": format_amount(minor, currency),
                "currency": currency,
            }
        )
        assert answer["accepted"] == 1, answer
        truth.conversion(affiliate_id, campaign_id, "sale", currency, minor)

    # 10 % of 33.30 EUR: 333 cents; the parent's 5 %: 16.65 -> 17.
    sell(7, 2, "EUR", 3330, "py-live-1")
    expect_overview(page, expected_metrics(truth.total()))
    screenshot(page, "02-overview-after-live-sale")

    page.click("#nav-affiliates")
    expect(page.locator("#view-affiliates")).to_be_visible(timeout=WAIT_MS)
    expect_table_row(page, "affiliates", 7, expected_metrics(truth.by("affiliate", 7)))
    # CPA 12.50 USD on campaign 1 (the parent's 62), on the open table.
    sell(7, 1, "USD", 4999, "py-live-2")
    expect_table_row(page, "affiliates", 7, expected_metrics(truth.by("affiliate", 7)))
    screenshot(page, "03-affiliates-after-live-sale")

    assert page.evaluate("window.__marker") == "still-here"
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    assert reads == [], f"the page read again instead of applying the stream: {reads}"
    wait_for_server(stack, truth, stack.admin_token)


def test_affiliates_table_filters_sorts_and_exports(run, page):
    """The affiliates table: the id filter keeps the matching rows only,
    the clicks header sorts, and the CSV link serves the filtered table."""
    stack, truth = run.stack, run.truth
    log_in(page, stack, stack.admin_token, "admin")
    page.click("#nav-affiliates")
    expect(page).to_have_url(re.compile(r"#/affiliates$"))
    all_ids = truth.ids("affiliate")
    expect(page.locator("#count-affiliates")).to_have_text(f"{len(all_ids)} rows", timeout=WAIT_MS)

    page.fill("#filter-affiliates", FILTER)
    matching = [id for id in all_ids if FILTER in str(id)]
    assert len(matching) >= 4 and len(matching) < len(all_ids), matching
    expect(page.locator("#count-affiliates")).to_have_text(f"{len(matching)} of {len(all_ids)} rows", timeout=WAIT_MS)
    assert table_ids(page, "affiliates") == [str(id) for id in matching]
    for id in matching:
        expect_table_row(page, "affiliates", id, expected_metrics(truth.by("affiliate", id)))
    screenshot(page, "04-affiliates-filtered")

    clicks = {id: truth.by("affiliate", id).clicks for id in matching}
    header = page.locator('#table-affiliates th[data-col="clicks"]')
    header.locator("button").click()
    expect(header).to_have_attribute("aria-sort", "ascending", timeout=WAIT_MS)
    ascending = sorted(matching, key=lambda id: (clicks[id], id))
    expect(page.locator("#table-affiliates tbody tr[data-id]").first).to_have_attribute(
        "data-id", str(ascending[0]), timeout=WAIT_MS
    )
    assert table_ids(page, "affiliates") == [str(id) for id in ascending], clicks
    header.locator("button").click()
    expect(header).to_have_attribute("aria-sort", "descending", timeout=WAIT_MS)
    # Ties stay in ascending id order.
    descending = sorted(matching, key=lambda id: (-clicks[id], id))
    expect(page.locator("#table-affiliates tbody tr[data-id]").first).to_have_attribute(
        "data-id", str(descending[0]), timeout=WAIT_MS
    )
    assert table_ids(page, "affiliates") == [str(id) for id in descending], clicks
    screenshot(page, "05-affiliates-sorted-by-clicks")

    link = page.locator("#csv-affiliates")
    href = f"/api/table?by=affiliate&format=csv&period=today&tz=UTC&q={FILTER}"
    expect(link).to_have_attribute("href", href, timeout=WAIT_MS)
    # The context's request carries the page's session cookie (and no token).
    answer = page.request.get(f"{stack.aggregator_http_url}{href}")
    assert answer.status == 200, answer.text()
    assert answer.headers["content-type"].startswith("text/csv"), answer.headers
    assert "attachment" in answer.headers.get("content-disposition", ""), answer.headers
    rows = list(csv.reader(io.StringIO(answer.text())))
    assert rows == expected_csv(truth, "affiliate", FILTER)


def test_an_affiliate_sees_only_its_own_rows(run, page):
    """Affiliate 7's token: its own numbers in the overview, and its row
    alone in the affiliates table."""
    stack, truth = run.stack, run.truth
    wait_for_server(stack, truth, stack.affiliate_7_token, affiliate_id=7)
    log_in(page, stack, stack.affiliate_7_token, "affiliate:7")
    mine = expected_metrics(truth.total(affiliate_id=7))
    assert mine != expected_metrics(truth.total())
    expect_overview(page, mine)
    screenshot(page, "06-overview-affiliate-7")

    page.click("#nav-affiliates")
    expect(page.locator("#count-affiliates")).to_have_text(re.compile(r"^1 rows?$"), timeout=WAIT_MS)
    assert table_ids(page, "affiliates") == ["7"]
    expect_table_row(page, "affiliates", 7, mine)
    screenshot(page, "07-affiliates-affiliate-7")

    # Its campaigns table holds only its own traffic on each campaign.
    page.click("#nav-campaigns")
    campaigns = sorted({cmp for aff, cmp in truth.pairs if aff == 7})
    expect(page.locator("#count-campaigns")).to_have_text(f"{len(campaigns)} rows", timeout=WAIT_MS)
    assert table_ids(page, "campaigns") == [str(cmp) for cmp in campaigns]
    for cmp in campaigns:
        expect_table_row(page, "campaigns", cmp, expected_metrics(truth.total(affiliate_id=7, campaign_id=cmp)))
    screenshot(page, "08-campaigns-affiliate-7")


def test_a_wrong_token_is_refused_on_the_login_view(run, page):
    """A token the aggregator does not know: the server's sentence in
    `#login-error`, and the page stays signed out."""
    stack = run.stack
    request = urllib.request.Request(
        f"{stack.aggregator_http_url}/api/login",
        data=json.dumps({"token": "not-a-known-token"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    message = json.load(refused.value)["error"]
    assert message

    page.goto(f"{stack.aggregator_http_url}/")
    expect(page.locator("#login-view")).to_be_visible(timeout=WAIT_MS)
    page.fill("#token", "not-a-known-token")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_have_text(message[0].upper() + message[1:], timeout=WAIT_MS)
    expect(page.locator("#login-view")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    expect(page.locator("#login-submit")).to_be_enabled()
    assert not [cookie for cookie in page.context.cookies() if cookie["name"] == "edgetally_session"]
    assert page.request.get(f"{stack.aggregator_http_url}/api/session").status == 401
    screenshot(page, "09-login-refused")


def test_the_page_says_when_the_stream_drops(page, tmp_path):
    """The aggregator stops under an open page: `#live-status` turns to
    reconnecting, and the page stays signed in."""
    stack = start_stack(tmp_path)
    try:
        log_in(page, stack, stack.admin_token, "admin")
        screenshot(page, "10-live")
        aggregator = stack.processes[0]
        aggregator.terminate()
        status = page.locator("#live-status")
        expect(status).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
        expect(status).to_contain_text("Reconnecting", timeout=WAIT_MS)
        expect(page.locator("#app")).to_be_visible()
        screenshot(page, "11-reconnecting")
        assert aggregator.wait(timeout=15) is not None
    finally:
        stack.stop()
