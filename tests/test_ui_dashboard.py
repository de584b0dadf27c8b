"""The metrics dashboard in a real browser: Debian's ``chromium`` driven by Playwright for Python.

The API runs under uvicorn with API keys on, over a SQLite job database seeded through the real
job store with a day of varied jobs; no Temporal server or worker is needed (the metrics routes
read the database only). The page's own JavaScript calls ``/v1/metrics/*`` with the key typed
in; the test compares what the charts carry (``data-*`` attributes) with what the API answers.

Playwright cannot download its own browser here, so it launches the system's ``chromium``
(``apt-get install chromium``). Without it the test is skipped locally and fails under ``CI``.
The screenshot lands in the test's ``tmp_path``, and in ``$AGENTFLOW_SCREENSHOT_DIR`` when set.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from core.auth import Scope
from core.models import JobStatus, Tier
from tests.stack import Stack, StackSpec
from tests.test_analytics import NOW, Job, seed

if TYPE_CHECKING:
    from playwright.async_api import ConsoleMessage, Page

pytestmark = pytest.mark.browser

CSP_WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(e.violatedDirective + " " + e.blockedURI);
});
"""
"""Records every Content Security Policy violation the page causes."""


S, M, L = Tier.SMALL, Tier.MEDIUM, Tier.LARGE
PRICE = {S: 0.0005, M: 0.003, L: 0.01}
SPEED_MS = {S: 350.0, M: 900.0, L: 2600.0}


def day_of_jobs(hours_shift: float) -> list[Job]:
    """About 80 varied jobs over the last day, each half an hour from any bucket edge."""
    rng = random.Random(3)
    jobs: list[Job] = []
    for hour in range(24):
        busy = 2 + rng.randint(0, 3) + (3 if 9 <= hour <= 13 else 0)
        for n in range(busy):
            ended_h = hour + 0.5 + rng.uniform(-0.2, 0.2) - hours_shift
            job_id = f"d{hour:02d}-{n}"
            if rng.random() < 0.12:  # answered from the response cache
                jobs.append(
                    Job(job_id, ended_h, rng.uniform(40, 120), hits={"response": 1},
                        saved=(900, 0.004, 1500.0))
                )  # fmt: skip
                continue
            tier = rng.choices([S, M, L], weights=[4, 4, 3])[0]
            tokens = rng.choice([400, 800, 1200, 2000])
            calls = [(tier, "final", PRICE[tier] * tokens / 1000, tokens)]
            if tier is not S:
                calls.insert(0, (S, "draft", PRICE[S] * 0.2, 200))
            tool_hit = rng.random() < 0.45
            tools = [("search", True, tool_hit, 3.0 if tool_hit else rng.uniform(80, 200))]
            duration = (
                SPEED_MS[tier] * rng.lognormvariate(0, 0.35) * (1.6 if hour in (10, 11) else 1)
            )
            semantic_hit = rng.random() < 0.15
            component_hit = rng.random() < 0.6
            jobs.append(
                Job(
                    job_id, ended_h, duration, tier, calls, tools,
                    hits={"tool": int(tool_hit), "semantic": int(semantic_hit),
                          "component": int(component_hit)},
                    misses={"response": 1, "tool": int(not tool_hit),
                            "semantic": int(not semantic_hit), "component": int(not component_hit)},
                    p_large=round(rng.uniform(0.3, 0.95) if tier is L else rng.uniform(0, 0.4), 2),
                    status=JobStatus.FAILED if rng.random() < 0.05 else JobStatus.COMPLETED,
                    request_hash=f"q{rng.randint(0, 40)}",
                )
            )  # fmt: skip
    return jobs


@pytest.fixture(scope="module")
def stack_spec() -> StackSpec:
    """Keys on; no Temporal server or worker: the metrics routes read the database only."""
    return StackSpec(settings={"api_key_pepper": "dashboard-pepper"}, worker=False, temporal=False)


@dataclass
class Keys:
    admin: str
    nobody: str
    """A read key that submitted nothing."""


@pytest.fixture(scope="module")
def keys(stack: Stack) -> Keys:
    """An admin key that owns a seeded day of varied jobs, and a read key that owns none."""
    admin = stack.key("ops", Scope.ADMIN)
    nobody = stack.key("nobody", Scope.READ)
    shift_h = (datetime.now(UTC) - NOW) / timedelta(hours=1)
    seed(stack.engine, day_of_jobs(shift_h), owner=admin.key_id)
    return Keys(admin=admin.secret, nobody=nobody.secret)


async def open_dashboard(page: Page, stack: Stack, problems: list[str]) -> Page:
    """The dashboard in ``page``, noting page errors, console errors and warnings.

    The browser logs every CSP refusal as a console error; ``window.__csp`` lists them too.
    """
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

    def console(msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            problems.append(f"console {msg.type}: {msg.text}")

    page.on("console", console)
    await page.add_init_script(CSP_WATCH)
    await page.goto(f"{stack.url}/ui/dashboard")
    return page


def fetch(stack: Stack, key: str, what: str, period: str) -> dict[str, Any]:
    r = httpx.get(
        f"{stack.url}/v1/metrics/{what}?period={period}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def fixed(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


async def test_the_dashboard_charts_what_the_api_answers(
    page: Page, stack: Stack, keys: Keys, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    expect.set_options(timeout=10_000)
    problems: list[str] = []
    await open_dashboard(page, stack, problems)
    await expect(page.get_by_role("status")).to_contain_text("Enter an API key")
    await page.get_by_label("API key").fill(keys.admin)
    await page.get_by_role("button", name="Use key").click()
    await expect(page.get_by_role("status")).to_contain_text("every job")

    summary = fetch(stack, keys.admin, "summary", "day")
    series = fetch(stack, keys.admin, "timeseries", "day")
    cost = fetch(stack, keys.admin, "cost", "day")
    assert summary["window"]["jobs"] > 60

    # Three latency lines, one point per bucket, carrying the API's percentiles.
    latency = page.locator('svg[data-chart="latency"]')
    await expect(latency).to_be_visible()
    lines = latency.locator("g[data-series]")
    assert await lines.evaluate_all("gs => gs.map(g => g.dataset.series)") == ["p50", "p95", "p99"]
    for name in ("p50", "p95", "p99"):
        values = await latency.locator(f'g[data-series="{name}"] path').get_attribute("data-values")
        assert values == ",".join(fixed(b[f"{name}_ms"], 1) for b in series["buckets"])
    points = await latency.locator("circle").count()
    assert points == sum(
        1 for b in series["buckets"] for k in ("p50", "p95", "p99") if b[f"{k}_ms"] is not None
    )

    # Stacked cost bars: one per bucket and tier that cost something; they add up to the total.
    bars = page.locator('svg[data-chart="cost"] rect[data-tier]')
    spend = [v for b in series["buckets"] for v in b["cost_usd_by_tier"].values() if v > 0]
    assert await bars.count() == len(spend)
    drawn = await bars.evaluate_all("rs => rs.map(r => [r.dataset.tier, +r.dataset.usd])")
    assert {t for t, _ in drawn} == {"small", "medium", "large"}
    assert sum(v for _, v in drawn) == pytest.approx(summary["cost"]["total_usd"])

    # Cache hit rate per level and the tier mix, as the summary has them.
    levels = page.locator('svg[data-chart="cache"] rect[data-level]')
    got = await levels.evaluate_all("rs => rs.map(r => [r.dataset.level, r.dataset.value])")
    assert got == [[k, fixed(v["hit_rate"], 4)] for k, v in summary["cache"]["levels"].items()]
    tiers = page.locator('svg[data-chart="tiers"] rect[data-tier]')
    got = await tiers.evaluate_all("rs => rs.map(r => [r.dataset.tier, r.dataset.value])")
    shares = summary["tiers"]
    assert got == [[k, fixed(shares[k]["share"], 4)] for k in ("small", "medium", "large", "none")]

    # Suggestions and strategies with their figures and formulas.
    rules = await page.locator("#suggestions li[data-rule]").evaluate_all(
        "ls => ls.map(l => l.dataset.rule)"
    )
    assert rules == [s["rule"] for s in summary["suggestions"]]
    assert rules, "the seeded day should fire at least one rule"
    strategies = page.locator("#strategies li[data-strategy]")
    assert await strategies.count() == len(cost["strategies"])
    if cost["strategies"]:
        await expect(strategies.first.locator(".formula")).to_have_text(
            cost["strategies"][0]["formula"]
        )
    await expect(page.locator("#cards")).to_contain_text("ms")
    await expect(page.locator("#cards")).to_contain_text("USD")
    await expect(page.locator("#monthly")).to_contain_text("USD/month")

    shot = tmp_path / "dashboard.png"
    await page.screenshot(path=str(shot), full_page=True)
    copy_to = os.environ.get("AGENTFLOW_SCREENSHOT_DIR")
    if copy_to:
        shutil.copy(shot, Path(copy_to) / "dashboard.png")

    # Another period: a week is seven daily buckets.
    await page.get_by_label("Last week").check()
    await expect(page.get_by_role("status")).to_contain_text("Last week")
    week = await latency.locator('g[data-series="p50"] path').get_attribute("data-values")
    assert week is not None and len(week.split(",")) == 7

    # A key that submitted nothing sees the empty state, not empty charts.
    await page.get_by_role("button", name="Forget key").click()
    await expect(page.get_by_role("status")).to_contain_text("Enter an API key")
    await page.get_by_label("API key").fill(keys.nobody)
    await page.get_by_role("button", name="Use key").click()
    await expect(page.locator("#empty")).to_contain_text("No job ended in the last week")
    await expect(page.locator("#empty")).to_contain_text("this key's jobs")
    await expect(page.locator("#content")).to_be_hidden()

    assert await page.evaluate("window.__csp") == []
    assert not problems, problems
